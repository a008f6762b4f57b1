"""Greedy non-maximum suppression with static shapes: one jit, no host round trip, vmap-able.

torchvision's ``nms`` returns a variable number of indices; here the result is padded to a
fixed ``max_output`` with a validity mask. The result is the greedy one (take the best
remaining box, drop every remaining box whose IoU with it is > ``iou_threshold``, repeat),
computed tile by tile as TF Model Garden's padded NMS does: a ``lax.while_loop`` over tiles of
``tile_size`` score-sorted boxes that stops once ``max_output`` boxes are kept. Each tile is
checked against the boxes kept so far (a ``[max_output, tile]`` IoU block) and then settled
among itself by whole-tile sweeps, so there is no N×N matrix and no loop step per box: the
loop runs at most N / tile times, not once per box. Measured on a shared 2-core CPU (clustered
boxes, IoU 0.7, medians of noisy runs): N = 1000 → 100 kept in ~1.3 ms; N = 4000 → 1000 kept
in 14–30 ms, N = 5000 → 1000 in 13–21 ms and N = 10 000 → 2000 in 50–110 ms, 2–3× faster
than a loop keeping one box per step (43–70, 48–84 and 160–290 ms).
"""

import jax
import jax.numpy as jnp

from segjax.errors import ConfigError
from segjax.ops.boxes import box_iou

# Boxes settled per loop step. Larger tiles mean fewer sequential steps but more work per
# sweep (tile² IoUs). On CPU 64–512 measured within ~20 % of each other for N = 1000–10 000;
# TF Model Garden uses 512 on TPUs, where steps cost more than arithmetic.
TILE_SIZE = 256


