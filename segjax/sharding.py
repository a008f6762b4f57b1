"""Device mesh, parameter sharding rules and host → global arrays.

The mesh has two axes, ``data`` and ``fsdp``. Batches are split over both (every device sees a
different slice of the global batch); parameters (and the optimiser state that follows them)
are replicated or, for paths matching an ``fsdp`` rule, sharded over ``fsdp`` along their
largest dimension divisible by the axis size. The same code runs on 1 CPU and on a pod.
"""

import os
import re
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from segjax.errors import ConfigError

BATCH_AXES = ("data", "fsdp")


def maybe_initialize_distributed(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> bool:
    """Starts JAX's multi-process runtime when running under a multi-process launcher.

    Explicit arguments (or ``SEGJAX_COORDINATOR``, ``SEGJAX_NUM_PROCESSES``,
    ``SEGJAX_PROCESS_ID``) win; otherwise SLURM with several tasks and Cloud TPU pods are
    detected and JAX's auto-detection is used. Single-process runs are left alone.

    Returns:
      True if ``jax.distributed.initialize`` was called.
    """
    coordinator_address = coordinator_address or os.environ.get("SEGJAX_COORDINATOR", "")
    num_processes = num_processes or int(os.environ.get("SEGJAX_NUM_PROCESSES", "0"))
    if process_id < 0:
        process_id = int(os.environ.get("SEGJAX_PROCESS_ID", "-1"))
    if coordinator_address:
        if num_processes < 1 or process_id < 0:
            raise ConfigError(
                "multi-process run needs num_processes and process_id with coordinator_address "
                f"{coordinator_address!r} (got {num_processes}, {process_id})"
            )
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts:
        jax.distributed.initialize()
        return True
    return False


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence | None = None) -> Mesh:
    """A ``(data, fsdp)`` mesh from ``config.mesh`` (``-1`` = all remaining devices).

    Raises:
      ValueError: sizes that do not multiply to the number of devices.
    """
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    sizes = [int(config.data), int(config.fsdp)]
    if sizes.count(-1) > 1:
        raise ConfigError(f"at most one mesh axis may be -1, got data={sizes[0]} fsdp={sizes[1]}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n % known:
            raise ConfigError(f"{n} devices cannot be split into a mesh with fixed size {known}")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise ConfigError(f"mesh data={sizes[0]} × fsdp={sizes[1]} does not match {n} devices")
    grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, ("data", "fsdp"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def check_batches_fit(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Raises ValueError unless the training and evaluation batches of ``config`` split evenly
    over the devices of ``mesh`` (:func:`batch_sharding` splits every batch over all of them).
    """
    devices = mesh.devices.size
    for key, value in (
        ("train.batch_size", config.train.batch_size),
        ("eval.batch_size", config.eval.batch_size),
    ):
        if int(value) % devices:
            raise ConfigError(
                f"config.{key}={value} does not split over the mesh's {devices} devices; "
                f"expected a multiple of {devices} (or fewer devices: "
                "config.runtime.host_devices, config.mesh)"
            )


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding."""
    return NamedSharding(mesh, P())


def path_to_str(path) -> str:
    """'params/backbone/conv1/kernel' style name of a pytree key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _spec_for(shape: tuple[int, ...], mode: str, fsdp_size: int, min_size: int) -> P:
    if mode == "replicate" or fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    if mode != "fsdp":
        raise ConfigError(f"unknown sharding mode {mode!r}; expected 'replicate' or 'fsdp'")
    # Largest dimension divisible by the axis size (ties: the last such dimension).
    best = None
    for dim, size in enumerate(shape):
        if size % fsdp_size == 0 and (best is None or size >= shape[best]):
            best = dim
    if best is None:
        return P()
    spec = [None] * len(shape)
    spec[best] = "fsdp"
    return P(*spec)


def state_shardings(abstract_state, mesh: Mesh, rules: Sequence[Sequence[str]], min_size: int = 0):
    """Shardings for every leaf of a (abstract) train state by regex rules on parameter paths.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``) with a
        ``params`` attribute or key.
      mesh: the device mesh.
      rules: ``[(regex, "replicate" | "fsdp"), ...]`` matched with ``re.search`` against
        paths like ``params/backbone/layer1_0/conv1/kernel``; the first match wins, no match
        means replicate.
      min_size: leaves with fewer elements stay replicated.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``abstract_state``. An optimiser
      state leaf whose path ends with a parameter's path and has its shape (Adam moments,
      momentum traces) gets exactly that parameter's sharding; other leaves go through the
      rules with their own path.
    """
    compiled = [(re.compile(pattern), mode) for pattern, mode in rules]
    fsdp_size = mesh.shape["fsdp"]

    def by_rules(name, shape):
        mode = next((m for rx, m in compiled if rx.search(name)), "replicate")
        return NamedSharding(mesh, _spec_for(tuple(shape), mode, fsdp_size, min_size))

    params = abstract_state["params"] if isinstance(abstract_state, dict) else abstract_state.params
    param_specs = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        key = path_to_str(path)
        param_specs[key] = (tuple(leaf.shape), by_rules("params/" + key, leaf.shape))

    def one(path, leaf):
        parts = path_to_str(path).split("/")
        for i in range(len(parts)):
            match = param_specs.get("/".join(parts[i:]))
            if match is not None and match[0] == tuple(leaf.shape):
                return match[1]
        return by_rules("/".join(parts), leaf.shape)

    return jax.tree_util.tree_map_with_path(one, abstract_state)


def local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in batch order (NumPy)."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    rows, seen = [], set()
    for shard in shards:
        start = shard.index[0].start or 0
        if start not in seen:  # a row block replicated over the fsdp axis appears once
            seen.add(start)
            rows.append(np.asarray(shard.data))
    return np.concatenate(rows)


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's host batch into global arrays split over the batch axes."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }
