"""segjax.export: the serialized model reloads and matches the live model on any image size."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import checkpoint, export, models, tasks
from tests.helpers import load_config, random_variables

ROOT = pathlib.Path(__file__).parent.parent


def test_exported_model_reloads_and_matches_live_model_on_two_sizes(tmp_path):
    model = models.create("unet", num_classes=3, width=4, depth=2)
    variables = random_variables(model, (1, 16, 16, 3))
    exported = export.export_model(model, variables)
    export.save(exported, str(tmp_path), {"num_classes": 3})
    reloaded = export.load(str(tmp_path))
    live = jax.jit(lambda x: model.apply(variables, x)["out"])
    rng = np.random.default_rng(1)
    # Sizes that are not multiples of the U-Net's 4: the padding runs inside the export.
    for shape in ((1, 20, 28, 3), (2, 33, 17, 3)):
        images = rng.normal(size=shape).astype(np.float32)
        got = np.asarray(reloaded.call(images))
        assert got.shape == shape[:3] + (3,)
        np.testing.assert_allclose(got, np.asarray(live(images)), atol=1e-5, rtol=1e-5)


def test_uint8_input_and_probabilities(tmp_path):
    model = models.create("unet", num_classes=2, width=4, depth=2)
    variables = random_variables(model, (1, 16, 16, 3), seed=2)
    mean, std = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
    exported = export.export_model(model, variables, probabilities=True, mean=mean, std=std)
    images = np.random.default_rng(3).integers(0, 255, (1, 9, 13, 3), dtype=np.uint8)
    got = np.asarray(exported.call(images))
    x = (images.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    expected = jax.nn.softmax(model.apply(variables, x)["out"], axis=-1)
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-5)


def test_cli_writes_model_and_metadata(tmp_path):
    config = load_config("quickstart.py")
    model = tasks.create_model(config)
    variables = random_variables(model, (1, 32, 32, 3))
    checkpoint.save_variables(str(tmp_path / "vars"), variables)
    out = tmp_path / "exported"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segjax.export",
            "--config",
            "configs/quickstart.py:runlocal",
            "--checkpoint",
            str(tmp_path / "vars"),
            "--output",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.load(open(out / export.METADATA))
    assert meta["num_classes"] == config.model.num_classes and meta["model"] == "unet"
    images = np.random.default_rng(4).normal(size=(1, 21, 11, 3)).astype(np.float32)
    got = np.asarray(export.load(str(out)).call(images))
    expected = model.apply(jax.tree.map(jnp.asarray, variables), images)["out"]
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_load_names_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no exported model"):
        export.load(str(tmp_path / "nothing"))
