"""Semantic segmentation: class masks, pixel losses, the confusion matrix.

The :class:`~segjax.tasks.base.Task` of models that return per-pixel logits
(``module.apply(variables, images) -> {"out", "aux"?}``): the semantic training augmentation,
the loss of a batch (the weighted terms of :func:`segjax.losses.build_loss` on the main head,
plus ``train.aux_weight`` times it on the auxiliary head), the evaluation stream, the compiled
eval step (confusion matrix on device), the one evaluation loop (with object-level counts for
data with instance ids), what is logged and printed, and the files the tools write
(:mod:`segjax.tasks.semantic_outputs`: the confusion-matrix PNG, label/colour/overlay PNGs).
"""

import dataclasses
import os
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import logs, runtime, sharding
from segjax.errors import ConfigError, DataError
from segjax.evaluation import inference, metrics
from segjax.input import pipeline
from segjax.tasks import semantic_outputs
from segjax.tasks.base import ImageWriter, Task

# Batch fields the training loss reads besides the image (the rest of a batch is ignored).
LOSS_FIELDS = ("mask", "weights")


def init_variables(model: nn.Module, config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
    """Model variables from a dummy batch of the training crop size."""
    h, w = config.data.crop_size
    dummy = jnp.zeros((1, h, w, 3), jnp.float32)
    variables = model.init({"params": rng, "dropout": rng}, dummy, train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _loss_fn(model, loss_fn, aux_weight, params, batch_stats, batch, rng):
    """``(loss, (new batch_stats, {}))`` of one (micro-)batch: ``loss_fn``
    (:func:`losses.build_loss`) on the main head plus ``aux_weight`` times it on the auxiliary
    head, if the model has one. ``batch["weights"]`` (the U-Net border weight map), when
    present, weights the pixels."""
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
    return loss, (new_vars.get("batch_stats", batch_stats), {})


def make_eval_step(
    model: nn.Module, num_classes: int, options=None, *, mean=None, std=None
) -> Callable:
    """``(variables, batch) → (confusion matrix [C, C], predictions [B, H, W], num_valid)``.

    Pure; predictions follow ``options`` (:class:`segjax.evaluation.inference.InferenceOptions`,
    default whole-image). Rows of padding examples (``batch["valid"]`` false) count nowhere.
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


@dataclasses.dataclass
class EvalResult:
    """What :meth:`SemanticTask.evaluate` returns.

    Attributes:
      confusion_matrix: int64 ``[C, C]`` summed over every process's images.
      num_images: real (not padding) images counted, over all processes.
      examples: up to ``keep_preds`` local ``(image, mask, prediction)`` triples.
      object_counts: for data with instance ids, the object-matching counts
        (:func:`segjax.evaluation.metrics.object_match_counts`) summed over every image of every
        process; ``None`` otherwise.
    """

    confusion_matrix: np.ndarray
    num_images: int
    examples: list
    object_counts: np.ndarray | None = None

    def summary(self) -> dict:
        """:func:`segjax.evaluation.metrics.summarize` of the confusion matrix, plus the
        object-level metrics (:func:`segjax.evaluation.metrics.summarize_objects`) when there
        are instance ids."""
        summary = metrics.summarize(self.confusion_matrix)
        if self.object_counts is not None:
            summary.update(metrics.summarize_objects(self.object_counts))
        return summary


def _object_counts(batch: dict, preds: np.ndarray) -> np.ndarray:
    """Object-matching counts of this process's real images of ``batch`` (host side)."""
    counts = []
    for i in np.flatnonzero(batch["valid"]):
        try:
            counts.append(
                metrics.object_match_counts(preds[i], batch["instances"][i], batch["mask"][i])
            )
        except DataError as e:  # name the image: the metric cannot know it
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


class SemanticTask(Task):
    """The semantic-segmentation task (module docstring); stateless."""

    name = "semantic"

    def check_dataset(self, config: ml_collections.ConfigDict, info) -> None:
        """Raises ConfigError when the model's class count differs from the dataset's."""
        if info.num_classes != config.model.num_classes:
            raise ConfigError(
                f"config.model.num_classes={config.model.num_classes} but dataset "
                f"{info.name!r} has {info.num_classes} classes"
            )

    def init_variables(self, model, config, rng) -> dict:
        """:func:`init_variables`."""
        return init_variables(model, config, rng)

    def train_stream(
        self, source, config, *, start_step: int = 0, process_index: int = 0, process_count=1
    ):
        """:func:`segjax.input.pipeline.train_iterator` with the semantic augmentation
        (:func:`segjax.input.pipeline.semantic_train_transform`)."""
        return pipeline.train_iterator(
            source,
            config,
            transform=pipeline.semantic_train_transform(config, source.info),
            start_step=start_step,
            process_index=process_index,
            process_count=process_count,
        )

    def loss_fn(self, model, config) -> Callable:
        """``(params, batch_stats, batch, rng) → (loss, (batch_stats, terms))``; ``terms`` is
        empty (the semantic loss is logged as one number). Built (and validated) now, so a bad
        loss config fails before anything compiles."""
        # Imported here: the losses pull in optax, which the inference tools do not load.
        from segjax import losses

        loss = losses.build_loss(config.train)
        return lambda *args: _loss_fn(model, loss, config.train.aux_weight, *args)

    @property
    def loss_fields(self) -> tuple[str, ...]:
        """Batch fields the loss reads besides ``image``."""
        return LOSS_FIELDS

    def eval_stream(self, source, config, split, *, process_index=0, process_count=1):
        """:func:`segjax.input.pipeline.eval_stream`."""
        return pipeline.eval_stream(
            source, config, split, process_index=process_index, process_count=process_count
        )

    def compile_eval_step(self, model, config, mesh, options=None) -> Callable:
        """The jitted :func:`make_eval_step` of ``config`` — the one used by in-training
        evaluation and by ``segjax.evaluate``, so both trace the same convolution path
        (:func:`segjax.runtime.jit`)."""
        step = make_eval_step(
            model,
            config.model.num_classes,
            options,
            mean=tuple(config.data.mean),
            std=tuple(config.data.std),
        )
        repl = sharding.replicated(mesh)
        return runtime.jit(step, config, out_shardings=(repl, sharding.batch_sharding(mesh), repl))

    def evaluate(self, eval_step, variables, stream, mesh, keep_preds: int = 0) -> EvalResult:
        """Runs ``eval_step`` (:meth:`compile_eval_step`) over every batch of ``stream``.

        The one semantic evaluation loop, used by training and by ``segjax.evaluate``. Every
        process feeds its part of the split (:func:`segjax.input.pipeline.eval_stream`, padded
        and masked), so each image is counted exactly once on any number of hosts. Batches
        with ``"instances"`` (instance ids) are also scored object by object on the host.
        """
        cm, count, kept, objects = None, 0, [], None
        for batch in stream:
            device_batch = {k: batch[k] for k in ("image", "mask", "valid")}
            step_cm, preds, n = eval_step(variables, sharding.host_to_global(device_batch, mesh))
            step_cm = np.asarray(jax.device_get(step_cm), np.int64)
            cm = step_cm if cm is None else cm + step_cm
            count += int(jax.device_get(n))
            wanted = len(kept) < keep_preds or "instances" in batch
            local = sharding.local_rows(preds) if wanted else None
            if "instances" in batch:
                step_objects = _object_counts(batch, local)
                if step_objects is not None:
                    objects = step_objects if objects is None else objects + step_objects
            if len(kept) < keep_preds:
                for i in np.flatnonzero(batch["valid"])[: keep_preds - len(kept)]:
                    kept.append((batch["image"][i], batch["mask"][i], local[i]))
        if cm is None:
            raise DataError("evaluate: the evaluation stream is empty")
        if "instances" in batch:
            # Every process reaches this (same number of batches), even one without real images.
            zeros = np.zeros(len(metrics.OBJECT_COUNT_FIELDS), np.int64)
            objects = _sum_over_processes(zeros if objects is None else objects)
        return EvalResult(cm, count, kept, objects)

    def log_line(self, summary: dict) -> str:
        """The headline numbers of an evaluation summary."""
        objects = (
            f" object F1@0.5 {100 * summary['object_f1']:.2f} AJI {100 * summary['aji']:.2f}"
            if "object_f1" in summary
            else ""
        )
        return (
            f"mIoU {100 * summary['miou']:.2f} "
            f"pixel acc {100 * summary['pixel_accuracy']:.2f}{objects}"
        )

    def tables(self, summary: dict, info) -> list[str]:
        """The per-class table (and the object table for data with instance ids)."""
        out = [metrics.format_table(summary, info.class_names)]
        if "object_f1" in summary:
            out.append(metrics.format_object_table(summary))
        return out

    def write_images(self, logger: logs.MetricLogger, step: int, examples, info, config):
        """(image | ground truth | prediction) strips to TensorBoard."""
        logger.images(step, examples, info, config.data.mean, config.data.std)

    def eval_record(self, result: EvalResult, options) -> dict:
        """The inference settings and the confusion matrix (rows: ground truth)."""
        return {
            "inference": dataclasses.asdict(options or inference.InferenceOptions()),
            "confusion_matrix": result.confusion_matrix.tolist(),
        }

    def write_eval_files(self, result: EvalResult, info, out: str, split: str) -> list[str]:
        """``eval_<split>_confusion.png`` (:func:`semantic_outputs.confusion_png`)."""
        path = os.path.join(out, f"eval_{split}_confusion.png")
        semantic_outputs.confusion_png(result.confusion_matrix, info.class_names, path)
        return [path]

    def inference_options(self, config, flags, *, instead: str = ""):
        """:class:`segjax.evaluation.inference.InferenceOptions` from the inference flags."""
        del instead
        return inference.options_for(
            config,
            mode=flags.mode.value,
            crop=flags.crop.value,
            stride=flags.stride.value,
            tile_batch=flags.tile_batch.value,
            tile_size=flags.tile_size.value,
            scales=flags.scales.value,
            flip=flags.flip.value,
            crf=flags.crf.value,
        )

    def image_writer(
        self,
        config,
        variables,
        model,
        output_dir: str,
        *,
        options=None,
        alpha: float = 0.5,
        score_threshold: float = 0.5,
    ) -> ImageWriter:
        """Labels, colour and overlay PNGs per image
        (:func:`segjax.tasks.semantic_outputs.image_writer`); no score threshold applies."""
        del score_threshold
        return semantic_outputs.image_writer(
            config, variables, model, output_dir, options=options, alpha=alpha
        )
