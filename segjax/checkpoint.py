"""Orbax checkpoints: the train-state manager (async, atomic, auto-resume) and plain variable
checkpoints (pretrained weights) that any model can be initialised from.

Orbax writes each step into a temporary directory and renames it only once complete, so an
interrupted save never becomes the latest checkpoint; stale temporary directories are removed
when the manager opens.
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from segjax.sharding import path_to_str


def make_manager(workdir: str, keep: int, *, async_save: bool = True) -> ocp.CheckpointManager:
    """The train-state CheckpointManager under ``WORKDIR/checkpoints``."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"), options=options
    )


def save_state(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Starts saving ``state`` at ``step`` (asynchronously; call ``wait_until_finished``)."""
    manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_state(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None):
    """Restores the latest (or ``step``) state onto the shardings in ``abstract_state``.

    ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set, so a
    checkpoint saved on any number of devices restores onto the current mesh.
    """
    step = manager.latest_step() if step is None else step
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def save_variables(directory: str, variables: dict) -> None:
    """Writes model variables (``{"params": …, "batch_stats": …}``) as a standalone checkpoint."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(directory), jax.tree.map(np.asarray, variables), force=True)


def load_variables(directory: str) -> dict:
    """Reads a checkpoint written by :func:`save_variables` (or a train-state checkpoint step
    directory) as a nested dict of NumPy arrays.

    Raises:
      FileNotFoundError: no checkpoint at ``directory``.
    """
    path = os.path.abspath(directory)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    # An explicit single-device target: without one Orbax restores onto the shardings it
    # saved, which fails when the checkpoint came from a different number of devices.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        metadata = ckptr.metadata(path)
        tree = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            tree,
            is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
        )
        restored = ckptr.restore(path, abstract)
    return jax.tree.map(np.asarray, restored)


def merge_pretrained(variables: dict, pretrained: dict) -> tuple[dict, dict]:
    """Copies every pretrained leaf whose path and shape match into ``variables``.

    Args:
      variables: freshly initialised ``{"params": …, "batch_stats": …}``.
      pretrained: variables read by :func:`load_variables` (may cover only a backbone).

    Returns:
      ``(merged, report)`` where report has lists ``loaded``, ``kept_initial`` (in the model,
      not in the checkpoint), ``unused`` (in the checkpoint, not in the model) and
      ``shape_mismatch`` (``"path: checkpoint shape vs model shape"``).
    """
    flat_pre = {path_to_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(pretrained)[0]}
    report = {"loaded": [], "kept_initial": [], "unused": [], "shape_mismatch": []}
    used = set()

    def pick(path, leaf):
        name = path_to_str(path)
        if name not in flat_pre:
            report["kept_initial"].append(name)
            return leaf
        used.add(name)
        value = flat_pre[name]
        if tuple(value.shape) != tuple(leaf.shape):
            report["shape_mismatch"].append(f"{name}: {tuple(value.shape)} vs {tuple(leaf.shape)}")
            return leaf
        report["loaded"].append(name)
        return np.asarray(value, dtype=leaf.dtype)

    merged = jax.tree_util.tree_map_with_path(pick, variables)
    report["unused"] = sorted(set(flat_pre) - used)
    return merged, report
