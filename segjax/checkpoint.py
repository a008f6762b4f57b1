"""Orbax checkpoints: the train-state manager (async, atomic, auto-resume), plain variable
checkpoints (pretrained weights) that any model can be initialised from, and restoring a model's
variables for inference from either kind.

Three readers, three jobs: :func:`restore_state` (the whole train state, to resume training),
:func:`restore_variables` (``params``/``batch_stats`` only, for inference, onto the model's
abstract variables; no optimiser is built) and :func:`read_weights` (any checkpoint as host
NumPy arrays, e.g. pretrained weights to merge with :func:`merge_pretrained`).

Orbax writes each step into a temporary directory and renames it only once complete, so an
interrupted save never becomes the latest checkpoint; stale temporary directories are removed
when the manager opens.
"""

import dataclasses
import functools
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from segjax import sharding, tasks
from segjax.errors import CheckpointMismatchError, ConfigError, MissingFileError
from segjax.sharding import path_to_str

# What a model's shapes determine; the optimiser state mirrors the params.
MODEL_COLLECTIONS = ("params", "batch_stats")


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

    Raises:
      CheckpointMismatchError: the checkpoint's params/batch_stats do not fit ``abstract_state``
        (checked before Orbax reads anything; the message names the first difference).
    """
    step = manager.latest_step() if step is None else step
    runs = os.path.dirname(str(manager.directory))
    check_fits(
        _item_dir(manager.directory, step),
        abstract_state,
        hint=(
            f"the run in {runs} was trained with the config in {runs}/config.json; to start "
            f"over with this config use a new --workdir or delete {manager.directory}"
        ),
    )
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def _item_dir(checkpoints_dir, step: int) -> str:
    """Where the manager keeps the state of ``step`` (its single, default item)."""
    return os.path.join(str(checkpoints_dir), str(step), "default")


def _is_array_metadata(m) -> bool:
    return hasattr(m, "shape") and hasattr(m, "dtype")


def stored_tree(path: str) -> Any:
    """The tree of array metadata (shape, dtype) stored in the checkpoint at ``path``."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # Orbax warns that a step-level metadata file is absent
    try:
        with ocp.StandardCheckpointer() as ckptr:
            metadata = ckptr.metadata(path)
    finally:
        logging.set_verbosity(verbosity)
    return metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata


def _model_leaves(tree) -> dict[str, tuple[int, ...]]:
    """``{"params/…/kernel": shape}`` of the model collections of a state or variables tree,
    params first."""
    if hasattr(tree, "params") and not isinstance(tree, dict):  # a TrainState
        tree = {k: getattr(tree, k) for k in MODEL_COLLECTIONS}
    leaves = {}
    for name in MODEL_COLLECTIONS:
        sub = tree.get(name) if hasattr(tree, "get") else None
        flat = jax.tree_util.tree_flatten_with_path(sub or {}, is_leaf=_is_array_metadata)[0]
        for path, leaf in sorted(flat, key=lambda item: path_to_str(item[0])):
            leaves[f"{name}/{path_to_str(path)}"] = tuple(leaf.shape)
    return leaves


def mismatches(stored: Any, target: Any, *, allow_unused: bool = False) -> Iterator[str]:
    """Describes each model array whose shape or presence differs between a stored checkpoint
    tree and the target (abstract state or variables): params first, then in path order."""
    have, want = _model_leaves(stored), _model_leaves(target)
    for name in list(want) + [n for n in have if n not in want]:
        if name not in have:
            yield f"{name} is in the model but not in the checkpoint"
        elif name not in want:
            if not allow_unused:
                yield f"{name} is in the checkpoint but not in the model"
        elif have[name] != want[name]:
            yield f"{name} has shape {have[name]} in the checkpoint but {want[name]} in the model"


def check_fits(path: str, target: Any, *, allow_unused: bool = False, hint: str = "") -> None:
    """Raises :class:`CheckpointMismatchError` when the checkpoint at ``path`` does not fit
    ``target``: one line naming the checkpoint, the first mismatched parameter with both
    shapes, and ``hint`` (what to do)."""
    found = list(mismatches(stored_tree(path), target, allow_unused=allow_unused))
    if not found:
        return
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    hint = hint or "check that the config builds the model this checkpoint was saved from"
    raise CheckpointMismatchError(
        f"checkpoint {os.path.abspath(path)} does not fit the configured model: {found[0]}{more}; "
        f"{hint}"
    )


