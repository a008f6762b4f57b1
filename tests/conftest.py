"""Test setup: 8 fake CPU devices so multi-device code is testable on one machine."""

import atexit
import os
import shutil
import tempfile

# Must happen before JAX initialises its backend.
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# segjax commands cache compiled executables in ~/.cache/segjax/jax by default
# (segjax.runtime.compile_cache); the test session uses one temporary cache instead. pytest-xdist's
# controller imports this file before it starts the workers, which inherit the variable: the
# workers and every subprocess they start (segjax.train, evaluate, ...) share the one directory.
if "SEGJAX_COMPILE_CACHE" not in os.environ:
    os.environ["SEGJAX_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="segjax-test-compile-cache-")
    atexit.register(shutil.rmtree, os.environ["SEGJAX_COMPILE_CACHE"], True)

import jax  # noqa: E402
import pytest  # noqa: E402

# The test processes use that cache too: many tests compile the same programs (a trainer.run of
# the tiny quickstart config, its eval step, ...), in both workers and under new jit wrappers,
# which JAX's in-memory cache does not share. A hit is the executable XLA compiled for the same
# program, options and devices: results are bitwise those of a fresh compile.
_cache = os.environ["SEGJAX_COMPILE_CACHE"].strip()
if _cache.lower() not in ("off", "0", "false", "no", "none", "on", "1", "true", "yes"):  # a dir
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
    """A TFDS data_dir with the built-in ``shapes`` dataset prepared once per test session."""
    from segjax.data import shapes

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    shapes.load(data_dir, "tiny")
    return data_dir


@pytest.fixture
def tiny_config(shapes_data_dir):
    """The quickstart's runlocal config on the session's shapes data, unlocked for edits."""
    from tests.helpers import load_config

    config = load_config("quickstart.py")
    config.data.data_dir = shapes_data_dir
    config.data.config_name = "tiny"
    config.data.crop_size = (32, 32)
    config.data.eval_pad_size = (64, 64)
    config.eval.batch_size = 16
    return config


@pytest.fixture(scope="session")
def blobs_root(tmp_path_factory):
    """A folder dataset of touching "cells" with 16-bit instance-id masks (8 train, 4 val
    images of 32×32; :mod:`segjax.data.blobs`), written once per test session."""
    from segjax.data import blobs

    root = str(tmp_path_factory.mktemp("blobs"))
    blobs.write_touching_blobs(
        root, num_images=12, size=32, seed=0, val_fraction=1 / 3, radius_range=(4, 6)
    )
    return root


@pytest.fixture
def cells_config(blobs_root):
    """The quickstart's runlocal config on :func:`blobs_root` as instance data, with the U-Net
    border weight map, elastic deformation and a CE + Dice loss on; unlocked for edits."""
    from tests.helpers import load_config

    config = load_config("quickstart.py")
    config.model.num_classes = 2
    config.model.kwargs.depth = 2
    config.data.name = "folder"
    config.data.root = blobs_root
    config.data.data_dir = os.path.join(blobs_root, "tfds")  # prepared once per session
    config.data.train_split, config.data.eval_split = "train", "val"
    config.data.mask_type = "instance"
    config.data.weight_map.enabled = True
    config.data.weight_map.sigma = 2.0
    config.data.elastic.enabled = True
    config.data.elastic.sigma = 3.0
    config.data.crop_size = (24, 24)
    config.data.eval_pad_size = (32, 32)
    config.train.loss.dice = 1.0
    config.eval.batch_size = 8  # the 8 test devices
    return config


@pytest.fixture(scope="session")
def instance_shapes_data_dir(tmp_path_factory):
    """A TFDS data_dir with the built-in ``instance_shapes`` (tiny) prepared once per session."""
    from segjax.data import instance_shapes

    data_dir = str(tmp_path_factory.mktemp("tfds_instances"))
    cfg = _base_data_config()
    cfg.data_dir, cfg.config_name = data_dir, "tiny"
    instance_shapes.load(cfg)
    return data_dir


def _base_data_config():
    from segjax import config as config_lib

    return config_lib.base_config().data


@pytest.fixture
def instance_config(instance_shapes_data_dir):
    """The instance quickstart's runlocal config (maskrcnn_tiny on tiny instance_shapes at
    64×64) on the session's data, unlocked for edits."""
    from tests.helpers import load_config

    config = load_config("maskrcnn_quickstart.py")
    config.data.data_dir = instance_shapes_data_dir
    config.runtime.conv_impl = "xla"  # compile time; the matmul forms: test_ops_conv
    return config


# The modules whose tests take longest (subprocess runs, trained fixtures), longest first; they
# run first so that neither xdist worker is left with one of them at the end of the session.
# Measured with ``--durations``; a module missing here only runs later, in collection order.
_LONG_FIRST = (
    "test_multiprocess.py",
    "test_resilience.py",
    "test_train_e2e.py",
    "test_train_instances.py",
    "test_finetune_maskrcnn.py",
    "test_checkpoint.py",
    "test_unet_recipe.py",
    "test_compile_cache.py",
    "test_maskrcnn_parity.py",
    "test_predict_instances.py",
    "test_evaluate.py",
)


def pytest_collection_modifyitems(config, items):
    """Runs the modules of :data:`_LONG_FIRST` first, each still in one piece and in its own
    order (a stable sort by module), so that module-scoped fixtures are set up once."""
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``-n 2`` alone distributes by work stealing: each worker starts on one contiguous half of
    the (long-first) items and an idle worker takes half of what the other has left, so a
    module mostly runs in one worker (its module-scoped fixtures set up once, not once per
    worker) and the session ends when both run out. An explicit other ``--dist`` is kept."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)
