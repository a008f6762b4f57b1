"""Training and evaluation: pure, testable pieces and :func:`run`, which wires them together.

Start-up order (as big_vision): mesh → data → model/optimizer → ``jax.eval_shape`` of the
state → shardings → ``jit(init, out_shardings)`` or restore → ``jit(step, donate state)``.

Everything task-specific (data check, train stream, loss, evaluation, logs) is the model's
task's (:class:`segjax.tasks.Task`, looked up from the config); the trainer never asks which
task it is. Building a model and restoring it for inference live outside the training stack
(:func:`segjax.tasks.create_model`, :func:`segjax.checkpoint.load_for_inference`).
"""

import collections
import math
import os
import signal
import time
from typing import Any

import einops
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from segjax import checkpoint, logs, optim, runtime, sharding, tasks
from segjax import data as data_lib
from segjax.errors import ConfigError, NonFiniteError
from segjax.runtime import compile_cache


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (and is checkpointed)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    nonfinite: jax.Array  # number of updates skipped because of a non-finite loss/gradient


def make_init_fn(model, tx, config):
    """``rng → TrainState`` (pure; jit it with ``out_shardings`` to create it sharded)."""

    task = tasks.for_config(config)

    def init(rng):
        variables = task.init_variables(model, config, rng)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            opt_state=tx.init(variables["params"]),
            nonfinite=jnp.zeros((), jnp.int32),
        )

    return init


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule, config):
    """``(state, batch) → (state, metrics)`` for one optimisation step (pure; not jitted).

    The loss is the model's task's (:mod:`segjax.tasks`). The batch is split into
    ``train.grad_accum_steps`` micro-batches whose gradients are averaged. A non-finite loss,
    gradient or updated parameter skips the update (params, optimiser state and BatchNorm
    statistics keep their old values) and increments ``state.nonfinite``. The metrics are
    ``loss``, ``grad_norm``, ``learning_rate`` and the task's loss terms.
    """
    accum = int(config.train.grad_accum_steps)
    base_rng = jax.random.key(config.seed)
    task = tasks.for_config(config)
    # Built (and validated) here, so a bad loss config fails before anything compiles.
    grad_fn = jax.value_and_grad(task.loss_fn(model, config), has_aux=True)

    def step_fn(state: TrainState, batch):
        rng = jax.random.fold_in(base_rng, state.step)
        batch = task.loss_inputs(batch)
        if accum == 1:
            (loss, (batch_stats, terms)), grads = grad_fn(
                state.params, state.batch_stats, batch, rng
            )
        else:
            loss, batch_stats, terms, grads = _accumulate(grad_fn, state, batch, rng, accum)
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
            **terms,
        }

    return step_fn


def _accumulate(grad_fn, state: TrainState, batch: dict, rng, accum: int):
    """``(loss, batch_stats, terms, grads)`` averaged over ``accum`` sequential micro-batches."""
    b = batch["image"].shape[0]
    if b % accum:
        raise ConfigError(f"batch {b} not divisible by grad_accum_steps={accum}")
    # Row r goes to micro-batch r % k, so every device's rows are spread over all of them.
    split = lambda x: einops.rearrange(x, "(b k) ... -> k b ...", k=accum)
    micro = jax.tree.map(split, batch)
    first = jax.tree.map(lambda x: x[0], micro)
    terms_shape = jax.eval_shape(grad_fn, state.params, state.batch_stats, first, rng)[0][1][1]

    def body(carry, xs):
        grads_sum, loss_sum, terms_sum, stats, i = carry
        (loss, (stats, terms)), grads = grad_fn(state.params, stats, xs, jax.random.fold_in(rng, i))
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        terms_sum = jax.tree.map(jnp.add, terms_sum, terms)
        return (grads_sum, loss_sum + loss, terms_sum, stats, i + 1), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    zero_terms = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), terms_shape)
    init = (
        zeros,
        jnp.zeros((), jnp.float32),
        zero_terms,
        state.batch_stats,
        jnp.zeros((), jnp.int32),
    )
    (grads, loss, terms, batch_stats, _), _ = jax.lax.scan(body, init, micro)
    grads = jax.tree.map(lambda g: g / accum, grads)
    terms = jax.tree.map(lambda t: t / accum, terms)
    return loss / accum, batch_stats, terms, grads


