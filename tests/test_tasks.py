"""segjax.tasks: the Task interface, the task named by each model's table row, and a new task
going through the trainer's loop and the tools without a change to them."""

import os
import pathlib
import subprocess
import sys

import pytest

from segjax import errors, models, tasks, trainer
from segjax.models.maskrcnn import losses as maskrcnn_losses
from segjax.tasks import instance

ROOT = pathlib.Path(__file__).parent.parent


def test_every_model_names_a_registered_task():
    for name in models.names():
        task = tasks.get(models.task_name(name))
        assert isinstance(task, tasks.Task) and task.name == models.task_name(name)
    assert models.task_name("unet_tiny") == "semantic"
    assert models.task_name("deeplabv3_resnet50") == "semantic"
    assert models.task_name("maskrcnn_tiny") == "instance"
    assert sorted(tasks.names()) == ["instance", "semantic"]


def test_task_of_a_config_is_known_without_building_the_model(tiny_config, monkeypatch):
    monkeypatch.setattr(models, "create", lambda *a, **k: pytest.fail("model built"))
    assert tasks.for_config(tiny_config) is tasks.get("semantic")
    tiny_config.model.name = "maskrcnn_tiny"
    assert tasks.for_config(tiny_config) is tasks.get("instance")


def test_unknown_task_and_model_names_are_clear_errors(tiny_config):
    with pytest.raises(errors.ConfigError, match="unknown task 'panoptic'; known tasks: inst"):
        tasks.get("panoptic")
    tiny_config.model.name = "unet_tinyy"
    with pytest.raises(KeyError, match="unknown model 'unet_tinyy'"):
        tasks.for_config(tiny_config)


def test_instance_loss_fields_are_what_the_detection_loss_reads():
    expected = tuple(k for k in maskrcnn_losses.BATCH_FIELDS if k != "image")
    assert tasks.get("instance").loss_fields == instance.LOSS_FIELDS == expected


def test_loss_inputs_keep_the_image_and_the_loss_fields_only():
    batch = {"image": 1, "mask": 2, "weights": 3, "id": 4, "num_dropped": 5}
    assert tasks.get("semantic").loss_inputs(batch) == {"image": 1, "mask": 2, "weights": 3}


def test_inference_tools_do_not_import_the_training_stack():
    code = (
        "import segjax.evaluate, segjax.predict, segjax.export, sys; "
        "print(sorted(m for m in ('segjax.trainer', 'segjax.optim', 'optax') "
        "if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


class _CountingTask(tasks.SemanticTask):
    """A new task: semantic segmentation that also counts the images it trains on and logs
    its own headline — registered by the test alone."""

    name = "counting"

    def batch_counts(self, host_batch):
        """The images of the batch."""
        return {"images": len(host_batch["image"])}

    def count_lines(self, counts, config):
        """One line with the images since the last log line."""
        return [f"counting task: {counts['images']} images"]

    def log_line(self, summary):
        """The semantic headline, marked."""
        return "counting " + super().log_line(summary)


def test_a_new_task_runs_through_the_trainer_unchanged(tiny_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tasks._TASKS, "counting", _CountingTask())
    monkeypatch.setitem(
        models._TABLE, "unet_counting", models.Entry(models._TABLE["unet_tiny"].build, "counting")
    )
    tiny_config.model.name = "unet_counting"
    tiny_config.train.num_steps = 2
    tiny_config.train.log_every = 1
    summary = trainer.run(tiny_config, str(tmp_path))
    out = capsys.readouterr().out
    batch = tiny_config.train.batch_size
    assert out.count(f"counting task: {batch} images") == 2
    assert "eval validation at step 2: counting mIoU" in out
    assert summary["step"] == 2 and "miou" in summary
