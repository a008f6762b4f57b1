"""Instance segmentation (Mask R-CNN): boxes and instance masks, detection losses, COCO AP.

The :class:`~segjax.tasks.base.Task` of :class:`~segjax.models.maskrcnn.MaskRCNN` models:

- the train stream: :func:`segjax.input.pipeline.instance_train_transform` (fixed-shape
  instance fields), the instances dropped over ``data.instances.max_instances`` counted and
  logged;
- the loss: torchvision's five (:func:`segjax.models.maskrcnn.losses.maskrcnn_losses`, with
  ``config.train.detection``'s matching and sampling settings), each logged by its name;
  the anchor and RoI sampling draws from the step-folded key the trainer passes;
- the parameters that train: torchvision's ``trainable_backbone_layers``
  (:func:`~segjax.models.maskrcnn.trainable_mask`); the optimiser leaves the others alone
  (no update, no weight decay, no optimiser state);
- evaluation: the jitted forward pass on the resized, padded batch
  (:func:`segjax.input.pipeline.instance_eval_stream`), detections mapped to the original
  pixels on device, masks pasted and scored on the host by
  :class:`segjax.evaluation.coco_eval.CocoEvaluator` against the ground truth at the original size,
  merged over every process: bbox and segm AP, AP50 … AR (``"segm/AP"`` …);
- TensorBoard: the ground truth next to the detections scoring at least
  :data:`VIS_SCORE_THRESHOLD`;
- ``segjax.predict``: a COCO results JSON and two PNGs per image
  (:mod:`segjax.tasks.instance_outputs`); the semantic inference flags are refused.
"""

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import logs, runtime, sharding
from segjax.errors import ConfigError
from segjax.evaluation import coco_eval, visualize
from segjax.input import pipeline
from segjax.models.maskrcnn import trainable_mask
from segjax.models.maskrcnn.transform import ImageTransform, paste_masks
from segjax.tasks import instance_outputs
from segjax.tasks.base import ImageWriter, Task

# The (square) dummy image variables are initialised with: their shapes do not depend on it.
INIT_SIZE = 128
VIS_SCORE_THRESHOLD = 0.5
# The forward-pass inputs of an evaluation batch.
EVAL_INPUTS = ("image", "image_size", "original_size")
# The fields of a training batch the loss reads besides ``image``
# (:data:`segjax.models.maskrcnn.losses.BATCH_FIELDS`, checked equal by the tests: that module
# pulls in optax, which the inference tools do not load).
LOSS_FIELDS = ("image_size", "boxes", "labels", "masks", "is_crowd", "instance_valid")


def loss_config(config: ml_collections.ConfigDict):
    """The matching and sampling settings of ``config.train.detection``
    (:class:`segjax.models.maskrcnn.losses.LossConfig`)."""
    from segjax.models.maskrcnn import losses as maskrcnn_losses  # optax: training only

    return maskrcnn_losses.LossConfig(**config.train.detection.to_dict())


def model_transform(config: ml_collections.ConfigDict) -> ImageTransform:
    """The model's host-side transform (prediction) matching the evaluation pipeline's resize
    of ``config.data.instances``: shorter side to the last ``min_size``, longer side at most
    ``max_size``, padded to ``pad_size`` when set (else the transform's buckets)."""
    inst = config.data.instances
    if not tuple(inst.min_size):
        raise ConfigError("config.data.instances.min_size=(); expected at least one size")
    pad_size = tuple(int(s) for s in inst.pad_size)
    return ImageTransform(
        min_size=int(inst.min_size[-1]),
        max_size=int(inst.max_size),
        size_divisible=int(inst.size_divisible),
        buckets=(pad_size,) if pad_size else None,
    )


@dataclasses.dataclass
class InstanceEvalResult:
    """What :meth:`InstanceTask.evaluate` returns.

    Attributes:
      metrics: :meth:`segjax.evaluation.coco_eval.CocoEvaluator.evaluate` over every
        process's images.
      num_images: images evaluated, over all processes.
      examples: up to ``keep_preds`` local ``(image uint8, ground truth, detections)``, the
        detections with pasted masks, for pictures.
    """

    metrics: dict
    num_images: int
    examples: list

    def summary(self) -> dict:
        """The COCO statistics (``"bbox/AP"``, ``"segm/AP50"`` …, in [0, 1])."""
        return dict(self.metrics)


def _detections_of(detections: dict, i: int) -> dict:
    return {k: np.asarray(v[i]) for k, v in detections.items()}


