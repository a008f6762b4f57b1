"""Training and evaluation: pure, testable pieces and :func:`run`, which wires them together.

Start-up order (as big_vision): mesh → data → model/optimizer → ``jax.eval_shape`` of the
state → shardings → ``jit(init, out_shardings)`` or restore → ``jit(step, donate state)``.
"""

import dataclasses
import functools
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import einops
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from segjax import (
    checkpoint,
    inference,
    input_pipeline,
    logs,
    losses,
    metrics,
    models,
    ops,
    optim,
    sharding,
)
from segjax import data as data_lib
from segjax.data.image_io import DataError
from segjax.models.maskrcnn import MaskRCNN

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient more often than allowed."""


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (and is checkpointed)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    nonfinite: jax.Array  # number of updates skipped because of a non-finite loss/gradient


def compute_dtype(config: ml_collections.ConfigDict):
    """The compute dtype named by ``config.dtype``."""
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype {config.dtype!r} unknown; expected one of {list(DTYPES)}")
    return DTYPES[config.dtype]


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The model of ``config.model`` in the config's compute dtype."""
    return models.create(
        config.model.name,
        num_classes=config.model.num_classes,
        dtype=compute_dtype(config),
        **config.model.kwargs.to_dict(),
    )


def init_variables(model: nn.Module, config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
    """Model variables from a dummy batch of the training crop size."""
    h, w = config.data.crop_size
    dummy = jnp.zeros((1, h, w, 3), jnp.float32)
    variables = model.init({"params": rng, "dropout": rng}, dummy, train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def make_init_fn(model, tx, config):
    """``rng → TrainState`` (pure; jit it with ``out_shardings`` to create it sharded)."""

    def init(rng):
        variables = init_variables(model, config, rng)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            opt_state=tx.init(variables["params"]),
            nonfinite=jnp.zeros((), jnp.int32),
        )

    return init


# Batch fields the training loss reads besides the image (the rest of a batch is ignored).
LOSS_FIELDS = ("mask", "weights")


def _loss_fn(model, loss_fn, aux_weight, params, batch_stats, batch, rng):
    """``(loss, new batch_stats)`` of one (micro-)batch: ``loss_fn`` (:func:`losses.build_loss`)
    on the main head plus ``aux_weight`` times it on the auxiliary head, if the model has one.
    ``batch["weights"]`` (the U-Net border weight map), when present, weights the pixels."""
    variables = {"params": params}
    mutable = []
    if batch_stats:
        variables["batch_stats"] = batch_stats
        mutable = ["batch_stats"]
    outputs, new_vars = model.apply(
        variables, batch["image"], train=True, mutable=mutable, rngs={"dropout": rng}
    )
    labels, pixel_weights = batch["mask"], batch.get("weights")
    loss, _ = loss_fn(outputs["out"], labels, pixel_weights)
    if "aux" in outputs and aux_weight:
        aux_loss, _ = loss_fn(outputs["aux"], labels, pixel_weights)
        loss = loss + aux_weight * aux_loss
    return loss, new_vars.get("batch_stats", batch_stats)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule, config):
    """``(state, batch) → (state, metrics)`` for one optimisation step (pure; not jitted).

    The batch is split into ``train.grad_accum_steps`` micro-batches whose gradients are
    averaged. A non-finite loss, gradient or updated parameter skips the update (params,
    optimiser state and BatchNorm statistics keep their old values) and increments
    ``state.nonfinite``.
    """
    accum = int(config.train.grad_accum_steps)
    base_rng = jax.random.key(config.seed)
    # Built (and validated) here, so a bad loss config fails before anything compiles.
    loss_fn = losses.build_loss(config.train)
    grad_fn = jax.value_and_grad(
        functools.partial(_loss_fn, model, loss_fn, config.train.aux_weight), has_aux=True
    )

    def step_fn(state: TrainState, batch):
        rng = jax.random.fold_in(base_rng, state.step)
        batch = {k: v for k, v in batch.items() if k == "image" or k in LOSS_FIELDS}
        if accum == 1:
            (loss, batch_stats), grads = grad_fn(state.params, state.batch_stats, batch, rng)
        else:
            b = batch["image"].shape[0]
            if b % accum:
                raise ValueError(f"batch {b} not divisible by grad_accum_steps={accum}")
            # Row r goes to micro-batch r % k, so every device's rows are spread over all of them.
            split = lambda x: einops.rearrange(x, "(b k) ... -> k b ...", k=accum)
            micro = jax.tree.map(split, batch)

            def body(carry, xs):
                grads_sum, loss_sum, stats, i = carry
                (loss, stats), grads = grad_fn(state.params, stats, xs, jax.random.fold_in(rng, i))
                grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
                return (grads_sum, loss_sum + loss, stats, i + 1), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            init = (zeros, jnp.zeros((), jnp.float32), state.batch_stats, jnp.zeros((), jnp.int32))
            (grads, loss, batch_stats, _), _ = jax.lax.scan(body, init, micro)
            grads = jax.tree.map(lambda g: g / accum, grads)
            loss = loss / accum
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Finite gradients can still give non-finite parameters (e.g. an infinite learning rate).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        for p in jax.tree.leaves(params):
            finite = finite & jnp.all(jnp.isfinite(p))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = TrainState(
            step=state.step + 1,
            params=keep(params, state.params),
            batch_stats=keep(batch_stats, state.batch_stats),
            opt_state=keep(opt_state, state.opt_state),
            nonfinite=state.nonfinite + (~finite).astype(jnp.int32),
        )
        return new_state, {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": schedule(state.step),
        }

    return step_fn


