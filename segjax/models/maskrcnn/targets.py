"""Training targets of Mask R-CNN: matching, balanced sampling and mask targets, static shapes.

torchvision's conventions (``_utils.Matcher``, ``BalancedPositiveNegativeSampler``,
``roi_heads.project_masks_on_boxes``), each a pure per-image function (``vmap`` over the batch):

* :func:`match_boxes` — every box (anchor or RoI) gets its best ground truth by IoU: a match
  index ``≥ 0`` at IoU ``≥ high``, :data:`BELOW_LOW` (negative) below ``low``,
  :data:`BETWEEN` (ignored) in between; with ``allow_low_quality`` each ground truth's best
  boxes (ties included) keep their match whatever the IoU. Ground truth is padded to a static
  ``M`` with a validity mask: padded (and crowd) entries never match; padded boxes are ignored.
* :func:`ignore_in_crowd` — what torchvision does not do: a box that would be a negative but lies
  mostly inside a crowd region (intersection over the box's own area ``≥`` the threshold,
  :data:`CROWD_IOA_THRESH` = 0.7, Detectron's ``CROWD_FILTER_THRESH``) is ignored instead, so
  the unlabelled people of a crowd are not taught as background. Crowd boxes are never matched
  (torchvision's reference drops crowd objects from the targets), so without crowd objects the
  targets are torchvision's.
* :func:`sample_balanced` — a fixed-size sample of ``batch_size`` indices: a uniformly random
  subset of at most ``int(batch_size · positive_fraction)`` positives, in the first slots,
  filled up with random negatives; slots beyond the available boxes are invalid.
* :func:`project_masks` — each RoI's 28×28 mask target: torchvision's ``roi_align`` of the
  matched ground-truth mask onto the RoI (scale 1, ``aligned=False``, adaptive sampling grid
  ``ceil(roi_size / 28)`` per axis), computed exactly as two matrix products per RoI.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.maskrcnn import anchors as anchor_lib
from segjax.ops import boxes as box_ops
from segjax.ops.roi_align import axis_taps

# Match codes of torchvision's Matcher (match indices are >= 0).
BELOW_LOW = -1
BETWEEN = -2
CROWD_IOA_THRESH = 0.7


class Sample(NamedTuple):
    """A fixed-size sample of box indices (one image; leading batch dims after ``vmap``).

    Attributes:
      index: int32 ``[S]`` indices into the image's boxes (0 in invalid slots).
      positive: bool ``[S]``, true for the sampled positives, which fill the first slots.
      valid: bool ``[S]``, true for the sampled slots (positives and negatives).
    """

    index: jax.Array
    positive: jax.Array
    valid: jax.Array


def all_anchors(
    image_shape: Sequence[int], feature_shapes: Sequence[Sequence[int]], cells
) -> np.ndarray:
    """Every anchor ``[A, 4]`` of the padded batch, levels concatenated (the RPN head's order)."""
    return np.concatenate(
        [anchor_lib.grid_anchors(image_shape, fs, c) for fs, c in zip(feature_shapes, cells)]
    )


def match_boxes(
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    boxes: jax.Array,
    box_valid: jax.Array | None = None,
    *,
    high: float,
    low: float,
    allow_low_quality: bool,
) -> jax.Array:
    """torchvision's ``Matcher`` on the IoU of ``gt_boxes [M, 4]`` and ``boxes [N, 4]``.

    Args:
      gt_boxes: ground truth of one image, padded.
      gt_valid: bool ``[M]``, the entries that can be matched (not padding, not crowd).
      boxes: anchors or RoIs.
      box_valid: bool ``[N]``; invalid boxes (padded proposals) are :data:`BETWEEN`.
      high: IoU at or above which a box matches its best ground truth.
      low: IoU below which a box is :data:`BELOW_LOW`.
      allow_low_quality: each ground truth's highest-IoU boxes (ties included) keep their
        best match even below ``high``. Unlike torchvision, only where that IoU is positive: a
        ground truth that overlaps nothing would otherwise make every box with IoU 0 positive.

    Returns:
      int32 ``[N]``: the matched ground-truth index, :data:`BELOW_LOW` or :data:`BETWEEN`.
      With no valid ground truth every valid box is :data:`BELOW_LOW` (a background image).
    """
    if box_valid is None:
        box_valid = jnp.ones(boxes.shape[:1], bool)
    pair_valid = gt_valid[:, None] & box_valid[None, :]
    # -1 is below any IoU, so padding is never anyone's best match.
    quality = jnp.where(pair_valid, box_ops.box_iou(gt_boxes, boxes), -1.0)
    best = jnp.max(quality, axis=0)
    best_gt = jnp.argmax(quality, axis=0).astype(jnp.int32)
    matches = jnp.where(best < low, BELOW_LOW, jnp.where(best < high, BETWEEN, best_gt))
    if allow_low_quality:
        best_per_gt = jnp.max(quality, axis=1, keepdims=True)
        is_best = pair_valid & (quality == best_per_gt) & (best_per_gt > 0)
        matches = jnp.where(jnp.any(is_best, axis=0), best_gt, matches)
    return jnp.where(box_valid, matches, BETWEEN)


def ignore_in_crowd(
    matches: jax.Array,
    boxes: jax.Array,
    crowd_boxes: jax.Array,
    crowd_valid: jax.Array,
    threshold: float = CROWD_IOA_THRESH,
) -> jax.Array:
    """``matches`` with the negatives mostly inside a crowd box turned to :data:`BETWEEN`.

    "Mostly inside": intersection / the box's own area ``≥ threshold`` for some valid crowd
    box (``crowd_boxes [M, 4]``, ``crowd_valid [M]``). Boxes of no area are left alone.
    """
    top_left = jnp.maximum(boxes[:, None, :2], crowd_boxes[None, :, :2])
    bottom_right = jnp.minimum(boxes[:, None, 2:], crowd_boxes[None, :, 2:])
    overlap = jnp.clip(bottom_right - top_left, 0)
    inter = overlap[..., 0] * overlap[..., 1]
    area = box_ops.box_area(boxes)[:, None]
    inside = (inter >= threshold * area) & (area > 0) & crowd_valid[None, :]
    return jnp.where((matches == BELOW_LOW) & jnp.any(inside, axis=1), BETWEEN, matches)


def match_labels(matches: jax.Array, gt_labels: jax.Array | None = None) -> jax.Array:
    """Sampler labels from match codes: the matched class (1 without ``gt_labels``: the RPN's
    objectness) for matches, 0 for :data:`BELOW_LOW`, −1 (ignored) for :data:`BETWEEN`."""
    if gt_labels is None:
        positive = jnp.ones_like(matches)
    else:
        positive = gt_labels.astype(jnp.int32)[jnp.maximum(matches, 0)]
    return jnp.where(matches >= 0, positive, jnp.where(matches == BELOW_LOW, 0, -1))


def sample_balanced(
    rng: jax.Array, labels: jax.Array, *, batch_size: int, positive_fraction: float
) -> Sample:
    """torchvision's ``BalancedPositiveNegativeSampler`` for one image, with a static size.

    Args:
      rng: PRNG key.
      labels: int ``[N]``: ``≥ 1`` positive, 0 negative, ``< 0`` ignored.
      batch_size: slots ``S`` (torchvision's ``batch_size_per_image``).
      positive_fraction: at most ``int(S · positive_fraction)`` positives are taken.

    Returns:
      A :class:`Sample` ``[S]``: ``min(#positives, int(S·fraction))`` random positives in the
      first slots, then ``min(#negatives, S − positives taken)`` random negatives; each a
      uniformly random subset (the ``k`` largest of i.i.d. uniform keys).
    """
    n = labels.shape[0]
    max_positive = int(batch_size * positive_fraction)
    positive_key, negative_key = jax.random.split(rng)
    is_positive, is_negative = labels >= 1, labels == 0

    def random_first(key, members, k):
        # Members draw keys in [0, 1); the rest sort after them at -1.
        keys = jnp.where(members, jax.random.uniform(key, (n,)), -1.0)
        return jax.lax.top_k(keys, max(min(k, n), 1))[1]

    positives = random_first(positive_key, is_positive, max_positive)
    negatives = random_first(negative_key, is_negative, batch_size)
    num_positive = jnp.minimum(jnp.sum(is_positive), max_positive)
    num_negative = jnp.minimum(jnp.sum(is_negative), batch_size - num_positive)
    slot = jnp.arange(batch_size)
    index = jnp.where(
        slot < num_positive,
        positives[jnp.clip(slot, 0, positives.shape[0] - 1)],
        negatives[jnp.clip(slot - num_positive, 0, negatives.shape[0] - 1)],
    )
    valid = slot < num_positive + num_negative
    return Sample(jnp.where(valid, index, 0).astype(jnp.int32), slot < num_positive, valid)


def _adaptive_axis_matrix(start, length, bins: int, max_grid: int, size, extent: int):
    """The ``[bins, extent]`` matrix of RoIAlign along one axis with the adaptive grid.

    Bin ``p`` averages ``g = ceil(length / bins)`` samples at
    ``start + p·bin + (i + 0.5)·bin / g`` (the kernel's order of operations), each read
    bilinearly with the kernel's boundary rules on a map of ``size`` pixels (traced: the
    image's size inside the padding); ``g`` is capped at the static ``max_grid``.
    """
    bin_size = length / bins
    grid = jnp.clip(jnp.ceil(length / bins), 1, max_grid)
    p = jnp.arange(bins, dtype=jnp.float32)[:, None]
    i = jnp.arange(max_grid, dtype=jnp.float32)[None, :]
    coords = start + p * bin_size + (i + 0.5) * bin_size / grid  # [bins, max_grid]
    index, weight = axis_taps(coords, size)  # [bins, 2·max_grid], low/high taps side by side
    used = jnp.repeat(i < grid, 2, axis=1)
    weight = jnp.where(used, weight, 0) / grid
    rows = jnp.broadcast_to(jnp.arange(bins)[:, None], index.shape)
    return jnp.zeros((bins, extent), jnp.float32).at[rows, index].add(weight)


def project_masks(
    masks: jax.Array,
    image_size: jax.Array,
    rois: jax.Array,
    matches: jax.Array,
    resolution: int = 28,
) -> jax.Array:
    """Mask targets ``[K, R, R]`` float32: each RoI's matched ground-truth mask RoIAligned on it.

    torchvision's ``project_masks_on_boxes``: ``roi_align(gt_masks[:, None], rois, (R, R),
    1.0)`` with the adaptive sampling grid and ``aligned=False`` on masks of the image's size.

    Args:
      masks: ``[M, Hp, Wp]`` 0/1 ground-truth masks of one image, zero-padded.
      image_size: int ``[2]`` (height, width) of the image inside the padding; sampling treats
        it as the mask's border (as torchvision's unpadded masks), so the padding is never read.
      rois: ``[K, 4]`` boxes in image pixels.
      matches: int ``[K]``, the ground-truth index of each RoI (clamped into range).
      resolution: ``R`` (28).

    The sampling grid is capped at ``ceil(2·Hp / R)`` (``ceil(2·Wp / R)``), which only a RoI
    twice as tall (wide) as the padded image would exceed. Each RoI is two small matrix products
    (``rows [R, Hp] @ mask [Hp, Wp] @ cols [Wp, R]``), one RoI per loop step.
    """
    _, hp, wp = masks.shape
    max_h, max_w = math.ceil(2 * hp / resolution), math.ceil(2 * wp / resolution)
    rois = jax.lax.stop_gradient(rois.astype(jnp.float32))
    matches = jnp.clip(matches, 0, masks.shape[0] - 1)

    def one_roi(args):
        roi, match = args
        x1, y1, x2, y2 = roi[0], roi[1], roi[2], roi[3]
        # aligned=False: malformed RoIs are forced to 1×1 pixel, as in the kernel.
        height, width = jnp.maximum(y2 - y1, 1.0), jnp.maximum(x2 - x1, 1.0)
        rows = _adaptive_axis_matrix(y1, height, resolution, max_h, image_size[0], hp)
        cols = _adaptive_axis_matrix(x1, width, resolution, max_w, image_size[1], wp)
        mask = jax.lax.dynamic_index_in_dim(masks, match, keepdims=False).astype(jnp.float32)
        along_rows = jnp.matmul(rows, mask, precision=jax.lax.Precision.HIGHEST)
        return jnp.matmul(along_rows, cols.T, precision=jax.lax.Precision.HIGHEST)

    return jax.lax.map(one_roi, (rois, matches))
