"""RoIAlign, FPN multi-scale RoIAlign and mask pasting with static shapes (torchvision's numbers).

* :func:`roi_align` — torchvision's ``roi_align`` CPU kernel for one NHWC image: each output bin
  averages ``sampling_ratio²`` bilinear samples on a regular grid inside the bin, with the
  kernel's boundary rules (a sample more than one pixel outside the map is 0, coordinates in
  ``[-1, 0]`` are clamped to 0, the last row/column is repeated). :func:`roi_align_batched` maps
  it over a batch.
* :func:`multiscale_roi_align` — ``MultiScaleRoIAlign``: each RoI pooled from the one FPN level
  the FPN paper's rule gives it (:func:`fpn_levels`), at that level's inferred scale
  (:func:`infer_level_scales`).
* :func:`paste_masks_in_image` — ``paste_masks_in_image`` of Mask R-CNN's postprocessing,
  traceable; :func:`paste_masks_in_boxes` is the same paste on the host (NumPy), computing
  only the pixels inside each box.

The pooling is gathers with bilinear weights: for every RoI the sample grid is separable (rows
depend on the output row, columns on the output column), so each bin reads the
``(2·sampling_ratio)²`` feature pixels its samples touch and weighs them. RoIs are processed in
chunks to bound the gathered temporary (:data:`CPU_ROI_CHUNK` RoIs at a time on CPU).
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segjax.errors import ConfigError
from segjax.ops.boxes import box_area

# RoIs pooled per step of the chunked loop on CPU: 7×7 bins × 4 samples × 4 taps × 256
# channels is 0.8 MB per RoI in float32. Measured (1000 RoIs on a 200×304×256 map, 2 cores):
# chunks of 4–16 ran in the same time within noise, 64 ~1.3× and 1000 (no loop) ~3× slower,
# with 7 MB of temporaries at 8 against 800 MB unchunked. Elsewhere the loop's steps cost more
# than cache misses, so accelerators take bigger chunks (a guess, not yet measured).
CPU_ROI_CHUNK = 8
ACCELERATOR_ROI_CHUNK = 128


def _check_pool_args(output_size, sampling_ratio, caller: str) -> tuple[int, int]:
    """``output_size`` as ``(ph, pw)``; ValueError for a non-positive size or sampling ratio."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"{caller}: output_size={output_size!r}, expected (ph, pw) positive ints")
    if not isinstance(sampling_ratio, int) or sampling_ratio <= 0:
        raise ConfigError(
            f"{caller}: sampling_ratio={sampling_ratio!r}, expected a positive int (the adaptive "
            "ceil(roi_size / output_size) grid of sampling_ratio <= 0 depends on the box, which "
            "static shapes cannot follow; torchvision's Mask R-CNN uses 2)"
        )
    return size


def _sample_coords(start, length, bins: int, grid: int) -> jax.Array:
    """Sample coordinates ``[bins, grid]`` along one axis of a RoI from ``start`` over ``length``.

    Written in the kernel's order of operations, ``start + p·bin + (i + 0.5)·bin / grid``, so
    that float32 rounding matches.
    """
    bin_size = length / bins
    p = jnp.arange(bins, dtype=jnp.float32)[:, None]
    i = jnp.arange(grid, dtype=jnp.float32)[None, :]
    return start + p * bin_size + (i + 0.5) * bin_size / grid