def variables_of(state: TrainState) -> dict:
    """The model variables (``params`` and, for models with BatchNorm, ``batch_stats``)."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


class Trainer:
    """Holds the compiled pieces of one run: mesh, model, optimiser, jitted functions."""

    def __init__(self, config: ml_collections.ConfigDict, mesh=None):
        self.config = config
        self.mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
        sharding.check_batches_fit(config, self.mesh)
        self.task = tasks.for_config(config)
        self.model = tasks.create_model(config)
        self.tx, self.schedule = optim.make_optimizer(
            config.optim, config.train.num_steps, self.task.trainable(self.model)
        )
        init_fn = make_init_fn(self.model, self.tx, config)
        rng = jax.random.key(config.seed)
        self.abstract_state = jax.eval_shape(init_fn, rng)
        self.state_shardings = sharding.state_shardings(
            self.abstract_state, self.mesh, config.mesh.rules, config.mesh.min_shard_size
        )
        self._init = jax.jit(init_fn, out_shardings=self.state_shardings)
        self._rng = rng
        self.train_step = runtime.jit(
            make_train_step(self.model, self.tx, self.schedule, config),
            config,
            in_shardings=(self.state_shardings, sharding.batch_sharding(self.mesh)),
            out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
            donate_argnums=0,
        )
        self.eval_step = self.task.compile_eval_step(self.model, config, self.mesh)

    def init_state(self) -> TrainState:
        """A freshly initialised, sharded state (optionally starting from ``init_from``)."""
        state = self._init(self._rng)
        if self.config.init_from:
            state = self._load_pretrained(state)
        return state

    def _load_pretrained(self, state: TrainState) -> TrainState:
        pretrained = checkpoint.read_weights(self.config.init_from)
        if "params" not in pretrained:
            raise ConfigError(
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
        return checkpoint.restore_target(self.abstract_state, self.state_shardings)

    def evaluate(self, state: TrainState, stream, keep_preds: int = 0):
        """The task's evaluation of ``state``'s variables with this run's compiled eval step."""
        return self.task.evaluate(
            self.eval_step, variables_of(state), stream, self.mesh, keep_preds
        )


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
      The last evaluation summary (the task's: :func:`segjax.evaluation.metrics.summarize`
      for semantic models, the COCO statistics for instance models), with ``step``; or
      ``{"step": s, "preempted": True}`` when SIGTERM stopped the run (checkpoint saved).

    Raises:
      NonFiniteError: more non-finite updates than ``train.max_nonfinite_skips``.
      checkpoint.CheckpointMismatchError: the workdir's checkpoint does not fit the model.
      ConfigError: the dataset does not fit the model (its task's check: classes, semantic vs
        instance data).
    """
    os.makedirs(workdir, exist_ok=True)
    source = data_lib.get_source(config.data)
    tasks.for_config(config).check_dataset(config, source.info)
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
        self.eval_stream = self.trainer.task.eval_stream(
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
        self.trainer.task.write_images(self.logger, step, result.examples, self.info, self.config)
        logs.info(
            f"eval {self.split} at step {step}: {self.trainer.task.log_line(summary)} "
            f"({time.time() - t0:.1f}s)"
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
            for table in self.trainer.task.tables(summary, self.info):
                print(table, flush=True)
        return dict(summary, step=step)

    def train(self, state: TrainState, start: int, num_steps: int):
        """The training loop from ``start``: ``(state, last step, preempted)``."""
        cfg, task = self.config.train, self.trainer.task
        batches = task.train_stream(
            self.source,
            self.config,
            start_step=start,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        progress = logs.Progress(start, num_steps, cfg.batch_size)
        guard = _NonFiniteGuard(start, int(jax.device_get(state.nonfinite)), cfg)
        pending, step = [], start
        counts = collections.Counter()  # the task's host-side batch counts since the last log
        step_fn = None  # compiled ahead of time at the first batch (compile_and_release)
        with _StopSignal() as stop:
            while step < num_steps:
                host_batch = next(batches)
                counts.update(task.batch_counts(host_batch))
                batch = sharding.host_to_global(task.loss_inputs(host_batch), self.trainer.mesh)
                if step_fn is None:
                    step_fn = compile_cache.compile_and_release(
                        self.trainer.train_step, state, batch
                    )
                state, step_metrics = step_fn(state, batch)
                step += 1
                pending.append(step_metrics)
                if step % cfg.log_every == 0 or step == num_steps:
                    guard.check(state, step)
                    self.log_train(step, jax.device_get(pending), progress, counts)
                    pending, counts = [], collections.Counter()
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

    def log_train(
        self, step: int, fetched: list, progress: logs.Progress, counts: dict | None = None
    ) -> None:
        """Writes the mean finite loss (and loss terms) since the last log line, grad norm and
        learning rate; ``counts``: the task's batch counts of this process since then, logged
        as the task says (:meth:`segjax.tasks.Task.count_lines`)."""
        row = {k: _finite_mean([m[k] for m in fetched]) for k in fetched[-1] if k not in _LAST}
        row.update({k: float(fetched[-1][k]) for k in _LAST})
        row.update(progress.update(step))
        self.logger.write(step, row)
        logs.info(progress.line(step, row["loss"]))
        for line in self.trainer.task.count_lines(counts or {}, self.config):
            logs.info(line)


# Train metrics logged at their last value (the others are averaged since the last log line).
_LAST = ("grad_norm", "learning_rate")


def _finite_mean(values) -> float:
    """The mean of the finite ``values`` (NaN when none is)."""
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


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
