"""RPN anchors as torchvision's ``AnchorGenerator`` makes them, from static shapes.

One cell of anchors per level: for size ``s`` and aspect ratio ``r = h / w`` the box
``round((−w/2, −h/2, w/2, h/2))`` with ``h = s·√r``, ``w = s/√r`` (float32, rounded half to even
as ``torch.round``), ratios outer and sizes inner. The cell is shifted to every feature-map
position ``(x·stride_w, y·stride_h)`` with ``stride = image_size // feature_size`` per axis
(integer division of the *padded* batch size, as torchvision: a 800-high batch has P6 stride
800 // 13 = 61). Anchors are ordered position-major (row, column) then cell anchor — the order of
an NHWC head output ``[H, W, A]`` flattened, which is torchvision's ``permute_and_flatten`` order.

Every level's anchors follow from ``(image_shape, feature_shape)`` alone; :func:`grid_anchors`
materialises them (NumPy), :func:`anchors_at` computes only the ones at given flat indices of
given levels (inside jit: the RPN needs ~5000 of the ~270 000 anchors of an 800×1344 image).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# torchvision's Mask R-CNN defaults: one size per pyramid level (P2 … P6), three ratios each.
DEFAULT_SIZES = (32, 64, 128, 256, 512)
DEFAULT_RATIOS = (0.5, 1.0, 2.0)


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """Zero-centred anchors ``[len(ratios)·len(sizes), 4]`` float32 (ratio-major order)."""
    scales = np.asarray(sizes, np.float32)
    h_ratios = np.sqrt(np.asarray(ratios, np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float32)


def level_strides(image_shape: Sequence[int], feature_shape: Sequence[int]) -> tuple[int, int]:
    """``(stride_h, stride_w)`` = padded image size // feature size, torchvision's rule."""
    return image_shape[0] // feature_shape[0], image_shape[1] // feature_shape[1]


def grid_anchors(
    image_shape: Sequence[int], feature_shape: Sequence[int], cell: np.ndarray
) -> np.ndarray:
    """All anchors ``[H·W·A, 4]`` float32 of one level with feature map ``(H, W)``."""
    stride_h, stride_w = level_strides(image_shape, feature_shape)
    shift_x = np.arange(feature_shape[1], dtype=np.float32) * np.float32(stride_w)
    shift_y = np.arange(feature_shape[0], dtype=np.float32) * np.float32(stride_h)
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
    return (shifts + cell[None]).reshape(-1, 4)


def anchors_at(
    indices: jax.Array,
    levels: np.ndarray,
    image_shape: Sequence[int],
    feature_shapes: Sequence[Sequence[int]],
    cells: Sequence[np.ndarray],
) -> jax.Array:
    """The anchors ``[K, 4]`` at flat per-level ``indices [K]`` of the levels ``levels [K]``.

    ``levels`` is static (NumPy): which level each index belongs to, so the per-level grid
    constants are gathered at trace time. Equals
    ``grid_anchors(image_shape, feature_shapes[l], cells[l])[i]`` for each pair ``(i, l)``
    bit for bit (the same float32 products and sums), without building the grids — one
    vectorised computation for all levels.
    """
    levels = np.asarray(levels)
    num_cell = cells[0].shape[0]
    if any(c.shape[0] != num_cell for c in cells):
        raise ValueError("anchors: every level needs the same number of cell anchors")
    strides = np.asarray([level_strides(image_shape, fs) for fs in feature_shapes], np.float32)
    widths = np.asarray([fs[1] for fs in feature_shapes], np.int32)[levels]
    indices = indices.astype(jnp.int32)
    # Non-negative integers: plain truncating division (jnp.divmod adds sign corrections).
    position, which = jax.lax.div(indices, num_cell), jax.lax.rem(indices, num_cell)
    y, x = jax.lax.div(position, widths), jax.lax.rem(position, widths)
    sx = x.astype(jnp.float32) * strides[levels, 1]
    sy = y.astype(jnp.float32) * strides[levels, 0]
    table = jnp.asarray(np.concatenate(cells))
    return jnp.stack([sx, sy, sx, sy], axis=-1) + table[levels * num_cell + which]
