"""segjax.predict: a folder of mixed images in, three PNGs per image out; bad files reported."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segjax import checkpoint, predict, tasks
from segjax.tasks import semantic_outputs
from tests.helpers import load_config, random_variables

ROOT = pathlib.Path(__file__).parent.parent


def _config():
    return load_config("quickstart.py")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A variables checkpoint of the quickstart's tiny U-Net (random weights)."""
    config = _config()
    model = tasks.create_model(config)
    variables = random_variables(model, (1, 32, 32, 3))
    path = str(tmp_path_factory.mktemp("weights") / "vars")
    checkpoint.save_variables(
        path, {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    )
    return config, path


def _write_inputs(folder):
    rng = np.random.default_rng(0)
    os.makedirs(folder / "sub")
    sizes = {}
    rgb = rng.integers(0, 255, (23, 31, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=90)
    sizes["photo"] = (23, 31)
    Image.fromarray(rng.integers(0, 255, (17, 12), dtype=np.uint8), "L").save(folder / "gray.png")
    sizes["gray"] = (17, 12)
    rgba = rng.integers(0, 255, (40, 25, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "sub" / "alpha.png")
    sizes[os.path.join("sub", "alpha")] = (40, 25)
    deep = rng.integers(0, 65535, (9, 14), dtype=np.uint16)
    Image.fromarray(deep).save(folder / "sub" / "gray16.png")
    sizes[os.path.join("sub", "gray16")] = (9, 14)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return sizes


def test_folder_of_mixed_images_writes_three_outputs_each(weights, tmp_path):
    config, path = weights
    sizes = _write_inputs(tmp_path / "images")
    restored = checkpoint.load_for_inference(config, checkpoint_dir=path)
    assert restored.step is None
    out = tmp_path / "out"
    written, failures = predict.predict_files(
        config,
        restored.variables,
        restored.model,
        [str(tmp_path / "images")],
        str(out),
        progress=False,
    )
    assert len(failures) == 1 and "broken.jpg" in failures[0]
    assert len(written) == 3 * len(sizes)
    palette = semantic_outputs.palette_for(config)
    for stem, (h, w) in sizes.items():
        base = out / "images" / stem
        labels = np.asarray(Image.open(f"{base}_labels.png"))
        colour = np.asarray(Image.open(f"{base}_colour.png"))
        overlay = Image.open(f"{base}_overlay.png")
        assert labels.shape == (h, w) and colour.shape == (h, w, 3)
        assert overlay.size == (w, h) and overlay.mode == "RGB"
        assert labels.max() < config.model.num_classes
        np.testing.assert_array_equal(colour, np.asarray(palette, np.uint8)[labels])


def test_cli_reports_corrupt_file_by_name_and_completes_others(weights, tmp_path):
    config, path = weights
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segjax.predict",
            "--config",
            "configs/quickstart.py:runlocal",
            "--checkpoint",
            path,
            str(tmp_path / "bad.png"),
            str(tmp_path / "ok.png"),
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 1, proc.stderr
    assert "bad.png" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [
        "ok_colour.png",
        "ok_labels.png",
        "ok_overlay.png",
    ]
