"""From box-head outputs to final detections, and masks for them — static shapes, per image.

torchvision's ``RoIHeads.postprocess_detections``: softmax over the class logits; every
proposal's per-class deltas decoded (``BoxCoder`` weights 10, 10, 5, 5) and clipped to the
image; the background column dropped, so each (proposal, class) pair is a candidate; candidates
with score ≤ ``score_thresh`` or a side < ``min_size`` dropped; NMS at ``nms_thresh`` within each
class; the best ``detections_per_img`` kept in descending score. Here "dropped" is a validity
mask, and the class-aware NMS runs over all ``P·(C − 1)`` candidates at once
(:func:`segjax.ops.nms.batched_nms`: tiled greedy NMS, O((max_output + tile)·tile) memory, one
loop step per tile of 256 boxes), so nothing is
approximated: the result is torchvision's, padded to ``detections_per_img`` with ``valid``.

``maskrcnn_inference``: the sigmoid of each detection's own-class mask logit.
"""

import dataclasses

import jax
import jax.numpy as jnp

from segjax.ops import boxes as box_ops
from segjax.ops import nms as nms_ops


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
    """torchvision's ``RoIHeads`` inference settings.

    Attributes:
      score_thresh: minimum class probability of a detection (0.05; strictly greater).
      nms_thresh: per-class NMS IoU threshold (0.5).
      detections_per_img: detections kept per image (100).
      min_size: minimum box side after clipping (1e-2).
      bbox_reg_weights: the box coder's weights (10, 10, 5, 5).
    """

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    min_size: float = 1e-2
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)

    def box_coder(self) -> box_ops.BoxCoder:
        """The coder of the box head's regression."""
        return box_ops.BoxCoder(weights=self.bbox_reg_weights)


def detect(
    class_logits: jax.Array,
    box_regression: jax.Array,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    image_size: jax.Array,
    config: DetectionConfig,
) -> dict[str, jax.Array]:
    """Final detections of ONE image (vmap over the batch).

    Args:
      class_logits: ``[P, C]`` (C classes including background 0).
      box_regression: ``[P, 4·C]``.
      proposals: ``[P, 4]`` the boxes the head saw.
      proposal_valid: bool ``[P]``.
      image_size: int ``[2]`` (height, width) before padding; boxes are clipped to it.
      config: the settings.

    Returns:
      ``{"boxes" [D, 4], "scores" [D], "labels" int32 [D], "valid" bool [D]}`` with
      ``D = config.detections_per_img``, in descending score; invalid entries are zeros.
    """
    num_classes = class_logits.shape[-1]
    scores = jax.nn.softmax(class_logits, axis=-1)[:, 1:]
    boxes = config.box_coder().decode(box_regression, proposals)[:, 1:]
    boxes = box_ops.clip_boxes(boxes, image_size[0], image_size[1])
    labels = jnp.broadcast_to(jnp.arange(1, num_classes, dtype=jnp.int32), scores.shape)
    valid = (
        proposal_valid[:, None]
        & (scores > config.score_thresh)
        & box_ops.boxes_min_size_mask(boxes, config.min_size)
    )
    boxes, scores, labels, valid = (
        boxes.reshape(-1, 4),
        scores.reshape(-1),
        labels.reshape(-1),
        valid.reshape(-1),
    )
    keep, keep_valid = nms_ops.batched_nms(
        boxes,
        scores,
        labels,
        iou_threshold=config.nms_thresh,
        max_output=config.detections_per_img,
        valid=valid,
    )
    return {
        "boxes": jnp.where(keep_valid[:, None], boxes[keep], 0),
        "scores": jnp.where(keep_valid, scores[keep], 0),
        "labels": jnp.where(keep_valid, labels[keep], 0),
        "valid": keep_valid,
    }


def mask_probabilities(mask_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Every RoI's own-class probability: logits ``[..., M, M, C]``, labels → ``[..., M, M]``."""
    own = jnp.take_along_axis(mask_logits, labels[..., None, None, None], axis=-1)[..., 0]
    return jax.nn.sigmoid(own)


def resize_boxes(boxes: jax.Array, from_size: jax.Array, to_size: jax.Array) -> jax.Array:
    """torchvision's ``resize_boxes``: ``boxes [..., 4]`` from an image of ``from_size`` (h, w)
    to one of ``to_size`` (float32 ratios ``to / from`` per axis)."""
    to_size = jnp.asarray(to_size, jnp.float32)
    from_size = jnp.asarray(from_size, jnp.float32)
    ratio_h = to_size[..., 0] / from_size[..., 0]
    ratio_w = to_size[..., 1] / from_size[..., 1]
    scale = jnp.stack([ratio_w, ratio_h, ratio_w, ratio_h], axis=-1)
    return boxes * scale[..., None, :]