def check_num_classes(config: ml_collections.ConfigDict, info) -> None:
    """Raises ValueError when the model's class count differs from the dataset's."""
    if info.num_classes != config.model.num_classes:
        raise ValueError(
            f"config.model.num_classes={config.model.num_classes} but dataset "
            f"{info.name!r} has {info.num_classes} classes"
        )


def variables_of(state: TrainState) -> dict:
    """The model variables (``params`` and, for models with BatchNorm, ``batch_stats``)."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def abstract_variables(model: nn.Module, config: ml_collections.ConfigDict, mesh) -> dict:
    """The model's variables as ``jax.ShapeDtypeStruct`` with training's shardings on ``mesh``:
    the restore target for inference (no optimiser is built)."""
    abstract = jax.eval_shape(
        functools.partial(init_variables, model, config), jax.random.key(config.seed)
    )
    shardings = sharding.state_shardings(
        abstract, mesh, config.mesh.rules, config.mesh.min_shard_size
    )
    return _with_shardings(abstract, shardings)


def _with_shardings(abstract, shardings):
    """``abstract`` (a tree of shapes and dtypes) with ``shardings`` attached: a restore target."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


@dataclasses.dataclass
class InferenceModel:
    """A model restored for inference: the module, its variables on ``mesh``, and the step of
    the train-state checkpoint they came from (None for a variables checkpoint)."""

    model: nn.Module
    variables: dict
    step: int | None
    mesh: Any


def load_for_inference(
    config: ml_collections.ConfigDict,
    *,
    workdir: str | None = None,
    checkpoint_dir: str | None = None,
    step: int | None = None,
    mesh=None,
) -> InferenceModel:
    """The model of ``config`` with variables restored from ``checkpoint_dir`` (a train-state
    ``checkpoints/`` directory or a variables checkpoint) or, without it, from ``workdir``'s
    checkpoints; the latest step unless ``step`` is given. Only the variables are read
    (:func:`segjax.checkpoint.restore_variables`): no optimiser or train step is built.

    Raises:
      ValueError: neither ``workdir`` nor ``checkpoint_dir``.
      FileNotFoundError, checkpoint.CheckpointMismatchError: see ``restore_variables``.
    """
    if checkpoint_dir is None:
        if not workdir:
            raise ValueError("load_for_inference: give workdir or checkpoint_dir")
        checkpoint_dir = os.path.join(workdir, "checkpoints")
    mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
    model = create_model(config)
    target = abstract_variables(model, config, mesh)
    variables, step = checkpoint.restore_variables(target, checkpoint_dir, step)
    return InferenceModel(model, variables, step, mesh)