def _step_dirs(path: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def restore_variables(
    abstract_variables: dict, checkpoint_dir: str, step: int | None = None
) -> tuple[dict, int | None]:
    """Model variables for inference, restored onto ``abstract_variables``' shardings.

    Only ``params`` and ``batch_stats`` are read (an Orbax partial restore), so no optimiser or
    train step is built and the optimiser state is never loaded.

    Args:
      abstract_variables: ``{"params": …, "batch_stats": …}`` of ``jax.ShapeDtypeStruct`` with
        shardings (:func:`abstract_variables`).
      checkpoint_dir: a train-state checkpoints directory (``WORKDIR/checkpoints``, one
        sub-directory per step) or a variables checkpoint (:func:`save_variables`, e.g.
        imported torchvision weights; arrays the model does not use are ignored).
      step: the train-state step (default: the latest).

    Returns:
      ``(variables, step)``; ``step`` is None for a variables checkpoint.

    Raises:
      FileNotFoundError: no checkpoint (or no such step) at ``checkpoint_dir``.
      CheckpointMismatchError: the checkpoint does not fit the model.
    """
    path = os.path.abspath(checkpoint_dir)
    if not os.path.isdir(path):
        raise MissingFileError(f"no checkpoint directory at {path}")
    steps = _step_dirs(path)
    if steps:
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise MissingFileError(f"no checkpoint of step {step} in {path}; steps: {steps}")
        item = _item_dir(path, step)
    elif step is not None:
        raise ConfigError(f"--step {step} given but {path} is a variables checkpoint (no steps)")
    elif not os.listdir(path):
        raise MissingFileError(f"checkpoint directory {path} is empty (no steps, no variables)")
    else:
        item = path
    check_fits(item, abstract_variables, allow_unused=not steps)
    target = {k: v for k, v in abstract_variables.items() if v}
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(
            item,
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            ),
        )
    return restored, (int(step) if steps else None)


def save_variables(directory: str, variables: dict) -> None:
    """Writes model variables (``{"params": …, "batch_stats": …}``) as a standalone checkpoint."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(directory), jax.tree.map(np.asarray, variables), force=True)


def read_weights(directory: str) -> dict:
    """Reads a checkpoint written by :func:`save_variables` (or a train-state checkpoint step
    directory) as a nested dict of NumPy arrays.

    Raises:
      FileNotFoundError: no checkpoint at ``directory``.
    """
    path = os.path.abspath(directory)
    if not os.path.isdir(path):
        raise MissingFileError(f"no checkpoint directory at {path}")
    # An explicit single-device target: without one Orbax restores onto the shardings it
    # saved, which fails when the checkpoint came from a different number of devices.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        stored_tree(path),
        is_leaf=_is_array_metadata,
    )
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, abstract)
    return jax.tree.map(np.asarray, restored)


def merge_pretrained(variables: dict, pretrained: dict) -> tuple[dict, dict]:
    """Copies every pretrained leaf whose path and shape match into ``variables``.

    Args:
      variables: freshly initialised ``{"params": …, "batch_stats": …}``.
      pretrained: variables read by :func:`read_weights` (may cover only a backbone).

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


def restore_target(abstract: Any, shardings: Any) -> Any:
    """``abstract`` (a tree of shapes and dtypes) with ``shardings`` attached: a restore target."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def abstract_variables(model, config, mesh) -> dict:
    """The model's variables as ``jax.ShapeDtypeStruct`` with training's shardings on ``mesh``
    (its task's ``init_variables``, traced): the restore target for inference (no optimiser is
    built)."""
    init = functools.partial(tasks.for_config(config).init_variables, model, config)
    abstract = jax.eval_shape(init, jax.random.key(config.seed))
    shardings = sharding.state_shardings(
        abstract, mesh, config.mesh.rules, config.mesh.min_shard_size
    )
    return restore_target(abstract, shardings)


@dataclasses.dataclass
class InferenceModel:
    """A model restored for inference: the module, its variables on ``mesh``, and the step of
    the train-state checkpoint they came from (None for a variables checkpoint)."""

    model: Any
    variables: dict
    step: int | None
    mesh: Any


def load_for_inference(
    config,
    *,
    workdir: str | None = None,
    checkpoint_dir: str | None = None,
    step: int | None = None,
    mesh=None,
) -> InferenceModel:
    """The model of ``config`` (:func:`segjax.tasks.create_model`) with variables restored from
    ``checkpoint_dir`` (a train-state ``checkpoints/`` directory or a variables checkpoint) or,
    without it, from ``workdir``'s checkpoints; the latest step unless ``step`` is given. Only
    the variables are read (:func:`restore_variables`): no optimiser or train step is built,
    and the training stack (``segjax.trainer``, ``segjax.optim``, optax) is not imported.

    Raises:
      ConfigError: neither ``workdir`` nor ``checkpoint_dir``.
      MissingFileError, CheckpointMismatchError: see :func:`restore_variables`.
    """
    if checkpoint_dir is None:
        if not workdir:
            raise ConfigError("load_for_inference: give workdir or checkpoint_dir")
        checkpoint_dir = os.path.join(workdir, "checkpoints")
    mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
    model = tasks.create_model(config)
    target = abstract_variables(model, config, mesh)
    variables, step = restore_variables(target, checkpoint_dir, step)
    return InferenceModel(model, variables, step, mesh)
