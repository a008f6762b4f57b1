"""Region proposal network: torchvision's ``RPNHead`` and its proposal selection, static shapes.

Head: one shared 3×3 conv + ReLU over every pyramid level, then 1×1 ``cls_logits`` (one
objectness logit per anchor) and 1×1 ``bbox_pred`` (four box deltas per anchor). In NHWC the
outputs are ``[B, H, W, A]`` and ``[B, H, W, 4·A]`` (channel ``4·a + k`` is delta ``k`` of
anchor ``a``, as in torchvision's ``[B, 4·A, H, W]``).

Selection, per image (torchvision's ``filter_proposals``): the top ``pre_nms_top_n`` anchors of
*each level* by objectness logit; their deltas decoded (``BoxCoder`` weights 1, 1, 1, 1) and
clipped to the image's (unpadded) size; boxes with a side below ``min_size`` dropped; scores =
sigmoid(logit) ≥ ``score_thresh`` kept; NMS at ``nms_thresh`` within each level; the best
``post_nms_top_n`` over all levels, in descending score. Dropping is a validity mask: the result
is ``post_nms_top_n`` boxes with a ``valid`` flag, the invalid ones zeroed.

Flax ↔ torchvision: ``rpn/head/{conv,cls_logits,bbox_pred}/{kernel,bias}`` ↔
``rpn.head.{conv,cls_logits,bbox_pred}.{weight,bias}`` (torchvision ≥ 0.13: ``rpn.head.conv.0.0``).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.errors import ConfigError
from segjax.models.maskrcnn import anchors as anchor_lib
from segjax.ops import boxes as box_ops
from segjax.ops import nms as nms_ops

Dtype = Any

# torchvision's RPNHead initialisation: normal(std=0.01) weights, zero biases.
rpn_init = nn.initializers.normal(0.01)


class RPNHead(nn.Module):
    """torchvision's ``RPNHead``, shared over the pyramid levels.

    Attributes:
      num_anchors: anchors per position (A = sizes × ratios per level; 3 by default).
      dtype: compute dtype.
    """

    num_anchors: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        """``(objectness, deltas)``: per level ``[B, H, W, A]`` and ``[B, H, W, 4·A]`` float32."""
        channels = features[0].shape[-1]

        def conv(features_out, kernel, name):
            pad = (kernel - 1) // 2
            return nn.Conv(
                features_out,
                (kernel, kernel),
                padding=((pad, pad), (pad, pad)),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=rpn_init,
                name=name,
            )

        shared = conv(channels, 3, "conv")
        cls_logits = conv(self.num_anchors, 1, "cls_logits")
        bbox_pred = conv(4 * self.num_anchors, 1, "bbox_pred")
        objectness, deltas = [], []
        for feature in features:
            t = nn.relu(shared(feature))
            objectness.append(cls_logits(t).astype(jnp.float32))
            deltas.append(bbox_pred(t).astype(jnp.float32))
        return objectness, deltas


@dataclasses.dataclass(frozen=True)
class ProposalConfig:
    """What torchvision's ``RegionProposalNetwork`` is built with (inference side).

    Attributes:
      pre_nms_top_n: anchors kept per level before NMS (torchvision: 2000 train / 1000 test).
      post_nms_top_n: proposals kept per image after NMS (2000 train / 1000 test).
      nms_thresh: IoU above which a lower-scored box of the same level is suppressed (0.7).
      score_thresh: minimum sigmoid objectness (0.0).
      min_size: minimum box side in pixels after clipping (1e-3).
      anchor_sizes: one tuple of anchor sizes per pyramid level.
      aspect_ratios: anchor aspect ratios (h / w), the same on every level.
    """

    pre_nms_top_n: int = 1000
    post_nms_top_n: int = 1000
    nms_thresh: float = 0.7
    score_thresh: float = 0.0
    min_size: float = 1e-3
    anchor_sizes: tuple[tuple[float, ...], ...] = tuple((s,) for s in anchor_lib.DEFAULT_SIZES)
    aspect_ratios: tuple[float, ...] = anchor_lib.DEFAULT_RATIOS

    def cells(self) -> list[np.ndarray]:
        """The zero-centred cell anchors of every level."""
        return [anchor_lib.cell_anchors(s, self.aspect_ratios) for s in self.anchor_sizes]

    def num_anchors(self) -> int:
        """Anchors per position, which must be the same on every level (one shared head)."""
        counts = {len(s) * len(self.aspect_ratios) for s in self.anchor_sizes}
        if len(counts) != 1:
            raise ConfigError(
                f"rpn: anchor_sizes {self.anchor_sizes!r} give different anchor counts per level; "
                "the shared RPN head needs the same number on every level"
            )
        return counts.pop()


RPN_CODER = box_ops.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))


def _top_candidates(objectness, deltas, image_shape, cells, top_n):
    """The top ``top_n`` anchors of every level of one image, concatenated.

    Returns ``(logits [K], boxes [K, 4], levels int [K] (static NumPy))``. Only the top-k is
    per level; the gathers, anchors and decoding run once over all levels.
    """
    feature_shapes = [o.shape[:2] for o in objectness]
    all_deltas = jnp.concatenate([d.reshape(-1, 4) for d in deltas])
    logits, local, levels = [], [], []
    for level, level_objectness in enumerate(objectness):
        level_logits = level_objectness.reshape(-1)
        top_logits, index = jax.lax.top_k(level_logits, min(top_n, level_logits.shape[0]))
        logits.append(top_logits)
        local.append(index)
        levels.append(np.full(index.shape[0], level, np.int32))
    levels = np.concatenate(levels)
    local = jnp.concatenate(local)
    # Where each level's anchors start in the concatenated deltas.
    starts = np.cumsum([0] + [int(np.prod(o.shape)) for o in objectness[:-1]])
    anchors = anchor_lib.anchors_at(local, levels, image_shape, feature_shapes, cells)
    boxes = RPN_CODER.decode(all_deltas[local + starts[levels]], anchors)[:, 0]
    return jnp.concatenate(logits), boxes, levels


def select_proposals(
    objectness: Sequence[jax.Array],
    deltas: Sequence[jax.Array],
    image_size: jax.Array,
    image_shape: Sequence[int],
    config: ProposalConfig,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Proposals of ONE image from its RPN outputs (vmap over the batch).

    Args:
      objectness: per level ``[H, W, A]`` logits.
      deltas: per level ``[H, W, 4·A]``.
      image_size: int ``[2]`` (height, width) of the image before padding (traced).
      image_shape: static (height, width) of the padded batch (it fixes the anchor strides).
      config: the selection settings.

    Returns:
      ``(boxes [P, 4], scores [P], valid [P])`` with ``P = config.post_nms_top_n``, in
      descending score; invalid entries have zero boxes and scores.
    """
    cells = config.cells()
    if len(cells) != len(objectness):
        raise ConfigError(
            f"rpn: {len(objectness)} feature levels but {len(cells)} anchor_sizes entries"
        )
    logits, boxes, levels = _top_candidates(
        objectness, deltas, image_shape, cells, config.pre_nms_top_n
    )
    scores = jax.nn.sigmoid(logits)
    boxes = box_ops.clip_boxes(boxes, image_size[0], image_size[1])
    valid = box_ops.boxes_min_size_mask(boxes, config.min_size) & (scores >= config.score_thresh)
    keep, keep_valid = nms_ops.batched_nms(
        boxes,
        scores,
        jnp.asarray(levels),
        iou_threshold=config.nms_thresh,
        max_output=config.post_nms_top_n,
        valid=valid,
    )
    kept_boxes = jnp.where(keep_valid[:, None], boxes[keep], 0)
    return kept_boxes, jnp.where(keep_valid, scores[keep], 0), keep_valid