def make_eval_step(
    model: nn.Module, num_classes: int, options=None, *, mean=None, std=None
) -> Callable:
    """``(variables, batch) → (confusion matrix [C, C], predictions [B, H, W], num_valid)``.

    Pure; predictions follow ``options`` (:class:`segjax.inference.InferenceOptions`, default
    whole-image). Rows of padding examples (``batch["valid"]`` false) count nowhere.
    """
    predictor = inference.make_predictor(
        model, options or inference.InferenceOptions(), mean=mean, std=std
    )

    def eval_fn(variables, batch):
        scores = predictor(variables, batch["image"])
        preds = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        valid = batch["valid"]
        # Padding examples are all-ignore already; the mask makes this explicit.
        labels = jnp.where(valid[:, None, None], batch["mask"], metrics.IGNORE_INDEX)
        return metrics.confusion_matrix(labels, preds, num_classes), preds, valid.sum()

    return eval_fn


def compile_eval_step(model: nn.Module, config: ml_collections.ConfigDict, mesh, options=None):
    """The jitted :func:`make_eval_step` of ``config`` — the one used by in-training evaluation
    and by ``segjax.evaluate``, so both trace the same convolution path (:func:`segjax.ops.jit`)."""
    step = make_eval_step(
        model,
        config.model.num_classes,
        options,
        mean=tuple(config.data.mean),
        std=tuple(config.data.std),
    )
    repl = sharding.replicated(mesh)
    return ops.jit(step, config, out_shardings=(repl, sharding.batch_sharding(mesh), repl))


@dataclasses.dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
      confusion_matrix: int64 ``[C, C]`` summed over every process's images.
      num_images: real (not padding) images counted, over all processes.
      examples: up to ``keep_preds`` local ``(image, mask, prediction)`` triples.
      object_counts: for data with instance ids, the object-matching counts
        (:func:`segjax.metrics.object_match_counts`) summed over every image of every
        process; ``None`` otherwise.
    """

    confusion_matrix: np.ndarray
    num_images: int
    examples: list
    object_counts: np.ndarray | None = None

    def summary(self) -> dict:
        """:func:`segjax.metrics.summarize` of the confusion matrix, plus the object-level
        metrics (:func:`segjax.metrics.summarize_objects`) when there are instance ids."""
        summary = metrics.summarize(self.confusion_matrix)
        if self.object_counts is not None:
            summary.update(metrics.summarize_objects(self.object_counts))
        return summary


def _local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in batch order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def _object_counts(batch: dict, preds: np.ndarray) -> np.ndarray:
    """Object-matching counts of this process's real images of ``batch`` (host side)."""
    counts = []
    for i in np.flatnonzero(batch["valid"]):
        try:
            counts.append(
                metrics.object_match_counts(preds[i], batch["instances"][i], batch["mask"][i])
            )
        except ValueError as e:  # name the image: the metric cannot know it
            raise DataError(f"evaluation image {batch['id'][i]!r}: {e}") from None
    return np.sum(counts, axis=0) if counts else None


def _sum_over_processes(counts: np.ndarray) -> np.ndarray:
    """Non-negative int64 ``counts`` summed over every process (each holds its own images')."""
    counts = np.asarray(counts, np.int64)
    if jax.process_count() == 1:
        return counts
    from jax.experimental import multihost_utils

    # JAX gathers in int32 without x64, and pixel counts pass 2**31 on large splits: gather
    # 31-bit halves and recombine on the host.
    halves = np.stack([counts >> 31, counts & (2**31 - 1)]).astype(np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(halves), np.int64).sum(axis=0)
    return (gathered[0] << 31) + gathered[1]


