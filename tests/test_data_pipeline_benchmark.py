"""The input-pipeline benchmark runs end to end (tiny settings) through the folder dataset."""

import argparse

import numpy as np
import pytest
from PIL import Image

from benchmarks import input_pipeline as bench


def test_voc_like_example_is_consistent():
    image, mask = bench.voc_like_example(np.random.default_rng(0))
    assert image.shape == (bench.H, bench.W, 3) and image.dtype == np.uint8
    assert mask.shape == (bench.H, bench.W)
    labels = set(np.unique(mask).tolist())
    assert 0 in labels and 255 in labels and labels <= set(range(21)) | {255}


@pytest.mark.parametrize("extras", [False, True])
def test_benchmark_runs(extras, tmp_path):
    """Plain, and with photometric distortion (HSV, swapped in and back) + class-balanced crops."""
    args = argparse.Namespace(
        images=3,
        batches=1,
        warmup=1,
        batch_size=2,
        crop=64,
        threads=1,
        photometric=extras,
        colour_model="hsv" if extras else "yiq",
        cat_max_ratio=0.75 if extras else 1.0,
    )
    transform = bench.augment.train_transform
    result = bench.run(args)
    assert result["images"] == 2 and result["images_per_s"] > 0
    assert result["photometric"] == extras and result["cat_max_ratio"] == args.cat_max_ratio
    assert bench.augment.train_transform is transform


def test_write_dataset_layout(tmp_path):
    bench.write_dataset(str(tmp_path / "d"), 2)
    mask = Image.open(tmp_path / "d" / "masks" / "train" / "000001.png")
    assert mask.mode == "P"
    assert sorted(p.name for p in (tmp_path / "d" / "images" / "train").iterdir()) == [
        "000000.jpg",
        "000001.jpg",
    ]
