"""The package keeps its own rules: no function over ~80 lines without a stated reason, and a
docstring on every public function."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parent.parent / "segjax"
MAX_LINES = 80
FILES = sorted(PACKAGE.rglob("*.py"))


def _functions(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_are_short_or_say_why(path):
    long = [
        f"{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for f in _functions(path)
        if f.end_lineno - f.lineno + 1 > MAX_LINES
        and "long because" not in (ast.get_docstring(f) or "").lower()
    ]
    assert not long, f"{path.name}: over {MAX_LINES} lines without 'Long because …': {long}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_public_module_functions_have_docstrings(path):
    tree = ast.parse(path.read_text())
    missing = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
        and not node.name.startswith("_")
        and not ast.get_docstring(node)
    ]
    assert not missing, f"{path.name}: public without a docstring: {missing}"