def evaluate(eval_step, variables, stream, mesh, keep_preds: int = 0) -> EvalResult:
    """Runs ``eval_step`` (:func:`compile_eval_step`) over every batch of ``stream``.

    The one evaluation loop, used by training and by ``segjax.evaluate``. Every process feeds
    its part of the split (:func:`segjax.input_pipeline.eval_stream`, padded and masked), so each
    image is counted exactly once on any number of hosts. Batches with ``"instances"`` (instance
    ids) are also scored object by object on the host.
    """
    cm, count, kept, objects = None, 0, [], None
    for batch in stream:
        device_batch = {k: batch[k] for k in ("image", "mask", "valid")}
        step_cm, preds, n = eval_step(variables, sharding.host_to_global(device_batch, mesh))
        step_cm = np.asarray(jax.device_get(step_cm), np.int64)
        cm = step_cm if cm is None else cm + step_cm
        count += int(jax.device_get(n))
        local = _local_rows(preds) if len(kept) < keep_preds or "instances" in batch else None
        if "instances" in batch:
            step_objects = _object_counts(batch, local)
            if step_objects is not None:
                objects = step_objects if objects is None else objects + step_objects
        if len(kept) < keep_preds:
            for i in np.flatnonzero(batch["valid"])[: keep_preds - len(kept)]:
                kept.append((batch["image"][i], batch["mask"][i], local[i]))
    if cm is None:
        raise ValueError("evaluate: the evaluation stream is empty")
    if "instances" in batch:
        # Every process reaches this (same number of batches), even one without real images.
        zeros = np.zeros(len(metrics.OBJECT_COUNT_FIELDS), np.int64)
        objects = _sum_over_processes(zeros if objects is None else objects)
    return EvalResult(cm, count, kept, objects)


class Trainer:
    """Holds the compiled pieces of one run: mesh, model, optimiser, jitted functions."""

    def __init__(self, config: ml_collections.ConfigDict, mesh=None):
        self.config = config
        self.mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
        self.model = create_model(config)
        self.tx, self.schedule = optim.make_optimizer(config.optim, config.train.num_steps)
        init_fn = make_init_fn(self.model, self.tx, config)
        rng = jax.random.key(config.seed)
        self.abstract_state = jax.eval_shape(init_fn, rng)
        self.state_shardings = sharding.state_shardings(
            self.abstract_state, self.mesh, config.mesh.rules, config.mesh.min_shard_size
        )
        self._init = jax.jit(init_fn, out_shardings=self.state_shardings)
        self._rng = rng
        self.train_step = ops.jit(
            make_train_step(self.model, self.tx, self.schedule, config),
            config,
            in_shardings=(self.state_shardings, sharding.batch_sharding(self.mesh)),
            out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
            donate_argnums=0,
        )
        self.eval_step = compile_eval_step(self.model, config, self.mesh)

    def init_state(self) -> TrainState:
        """A freshly initialised, sharded state (optionally starting from ``init_from``)."""
        state = self._init(self._rng)
        if self.config.init_from:
            state = self._load_pretrained(state)
        return state

    def _load_pretrained(self, state: TrainState) -> TrainState:
        pretrained = checkpoint.read_weights(self.config.init_from)
        if "params" not in pretrained:
            raise ValueError(
                f"init_from {self.config.init_from!r} holds no 'params' "
                f"(top-level keys: {sorted(pretrained)})"
            )
        current = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        merged, report = checkpoint.merge_pretrained(current, pretrained)
        logs.info(
            f"init_from {self.config.init_from}: loaded {len(report['loaded'])} arrays, "
            f"kept {len(report['kept_initial'])} at their initial value, "
            f"{len(report['unused'])} unused, {len(report['shape_mismatch'])} shape mismatches"
        )
        for key in ("kept_initial", "unused", "shape_mismatch"):
            for name in report[key][:50]:
                logs.info(f"  {key}: {name}")
        params = jax.device_put(merged["params"], self.state_shardings.params)
        stats = jax.device_put(merged["batch_stats"], self.state_shardings.batch_stats)
        return state.replace(params=params, batch_stats=stats, opt_state=self.tx.init(params))

    def abstract_with_shardings(self):
        """The abstract state with shardings attached (the restore target)."""
        return _with_shardings(self.abstract_state, self.state_shardings)

    def evaluate(self, state: TrainState, stream, keep_preds: int = 0) -> EvalResult:
        """:func:`evaluate` of ``state``'s variables with this run's compiled eval step."""
        return evaluate(self.eval_step, variables_of(state), stream, self.mesh, keep_preds)


