"""segjax.evaluate: reproduces the training run's mIoU, counts every image once, writes outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segjax import checkpoint, evaluate, sharding, tasks, trainer
from segjax import data as data_lib
from segjax.evaluation import inference
from segjax.input import pipeline
from tests.helpers import load_config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shapes_data_dir):
    """A 4-step quickstart-style run (its final evaluation is logged in metrics.jsonl)."""
    config = load_config("quickstart.py")
    config.data.data_dir = shapes_data_dir
    config.data.config_name = "tiny"
    config.data.crop_size = (32, 32)
    config.data.eval_pad_size = (64, 64)
    config.eval.batch_size = 16
    workdir = str(tmp_path_factory.mktemp("run"))
    trainer.run(config, workdir)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    logged = [r for r in rows if r.get("split") == "validation"][-1]
    return config, workdir, logged


def test_evaluate_reproduces_logged_miou_and_writes_outputs(trained_run):
    config, workdir, logged = trained_run
    result = evaluate.run(config, workdir=workdir)
    assert result["step"] == logged["step"] == 4
    assert result["miou"] == pytest.approx(logged["miou"], abs=1e-9)
    assert result["pixel_accuracy"] == pytest.approx(logged["pixel_accuracy"], abs=1e-9)
    assert result["num_images"] == 40
    saved = json.load(open(os.path.join(workdir, "eval_validation.json")))
    assert saved["miou"] == pytest.approx(logged["miou"], abs=1e-9)
    assert np.asarray(saved["confusion_matrix"]).shape == (4, 4)
    png = Image.open(os.path.join(workdir, "eval_validation_confusion.png"))
    assert png.size[0] > 4 * 12 and png.mode == "RGB"


def test_every_image_counted_once_for_any_batch_size(trained_run):
    config, workdir, _ = trained_run
    restored = checkpoint.load_for_inference(config, workdir=workdir)
    source = data_lib.get_source(config.data)
    labelled = 0
    for ex in source.as_dataset("validation").as_numpy_iterator():
        labelled += int((ex["mask"] != 255).sum())
    cms = []
    for batch_size in (24, 16):  # 40 images: neither divides the split
        config.eval.batch_size = batch_size
        result = evaluate.evaluate(
            config,
            restored.variables,
            restored.mesh,
            inference.InferenceOptions(),
            "validation",
            model=restored.model,
            source=source,
        )
        cm = result.confusion_matrix
        assert result.num_images == 40
        assert result.object_counts is None  # shapes has no instance ids
        assert int(cm.sum()) == labelled
        cms.append(cm)
    np.testing.assert_array_equal(cms[0], cms[1])
    # Sliding windows whose crop covers the (padded) image give the same matrix.
    options = inference.InferenceOptions(mode="slide", crop=(64, 64), stride=(32, 32))
    cm = evaluate.evaluate(
        config,
        restored.variables,
        restored.mesh,
        options,
        "validation",
        model=restored.model,
        source=source,
    ).confusion_matrix
    np.testing.assert_array_equal(cm, cms[1])


def test_cli_errors_are_one_line(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segjax.evaluate",
            "--config",
            "configs/quickstart.py",
            "--workdir",
            str(tmp_path / "missing"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode != 0
    assert "no checkpoint directory" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_and_training_compile_one_eval_step_with_identical_results(
    trained_run, monkeypatch
):
    """segjax.evaluate and the in-training evaluation trace the same program (the configured
    convolution path included) and count the same confusion matrix."""
    config, workdir, _ = trained_run
    assert config.runtime.conv_impl == "auto"  # the GEMM convolutions on this CPU
    compiled = []
    original = tasks.SemanticTask.compile_eval_step

    def recording(self, *args, **kwargs):
        compiled.append(original(self, *args, **kwargs))
        return compiled[-1]

    monkeypatch.setattr(tasks.SemanticTask, "compile_eval_step", recording)
    result = evaluate.run(config, workdir=workdir, output_dir=None)
    (cli_step,) = compiled

    t = trainer.Trainer(config)  # training's own compiled step, fed a restored train state
    manager = checkpoint.make_manager(workdir, keep=3)
    state = checkpoint.restore_state(manager, t.abstract_with_shardings())
    manager.close()
    stream = pipeline.eval_stream(
        data_lib.get_source(config.data), config, "validation", process_index=0, process_count=1
    )
    in_training = t.evaluate(state, stream)
    np.testing.assert_array_equal(in_training.confusion_matrix, result["confusion_matrix"])
    assert in_training.num_images == result["num_images"] == 40

    batch = sharding.host_to_global(dict(next(iter(stream))), t.mesh)
    variables = trainer.variables_of(state)
    training_hlo = t.eval_step.lower(variables, batch).as_text()
    assert cli_step.lower(variables, batch).as_text() == training_hlo
    # …and that program is the GEMM one: XLA's plain path has more convolutions in it.
    plain = config.copy_and_resolve_references()
    plain.runtime.conv_impl = "xla"
    plain_hlo = t.task.compile_eval_step(t.model, plain, t.mesh).lower(variables, batch)
    assert training_hlo.count("convolution") < plain_hlo.as_text().count("convolution")
