"""Tests of segjax.ops.roi_align against NumPy loop transcriptions of torchvision's algorithms."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.ops import roi_align as ra


def _reference_bilinear(feature, y, x):
    """torchvision's CPU-kernel bilinear sample of ``feature [H, W, C]`` at ``(y, x)``."""
    height, width = feature.shape[:2]
    if y < -1 or y > height or x < -1 or x > width:
        return np.zeros(feature.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * feature[y_low, x_low]
        + hy * lx * feature[y_low, x_high]
        + ly * hx * feature[y_high, x_low]
        + ly * lx * feature[y_high, x_high]
    )


def _reference_roi_align(feature, boxes, scale, size, grid, aligned):
    """torchvision's roi_align_forward_kernel_impl, loop for loop, in float64."""
    ph, pw = size
    out = np.zeros((len(boxes), ph, pw, feature.shape[-1]))
    offset = 0.5 if aligned else 0.0
    for n, box in enumerate(boxes.astype(np.float64)):
        x1, y1, x2, y2 = box * scale - offset
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        for p in range(ph):
            for q in range(pw):
                for iy in range(grid):
                    y = y1 + p * bin_h + (iy + 0.5) * bin_h / grid
                    for ix in range(grid):
                        x = x1 + q * bin_w + (ix + 0.5) * bin_w / grid
                        out[n, p, q] += _reference_bilinear(feature, y, x)
        out[n] /= grid * grid
    return out


def _test_boxes(k, extent, seed):
    """Boxes inside, across the border and outside the image, plus tiny and inverted ones."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-0.3 * extent, 1.1 * extent, (k, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0, 0.6 * extent, (k, 2))], 1)
    boxes[0] = [5, 5, 5.3, 5.1]  # smaller than one feature pixel
    boxes[1] = [-30, -30, 2 * extent, 2 * extent]  # covers everything
    boxes[2] = [10, 10, 6, 8]  # inverted (x2 < x1)
    boxes[3] = [0, 0, extent - 1, extent - 1]
    return boxes.astype(np.float32)


@functools.cache
def _jitted_roi_align(size, scale, grid, aligned):
    fn = functools.partial(
        ra.roi_align, output_size=size, spatial_scale=scale, sampling_ratio=grid, aligned=aligned
    )
    return jax.jit(fn)


@pytest.mark.parametrize("grid, aligned", [(2, False), (2, True), (3, True)])
def test_roi_align_equals_kernel_reference(grid, aligned):
    rng = np.random.default_rng(0)
    feature = rng.normal(size=(9, 12, 3)).astype(np.float32)
    boxes = _test_boxes(14, 48, seed=1)
    got = _jitted_roi_align((3, 4), 0.25, grid, aligned)(feature, boxes)
    expected = _reference_roi_align(feature, boxes, 0.25, (3, 4), grid, aligned)
    assert got.shape == (14, 3, 4, 3) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_roi_align_batched_values_and_gradients():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(2, 9, 12, 3)).astype(np.float32)
    boxes = np.stack([_test_boxes(8, 48, seed=3), _test_boxes(8, 48, seed=4)])
    kwargs = dict(output_size=(3, 4), spatial_scale=0.25, sampling_ratio=2)

    def total(f, b):
        pooled = ra.roi_align_batched(f, b, **kwargs)
        return pooled.sum(), pooled

    (_, pooled), grads = jax.jit(jax.value_and_grad(total, (0, 1), has_aux=True))(features, boxes)
    for i in range(2):
        expected = _reference_roi_align(features[i], boxes[i], 0.25, (3, 4), 2, False)
        np.testing.assert_allclose(pooled[i], expected, rtol=1e-5, atol=1e-5)
    chex.assert_tree_all_finite(grads)
    np.testing.assert_array_equal(grads[1], 0)  # torchvision's roi_align: no box gradient
    # The feature gradient of the sum is the sampling weight each pixel gets, so in total the
    # share of samples that land inside the map: RoIAlign of a map of ones.
    ones = np.ones((9, 12, 3))
    inside = sum(_reference_roi_align(ones, b, 0.25, (3, 4), 2, False).sum() for b in boxes)
    assert float(grads[0].min()) >= 0
    assert float(grads[0].sum()) == pytest.approx(inside, rel=1e-5)


def test_roi_align_rejects_adaptive_sampling_and_bad_shapes():
    with pytest.raises(ValueError, match="sampling_ratio=0"):
        ra.roi_align(
            jnp.zeros((4, 4, 1)),
            jnp.zeros((1, 4)),
            output_size=2,
            spatial_scale=1.0,
            sampling_ratio=0,
        )
    with pytest.raises(ValueError, match=r"features \[H, W, C\]"):
        ra.roi_align(
            jnp.zeros((1, 4, 4, 1)),
            jnp.zeros((1, 4)),
            output_size=2,
            spatial_scale=1.0,
            sampling_ratio=2,
        )
    with pytest.raises(ValueError, match="output_size"):
        ra.roi_align(
            jnp.zeros((4, 4, 1)),
            jnp.zeros((1, 4)),
            output_size=(2, 0),
            spatial_scale=1.0,
            sampling_ratio=2,
        )


def _reference_levels(boxes, k_min, k_max):
    """torchvision's LevelMapper in NumPy float32."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    target = np.floor(4 + np.log2(np.sqrt(area) / np.float32(224)) + np.float32(1e-6))
    return np.clip(target, k_min, k_max).astype(int) - k_min