def axis_taps(coords: jax.Array, size) -> tuple[jax.Array, jax.Array]:
    """The two pixels each sample reads along one axis and their weights (the kernel's rules).

    ``coords [bins, grid]``; ``size`` is the map's extent along this axis. Returns
    ``(index int32 [bins, 2·grid], weight [bins, 2·grid])``, the low and high tap of each
    sample side by side: a sample beyond one pixel outside the map weighs 0; coordinates below
    0 read pixel 0; at or past the last pixel both taps read it, with all the weight on one.
    """
    inside = (coords >= -1) & (coords <= size)
    # Outside samples weigh 0 whatever they read; reading pixel 0 keeps every index in range.
    coords = jnp.where(inside, jnp.maximum(coords, 0), 0)
    low = jnp.floor(coords)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    frac = jnp.where(at_end, 0, coords - low)
    low = low.astype(jnp.int32)
    index = jnp.stack([low, jnp.where(at_end, low, low + 1)], axis=-1)
    weight = jnp.stack([1 - frac, frac], axis=-1) * inside[..., None]
    return index.reshape(coords.shape[0], -1), weight.reshape(coords.shape[0], -1)


def _pool_roi(table, box, base, height, width, scale, size, grid, aligned):
    """RoIAlign of one RoI ``box [4]`` read from a flat feature ``table [S, C]`` → ``[ph, pw, C]``.

    The RoI's map is ``height × width``, stored row-major at ``table[base:]``, with
    ``spatial_scale`` ``scale`` (all per RoI, so RoIs of several FPN levels share one call).
    Computed in float32.
    """
    ph, pw = size
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (box[i] * scale - offset for i in range(4))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        # The kernel forces malformed RoIs to 1×1 (in feature pixels).
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    rows, row_w = axis_taps(_sample_coords(y1, roi_h, ph, grid), height)  # [ph, 2g]
    cols, col_w = axis_taps(_sample_coords(x1, roi_w, pw, grid), width)  # [pw, 2g]
    flat = base + rows[:, :, None, None] * width + cols[None, None, :, :]  # [ph, 2g, pw, 2g]
    # Indices are in range by construction (axis_taps), so XLA may skip its bounds checks.
    taps = table.at[flat].get(mode="promise_in_bounds").astype(jnp.float32)
    weights = row_w[:, :, None, None] * col_w[None, None, :, :]
    return jnp.sum(weights[..., None] * taps, axis=(1, 3)) / (grid * grid)


def _pool_rois(table, boxes, base, height, width, scale, size, grid, aligned):
    """:func:`_pool_roi` of every RoI (per-RoI args ``[K]``), a chunk of RoIs per loop step.

    Returns ``[K, ph, pw, C]`` float32.
    """
    k = boxes.shape[0]
    if k == 0:
        return jnp.zeros((0, *size, table.shape[-1]), jnp.float32)
    chunk = CPU_ROI_CHUNK if jax.default_backend() == "cpu" else ACCELERATOR_ROI_CHUNK

    def pool_one(args):
        return _pool_roi(table, *args, size, grid, aligned)

    per_roi = (boxes, base, height, width, scale)
    if k <= chunk:
        return jax.vmap(pool_one)(per_roi)
    return jax.lax.map(pool_one, per_roi, batch_size=chunk)


def roi_align(
    features: jax.Array,
    boxes: jax.Array,
    *,
    output_size,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool = False,
) -> jax.Array:
    """torchvision's ``roi_align``: one image ``[H, W, C]``, ``boxes [K, 4]`` → ``[K, ph, pw, C]``.

    ``boxes`` are ``(x1, y1, x2, y2)`` in input-image pixels; ``spatial_scale`` maps them onto
    the feature map. ``aligned=False`` (torchvision's default, used by Mask R-CNN) takes the RoI
    as ``[x1·scale, x2·scale]`` with its size at least 1 feature pixel; ``aligned=True`` shifts
    it by −0.5 pixel and allows any size. Each bin averages ``sampling_ratio²`` bilinear samples.
    Differentiable in ``features``; like torchvision's, no gradient flows to ``boxes``.

    Raises:
      ValueError: ``sampling_ratio <= 0`` (torchvision's adaptive grid needs box-dependent
        shapes), a bad ``output_size``, or ``features``/``boxes`` of the wrong rank.
    """
    size = _check_pool_args(output_size, sampling_ratio, "roi_align")
    if features.ndim != 3 or boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"roi_align: expected features [H, W, C] and boxes [K, 4], got {features.shape} "
            f"and {boxes.shape}"
        )
    h, w, c = features.shape
    k = boxes.shape[0]
    boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
    pooled = _pool_rois(
        features.reshape(h * w, c),
        boxes,
        jnp.zeros((k,), jnp.int32),
        jnp.full((k,), h, jnp.int32),
        jnp.full((k,), w, jnp.int32),
        jnp.full((k,), spatial_scale, jnp.float32),
        size,
        sampling_ratio,
        aligned,
    )
    return pooled.astype(features.dtype)


