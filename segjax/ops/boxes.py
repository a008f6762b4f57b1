"""Box arithmetic of the detection models, in torchvision's conventions, jit- and vmap-friendly.

Boxes are ``(x1, y1, x2, y2)`` in pixels with no ``+1`` on widths (torchvision ≥ 0.3): a box
``(0, 0, 10, 10)`` is 10 wide. :func:`box_area`, :func:`box_iou`, :func:`clip_boxes`,
:func:`boxes_min_size_mask` (``remove_small_boxes`` as a validity mask, so shapes stay static) and
:class:`BoxCoder` (the ``(dx, dy, dw, dh)`` regression parametrisation of R-CNN). Degenerate
boxes never produce NaN here: torchvision divides by zero in those cases, we return 0 instead and
say so where it happens.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from segjax.errors import ConfigError


def box_area(boxes: jax.Array) -> jax.Array:
    """``(x2 − x1)·(y2 − y1)`` of boxes ``[..., 4]`` → ``[...]`` (negative for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator`` where ``denominator > 0``, else 0 — with finite gradients.

    The inner ``where`` keeps the untaken branch finite, so the gradient through the outer
    ``where`` is not poisoned by ``0 / 0`` (the usual double-where pattern).
    """
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1), 0)


def box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """Pairwise intersection over union of ``boxes1 [N, 4]`` and ``boxes2 [M, 4]`` → ``[N, M]``.

    torchvision's ``box_iou`` (intersection = clipped overlap area, union = area₁ + area₂ −
    intersection), except that a pair whose union is not positive (two zero-area boxes) has IoU 0,
    not NaN.
    """
    top_left = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    overlap = jnp.clip(bottom_right - top_left, 0)
    inter = overlap[..., 0] * overlap[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return _safe_divide(inter, union)


def clip_boxes(boxes: jax.Array, height, width) -> jax.Array:
    """Boxes ``[..., 4]`` with x clipped to ``[0, width]`` and y to ``[0, height]``.

    torchvision's ``clip_boxes_to_image``. ``height`` and ``width`` may be Python numbers or
    (traced) scalars, e.g. each image's size before padding under ``vmap``.
    """
    x = jnp.clip(boxes[..., 0::2], 0, width)
    y = jnp.clip(boxes[..., 1::2], 0, height)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def boxes_min_size_mask(boxes: jax.Array, min_size: float) -> jax.Array:
    """True where both sides of a box ``[..., 4]`` are ``>= min_size`` (``remove_small_boxes``).

    torchvision returns the indices of the kept boxes; a mask keeps the shapes static.
    """
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return (widths >= min_size) & (heights >= min_size)


def _centres_and_sizes(boxes: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(ctr_x, ctr_y, width, height)`` of boxes ``[..., 4]``, centre = corner + half the size."""
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


@dataclasses.dataclass(frozen=True)
class BoxCoder:
    """torchvision's ``BoxCoder``: boxes as weighted offsets ``(dx, dy, dw, dh)`` from a reference.

    ``dx = wx·(cx − cx_ref)/w_ref``, ``dy = wy·(cy − cy_ref)/h_ref``, ``dw = ww·log(w/w_ref)``,
    ``dh = wh·log(h/h_ref)``. The RPN uses ``weights=(1, 1, 1, 1)``, the box head
    ``(10, 10, 5, 5)``. Decoding clamps ``dw`` and ``dh`` (after dividing by the weights) at
    ``bbox_xform_clip`` before the exponential so that no box grows more than 1000/16 ×.

    Raises:
      ValueError: ``weights`` is not four positive numbers.
    """

    weights: tuple[float, float, float, float]
    bbox_xform_clip: float = math.log(1000.0 / 16)

    def __post_init__(self):
        weights = tuple(self.weights)
        if len(weights) != 4 or not all(w > 0 for w in weights):
            raise ConfigError(f"BoxCoder weights={self.weights!r}: expected four positive numbers")
        object.__setattr__(self, "weights", tuple(float(w) for w in weights))

    def encode(self, reference_boxes: jax.Array, proposals: jax.Array) -> jax.Array:
        """Regression targets ``[..., 4]`` of ``reference_boxes`` (ground truth) w.r.t. proposals.

        Both are ``[..., 4]`` (broadcast against each other); computed in
        ``reference_boxes.dtype`` as torchvision does. A pair in which either box has a
        non-positive width or height (padding) encodes to 0 instead of torchvision's inf/NaN;
        mask such pairs out of the loss.
        """
        dtype = reference_boxes.dtype
        wx, wy, ww, wh = self.weights
        gt_x, gt_y, gt_w, gt_h = _centres_and_sizes(reference_boxes)
        ex_x, ex_y, ex_w, ex_h = _centres_and_sizes(proposals.astype(dtype))
        proper = (gt_w > 0) & (gt_h > 0) & (ex_w > 0) & (ex_h > 0)
        # Padding boxes get harmless stand-ins so that no log(0) or x/0 reaches a gradient.
        ex_w, ex_h = jnp.where(proper, ex_w, 1), jnp.where(proper, ex_h, 1)
        gt_w, gt_h = jnp.where(proper, gt_w, ex_w), jnp.where(proper, gt_h, ex_h)
        targets = jnp.stack(
            [
                wx * (gt_x - ex_x) / ex_w,
                wy * (gt_y - ex_y) / ex_h,
                ww * jnp.log(gt_w / ex_w),
                wh * jnp.log(gt_h / ex_h),
            ],
            axis=-1,
        )
        return jnp.where(proper[..., None], targets, 0)

    def decode(self, rel_codes: jax.Array, boxes: jax.Array) -> jax.Array:
        """Boxes ``[..., K, 4]`` from codes ``rel_codes [..., 4·K]`` relative to ``boxes [..., 4]``.

        Like torchvision's ``decode``, the result has one box per group of four codes (``K = 1``
        for the RPN, ``num_classes`` for the box head), computed in ``rel_codes.dtype``:
        ``x1 = cx − 0.5·w``, ``x2 = cx + 0.5·w`` (no −1). The leading dims of ``rel_codes`` and
        ``boxes`` broadcast.

        Raises:
          ValueError: the last dim of ``rel_codes`` is not a multiple of 4.
        """
        if rel_codes.shape[-1] % 4:
            raise ValueError(
                f"BoxCoder.decode: rel_codes last dim {rel_codes.shape[-1]} is not a multiple of 4"
            )
        codes = rel_codes.reshape(*rel_codes.shape[:-1], rel_codes.shape[-1] // 4, 4)
        ctr_x, ctr_y, widths, heights = (
            v[..., None] for v in _centres_and_sizes(boxes.astype(rel_codes.dtype))
        )
        wx, wy, ww, wh = self.weights
        dx, dy = codes[..., 0] / wx, codes[..., 1] / wy
        dw = jnp.minimum(codes[..., 2] / ww, self.bbox_xform_clip)
        dh = jnp.minimum(codes[..., 3] / wh, self.bbox_xform_clip)
        pred_ctr_x, pred_ctr_y = dx * widths + ctr_x, dy * heights + ctr_y
        pred_w, pred_h = jnp.exp(dw) * widths, jnp.exp(dh) * heights
        return jnp.stack(
            [
                pred_ctr_x - 0.5 * pred_w,
                pred_ctr_y - 0.5 * pred_h,
                pred_ctr_x + 0.5 * pred_w,
                pred_ctr_y + 0.5 * pred_h,
            ],
            axis=-1,
        )