def test_fpn_levels_and_scales_follow_torchvision():
    sides = np.array([1, 50, 111.9, 112, 224, 447, 448, 1000, 5000], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1)
    empty = np.array([[3, 3, 3, 9], [np.nan, 0, 1, 1]], np.float32)  # zero area, NaN
    levels = jax.jit(ra.fpn_levels, static_argnums=(1, 2))(np.concatenate([boxes, empty]), 2, 5)
    np.testing.assert_array_equal(levels[:9], _reference_levels(boxes, 2, 5))
    np.testing.assert_array_equal(levels, [0, 0, 0, 1, 2, 2, 3, 3, 3, 0, 0])
    # 2 ** round(log2(feature / image)) from the heights, as torchvision's _infer_scale.
    sizes = [(200, 336), (100, 168), (50, 84), (25, 42)]
    assert ra.infer_level_scales(sizes, (800, 1344)) == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert ra.infer_level_scales([(25, 42)], (797, 1333)) == [1 / 32]


def test_multiscale_roi_align_pools_each_roi_on_its_level():
    rng = np.random.default_rng(5)
    image = (128, 160)
    levels = [
        rng.normal(size=(2, image[0] // s, image[1] // s, 3)).astype(np.float32)
        for s in (4, 8, 16, 32)
    ]
    corner = rng.uniform(-10, 150, (2, 24, 2))
    # Sides of ~16 to ~600 pixels: every level from P2 (< 112) to P5 (>= 448).
    sides = rng.choice([16, 60, 150, 300, 600], (2, 24, 1)) * rng.uniform(0.7, 1.4, (2, 24, 2))
    boxes = np.concatenate([corner, corner + sides], -1).astype(np.float32)
    pooled = jax.jit(
        lambda f, b: ra.multiscale_roi_align(f, b, image, output_size=(3, 3), sampling_ratio=2)
    )(levels, boxes)
    assert pooled.shape == (2, 24, 3, 3, 3)
    for i in range(2):
        level = _reference_levels(boxes[i], 2, 5)
        assert len(set(level)) == 4  # the test covers every level
        for k in range(24):
            expected = _reference_roi_align(
                levels[level[k]][i], boxes[i, k : k + 1], 2.0 ** -(level[k] + 2), (3, 3), 2, False
            )
            np.testing.assert_allclose(pooled[i, k], expected[0], rtol=1e-5, atol=1e-5)


def _reference_resize(mask, out_h, out_w):
    """F.interpolate(mode="bilinear", align_corners=False) of a 2-D mask, in float32."""

    def taps(out_len, in_len):
        step = np.float32(in_len) / np.float32(out_len)
        src = np.maximum(step * (np.arange(out_len, dtype=np.float32) + 0.5) - 0.5, 0)
        low = np.minimum(np.floor(src).astype(int), in_len - 1)
        frac = np.clip(src - low, 0, 1)
        return low, np.where(low < in_len - 1, low + 1, low), frac

    y0, y1, fy = taps(out_h, mask.shape[0])
    x0, x1, fx = taps(out_w, mask.shape[1])
    top = mask[y0][:, x0] * (1 - fx) + mask[y0][:, x1] * fx
    bottom = mask[y1][:, x0] * (1 - fx) + mask[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def _reference_paste(masks, boxes, height, width, padding=1):
    """roi_heads.paste_masks_in_image: expand_masks, expand_boxes, resize, place (float32)."""
    m = masks.shape[-1]
    scale = np.float32((m + 2 * padding) / m)
    out = np.zeros((len(masks), height, width), np.float32)
    for n, (mask, box) in enumerate(zip(masks, boxes)):
        mask = np.pad(mask, padding)
        half_w, half_h = (box[2] - box[0]) * np.float32(0.5), (box[3] - box[1]) * np.float32(0.5)
        cx, cy = (box[2] + box[0]) * np.float32(0.5), (box[3] + box[1]) * np.float32(0.5)
        half_w, half_h = half_w * scale, half_h * scale
        x1, y1, x2, y2 = np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h]).astype(int)
        w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        resized = _reference_resize(mask, h, w)
        xa, xb, ya, yb = max(x1, 0), min(x2 + 1, width), max(y1, 0), min(y2 + 1, height)
        if xb > xa and yb > ya:
            out[n, ya:yb, xa:xb] = resized[ya - y1 : yb - y1, xa - x1 : xb - x1]
    return out


def test_paste_masks_equals_torchvision_algorithm():
    rng = np.random.default_rng(6)
    masks = rng.uniform(size=(10, 6, 6)).astype(np.float32)
    corner = rng.uniform(-10, 40, (10, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0, 30, (10, 2))], 1).astype(np.float32)
    boxes[0] = [3, 3, 3.4, 3.2]  # tiny
    boxes[1] = [-5.5, -7, 2, 50]  # across the top-left border (negative coords truncate to 0)
    boxes[2] = [35, 25, 60, 40]  # across the bottom-right border
    boxes[3] = [10, 10, 9, 9]  # inverted
    boxes[4] = [-1, -1, 41, 31]  # the whole image
    pasted = jax.jit(lambda m, b: ra.paste_masks_in_image(m, b, (30, 40)))(masks, boxes)
    assert pasted.shape == (10, 30, 40)
    np.testing.assert_allclose(pasted, _reference_paste(masks, boxes, 30, 40), atol=1e-6)
    with pytest.raises(ValueError, match=r"masks \[10, M, M\]"):
        ra.paste_masks_in_image(masks[:, :5], boxes, (30, 40))


@pytest.mark.torch
def test_matches_torchvision_ops():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    rng = np.random.default_rng(7)
    feature = rng.normal(size=(9, 12, 3)).astype(np.float32)
    boxes = _test_boxes(14, 48, seed=8)
    for aligned in (False, True):
        expected = torchvision.ops.roi_align(
            torch.from_numpy(feature.transpose(2, 0, 1)[None].copy()),
            [torch.from_numpy(boxes)],
            (3, 4),
            spatial_scale=0.25,
            sampling_ratio=2,
            aligned=aligned,
        ).numpy()
        got = _jitted_roi_align((3, 4), 0.25, 2, aligned)(feature, boxes)
        np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    masks = rng.uniform(size=(14, 6, 6)).astype(np.float32)
    expected = paste_masks_in_image(
        torch.from_numpy(masks[:, None]), torch.from_numpy(boxes), (30, 40)
    ).numpy()[:, 0]
    got = jax.jit(lambda m, b: ra.paste_masks_in_image(m, b, (30, 40)))(masks, boxes)
    np.testing.assert_allclose(got, expected, atol=1e-6)