class InstanceTask(Task):
    """The instance-segmentation task (module docstring); stateless."""

    name = "instance"

    def check_dataset(self, config: ml_collections.ConfigDict, info) -> None:
        """Raises ConfigError unless the dataset holds instances of the model's classes."""
        if info.task != "instance":
            raise ConfigError(
                f"config.model.name={config.model.name!r} is an instance model but dataset "
                f"{info.name!r} has task {info.task!r}; use an instance dataset (coco, "
                "instance_shapes, or a folder of instance-id masks with "
                "config.data.folder_task='instance')"
            )
        if info.num_classes != config.model.num_classes:
            raise ConfigError(
                f"config.model.num_classes={config.model.num_classes} but dataset "
                f"{info.name!r} has {info.num_classes} classes (the background included)"
            )

    def configure_model(self, model, config):
        """``model`` with the image transform of ``config.data.instances`` (the one
        ``segjax.predict`` resizes with), unless ``config.model.kwargs`` sets one."""
        if "transform" in config.model.kwargs:
            return model
        return model.clone(transform=model_transform(config))

    def init_variables(self, model, config, rng) -> dict:
        """Variables from a small dummy batch (Mask R-CNN's do not depend on the size)."""
        del config
        dummy = jnp.zeros((1, INIT_SIZE, INIT_SIZE, 3), jnp.float32)
        variables = model.init({"params": rng}, dummy, train=False)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    def train_stream(
        self, source, config, *, start_step: int = 0, process_index: int = 0, process_count=1
    ):
        """:func:`segjax.input.pipeline.train_iterator` with the instance augmentation
        (:func:`segjax.input.pipeline.instance_train_transform`): fixed-shape fields."""
        return pipeline.train_iterator(
            source,
            config,
            transform=pipeline.instance_train_transform(config),
            start_step=start_step,
            process_index=process_index,
            process_count=process_count,
        )

    def loss_fn(self, model, config) -> Callable:
        """``(params, batch_stats, batch, rng) → (loss, (batch_stats, terms))``: the sum of
        torchvision's five losses and each of them; the frozen BatchNorm statistics are only
        read."""
        from segjax.models.maskrcnn import losses as maskrcnn_losses  # optax: training only

        settings = loss_config(config)

        def fn(params, batch_stats, batch, rng):
            variables = {"params": params, "batch_stats": batch_stats}
            total, terms = maskrcnn_losses.maskrcnn_losses(
                model, variables, batch, rng, config=settings
            )
            return total, (batch_stats, terms)

        return fn

    @property
    def loss_fields(self) -> tuple[str, ...]:
        """Batch fields the loss reads besides ``image``."""
        return LOSS_FIELDS

    def trainable(self, model) -> Callable:
        """``params → bool tree``: False for the layers torchvision freezes."""
        return lambda params: trainable_mask(model, params)

    def batch_counts(self, host_batch: dict) -> dict[str, int]:
        """``{"dropped": n}``: instances beyond ``data.instances.max_instances`` the pipeline
        dropped from this process's batch (``overflow="drop_smallest"``)."""
        return {"dropped": int(np.sum(host_batch.get("num_dropped", 0)))}

    def count_lines(self, counts: dict[str, int], config) -> list[str]:
        """One line when instances were dropped since the last log line."""
        dropped = counts.get("dropped", 0)
        if not dropped:
            return []
        return [
            f"dropped the {dropped} smallest instance(s) of images with more than "
            f"data.instances.max_instances={config.data.instances.max_instances} "
            "since the last log line (data.instances.overflow='drop_smallest')"
        ]

    def eval_stream(self, source, config, split, *, process_index=0, process_count=1):
        """:func:`segjax.input.pipeline.instance_eval_stream`, its COCO backend
        (``config.eval.coco_backend``) checked here, at start-up, not after an evaluation
        pass."""
        stream = pipeline.instance_eval_stream(
            source, config, split, process_index=process_index, process_count=process_count
        )
        coco_eval.check_backend(stream.coco_backend)
        return stream

    def compile_eval_step(self, model, config, mesh, options=None) -> Callable:
        """``(variables, batch) → detections`` (boxes in original pixels, 28×28 masks), jitted
        under ``config``'s convolution switch with the detections split over the batch.
        ``options`` (semantic inference modes) do not apply: whole resized images are run."""
        del options

        def forward(variables, batch):
            return model.apply(
                variables, batch["image"], batch["image_size"], batch["original_size"]
            )

        return runtime.jit(forward, config, out_shardings=sharding.batch_sharding(mesh))

    def evaluate(self, eval_step, variables, stream, mesh, keep_preds: int = 0):
        """Runs ``eval_step`` over every batch of ``stream`` (an
        :class:`~segjax.input.pipeline.InstanceEvalStream`) and scores the detections of every
        image of every process (:func:`segjax.evaluation.coco_eval.gather`)."""
        evaluator = coco_eval.CocoEvaluator.for_dataset(stream.info, backend=stream.coco_backend)
        kept = []
        for batch in stream:
            inputs = sharding.host_to_global({k: batch[k] for k in EVAL_INPUTS}, mesh)
            out = eval_step(variables, inputs)
            detections = {k: sharding.local_rows(v) for k, v in out.items()}
            for i in np.flatnonzero(batch["valid"]):
                gt, dt = batch["ground_truth"][i], _detections_of(detections, i)
                image_id, size = batch["id"][i], batch["original_size"][i]
                evaluator.add_image(image_id, size, gt, dt, pasted=False)
                if len(kept) < keep_preds:
                    kept.append((gt["image"], gt, _pasted(dt, size)))
        evaluator = coco_eval.gather(evaluator)
        return InstanceEvalResult(evaluator.evaluate(), len(evaluator.images), kept)

    def log_line(self, summary: dict) -> str:
        """The headline numbers: mask and box AP."""
        parts = [
            f"{label} {100 * summary[key]:.2f}"
            for label, key in (("mask AP", "segm/AP"), ("box AP", "bbox/AP"))
            if key in summary
        ]
        return " ".join(parts)

    def tables(self, summary: dict, info) -> list[str]:
        """The COCO statistics table (:func:`segjax.evaluation.coco_eval.format_table`)."""
        del info
        return [coco_eval.format_table(summary)]

    def write_images(self, logger: logs.MetricLogger, step: int, examples, info, config):
        """(ground truth | detections) overlays to TensorBoard."""
        del config
        strips = [_ground_truth_and_detections(*example, info.class_names) for example in examples]
        logger.pictures(step, strips)

    def inference_options(self, config, flags, *, instead: str = ""):
        """None: whole resized images are run. Raises ConfigError naming the inference flags
        given (all semantic-segmentation options); ``instead`` names the ones that apply."""
        given = [f"--{name}" for name, holder in vars(flags).items() if holder.present]
        if given:
            hint = f" (use {instead})" if instead else ""
            raise ConfigError(
                f"{', '.join(given)}: semantic-segmentation options; the instance model "
                f"{config.model.name!r} predicts whole images{hint}"
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
        """A COCO results JSON, an instance-id PNG and an overlay per image
        (:func:`segjax.tasks.instance_outputs.image_writer`).

        Raises:
          ConfigError: inference ``options`` given (they are for semantic models).
        """
        if options is not None:
            raise ConfigError(
                f"segjax.predict: inference options {options} are for semantic models; "
                f"{type(model).__name__} predicts whole images"
            )
        return instance_outputs.image_writer(
            config, variables, model, output_dir, score_threshold=score_threshold, alpha=alpha
        )


def _pasted(detections: dict, image_hw) -> dict:
    """The valid detections with masks pasted at ``image_hw`` (probabilities)."""
    keep = detections["valid"]
    out = {k: v[keep] for k, v in detections.items() if k != "valid"}
    out["masks"] = paste_masks(out["masks"], out["boxes"], tuple(int(s) for s in image_hw))
    return out


def _ground_truth_and_detections(image, gt: dict, detections: dict, names) -> np.ndarray:
    """One picture: the ground truth (left) and the detections (right) over ``image``."""
    valid = gt.get("instance_valid", np.ones(len(gt["labels"]), bool))
    truth = {
        "boxes": gt["boxes"][valid],
        "labels": gt["labels"][valid],
        "scores": np.ones(int(valid.sum()), np.float32),
    }
    left = visualize.instance_overlay(
        image, visualize.paint_instances(gt["masks"][valid] > 0), truth, names, 0.0
    )
    shown = detections["scores"] >= VIS_SCORE_THRESHOLD
    masks = detections["masks"][shown] > coco_eval.MASK_THRESHOLD
    right = visualize.instance_overlay(
        image,
        visualize.paint_instances(masks),
        {k: v[shown] for k, v in detections.items()},
        names,
        VIS_SCORE_THRESHOLD,
    )
    return np.concatenate([left, right], axis=1)
