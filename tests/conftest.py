"""Test setup: 8 fake CPU devices so multi-device code is testable on one machine."""

import os

# Must happen before JAX initialises its backend.
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


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
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "configs" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("runlocal")
    config.data.data_dir = shapes_data_dir
    config.data.config_name = "tiny"
    config.data.crop_size = (32, 32)
    config.data.eval_pad_size = (64, 64)
    config.eval.batch_size = 16
    return config