class _StopSignal:
    """Turns SIGTERM into a flag the training loop checks after every step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. under some test runners)
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _preempted(stop: _StopSignal, step: int) -> bool:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        try:
            if multihost_utils.reached_preemption_sync_point(step):
                return True
        except RuntimeError:  # preemption service not available
            pass
        # All processes must agree, so the flag is reduced over processes.
        flags = multihost_utils.process_allgather(np.asarray(stop.requested))
        return bool(np.any(flags))
    return stop.requested


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) the run of ``config`` in ``workdir`` and evaluates it.

    Returns:
      The last evaluation summary (see :func:`segjax.metrics.summarize`), with ``step``; or
      ``{"step": s, "preempted": True}`` when SIGTERM stopped the run (checkpoint saved).

    Raises:
      NonFiniteError: more non-finite updates than ``train.max_nonfinite_skips``.
      checkpoint.CheckpointMismatchError: the workdir's checkpoint does not fit the model.
      ValueError: an instance model (Mask R-CNN), which this loop does not train yet.
    """
    if issubclass(type(create_model(config)), MaskRCNN):
        raise ValueError(
            f"config.model.name={config.model.name!r} is an instance model; segjax.train does "
            "not train instance models yet (inference: python -m segjax.predict)"
        )
    os.makedirs(workdir, exist_ok=True)
    source = data_lib.get_source(config.data)
    check_num_classes(config, source.info)
    training = _TrainingRun(config, workdir, source)
    try:
        return training.execute()
    finally:
        # Always: an error must not leave Orbax's async save threads running into shutdown.
        training.close()


