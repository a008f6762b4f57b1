"""The real ``segjax.train`` gives the same run on any topology (issue: scale-out).

Each run is ``launch/local_multiprocess.sh`` (N local processes × D fake CPU devices forming one
JAX job) around ``segjax.train`` on a tiny U-Net; the real input pipeline feeds it. The global
batch of every step is a pure function of (seed, step, dataset), so 1 × 8, 2 × 4 and 4 × 2 log
the same losses step for step and end with the same parameters (within float32 tolerance: the
reductions run in a different order), and a run checkpointed as 2 × 4 resumes as 1 × 8 on the
uninterrupted run's sequence. A tiny Mask R-CNN on ``instance_shapes`` trains the same run as
2 × 4 and 1 × 8.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from segjax import checkpoint

ROOT = pathlib.Path(__file__).parent.parent
LAUNCH = ROOT / "launch" / "local_multiprocess.sh"
NUM_STEPS = 6
TOPOLOGIES = [(1, 8), (2, 4), (4, 2)]


UNET_CONFIG = "configs/quickstart.py:runlocal"
INSTANCE_CONFIG = "configs/maskrcnn_quickstart.py:runlocal"
# The tiny U-Net of the semantic runs.
UNET_FLAGS = {"model.kwargs.width": 2, "model.kwargs.depth": 1, "data.crop_size": "(16,16)"}


def _flags(data_flags: dict, **overrides) -> list[str]:
    flags = {
        "train.batch_size": 8,
        "train.num_steps": NUM_STEPS,
        "train.log_every": 1,
        "train.checkpoint_every": 3,
        "train.keep_checkpoints": 5,
        "eval.batch_size": 8,
        **data_flags,
        **overrides,
    }
    return [f"--config.{k}={v}" for k, v in flags.items()]


def _train(workdir, processes, devices, data_flags, cache_dir, config=UNET_CONFIG, **overrides):
    """Runs ``segjax.train --config config`` as ``processes`` × ``devices``; returns its logged
    rows."""
    env = dict(
        os.environ,
        NUM_PROCESSES=str(processes),
        DEVICES_PER_PROCESS=str(devices),
        PYTHON=sys.executable,
        LOG_DIR=str(workdir) + "_logs",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    cmd = [
        "bash",
        str(LAUNCH),
        "--config",
        config,
        "--workdir",
        str(workdir),
        *_flags(data_flags, **overrides),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{processes}x{devices}: {done.stderr[-3000:]}"
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def _losses(rows) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "split" not in r}


def _final_params(workdir):
    return checkpoint.read_weights(str(workdir / f"checkpoints/{NUM_STEPS}/default"))["params"]


def _assert_same_run(actual_dir, actual_rows, expected_dir, expected_rows, what):
    expected = _losses(expected_rows)
    assert sorted(expected) == list(range(1, NUM_STEPS + 1))
    actual = _losses(actual_rows)
    assert sorted(actual) == sorted(expected), what
    for step in expected:
        np.testing.assert_allclose(actual[step], expected[step], rtol=2e-5, err_msg=what)
    a, e = _final_params(actual_dir), _final_params(expected_dir)
    flat_a = dict(_leaves(a))
    for path, value in _leaves(e):
        np.testing.assert_allclose(flat_a[path], value, rtol=1e-4, atol=1e-5, err_msg=path)


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}/{k}")
    else:
        yield prefix, np.asarray(tree)


@pytest.fixture(scope="module")
def folder_flags(blobs_root):
    """A folder dataset (instance-mask cells), prepared here so that no two processes
    prepare it at once."""
    import ml_collections

    from segjax import config as config_lib
    from segjax import data

    dataset = {
        "name": "folder",
        "root": blobs_root,
        "data_dir": os.path.join(blobs_root, "tfds_multiprocess"),
        "train_split": "train",
        "eval_split": "val",
        "mask_type": "instance",
    }
    cfg = config_lib.base_config().data
    cfg.update(dataset)
    data.get_source(ml_collections.ConfigDict(cfg))
    return {
        **{f"data.{k}": v for k, v in dataset.items()},
        "data.crop_size": "(8,8)",
        "data.eval_pad_size": "(32,32)",
        "model.num_classes": 2,
    }


@pytest.mark.parametrize("dataset", ["shapes", "folder"])
def test_every_topology_trains_the_same_run(dataset, shapes_data_dir, folder_flags, tmp_path):
    shapes_flags = {"data.data_dir": shapes_data_dir, "data.config_name": "tiny"}
    data_flags = {**UNET_FLAGS, **(shapes_flags if dataset == "shapes" else folder_flags)}
    cache = tmp_path / "jax_cache"
    runs = {}
    for processes, devices in TOPOLOGIES:
        workdir = tmp_path / f"{processes}x{devices}"
        runs[processes, devices] = (workdir, _train(workdir, processes, devices, data_flags, cache))
    reference = runs[1, 8]
    for topology in TOPOLOGIES[1:]:
        _assert_same_run(*runs[topology], *reference, f"{topology} vs 1x8")
    if dataset == "shapes":
        _check_resume_across_topologies(runs[2, 4][0], reference, data_flags, cache)


def _check_resume_across_topologies(two_by_four, reference, data_flags, cache):
    """The 2 x 4 run loses everything after its step-3 checkpoint (a job preempted at step 3)
    and is restarted as 1 x 8: it ends as the uninterrupted 1 x 8 run."""
    workdir = two_by_four.parent / "resumed"
    shutil.copytree(two_by_four, workdir)
    shutil.rmtree(workdir / f"checkpoints/{NUM_STEPS}")
    kept = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    with open(workdir / "metrics.jsonl", "w") as f:
        for row in kept:
            if row.get("step", 0) <= 3 and "split" not in row:
                f.write(json.dumps(row) + "\n")
    rows = _train(workdir, 1, 8, data_flags, cache)
    assert 3 in _losses(rows) and 4 in _losses(rows)
    _assert_same_run(workdir, rows, *reference, "2x4 checkpointed at step 3, resumed as 1x8")


def test_instance_run_is_the_same_on_two_processes(instance_shapes_data_dir, tmp_path):
    """Mask R-CNN through the same launcher: 2 × 4 trains the 1 × 8 run (the anchor and RoI
    sampling draw from the step's key per image, whichever process holds the image)."""
    flags = {"data.data_dir": instance_shapes_data_dir, "runtime.conv_impl": "xla"}
    cache = tmp_path / "jax_cache"
    runs = {}
    for processes, devices in ((1, 8), (2, 4)):
        workdir = tmp_path / f"{processes}x{devices}"
        rows = _train(workdir, processes, devices, flags, cache, config=INSTANCE_CONFIG)
        runs[processes, devices] = (workdir, rows)
    _assert_same_run(*runs[2, 4], *runs[1, 8], "instance 2x4 vs 1x8")
    evals = [[r for r in rows if r.get("split")][-1] for _, rows in runs.values()]
    for key in ("segm/AP", "bbox/AP"):
        assert evals[0][key] == pytest.approx(evals[1][key], abs=1e-6), key
