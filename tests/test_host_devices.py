"""Splitting a CPU host into per-core devices (config.runtime.host_devices)."""

import os
import subprocess
import sys

import pytest

from segjax.config import base_config
from segjax.runtime import host_devices


def _config(batch=16, eval_batch=16, accum=1, devices=0):
    c = base_config()
    c.train.batch_size = batch
    c.eval.batch_size = eval_batch
    c.train.grad_accum_steps = accum
    c.runtime.host_devices = devices
    return c


@pytest.mark.parametrize(
    "batch, eval_batch, accum, cores, processes, expected",
    [
        (16, 16, 1, 2, 1, 2),
        (16, 40, 1, 8, 1, 8),
        (16, 40, 1, 6, 1, 4),  # 6 and 5 do not divide 16
        (16, 16, 4, 8, 1, 4),  # micro-batch 4
        (15, 15, 1, 2, 1, 1),
        (16, 16, 1, 4, 2, 4),  # 2 processes × 4 devices divide 16
        (16, 16, 1, 8, 4, 4),
    ],
)
def test_auto_host_devices(batch, eval_batch, accum, cores, processes, expected):
    c = _config(batch, eval_batch, accum)
    assert host_devices.auto_host_devices(c, cores, processes) == expected


def test_explicit_host_devices_and_mesh():
    assert host_devices.auto_host_devices(_config(devices=3), 2) == 3
    c = _config()
    c.mesh.data, c.mesh.fsdp = 2, 2
    assert host_devices.auto_host_devices(c, 8) == 1
    with pytest.raises(ValueError, match="config.runtime.host_devices"):
        host_devices.auto_host_devices(_config(devices=-2), 2)


def test_configure_respects_explicit_flag(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert host_devices.configure_host_devices(_config()) == 1
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"


def test_configure_sets_devices_before_backend_start(monkeypatch):
    # A fresh interpreter: configure first, then JAX sees the requested count.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = (
        "import os; from unittest import mock\n"
        "from segjax.runtime import host_devices; from segjax.config import base_config\n"
        "c = base_config(); c.train.batch_size = 12; c.eval.batch_size = 6\n"
        "with mock.patch.object(os, 'sched_getaffinity', lambda _: set(range(4))):\n"
        "    n = host_devices.configure_host_devices(c)\n"
        "import jax; print(n, len(jax.devices()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[-2:] == ["3", "3"]
