"""The README and docs describe the tree as it is: layout, length, links."""

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MAX_LINES = 200
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def layout_block(readme_text: str) -> list[str]:
    """The lines of the first code block under the ``## Layout`` heading."""
    after = readme_text.split("\n## Layout\n", 1)
    if len(after) != 2:
        raise AssertionError("README.md has no '## Layout' section")
    match = re.search(r"^```[^\n]*\n(.*?)^```", after[1], re.S | re.M)
    if match is None:
        raise AssertionError("README.md's '## Layout' section has no code block")
    return match.group(1).splitlines()


def listed_layout(lines: list[str]) -> dict[str, set[str]]:
    """What the layout block names: ``packages`` and ``modules`` directly under ``segjax/``,
    ``nested`` paths under a package (``models/backbones``), ``repo`` top-level directories.

    An entry line is indented by 0 (repository level), 2 (inside ``segjax/``) or 4 (inside the
    package above it); its names come first, separated by single spaces, and its description
    after two or more. Lines indented further are descriptions.
    """
    out = {"packages": set(), "modules": set(), "nested": set(), "repo": set()}
    package = None
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent not in (0, 2, 4):
            continue
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0].split(" ")
        if indent == 0:
            out["repo"].update(n.rstrip("/") for n in names if n != "segjax/")
        elif indent == 2:
            for name in names:
                if name.endswith("/"):
                    package = name.rstrip("/")
                    out["packages"].add(package)
                elif name.endswith(".py"):
                    out["modules"].add(name)
                else:
                    raise AssertionError(f"layout entry {name!r} is neither a package/ nor a .py")
        else:
            if package is None:
                raise AssertionError(f"nested layout entry before any package: {line!r}")
            out["nested"].update(f"{package}/{n.rstrip('/')}" for n in names)
    return out


def actual_layout(package_root: pathlib.Path) -> dict[str, set[str]]:
    """Packages (directories with ``__init__.py``) and modules directly under ``package_root``."""
    return {
        "packages": {p.parent.name for p in package_root.glob("*/__init__.py")},
        "modules": {p.name for p in package_root.glob("*.py") if p.name != "__init__.py"},
    }


def layout_mismatches(listed: dict[str, set[str]], actual: dict[str, set[str]]) -> list[str]:
    problems = []
    for kind in ("packages", "modules"):
        if missing := sorted(actual[kind] - listed[kind]):
            problems.append(f"{kind} in segjax/ but not in README's layout: {missing}")
        if stale := sorted(listed[kind] - actual[kind]):
            problems.append(f"{kind} in README's layout but not in segjax/: {stale}")
    return problems


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    kept = "".join(ch for ch in heading.strip().lower() if ch.isalnum() or ch in "-_ ")
    return kept.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(doc: pathlib.Path) -> list[str]:
    """Relative links of ``doc`` whose file, or heading anchor, does not exist."""
    problems = []
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            problems.append(f"{target}: {file.relative_to(REPO)} does not exist")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file.read_text()):
            problems.append(f"{target}: no heading #{fragment} in {file.relative_to(REPO)}")
    return problems


def test_readme_layout_lists_exactly_the_packages_and_top_level_modules():
    listed = listed_layout(layout_block(README.read_text()))
    assert layout_mismatches(listed, actual_layout(REPO / "segjax")) == []
    assert sorted(p for p in listed["nested"] if not (REPO / "segjax" / p).exists()) == []
    assert sorted(d for d in listed["repo"] if not (REPO / d).is_dir()) == []


def test_layout_check_catches_an_unlisted_package(tmp_path):
    listed = listed_layout(layout_block(README.read_text()))
    root = tmp_path / "segjax"
    for package in listed["packages"] | {"brand_new"}:
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    for module in listed["modules"]:
        (root / module).write_text("")
    (root / "not_a_package").mkdir()  # no __init__.py: not a package, not listed
    assert layout_mismatches(listed, actual_layout(root)) == [
        "packages in segjax/ but not in README's layout: ['brand_new']"
    ]


@pytest.mark.parametrize("doc", ["README.md", "docs/PERFORMANCE.md"])
def test_doc_is_under_the_line_limit(doc):
    lines = (REPO / doc).read_text().count("\n")
    assert lines < MAX_LINES, f"{doc} has {lines} lines; keep it under {MAX_LINES}"


def test_every_relative_link_in_the_readme_resolves():
    assert broken_links(README) == []
