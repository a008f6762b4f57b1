"""segjax.errors and cli.clean_errors: user errors are one line, bugs keep their traceback."""

import os
import subprocess
import sys

import pytest

from segjax import cli, errors, models
from segjax.evaluation import inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BUILTIN_OF = {
    errors.ConfigError: ValueError,
    errors.DataError: ValueError,
    errors.MissingFileError: FileNotFoundError,
    errors.CheckpointMismatchError: ValueError,
    errors.ConversionError: ValueError,
    errors.NonFiniteError: RuntimeError,
    errors.UnknownNameError: KeyError,
}


@pytest.mark.parametrize("kind", list(BUILTIN_OF), ids=lambda k: k.__name__)
def test_each_type_is_a_segjax_error_and_its_builtin(kind):
    # The builtin base keeps `except ValueError` (and pytest.raises(ValueError)) callers working.
    assert issubclass(kind, errors.SegjaxError) and issubclass(kind, BUILTIN_OF[kind])
    assert kind.__name__ in errors.__all__


def test_unknown_model_is_a_config_error_and_a_key_error_with_a_plain_message():
    with pytest.raises(KeyError) as e:
        models.create("nope", num_classes=2)
    assert isinstance(e.value, errors.ConfigError)
    assert str(e.value).startswith("unknown model 'nope'; known models: ")  # not quoted


def _fail_inside_clean_errors(monkeypatch, error: BaseException):
    """Runs a library function (monkeypatched to raise ``error``) inside clean_errors."""

    def broken(text):
        raise error

    monkeypatch.setattr(inference, "parse_scales", broken)
    with cli.clean_errors():
        inference.parse_scales("1.0")


@pytest.mark.parametrize(
    "error",
    [ValueError("a bug"), KeyError("a bug"), FileNotFoundError("a bug"), TypeError("a bug")],
    ids=lambda e: type(e).__name__,
)
def test_other_exceptions_propagate_with_their_traceback(monkeypatch, capsys, error):
    monkeypatch.delenv("SEGJAX_TRACEBACK", raising=False)
    with pytest.raises(type(error)) as raised:
        _fail_inside_clean_errors(monkeypatch, error)
    assert raised.value is error and raised.traceback  # not turned into SystemExit
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "error",
    [
        errors.ConfigError("config.optim.name='sgdd'; expected sgd or adamw"),
        errors.DataError("masks/a.png: class id 7\nexceeds 5"),
        errors.UnknownNameError("unknown model 'nope'"),
        errors.MissingFileError("no checkpoint directory at /x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_segjax_errors_are_one_line_and_exit_2(monkeypatch, capsys, error):
    monkeypatch.delenv("SEGJAX_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_:
        _fail_inside_clean_errors(monkeypatch, error)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    message = " ".join(part.strip() for part in str(error).splitlines())
    assert lines == [
        f"error: {type(error).__name__}: {message}  (set SEGJAX_TRACEBACK=1 for the traceback)"
    ]


def test_segjax_traceback_shows_the_traceback_of_a_user_error(monkeypatch):
    monkeypatch.setenv("SEGJAX_TRACEBACK", "1")
    error = errors.ConfigError("config.x=1")
    with pytest.raises(errors.ConfigError) as raised:
        _fail_inside_clean_errors(monkeypatch, error)
    assert raised.value is error


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        _fail_inside_clean_errors(monkeypatch, KeyboardInterrupt())
    assert exit_.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_bad_flag_values_raise_config_errors():
    with pytest.raises(errors.ConfigError, match="--scales 'a,b'"):
        inference.parse_scales("a,b")
    with pytest.raises(errors.ConfigError, match="unknown config.optim.name 'sgdd'"):
        from segjax import optim
        from segjax.config import base_config

        config = base_config()
        config.optim.name = "sgdd"
        optim.make_optimizer(config.optim, num_steps=10)


def test_cli_user_error_is_one_line_end_to_end(tmp_path):
    """An unknown model name in a real command: one line, status 2, no traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segjax.train",
            "--config",
            "configs/quickstart.py:runlocal",
            "--workdir",
            str(tmp_path / "w"),
            "--config.model.name=nope",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu", SEGJAX_TRACEBACK=""),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: UnknownNameError: unknown model 'nope'")