class _TrainingRun:
    """The state of one :func:`run`: trainer, checkpoints, logs, evaluation stream."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, source):
        self.config, self.workdir, self.info = config, workdir, source.info
        self.is_main = jax.process_index() == 0
        self.trainer = Trainer(config)
        self.logger = logs.MetricLogger(workdir, enabled=self.is_main)
        self.manager = checkpoint.make_manager(workdir, config.train.keep_checkpoints)
        self.source = source
        self.split = config.data.eval_split
        self.eval_stream = input_pipeline.eval_stream(
            source,
            config,
            self.split,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def close(self) -> None:
        """Waits for pending checkpoint writes and closes the checkpoint manager and logs."""
        self.manager.wait_until_finished()
        self.manager.close()
        self.logger.close()

    def restore_or_init(self) -> TrainState:
        """The latest checkpoint of the workdir onto this mesh, or a fresh state."""
        latest = self.manager.latest_step()
        if latest is None:
            return self.trainer.init_state()
        state = checkpoint.restore_state(
            self.manager, self.trainer.abstract_with_shardings(), latest
        )
        logs.info(f"resumed from {self.manager.directory} at step {latest}")
        return state

    def evaluate(self, state: TrainState, step: int) -> dict:
        """Evaluates ``state`` on the eval split; logs metrics, images and a summary line."""
        t0 = time.time()
        result = self.trainer.evaluate(
            state, self.eval_stream, keep_preds=self.config.train.num_vis_images
        )
        summary = result.summary()
        self.logger.write(step, summary, split=self.split)
        self.logger.images(
            step, result.examples, self.info, self.config.data.mean, self.config.data.std
        )
        objects = (
            f" object F1@0.5 {100 * summary['object_f1']:.2f} AJI {100 * summary['aji']:.2f}"
            if result.object_counts is not None
            else ""
        )
        logs.info(
            f"eval {self.split} at step {step}: mIoU {100 * summary['miou']:.2f} "
            f"pixel acc {100 * summary['pixel_accuracy']:.2f}{objects} ({time.time() - t0:.1f}s)"
        )
        return summary

    def execute(self) -> dict:
        """Restores or initialises, trains to ``train.num_steps``, evaluates; see :func:`run`."""
        num_steps = int(self.config.train.num_steps)
        state = self.restore_or_init()
        if self.is_main:  # after the restore: a checkpoint that does not fit keeps its config
            with open(os.path.join(self.workdir, "config.json"), "w") as f:
                f.write(self.config.to_json_best_effort(indent=2))
        start = int(jax.device_get(state.step))
        if start >= num_steps:
            logs.info(
                f"run in {self.workdir} already finished at step {start} "
                f"(train.num_steps={num_steps}); nothing to do. Delete the workdir to start "
                "over or raise --config.train.num_steps."
            )
            last = self.logger.last_eval(self.split)
            return last if last is not None else dict(self.evaluate(state, start), step=start)
        train_start = time.time()
        state, step, preempted = self.train(state, start, num_steps)
        if preempted:
            logs.info(f"stopped by SIGTERM at step {step}; checkpoint saved, rerun to resume")
            return {"step": step, "preempted": True}
        seconds = time.time() - train_start
        logs.info(
            f"trained steps {start + 1}..{step} in {int(seconds // 60)}m{seconds % 60:04.1f}s "
            "(wall time: compilation, periodic evaluations and checkpoints included)"
        )
        summary = self.evaluate(state, step)
        if self.is_main:
            print(metrics.format_table(summary, self.info.class_names), flush=True)
            if "object_f1" in summary:
                print(metrics.format_object_table(summary), flush=True)
        return dict(summary, step=step)

    def train(self, state: TrainState, start: int, num_steps: int):
        """The training loop from ``start``: ``(state, last step, preempted)``."""
        cfg = self.config.train
        batches = input_pipeline.train_iterator(
            self.source,
            self.config,
            start_step=start,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        progress = logs.Progress(start, num_steps, cfg.batch_size)
        guard = _NonFiniteGuard(start, int(jax.device_get(state.nonfinite)), cfg)
        pending, step = [], start
        with _StopSignal() as stop:
            while step < num_steps:
                batch = sharding.host_to_global(next(batches), self.trainer.mesh)
                state, step_metrics = self.trainer.train_step(state, batch)
                step += 1
                pending.append(step_metrics)
                if step % cfg.log_every == 0 or step == num_steps:
                    guard.check(state, step)
                    self.log_train(step, jax.device_get(pending), progress)
                    pending = []
                if cfg.eval_every and step % cfg.eval_every == 0 and step < num_steps:
                    self.evaluate(state, step)
                saved = step % cfg.checkpoint_every == 0 or step == num_steps
                if saved:
                    checkpoint.save_state(self.manager, step, state)
                if _preempted(stop, step):
                    if not saved:  # Orbax refuses a second save of the same step
                        checkpoint.save_state(self.manager, step, state)
                    return state, step, True
        return state, step, False

    def log_train(self, step: int, fetched: list, progress: logs.Progress) -> None:
        """Writes the mean finite loss since the last log line, grad norm and learning rate."""
        losses_ = [float(m["loss"]) for m in fetched]
        finite = [v for v in losses_ if math.isfinite(v)]
        row = {
            "loss": float(np.mean(finite)) if finite else float("nan"),
            "grad_norm": float(fetched[-1]["grad_norm"]),
            "learning_rate": float(fetched[-1]["learning_rate"]),
        }
        row.update(progress.update(step))
        self.logger.write(step, row)
        logs.info(progress.line(step, row["loss"]))


class _NonFiniteGuard:
    """Counts skipped non-finite updates between log steps; stops past the allowed number."""

    def __init__(self, start: int, seen: int, train_config):
        self.last_checked, self.seen = start, seen
        self.allowed = int(train_config.max_nonfinite_skips)

    def check(self, state: TrainState, step: int) -> None:
        """Logs new skips since the last check; raises :class:`NonFiniteError` past the limit."""
        nonfinite = int(jax.device_get(state.nonfinite))
        steps = f"{self.last_checked + 1}..{step}"
        if nonfinite > self.allowed:
            raise NonFiniteError(
                f"non-finite loss or gradient in steps {steps} ({nonfinite} skipped updates in "
                f"total, allowed train.max_nonfinite_skips={self.allowed}); the updates were "
                "skipped and the last checkpoint is intact"
            )
        if nonfinite > self.seen:
            logs.info(f"skipped {nonfinite - self.seen} non-finite update(s) in steps {steps}")
        self.seen, self.last_checked = nonfinite, step