def _check_inputs(boxes, scores, max_output, iou_threshold, tile_size):
    """Raise ValueError unless the shapes fit and ``max_output``, ``tile_size`` are positive."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"nms: boxes must be [N, 4], got shape {boxes.shape}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: scores must be [{boxes.shape[0]}], got shape {scores.shape}")
    if not isinstance(max_output, int) or max_output < 1:
        raise ConfigError(f"nms: max_output={max_output!r}, expected a positive int")
    if not 0 <= float(iou_threshold) <= 1:
        raise ConfigError(f"nms: iou_threshold={iou_threshold!r}, expected a number in [0, 1]")
    if not isinstance(tile_size, int) or tile_size < 1:
        raise ConfigError(f"nms: tile_size={tile_size!r}, expected a positive int")


def _descending_order(scores: jax.Array, valid: jax.Array) -> jax.Array:
    """Indices sorting valid boxes by descending score, ties lower index first, invalid last.

    torchvision sorts with ``scores.sort(descending=True)``, whose order among equal scores is
    unspecified; a stable sort makes ours deterministic and the same on every backend.
    """
    index = jnp.arange(scores.shape[0], dtype=jnp.int32)
    # Keys: invalid after valid, then descending score, then ascending index.
    _, _, order = jax.lax.sort(((~valid).astype(jnp.int32), -scores, index), num_keys=3)
    return order


def _resolve_within_tile(candidate, suppresses):
    """Greedy NMS inside one tile: the fixpoint of ``keep = candidate & ~any(keep_i & S_ij)``.

    ``suppresses[i, j]`` (only for ``i < j``) says a kept box ``i`` removes box ``j``. The
    greedy result is the unique fixpoint: box ``j``'s fate depends only on boxes before it,
    so each sweep settles at least one more leading box, and a sweep that changes nothing has
    reached it. Sweeps are whole-tile vector ops (few in practice: as many as the longest chain
    of boxes suppressing one another), instead of one loop step per box.
    """

    def sweep(state):
        keep, _ = state
        new_keep = candidate & ~jnp.any(suppresses & keep[:, None], axis=0)
        return new_keep, jnp.any(new_keep != keep)

    keep, _ = jax.lax.while_loop(lambda state: state[1], sweep, (candidate, jnp.bool_(True)))
    return keep


def _greedy_suppression(boxes, groups, candidate, iou_threshold, max_output, tile_size):
    """Positions (in ``boxes``' order, which must be descending score) kept by greedy NMS.

    ``groups`` (int ``[N]``) limits suppression to boxes of the same group; ``candidate``
    (bool ``[N]``) marks the boxes that may be kept. Tiles of ``tile_size`` boxes are settled
    in order (TF Model Garden's padded NMS): a tile's boxes are first suppressed by the boxes
    kept so far, then among themselves (:func:`_resolve_within_tile`), and its survivors are
    appended to the kept list; the loop stops when ``max_output`` are kept or no candidate is
    left (candidates come first). Work: a ``[max_output, tile]`` IoU block and a few
    ``[tile, tile]`` sweeps per tile; memory O((max_output + tile)·tile).
    Returns ``(positions [max_output], count)``: the first ``count`` positions are the kept
    boxes in order, the rest 0.
    """
    n = boxes.shape[0]
    if n == 0:
        return jnp.zeros((max_output,), jnp.int32), jnp.int32(0)
    tile = min(tile_size, n)
    num_tiles = -(-n // tile)
    pad = num_tiles * tile - n
    boxes = jnp.pad(boxes, ((0, pad), (0, 0)))
    groups = jnp.pad(groups, (0, pad))
    candidate = jnp.pad(candidate, (0, pad))
    later_in_tile = jnp.triu(jnp.ones((tile, tile), bool), k=1)
    slots = jnp.arange(max_output)
    # Candidates are sorted first, so tiles past the last one hold nothing to keep.
    num_candidates = jnp.sum(candidate, dtype=jnp.int32)

    def has_tiles_and_room(state):
        t, count = state[:2]
        return (t * tile < num_candidates) & (count < max_output)

    def settle_tile(state):
        t, count, kept_pos = state
        start = t * tile
        tile_boxes = jax.lax.dynamic_slice_in_dim(boxes, start, tile)
        tile_groups = jax.lax.dynamic_slice_in_dim(groups, start, tile)
        tile_candidate = jax.lax.dynamic_slice_in_dim(candidate, start, tile)
        same_group = groups[kept_pos][:, None] == tile_groups[None, :]
        by_kept = (box_iou(boxes[kept_pos], tile_boxes) > iou_threshold) & same_group
        by_kept &= (slots < count)[:, None]
        tile_candidate &= ~jnp.any(by_kept, axis=0)
        among = (box_iou(tile_boxes, tile_boxes) > iou_threshold) & later_in_tile
        among &= tile_groups[:, None] == tile_groups[None, :]
        keep = _resolve_within_tile(tile_candidate, among)
        # Survivors go to the next free slots in order (their rank among the tile's survivors,
        # a triangular sum: XLA:CPU compiles cumsum's reduce-window far slower); slots past
        # max_output are dropped.
        rank = jnp.sum(later_in_tile & keep[:, None], axis=0, dtype=jnp.int32)
        slot = jnp.where(keep, count + rank, max_output)
        kept_pos = kept_pos.at[slot].set(start + jnp.arange(tile, dtype=jnp.int32), mode="drop")
        count = jnp.minimum(count + jnp.sum(keep, dtype=jnp.int32), max_output)
        return t + 1, count, kept_pos

    state = (jnp.int32(0), jnp.int32(0), jnp.zeros((max_output,), jnp.int32))
    _, count, kept_pos = jax.lax.while_loop(has_tiles_and_room, settle_tile, state)
    return kept_pos, count


def _padded_nms(boxes, scores, groups, valid, iou_threshold, max_output, tile_size):
    """Shared body of :func:`nms` and :func:`batched_nms` (``groups`` = class / level ids)."""
    valid = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    order = _descending_order(scores, valid)
    kept, count = _greedy_suppression(
        boxes[order], groups[order], valid[order], iou_threshold, max_output, tile_size
    )
    keep_valid = jnp.arange(max_output) < count
    indices = jnp.where(keep_valid, order[kept], 0)
    return indices.astype(jnp.int32), keep_valid


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    *,
    iou_threshold: float,
    max_output: int,
    valid: jax.Array | None = None,
    tile_size: int = TILE_SIZE,
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS of ``boxes [N, 4]`` (x1, y1, x2, y2) by ``scores [N]``, padded to ``max_output``.

    The kept indices come in torchvision's order (descending score), with ties in score broken
    by the lower index first. A box is dropped when its IoU with a kept, higher-ranked box is
    strictly greater than ``iou_threshold``; boxes of zero area overlap nothing (IoU 0), as in
    torchvision's kernel. Boxes with ``valid`` False are never kept and suppress nothing.
    At most ``max_output`` boxes are kept (the first ``max_output`` of torchvision's result).

    Args:
      boxes: ``[N, 4]`` float.
      scores: ``[N]`` float.
      iou_threshold: suppression threshold in [0, 1] (a Python number).
      max_output: static output length.
      valid: optional bool ``[N]``; None means all valid.
      tile_size: boxes settled per loop step (speed only; the result does not depend on it).

    Returns:
      ``(indices int32 [max_output], keep_valid bool [max_output])``: the kept boxes' indices
      into ``boxes`` then padding, where ``indices`` is 0 and ``keep_valid`` False (0 keeps a
      gather ``boxes[indices]`` in range; mask with ``keep_valid``).

    Raises:
      ValueError: shapes do not fit, ``max_output`` or ``tile_size`` is not a positive int,
        or the threshold is outside [0, 1].
    """
    _check_inputs(boxes, scores, max_output, iou_threshold, tile_size)
    groups = jnp.zeros(scores.shape, jnp.int32)
    return _padded_nms(boxes, scores, groups, valid, iou_threshold, max_output, tile_size)


def batched_nms(
    boxes: jax.Array,
    scores: jax.Array,
    idxs: jax.Array,
    *,
    iou_threshold: float,
    max_output: int,
    valid: jax.Array | None = None,
    tile_size: int = TILE_SIZE,
) -> tuple[jax.Array, jax.Array]:
    """:func:`nms` within each category ``idxs [N]`` (class or level id), as ``batched_nms``.

    Boxes only suppress boxes with the same ``idxs``; the result is every category's NMS merged
    in descending score (ties: lower index first), padded to ``max_output``. torchvision gets
    this by shifting each category's boxes by ``idx·(max coordinate + 1)`` so that categories
    never overlap; comparing ids instead gives the per-category result exactly, without the
    float rounding that shifts of ~10⁵ pixels add to the IoUs, and for any coordinates.

    Returns and raises as :func:`nms`.
    """
    _check_inputs(boxes, scores, max_output, iou_threshold, tile_size)
    if idxs.shape != scores.shape:
        raise ValueError(f"batched_nms: idxs must be [{scores.shape[0]}], got shape {idxs.shape}")
    groups = idxs.astype(jnp.int32)
    return _padded_nms(boxes, scores, groups, valid, iou_threshold, max_output, tile_size)