def roi_align_batched(features: jax.Array, boxes: jax.Array, **kwargs) -> jax.Array:
    """:func:`roi_align` per image: ``[B, H, W, C]``, ``boxes [B, K, 4]`` → ``[B, K, ph, pw, C]``.

    ``kwargs`` are :func:`roi_align`'s keywords.
    """
    return jax.vmap(lambda f, b: roi_align(f, b, **kwargs))(features, boxes)


def infer_level_scales(feature_sizes: Sequence[tuple[int, int]], image_size) -> list[float]:
    """Each feature map's ``spatial_scale``: ``2 ** round(log2(feature_h / image_h))``.

    torchvision's ``MultiScaleRoIAlign`` (``_infer_scale``): the scale is assumed to be a power
    of two and is inferred from the heights (torchvision divides by the largest unpadded image
    height of the batch; the padded height rounds to the same power of two, padding being less
    than a factor √2).

    Raises:
      ValueError: a feature map is taller than the image.
    """
    image_h = image_size[0]
    scales = []
    for feature_h, _ in feature_sizes:
        scale = 2.0 ** round(math.log2(feature_h / image_h))
        if scale > 1:
            raise ValueError(
                f"multiscale_roi_align: feature height {feature_h} > image height {image_h}"
            )
        scales.append(scale)
    return scales


def fpn_levels(
    boxes: jax.Array,
    k_min: int,
    k_max: int,
    *,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> jax.Array:
    """The FPN level index (0 = level ``k_min``) of boxes ``[..., 4]``: ``LevelMapper``.

    ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps)`` clamped to
    ``[k_min, k_max]``, minus ``k_min`` (Eq. 1 of the FPN paper, with torchvision's eps added
    outside the log). Empty boxes go to the finest level (``log2(0) = −inf``, clamped), and so
    do NaN ones (inverted or NaN padding boxes), whose level torchvision leaves undefined.
    """
    sizes = jnp.sqrt(box_area(boxes.astype(jnp.float32)))
    levels = jnp.floor(canonical_level + jnp.log2(sizes / canonical_scale) + jnp.float32(eps))
    levels = jnp.where(jnp.isnan(levels), k_min, levels)
    return (jnp.clip(levels, k_min, k_max) - k_min).astype(jnp.int32)


def multiscale_roi_align(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    image_size,
    *,
    output_size,
    sampling_ratio: int = 2,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> jax.Array:
    """torchvision's ``MultiScaleRoIAlign``: levels ``[B, H_l, W_l, C]`` → ``[B, K, ph, pw, C]``.

    ``features`` are the levels finest first (P2…P5); ``boxes [B, K, 4]`` are in the pixels of
    the padded batch whose ``(h, w)`` is ``image_size`` (static). Each RoI is pooled only from
    its own level (:func:`fpn_levels` with ``k_min``/``k_max`` from :func:`infer_level_scales`):
    the levels are laid end to end in one flat table and each RoI reads its level's block, so
    the work is that of one :func:`roi_align` over K RoIs, whatever the number of levels.
    Differentiable in ``features``, not in ``boxes`` (as torchvision).

    Raises:
      ValueError: as :func:`roi_align`, or levels whose batch size or channels differ.
    """
    size = _check_pool_args(output_size, sampling_ratio, "multiscale_roi_align")
    if not features or any(
        f.ndim != 4 or f.shape[0::3] != features[0].shape[0::3] for f in features
    ):
        raise ValueError(
            "multiscale_roi_align: expected levels [B, H_l, W_l, C] with one B and C, got "
            f"{[tuple(f.shape) for f in features]}"
        )
    scales = infer_level_scales([f.shape[1:3] for f in features], image_size)
    k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
    heights = jnp.array([f.shape[1] for f in features], jnp.int32)
    widths = jnp.array([f.shape[2] for f in features], jnp.int32)
    bases = jnp.array([0] + [f.shape[1] * f.shape[2] for f in features[:-1]], jnp.int32)
    bases, scales_arr = jnp.cumsum(bases), jnp.array(scales, jnp.float32)
    dtype = features[0].dtype

    def pool_image(levels_of_image, image_boxes):
        table = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in levels_of_image])
        image_boxes = jax.lax.stop_gradient(image_boxes.astype(jnp.float32))
        level = fpn_levels(
            image_boxes,
            k_min,
            k_max,
            canonical_scale=canonical_scale,
            canonical_level=canonical_level,
            eps=eps,
        )
        if len(features) == 1:  # torchvision skips the level mapper for a single map
            level = jnp.zeros_like(level)
        per_roi = (bases[level], heights[level], widths[level], scales_arr[level])
        return _pool_rois(table, image_boxes, *per_roi, size, sampling_ratio, False)

    return jax.vmap(pool_image)(list(features), boxes).astype(dtype)


