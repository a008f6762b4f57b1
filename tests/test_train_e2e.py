"""The training command end to end: a short run, resume, and clear one-line errors."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from segjax import trainer

ROOT = pathlib.Path(__file__).parent.parent


def test_run_resume_and_finish(tiny_config, tmp_path):
    workdir = str(tmp_path / "run")
    tiny_config.train.num_steps = 4
    tiny_config.train.checkpoint_every = 2
    first = trainer.run(tiny_config, workdir)
    assert first["step"] == 4 and 0.0 <= first["miou"] <= 1.0
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    evals = [r for r in rows if r.get("split") == "validation"]
    assert evals[-1]["step"] == 4 and set(evals[-1]) >= {"miou", "pixel_accuracy", "iou", "mdice"}
    assert any("loss" in r for r in rows)
    assert os.path.exists(os.path.join(workdir, "config.json"))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "4"
    # Raising num_steps resumes from step 4 instead of starting over.
    tiny_config.train.num_steps = 6
    second = trainer.run(tiny_config, workdir)
    assert second["step"] == 6
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == [2, 4, 6]  # no step was trained twice
    # A finished run says so and changes nothing.
    third = trainer.run(tiny_config, workdir)
    assert third["miou"] == pytest.approx(second["miou"])


def _cli(*args, env_extra=None, cwd=ROOT):
    env = dict(os.environ, **(env_extra or {}))
    # Not the 8 fake devices of this pytest process: let the CLI split the host as users get it.
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", ""
    )
    return subprocess.run(
        [sys.executable, "-m", "segjax.train", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def test_cli_trains_one_step_quietly_then_refuses_a_different_model(tmp_path):
    data_dir = tmp_path / "tfds"  # fresh: the first run prepares the dataset itself
    common = [f"--config.data.data_dir={data_dir}", "--config.data.config_name=tiny"]
    workdir = tmp_path / "w"
    args = ["--config", "configs/quickstart.py:runlocal", "--workdir", str(workdir), *common]
    proc = _cli(*args, "--config.train.num_steps=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mIoU" in proc.stdout
    assert (workdir / "checkpoints" / "1").is_dir()
    # TFDS's own progress bars ("Generating splits…", "Shuffling…", cursor-up escapes) are off.
    for noise in ("Shuffling", "Generating splits", "\x1b[A", "it/s]"):
        assert noise not in proc.stderr + proc.stdout, noise
    # The same workdir with a wider model: one line naming the workdir, the first mismatched
    # parameter with both shapes and how to start over; no traceback (Orbax's threads closed).
    proc = _cli(*args, "--config.train.num_steps=2", "--config.model.kwargs.width=8")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Event loop" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: CheckpointMismatchError"), errors
    assert str(workdir) in errors[0] and "new --workdir" in errors[0]
    assert re.search(
        r"params/\S+ has shape \(.+\) in the checkpoint but \(.+\) in the model", errors[0]
    )
    # The run's record of its own config is not overwritten by the refused one.
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["kwargs"]["width"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "configs/nope.py", "--workdir", "{tmp}"], "nope.py"),
        (
            [
                "--config",
                "configs/quickstart.py",
                "--workdir",
                "{tmp}",
                "--config.train.num_stepz=5",
            ],
            "--config.train.num_stepz: no config key 'num_stepz'; did you mean 'num_steps'?",
        ),
        (["--config", "configs/quickstart.py", "--workdir", "/proc/forbidden/w"], "not writable"),
    ],
    ids=["missing-config", "misspelt-override", "unwritable-workdir"],
)
def test_cli_errors_are_one_line(args, message, tmp_path):
    proc = _cli(*[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
