"""Mask R-CNN's five training losses as torchvision computes them, static-shape and jittable.

:func:`maskrcnn_losses` is the training forward of a batch (the instance contract: ``image``,
``image_size``, ``boxes``, ``labels``, ``masks``, ``is_crowd``, ``instance_valid``, ground truth
padded to ``M``), returning ``(total, terms)`` with torchvision's names and total = their sum:

* RPN (``loss_objectness``, ``loss_rpn_box_reg``): every anchor of the padded batch matched by
  IoU (fg ``≥ 0.7``, bg ``< 0.3``, low-quality matches kept), 256 sampled per image at half
  positives; objectness BCE-with-logits averaged over the sampled anchors of the batch; box
  smooth-L1 (β = 1/9) of the positives' deltas (coder weights 1, 1, 1, 1) summed and divided
  by the number of sampled anchors of the batch.
* Box head (``loss_classifier``, ``loss_box_reg``): the training proposals (no gradient) with
  the ground-truth boxes appended, matched at 0.5 (no low-quality matches), 512 sampled per
  image at a quarter positives; cross-entropy averaged over the sampled RoIs; smooth-L1
  (β = 1/9) of each positive's own-class deltas (weights 10, 10, 5, 5) summed and divided by
  the number of sampled RoIs.
* Mask head (``loss_mask``): each sampled positive's own-class 28×28 logits against the
  matched mask RoIAligned onto it (:func:`~segjax.models.maskrcnn.targets.project_masks`),
  BCE-with-logits averaged over the positives' pixels.

Crowd ground truth is never matched, and negatives mostly inside it are ignored
(:mod:`~segjax.models.maskrcnn.targets`). The matching and sampling sit apart from the losses:
:func:`losses_with_samplers` takes the samplers (and optionally the proposals) as arguments, so
a test can hand it torchvision's own sampled indices; :func:`rpn_losses`,
:func:`box_head_losses` and :func:`mask_loss` take sampled values. Parameters that torchvision
freezes (:func:`~segjax.models.maskrcnn.model.trainable_mask`) get a zero gradient, and the
frozen BatchNorm statistics (``batch_stats``) are only read.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from segjax.models.maskrcnn import targets
from segjax.models.maskrcnn.model import MaskRCNN, trainable_mask
from segjax.models.maskrcnn.rpn import RPN_CODER
from segjax.models.maskrcnn.targets import Sample
from segjax.ops import boxes as box_ops

LOSS_NAMES = (
    "loss_objectness",
    "loss_rpn_box_reg",
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
)
BATCH_FIELDS = ("image", "image_size", "boxes", "labels", "masks", "is_crowd", "instance_valid")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """torchvision's ``MaskRCNN`` training settings (its constructor's defaults).

    Attributes:
      rpn_fg_iou_thresh: anchor IoU at or above which it is positive (0.7).
      rpn_bg_iou_thresh: anchor IoU below which it is negative (0.3).
      rpn_batch_size_per_image: anchors sampled per image (256).
      rpn_positive_fraction: largest fraction of positives among them (0.5).
      box_fg_iou_thresh: RoI IoU at or above which it is positive (0.5).
      box_bg_iou_thresh: RoI IoU below which it is negative (0.5).
      box_batch_size_per_image: RoIs sampled per image (512).
      box_positive_fraction: largest fraction of positives among them (0.25).
      crowd_ioa_thresh: a would-be negative with this fraction of its area inside a crowd box is
        ignored (segjax's addition; torchvision has no crowd regions in training).
      smooth_l1_beta: of both box losses (1/9).
    """

    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    crowd_ioa_thresh: float = targets.CROWD_IOA_THRESH
    smooth_l1_beta: float = 1 / 9

    def mask_rois(self) -> int:
        """RoIs the mask head sees per image: the most positives the RoI sample can hold."""
        return int(self.box_batch_size_per_image * self.box_positive_fraction)


class Samplers(NamedTuple):
    """The two samplers: sampler labels ``[B, N]`` (≥ 1 positive, 0 negative, < 0 ignored) →
    a :class:`~segjax.models.maskrcnn.targets.Sample` ``[B, S]`` (positives in the first slots).

    Attributes:
      rpn: over the anchors, ``S = rpn_batch_size_per_image``.
      roi: over proposals + ground truth, ``S = box_batch_size_per_image``.
    """

    rpn: Callable[[jax.Array], Sample]
    roi: Callable[[jax.Array], Sample]


def random_samplers(rng: jax.Array, config: LossConfig) -> Samplers:
    """torchvision's balanced random sampling, one key per stage and image from ``rng``."""
    rpn_key, roi_key = jax.random.split(rng)

    def sampler(key, batch_size, positive_fraction):
        sample_one = functools.partial(
            targets.sample_balanced, batch_size=batch_size, positive_fraction=positive_fraction
        )

        def sample(labels):
            return jax.vmap(sample_one)(jax.random.split(key, labels.shape[0]), labels)

        return sample

    return Samplers(
        sampler(rpn_key, config.rpn_batch_size_per_image, config.rpn_positive_fraction),
        sampler(roi_key, config.box_batch_size_per_image, config.box_positive_fraction),
    )


def smooth_l1(predictions: jax.Array, targets_: jax.Array, beta: float) -> jax.Array:
    """PyTorch's elementwise ``smooth_l1_loss``: Huber with ``delta = beta``, divided by beta."""
    return optax.huber_loss(predictions, targets_, delta=beta) / beta


def _take(values: jax.Array, index: jax.Array) -> jax.Array:
    """``values[b, index[b, s]]`` for ``values [B, N, ...]`` and ``index [B, S]``."""
    return jax.vmap(lambda v, i: v[i])(values, index)


def _count(valid: jax.Array) -> jax.Array:
    """The number of true entries as float32, at least 1 (an empty sample gives 0 losses)."""
    return jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def rpn_losses(
    objectness: jax.Array,
    deltas: jax.Array,
    anchors: jax.Array,
    gt_boxes: jax.Array,
    matches: jax.Array,
    sample: Sample,
    *,
    beta: float = 1 / 9,
) -> tuple[jax.Array, jax.Array]:
    """``(loss_objectness, loss_rpn_box_reg)`` of sampled anchors (torchvision's ``compute_loss``).

    Args:
      objectness: logits ``[B, A]`` (all anchors, the head's order).
      deltas: ``[B, A, 4]``.
      anchors: ``[A, 4]``, the same for every image of the padded batch.
      gt_boxes: ``[B, M, 4]``.
      matches: int ``[B, A]`` match codes (:func:`~segjax.models.maskrcnn.targets.match_boxes`).
      sample: ``[B, S]``; its positives are the objectness targets 1, the other valid slots 0.
      beta: smooth-L1 β.
    """
    count = _count(sample.valid)
    logits = jnp.take_along_axis(objectness, sample.index, axis=1)
    bce = optax.sigmoid_binary_cross_entropy(logits, sample.positive.astype(jnp.float32))
    loss_objectness = jnp.sum(jnp.where(sample.valid, bce, 0)) / count
    matched = jnp.maximum(jnp.take_along_axis(matches, sample.index, axis=1), 0)
    regression_targets = RPN_CODER.encode(_take(gt_boxes, matched), anchors[sample.index])
    box = smooth_l1(_take(deltas, sample.index), regression_targets, beta)
    return loss_objectness, jnp.sum(jnp.where(sample.positive[..., None], box, 0)) / count


def box_head_losses(
    class_logits: jax.Array,
    box_regression: jax.Array,
    rois: jax.Array,
    labels: jax.Array,
    matched_gt_boxes: jax.Array,
    sample: Sample,
    *,
    box_coder: box_ops.BoxCoder,
    beta: float = 1 / 9,
) -> tuple[jax.Array, jax.Array]:
    """``(loss_classifier, loss_box_reg)`` of sampled RoIs (torchvision's ``fastrcnn_loss``).

    Args:
      class_logits: ``[B, S, C]`` of the sampled RoIs.
      box_regression: ``[B, S, 4·C]``.
      rois: ``[B, S, 4]`` the sampled RoIs.
      labels: int ``[B, S]`` their matched classes (read at the positives only).
      matched_gt_boxes: ``[B, S, 4]`` their matched ground truth (read at the positives).
      sample: the slots' ``positive`` and ``valid`` flags.
      box_coder: the box head's coder (weights 10, 10, 5, 5).
      beta: smooth-L1 β.
    """
    count = _count(sample.valid)
    classes = jnp.where(sample.positive, labels, 0).astype(jnp.int32)
    ce = optax.softmax_cross_entropy_with_integer_labels(class_logits, classes)
    loss_classifier = jnp.sum(jnp.where(sample.valid, ce, 0)) / count
    per_class = box_regression.reshape(*box_regression.shape[:-1], -1, 4)
    own = jnp.take_along_axis(per_class, classes[..., None, None], axis=-2)[..., 0, :]
    box = smooth_l1(own, box_coder.encode(matched_gt_boxes, rois), beta)
    return loss_classifier, jnp.sum(jnp.where(sample.positive[..., None], box, 0)) / count


def mask_loss(
    mask_logits: jax.Array, labels: jax.Array, mask_targets: jax.Array, valid: jax.Array
) -> jax.Array:
    """``loss_mask``: BCE-with-logits of each valid RoI's own-class logits, mean over pixels.

    ``mask_logits [B, K, R, R, C]``, ``labels`` int ``[B, K]``, ``mask_targets [B, K, R, R]``,
    ``valid`` bool ``[B, K]`` (the positives); 0 when there are none (as torchvision).
    """
    own = jnp.take_along_axis(mask_logits, labels[..., None, None, None], axis=-1)[..., 0]
    bce = optax.sigmoid_binary_cross_entropy(own, mask_targets)
    pixels = mask_targets.shape[-1] * mask_targets.shape[-2]
    return jnp.sum(jnp.where(valid[..., None, None], bce, 0)) / (_count(valid) * pixels)


def freeze(model: MaskRCNN, variables: Any) -> Any:
    """``variables`` with the parameters torchvision freezes behind ``stop_gradient``.

    Their gradient is then exactly 0 and XLA drops the backward pass through them.
    """
    mask = trainable_mask(model, variables["params"])
    params = jax.tree_util.tree_map(
        lambda p, train: p if train else jax.lax.stop_gradient(p), variables["params"], mask
    )
    return {**variables, "params": params}


def check_batch(batch: dict) -> None:
    """Raises ValueError naming the instance fields missing from ``batch``."""
    missing = [k for k in BATCH_FIELDS if k not in batch]
    if missing:
        raise ValueError(
            f"maskrcnn_losses: batch lacks {', '.join(missing)}; expected the instance fields "
            f"{', '.join(BATCH_FIELDS)}"
        )


def _ground_truth(batch: dict) -> dict[str, jax.Array]:
    """The ground truth that matches (valid, not crowd) and the crowd regions, ``[B, M]`` each."""
    valid = jnp.asarray(batch["instance_valid"], bool)
    crowd = jnp.asarray(batch["is_crowd"], bool)
    return {
        "boxes": jnp.asarray(batch["boxes"], jnp.float32),
        "labels": jnp.asarray(batch["labels"], jnp.int32),
        "matchable": valid & ~crowd,
        "crowd": valid & crowd,
    }


def _match(gt, boxes, box_valid, *, high, low, allow_low_quality, crowd_ioa_thresh):
    """Match codes ``[B, N]`` of ``boxes [B, N, 4]`` (or one ``[N, 4]`` set for every image)."""

    def one_image(gt_boxes, matchable, crowd, image_boxes, valid):
        matches = targets.match_boxes(
            gt_boxes,
            matchable,
            image_boxes,
            valid,
            high=high,
            low=low,
            allow_low_quality=allow_low_quality,
        )
        return targets.ignore_in_crowd(matches, image_boxes, gt_boxes, crowd, crowd_ioa_thresh)

    box_axis = 0 if boxes.ndim == 3 else None
    return jax.vmap(one_image, in_axes=(0, 0, 0, box_axis, box_axis))(
        gt["boxes"], gt["matchable"], gt["crowd"], boxes, box_valid
    )


def _rpn_stage(objectness, deltas, image_shape, gt, cells, samplers, config):
    """The RPN's losses and what the debugging details keep of its matching and sampling."""
    batch_size = objectness[0].shape[0]
    feature_shapes = [o.shape[1:3] for o in objectness]
    anchors = jnp.asarray(targets.all_anchors(image_shape, feature_shapes, cells))
    flat_objectness = jnp.concatenate([o.reshape(batch_size, -1) for o in objectness], axis=1)
    flat_deltas = jnp.concatenate([d.reshape(batch_size, -1, 4) for d in deltas], axis=1)
    matches = _match(
        gt,
        anchors,
        jnp.ones(anchors.shape[:1], bool),
        high=config.rpn_fg_iou_thresh,
        low=config.rpn_bg_iou_thresh,
        allow_low_quality=True,
        crowd_ioa_thresh=config.crowd_ioa_thresh,
    )
    sample = samplers.rpn(targets.match_labels(matches))
    losses = rpn_losses(
        flat_objectness,
        flat_deltas,
        anchors,
        gt["boxes"],
        matches,
        sample,
        beta=config.smooth_l1_beta,
    )
    return losses, {"rpn_matches": matches, "rpn_sample": sample}


def _roi_samples(proposals, proposal_valid, gt, samplers, config):
    """RoIs (proposals + ground truth), their matching and sample, and the sampled values."""
    rois = jnp.concatenate([jax.lax.stop_gradient(proposals), gt["boxes"]], axis=1)
    roi_valid = jnp.concatenate([proposal_valid, gt["matchable"]], axis=1)
    matches = _match(
        gt,
        rois,
        roi_valid,
        high=config.box_fg_iou_thresh,
        low=config.box_bg_iou_thresh,
        allow_low_quality=False,
        crowd_ioa_thresh=config.crowd_ioa_thresh,
    )
    labels = jax.vmap(targets.match_labels)(matches, gt["labels"])
    sample = samplers.roi(labels)
    matched = jnp.maximum(jnp.take_along_axis(matches, sample.index, axis=1), 0)
    sampled = {
        "rois": _take(rois, sample.index),
        "labels": jnp.take_along_axis(labels, sample.index, axis=1),
        "matched": matched,
        "gt_boxes": _take(gt["boxes"], matched),
    }
    return sampled, sample, {"rois": rois, "roi_matches": matches, "roi_sample": sample}


def _mask_stage(model, variables, features, image_shape, batch, sampled, sample, config):
    """``loss_mask`` of the sampled positives, which fill the first slots of the RoI sample."""
    k = config.mask_rois()
    mask_rois, mask_labels = sampled["rois"][:, :k], sampled["labels"][:, :k]
    mask_logits = model.apply(
        variables, features, mask_rois, image_shape, method=MaskRCNN.mask_head_on_features
    )
    sizes = jnp.asarray(batch["image_size"], jnp.int32)
    mask_targets = jax.vmap(targets.project_masks, in_axes=(0, 0, 0, 0, None))(
        batch["masks"], sizes, mask_rois, sampled["matched"][:, :k], mask_logits.shape[-2]
    )
    return mask_loss(mask_logits, jnp.maximum(mask_labels, 0), mask_targets, sample.positive[:, :k])


def losses_with_samplers(
    model: MaskRCNN,
    variables: Any,
    batch: dict,
    samplers: Samplers,
    *,
    config: LossConfig = LossConfig(),
    proposals: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
    """The training forward with given samplers: ``(total, terms, details)``.

    Args:
      model: the Mask R-CNN.
      variables: its ``params`` and (read-only) ``batch_stats``.
      batch: the instance batch (module docstring; ``image`` is the normalised padded batch).
      samplers: how anchors and RoIs are sampled (:func:`random_samplers`, or fixed indices).
      config: the matching and sampling settings.
      proposals: ``(boxes [B, P, 4], valid [B, P])`` to use instead of the RPN's training
        proposals (a parity test feeds torchvision's).

    Returns:
      ``total`` (the sum of the five terms), ``terms`` keyed by :data:`LOSS_NAMES`, and
      ``details``: the match codes (``rpn_matches [B, A]``, ``roi_matches [B, P + M]``), the
      samples (``rpn_sample``, ``roi_sample``) and ``rois [B, P + M, 4]``.
    """
    check_batch(batch)
    variables = freeze(model, variables)
    images, sizes = batch["image"], jnp.asarray(batch["image_size"], jnp.int32)
    image_shape = tuple(images.shape[1:3])
    gt = _ground_truth(batch)
    features = model.apply(variables, images, method=MaskRCNN.features)
    objectness, deltas, (boxes, _, valid) = model.apply(
        variables, features, sizes, image_shape, method=MaskRCNN.rpn_on_features, train=True
    )
    if proposals is not None:
        boxes, valid = proposals
    rpn_terms, details = _rpn_stage(
        objectness, deltas, image_shape, gt, model.rpn_train.cells(), samplers, config
    )
    sampled, sample, roi_details = _roi_samples(boxes, valid, gt, samplers, config)
    class_logits, box_regression = model.apply(
        variables, features, sampled["rois"], image_shape, method=MaskRCNN.box_head_on_features
    )
    box_terms = box_head_losses(
        class_logits,
        box_regression,
        sampled["rois"],
        sampled["labels"],
        sampled["gt_boxes"],
        sample,
        box_coder=model.detection.box_coder(),
        beta=config.smooth_l1_beta,
    )
    loss_mask = _mask_stage(model, variables, features, image_shape, batch, sampled, sample, config)
    terms = dict(zip(LOSS_NAMES, (*rpn_terms, *box_terms, loss_mask)))
    return sum(terms.values()), terms, {**details, **roi_details}


def maskrcnn_losses(
    model: MaskRCNN,
    variables: Any,
    batch: dict,
    rng: jax.Array,
    *,
    config: LossConfig = LossConfig(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """torchvision's Mask R-CNN training loss of a batch: ``(total, terms)``.

    Args:
      model: the Mask R-CNN.
      variables: ``params`` and ``batch_stats`` (the latter only read: frozen BatchNorm).
      batch: the instance batch (module docstring).
      rng: PRNG key of the anchor and RoI sampling (the trainer folds the step into it).
      config: the matching and sampling settings (torchvision's defaults).

    Returns:
      ``total`` = the sum of the five ``terms`` (:data:`LOSS_NAMES`), float32 scalars.
    """
    total, terms, _ = losses_with_samplers(
        model, variables, batch, random_samplers(rng, config), config=config
    )
    return total, terms