def _expanded_int_boxes(boxes, scale: float, xp=jnp):
    """torchvision's ``expand_boxes`` (scale about the centre) then ``.to(int64)`` (truncation).

    Computed in ``boxes.dtype`` with ``xp`` (``jnp`` in the jitted paste, ``np`` on the host);
    coordinates are clipped to ±2²⁴ first so that padding boxes of any value convert to int32
    without overflow.
    """
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * xp.asarray(scale, boxes.dtype)
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * xp.asarray(scale, boxes.dtype)
    ctr_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    ctr_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    expanded = xp.stack([ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h], -1)
    limit = float(1 << 24)
    return xp.clip(xp.nan_to_num(expanded), -limit, limit).astype(xp.int32)


def _source_taps(offset, size, mask_len: int, xp=jnp):
    """The two mask pixels, and their weights, that pixels ``offset`` into a box read.

    A box of ``size`` pixels (float32) holds the mask resized with ``F.interpolate(mode=
    "bilinear", align_corners=False)``: output pixel ``d`` samples ``max((d + 0.5)·mask_len/size
    − 0.5, 0)`` of the mask, between its floor and the next pixel (the last pixel repeats).
    ``offset`` (float32) and ``size`` broadcast. Returns ``(low, high, low_weight, high_weight)``.
    """
    step = xp.float32(mask_len) / size
    if xp is np:  # the float32 product is exact in float64, so this rounds once, like
        # the FMA XLA fuses ``· step − 0.5`` into (a source pixel one ulp off moves the taps)
        src = ((offset + 0.5).astype(np.float64) * np.float64(step) - 0.5).astype(np.float32)
    else:
        src = (offset + 0.5) * step - 0.5
    src = xp.maximum(src, 0)
    low = xp.minimum(xp.floor(src), mask_len - 1)
    frac = xp.clip(src - low, 0, 1)
    low = low.astype(xp.int32)
    high = xp.where(low < mask_len - 1, low + 1, low)
    return low, high, 1 - frac, frac


