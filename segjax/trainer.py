"""Training and evaluation: pure, testable pieces and :func:`run`, which wires them together.

Start-up order (as big_vision): mesh → data → model/optimizer → ``jax.eval_shape`` of the
state → shardings → ``jit(init, out_shardings)`` or restore → ``jit(step, donate state)``.
"""

import functools
import math
import os
import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from segjax import checkpoint, input_pipeline, logs, losses, metrics, models, optim, sharding
from segjax import data as data_lib
from segjax.models import layers

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


def _loss_fn(model, config, params, batch_stats, images, labels, rng):
    variables = {"params": params}
    mutable = []
    if batch_stats:
        variables["batch_stats"] = batch_stats
        mutable = ["batch_stats"]
    outputs, new_vars = model.apply(
        variables, images, train=True, mutable=mutable, rngs={"dropout": rng}
    )
    class_weights = (
        jnp.asarray(config.train.class_weights, jnp.float32) if config.train.class_weights else None
    )
    ce = functools.partial(
        losses.cross_entropy,
        class_weights=class_weights,
        label_smoothing=config.train.label_smoothing,
    )
    loss, _ = ce(outputs["out"], labels)
    if "aux" in outputs and config.train.aux_weight:
        aux_loss, _ = ce(outputs["aux"], labels)
        loss = loss + config.train.aux_weight * aux_loss
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
    grad_fn = jax.value_and_grad(functools.partial(_loss_fn, model, config), has_aux=True)

    def step_fn(state: TrainState, batch):
        with conv_path(config.conv_backward):
            return _step(state, batch)

    def _step(state: TrainState, batch):
        rng = jax.random.fold_in(base_rng, state.step)
        images, labels = batch["image"], batch["mask"]
        if accum == 1:
            (loss, batch_stats), grads = grad_fn(
                state.params, state.batch_stats, images, labels, rng
            )
        else:
            b = images.shape[0]
            if b % accum:
                raise ValueError(f"batch {b} not divisible by grad_accum_steps={accum}")
            # [B] → [B/k, k] keeps every device's rows spread over all micro-batches.
            split = lambda x: jnp.moveaxis(x.reshape((b // accum, accum) + x.shape[1:]), 1, 0)
            micro = (split(images), split(labels))

            def body(carry, xs):
                grads_sum, loss_sum, stats, i = carry
                (loss, stats), grads = grad_fn(
                    state.params, stats, xs[0], xs[1], jax.random.fold_in(rng, i)
                )
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


def conv_path(choice: str = "auto"):
    """Context in which traced ``nn.Conv`` layers take the path ``config.conv_backward`` names."""
    if choice not in ("auto", "taps", "xla"):
        raise ValueError(f"config.conv_backward={choice!r}: expected 'auto', 'taps' or 'xla'")
    return layers.fast_conv_backward(enabled=None if choice == "auto" else choice == "taps")


_CPU_SCHEDULERS = {
    "memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "concurrency": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "xla": None,
}


def compiler_options(cpu_scheduler: str = "memory") -> dict[str, str] | None:
    """``jax.jit(compiler_options=...)`` for ``config.cpu_scheduler`` on the current backend.

    XLA:CPU's default, concurrency-optimised schedule lets independent ops (the weight-gradient
    matmuls of a backward pass) run at the same time on the same cores, each with its own thread
    pool share; measured on 2 cores, the memory-optimised schedule made ResNet-50 segmentation
    train steps 15–20 % faster and their peak memory ~15 % smaller (docs/PERFORMANCE.md).
    """
    if cpu_scheduler not in _CPU_SCHEDULERS:
        raise ValueError(
            f"config.cpu_scheduler={cpu_scheduler!r}: expected one of {sorted(_CPU_SCHEDULERS)}"
        )
    value = _CPU_SCHEDULERS[cpu_scheduler]
    if value is None or jax.default_backend() != "cpu":
        return None
    return {"xla_cpu_scheduler_type": value}


def make_eval_step(model: nn.Module, num_classes: int, conv_backward: str = "auto"):
    """``(state, batch) → (confusion matrix [C, C], predictions [B, H, W])`` (pure)."""

    def eval_fn(state: TrainState, batch):
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        with conv_path(conv_backward):
            logits = model.apply(variables, batch["image"], train=False)["out"]
        preds = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return metrics.confusion_matrix(batch["mask"], preds, num_classes), preds

    return eval_fn


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
        batch_sh = sharding.batch_sharding(self.mesh)
        repl = sharding.replicated(self.mesh)
        options = compiler_options(config.cpu_scheduler)
        self.train_step = jax.jit(
            make_train_step(self.model, self.tx, self.schedule, config),
            in_shardings=(self.state_shardings, batch_sh),
            out_shardings=(self.state_shardings, repl),
            donate_argnums=0,
            compiler_options=options,
        )
        self.eval_step = jax.jit(
            make_eval_step(self.model, config.model.num_classes, config.conv_backward),
            in_shardings=(self.state_shardings, batch_sh),
            out_shardings=(repl, batch_sh),
            compiler_options=options,
        )

    def init_state(self) -> TrainState:
        """A freshly initialised, sharded state (optionally starting from ``init_from``)."""
        state = self._init(self._rng)
        if self.config.init_from:
            state = self._load_pretrained(state)
        return state

    def _load_pretrained(self, state: TrainState) -> TrainState:
        pretrained = checkpoint.load_variables(self.config.init_from)
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
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.abstract_state,
            self.state_shardings,
        )

    def evaluate(self, state: TrainState, stream: input_pipeline.EvalStream, keep_preds: int = 0):
        """Confusion matrix (int64, summed over every process's images) and, when asked, the
        first ``keep_preds`` local (image, mask, prediction) triples for visualisation."""
        num_classes = self.config.model.num_classes
        cm = np.zeros((num_classes, num_classes), np.int64)
        vis = []
        for batch in stream:
            host = {"image": batch["image"], "mask": batch["mask"]}
            step_cm, preds = self.eval_step(state, sharding.host_to_global(host, self.mesh))
            cm += np.asarray(jax.device_get(step_cm), np.int64)
            if len(vis) < keep_preds:
                local = np.concatenate(
                    [
                        np.asarray(s.data)
                        for s in sorted(
                            preds.addressable_shards, key=lambda s: s.index[0].start or 0
                        )
                    ]
                )
                for i in range(min(keep_preds - len(vis), len(local))):
                    if batch["valid"][i]:
                        vis.append((batch["image"][i], batch["mask"][i], local[i]))
        return cm, vis


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
      The last evaluation summary (see :func:`segjax.metrics.summarize`), with ``step``.

    Raises:
      NonFiniteError: more non-finite updates than ``train.max_nonfinite_skips``.
    """
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    source = data_lib.get_source(config.data)
    info = source.info
    if info.num_classes != config.model.num_classes:
        raise ValueError(
            f"config.model.num_classes={config.model.num_classes} but dataset "
            f"{info.name!r} has {info.num_classes} classes"
        )
    trainer = Trainer(config)
    logger = logs.MetricLogger(workdir, enabled=is_main)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    manager = checkpoint.make_manager(workdir, config.train.keep_checkpoints)
    num_steps = int(config.train.num_steps)
    latest = manager.latest_step()
    if latest is not None:
        state = checkpoint.restore_state(manager, trainer.abstract_with_shardings(), latest)
        logs.info(f"resumed from {manager.directory} at step {latest}")
    else:
        state = trainer.init_state()
    start = int(jax.device_get(state.step))
    eval_stream = input_pipeline.eval_stream(
        source,
        config,
        config.data.eval_split,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    split = config.data.eval_split

    def do_eval(step):
        t0 = time.time()
        cm, vis = trainer.evaluate(state, eval_stream, keep_preds=config.train.num_vis_images)
        summary = metrics.summarize(cm)
        logger.write(step, summary, split=split)
        logger.images(step, vis, info, config.data.mean, config.data.std)
        logs.info(
            f"eval {split} at step {step}: mIoU {100 * summary['miou']:.2f} "
            f"pixel acc {100 * summary['pixel_accuracy']:.2f} ({time.time() - t0:.1f}s)"
        )
        return summary

    if start >= num_steps:
        logs.info(
            f"run in {workdir} already finished at step {start} (train.num_steps={num_steps}); "
            "nothing to do. Delete the workdir to start over or raise --config.train.num_steps."
        )
        last = logger.last_eval(split)
        manager.close()
        return last if last is not None else dict(do_eval(start), step=start)

    batches = input_pipeline.train_iterator(
        source,
        config,
        start_step=start,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    progress = logs.Progress(start, num_steps, config.train.batch_size)
    pending = []
    summary = None
    last_checked, nonfinite_seen = start, int(jax.device_get(state.nonfinite))
    step = start
    train_start = time.time()
    with _StopSignal() as stop:
        while step < num_steps:
            batch = sharding.host_to_global(next(batches), trainer.mesh)
            state, step_metrics = trainer.train_step(state, batch)
            step += 1
            pending.append(step_metrics)
            at_log = step % config.train.log_every == 0 or step == num_steps
            if at_log:
                fetched = jax.device_get(pending)
                pending = []
                nonfinite = int(jax.device_get(state.nonfinite))
                if nonfinite > config.train.max_nonfinite_skips:
                    manager.wait_until_finished()
                    raise NonFiniteError(
                        f"non-finite loss or gradient in steps {last_checked + 1}..{step} "
                        f"({nonfinite} skipped updates in total, allowed "
                        f"train.max_nonfinite_skips={config.train.max_nonfinite_skips}); the "
                        "updates were skipped and the last checkpoint is intact"
                    )
                if nonfinite > nonfinite_seen:
                    logs.info(
                        f"skipped {nonfinite - nonfinite_seen} non-finite update(s) in steps "
                        f"{last_checked + 1}..{step}"
                    )
                nonfinite_seen, last_checked = nonfinite, step
                losses_ = [float(m["loss"]) for m in fetched]
                finite = [v for v in losses_ if math.isfinite(v)]
                row = {
                    "loss": float(np.mean(finite)) if finite else float("nan"),
                    "grad_norm": float(fetched[-1]["grad_norm"]),
                    "learning_rate": float(fetched[-1]["learning_rate"]),
                }
                row.update(progress.update(step))
                logger.write(step, row)
                logs.info(progress.line(step, row["loss"]))
            if config.train.eval_every and step % config.train.eval_every == 0 and step < num_steps:
                summary = do_eval(step)
            saved = step % config.train.checkpoint_every == 0 or step == num_steps
            if saved:
                checkpoint.save_state(manager, step, state)
            if _preempted(stop, step):
                if not saved:  # Orbax refuses a second save of the same step
                    checkpoint.save_state(manager, step, state)
                manager.wait_until_finished()
                manager.close()
                logs.info(f"stopped by SIGTERM at step {step}; checkpoint saved, rerun to resume")
                return {"step": step, "preempted": True}
    seconds = time.time() - train_start
    logs.info(
        f"trained steps {start + 1}..{step} in {int(seconds // 60)}m{seconds % 60:04.1f}s "
        "(wall time: compilation, periodic evaluations and checkpoints included)"
    )
    summary = do_eval(step)
    manager.wait_until_finished()
    manager.close()
    logger.close()
    if is_main:
        print(metrics.format_table(summary, info.class_names), flush=True)
    return dict(summary, step=step)
