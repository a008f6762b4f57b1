"""A CPU host split into one XLA device per core (``config.runtime.host_devices``).

XLA:CPU runs the small convolutions of a segmentation network on about one core; split into
one device per core, the data-parallel step keeps every core busy (about 1.5–2× on 2 cores).
The split is an ``XLA_FLAGS`` option, so :func:`configure_host_devices` must run before JAX
creates its backends (``segjax.cli.configure_host_devices`` does it for the commands).
"""

import os

import ml_collections

from segjax.errors import ConfigError

_HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"
_ACCELERATOR_NODES = ("/dev/nvidia0", "/dev/accel0", "/dev/vfio/0")


def auto_host_devices(config: ml_collections.ConfigDict, cores: int, num_processes: int = 1) -> int:
    """How many XLA CPU devices to split one host into for ``config`` (the root ConfigDict).

    ``config.runtime.host_devices``: auto (``0``) takes the largest count up to ``cores`` that
    divides the training micro-batch and the evaluation batch over all processes; ``1`` keeps
    one device; any other count is taken as it is.
    """
    want = int(config.runtime.host_devices)
    if want < 0:
        raise ConfigError(f"config.runtime.host_devices must be >= 0 (0 = auto), got {want}")
    if want:
        return want
    if config.mesh.data != -1 and config.mesh.fsdp != -1:
        return 1  # an explicit mesh shape names its own device count
    micro = config.train.batch_size // max(1, config.train.grad_accum_steps)
    for n in range(max(1, cores), 0, -1):
        if micro % (n * num_processes) == 0 and config.eval.batch_size % (n * num_processes) == 0:
            return n
    return 1


def configure_host_devices(config: ml_collections.ConfigDict, num_processes: int = 1) -> int:
    """Sets ``XLA_FLAGS`` so the CPU backend has :func:`auto_host_devices` devices.

    Call it before JAX creates its backends (the first ``jax.devices()``). Leaves an explicit
    ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS`` alone, and does nothing on
    hosts with a GPU or TPU (whose CPU devices hold no computation).

    Returns:
      The number of host devices requested (1 = left alone).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _HOST_DEVICES_FLAG in flags or any(os.path.exists(p) for p in _ACCELERATOR_NODES):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = auto_host_devices(config, cores or 1, num_processes)
    if n > 1:
        os.environ["XLA_FLAGS"] = f"{flags} {_HOST_DEVICES_FLAG}={n}".strip()
    return n