def _resize_taps(start: jax.Array, stop: jax.Array, mask_len: int, image_len: int):
    """Per image pixel along one axis: the two mask pixels it reads and their weights.

    The box covers pixels ``start..stop`` (ints ``[N]``, inclusive) and is
    ``max(stop − start + 1, 1)`` pixels long (:func:`_source_taps`); pixels outside it weigh 0.
    Returns ``(index int32 [N, image_len, 2], weight [N, image_len, 2])``.
    """
    size = jnp.maximum(stop - start + 1, 1).astype(jnp.float32)[:, None]
    pixel = jnp.arange(image_len, dtype=jnp.int32)[None, :]
    inside = (pixel >= start[:, None]) & (pixel <= stop[:, None])
    offset = (pixel - start[:, None]).astype(jnp.float32)
    low, high, low_weight, high_weight = _source_taps(offset, size, mask_len)
    weight = jnp.stack([low_weight, high_weight], axis=-1) * inside[..., None]
    return jnp.stack([low, high], axis=-1), weight


def _check_paste_args(masks_shape, boxes_shape, padding, caller: str) -> None:
    """ValueError unless masks are ``[N, M, M]`` for boxes ``[N, 4]`` and ``padding >= 0``."""
    n = boxes_shape[0]
    if len(masks_shape) != 3 or masks_shape[0] != n or masks_shape[1] != masks_shape[2]:
        raise ValueError(
            f"{caller}: expected masks [{n}, M, M] for boxes {tuple(boxes_shape)}, got "
            f"{tuple(masks_shape)}"
        )
    if not isinstance(padding, int) or padding < 0:
        raise ConfigError(f"{caller}: padding={padding!r}, expected an int >= 0")


def paste_masks_in_image(masks: jax.Array, boxes: jax.Array, image_hw, *, padding: int = 1):
    """torchvision's ``paste_masks_in_image``: ``[N, M, M]`` in boxes ``[N, 4]`` → ``[N, H, W]``.

    Each mask (probabilities) is zero-padded by ``padding`` pixels, its box scaled about the
    centre by ``(M + 2·padding) / M`` to match and truncated to ints, the mask bilinearly resized
    (``align_corners=False``) to the box's ``x2 − x1 + 1`` × ``y2 − y1 + 1`` pixels and placed
    at ``(x1, y1)``, cut at the image border; pixels outside the box are 0. ``image_hw`` is a
    static ``(H, W)``. Thresholding (torchvision: > 0.5) is the caller's.

    This is the traceable version (inside ``jax.jit``): it computes every pixel of the image for
    every mask, as two separable steps per mask (a small ``[M + 2p, W]`` product, then two row
    gathers per image row). On the host, :func:`paste_masks_in_boxes` gives the same values
    (within float32 rounding) computing only the pixels inside each box — much faster on large
    images.

    Raises:
      ValueError: masks are not ``[N, M, M]`` for ``boxes [N, 4]``, or ``padding < 0``.
    """
    _check_paste_args(masks.shape, boxes.shape, padding, "paste_masks_in_image")
    height, width = (int(v) for v in image_hw)
    m = masks.shape[-1]
    padded = jnp.pad(masks.astype(jnp.float32), ((0, 0), (padding, padding), (padding, padding)))
    mask_len = m + 2 * padding
    x1, y1, x2, y2 = jnp.moveaxis(_expanded_int_boxes(boxes, mask_len / m), -1, 0)
    cols, col_w = _resize_taps(x1, x2, mask_len, width)  # [N, W, 2]
    rows, row_w = _resize_taps(y1, y2, mask_len, height)  # [N, H, 2]
    # Resize along x: every mask row at every image column, [N, mask_len, W].
    col_matrix = jnp.sum(
        jax.nn.one_hot(cols, mask_len, dtype=jnp.float32) * col_w[..., None], axis=2
    )  # [N, W, mask_len]
    along_x = jnp.einsum("nij,nxj->nix", padded, col_matrix, precision="highest")
    # Then along y: each image row mixes the two mask rows it falls between.
    low = jnp.take_along_axis(along_x, rows[:, :, 0, None], axis=1)  # [N, H, W]
    high = jnp.take_along_axis(along_x, rows[:, :, 1, None], axis=1)
    return row_w[:, :, 0, None] * low + row_w[:, :, 1, None] * high


def _window_taps(start: int, stop: int, first: int, last: int, mask_len: int):
    """:func:`_source_taps` (NumPy) of image pixels ``first..last − 1`` in box ``start..stop``."""
    size = np.float32(max(stop - start + 1, 1))
    offset = (np.arange(first, last) - start).astype(np.float32)
    return _source_taps(offset, size, mask_len, xp=np)


def _window(corners, height: int, width: int) -> tuple[int, int, int, int]:
    """The image pixels ``(y_first, y_last, x_first, x_last)`` (exclusive) an integer box covers."""
    x1, y1, x2, y2 = corners
    return max(y1, 0), min(y2 + 1, height), max(x1, 0), min(x2 + 1, width)


def _paste_one(padded: np.ndarray, corners, out: np.ndarray, scratch: np.ndarray) -> None:
    """Writes one padded mask resized into its integer box ``corners`` into ``out [H, W]``.

    Only the box's part inside the image is computed; the rest of ``out`` is left alone.
    ``scratch`` is a flat float32 buffer at least as large as that part.
    """
    x1, y1, x2, y2 = corners
    y_first, y_last, x_first, x_last = _window(corners, *out.shape)
    if x_last <= x_first or y_last <= y_first:
        return  # the box misses the image (or is inverted)
    mask_len = padded.shape[0]
    col_low, col_high, col_low_w, col_high_w = _window_taps(x1, x2, x_first, x_last, mask_len)
    # The jitted paste sums both weights when they read the same (last) column.
    same = col_low == col_high
    col_low_w, col_high_w = np.where(same, col_low_w + col_high_w, col_low_w), col_high_w * ~same
    along_x = padded[:, col_low] * col_low_w + padded[:, col_high] * col_high_w  # [mask_len, w]
    row_low, row_high, row_low_w, row_high_w = _window_taps(y1, y2, y_first, y_last, mask_len)
    window = out[y_first:y_last, x_first:x_last]
    high = scratch[: window.size].reshape(window.shape)
    # mode="clip": the indices are in range, and the default "raise" buffers ``out``.
    np.take(along_x, row_low, axis=0, out=window, mode="clip")
    window *= row_low_w[:, None]
    np.take(along_x, row_high, axis=0, out=high, mode="clip")
    high *= row_high_w[:, None]
    window += high


def paste_masks_in_boxes(masks, boxes, image_hw, *, padding: int = 1) -> np.ndarray:
    """:func:`paste_masks_in_image` on the host, computing only the pixels inside each box.

    Same convention and, within float32 rounding (XLA fuses some multiply-adds of the jitted
    version into FMAs; NumPy rounds each step), the same values: ``masks [N, M, M]``
    (probabilities) pasted at ``boxes [N, 4]`` into ``image_hw`` ``(H, W)``, zero outside each
    box. The cost is the boxes' area, not ``N·H·W``, and there is nothing to compile, so any
    image size is fine.

    Returns:
      float32 ``[N, H, W]``.

    Raises:
      ValueError: masks are not ``[N, M, M]`` for ``boxes [N, 4]``, or ``padding < 0``.
    """
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float32)
    _check_paste_args(masks.shape, boxes.shape, padding, "paste_masks_in_boxes")
    height, width = (int(v) for v in image_hw)
    m = masks.shape[-1]
    padded = np.pad(masks, ((0, 0), (padding, padding), (padding, padding)))
    corners = _expanded_int_boxes(boxes, (m + 2 * padding) / m, xp=np)
    out = np.zeros((len(masks), height, width), np.float32)
    corners = corners.tolist()
    areas = [
        max(y1 - y0, 0) * max(x1 - x0, 0)
        for y0, y1, x0, x1 in (_window(c, height, width) for c in corners)
    ]
    scratch = np.empty(max(areas, default=0), np.float32)  # one buffer for every mask's window
    for mask, box_corners, image in zip(padded, corners, out, strict=True):
        _paste_one(mask, box_corners, image, scratch)
    return out
