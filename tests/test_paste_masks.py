"""Mask pasting on the host (only inside each box) against whole-image computations.

``roi_align.paste_masks_in_boxes`` is checked against an independent per-pixel reference
(torchvision's convention evaluated at every image pixel, float64 resampling) and against the
jitted whole-image ``roi_align.paste_masks_in_image``, on random boxes plus the awkward ones:
across the image border, far outside it, tiny, inverted, enormous and NaN.
"""

import jax
import numpy as np
import pytest

from segjax.models.maskrcnn import transform
from segjax.ops import roi_align as ra


def _integer_box(box, m: int, padding: int):
    """torchvision's ``expand_boxes`` in float32 then truncation to ints (NaN corners → 0)."""
    box = np.asarray(box, np.float32)
    scale = np.float32((m + 2 * padding) / m)
    half_w, half_h = (
        (box[2] - box[0]) * np.float32(0.5) * scale,
        (box[3] - box[1]) * np.float32(0.5) * scale,
    )
    cx, cy = (box[2] + box[0]) * np.float32(0.5), (box[3] + box[1]) * np.float32(0.5)
    corners = np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], np.float32)
    return [int(v) for v in np.clip(np.nan_to_num(corners), -(2.0**24), 2.0**24)]


def _source_index(pixels, start: int, stop: int, mask_len: int):
    """Per image pixel: PyTorch bilinear (align_corners=False) low/high taps, weight, inside."""
    size = max(stop - start + 1, 1)
    src = np.maximum((pixels - start + 0.5) * (mask_len / size) - 0.5, 0.0)
    low = np.minimum(np.floor(src), mask_len - 1).astype(int)
    high = np.minimum(low + 1, mask_len - 1)
    return low, high, src - low, (pixels >= start) & (pixels <= stop)


def _reference_paste(masks, boxes, height: int, width: int, padding: int = 1):
    """Every image pixel of every mask, straight from the convention (float64)."""
    m = masks.shape[-1]
    out = np.zeros((len(masks), height, width))
    for n, (mask, box) in enumerate(zip(masks, boxes, strict=True)):
        mask = np.pad(mask.astype(np.float64), padding)
        x1, y1, x2, y2 = _integer_box(box, m, padding)
        x_low, x_high, fx, x_in = _source_index(np.arange(width), x1, x2, len(mask))
        y_low, y_high, fy, y_in = _source_index(np.arange(height), y1, y2, len(mask))
        fx, fy = fx[None, :], fy[:, None]
        top = mask[y_low][:, x_low] * (1 - fx) + mask[y_low][:, x_high] * fx
        bottom = mask[y_high][:, x_low] * (1 - fx) + mask[y_high][:, x_high] * fx
        out[n] = (top * (1 - fy) + bottom * fy) * (y_in[:, None] & x_in[None, :])
    return out


def _random_case(rng, image_hw=None, n=None):
    """Masks, boxes, image size and padding; one box is replaced by an awkward one."""
    height, width = image_hw or (int(v) for v in rng.integers(1, 90, 2))
    n, m = n or int(rng.integers(1, 6)), int(rng.choice([1, 7, 28]))
    masks = rng.uniform(size=(n, m, m)).astype(np.float32)
    corner = rng.uniform(-30, max(height, width) + 10, (n, 2))
    extent = rng.choice([0.0, 0.4, 3, 40, 200], (n, 1)) * rng.uniform(0, 1, (n, 2))
    boxes = np.concatenate([corner, corner + extent], 1).astype(np.float32)
    awkward = [
        [-1e9, -1e9, 1e9, 1e9],  # enormous: clipped, covers everything
        [width - 0.5, height - 0.5, width + 3, height + 3],  # over the bottom-right corner
        [width + 5, 2, width + 9, 6],  # entirely right of the image
        [5, 5, 2, 2],  # inverted
        [-0.9, -0.9, 0.1, 0.1],  # tiny, at the top-left corner
        [np.nan, 1, 3, np.nan],
    ]
    boxes[rng.integers(n)] = awkward[rng.integers(len(awkward))]
    return masks, boxes, (height, width), int(rng.choice([0, 1, 2]))


def test_host_paste_equals_the_per_pixel_reference():
    rng = np.random.default_rng(11)
    for _ in range(60):
        masks, boxes, (h, w), padding = _random_case(rng)
        got = ra.paste_masks_in_boxes(masks, boxes, (h, w), padding=padding)
        assert got.shape == (len(masks), h, w) and got.dtype == np.float32
        want = _reference_paste(masks, boxes, h, w, padding)
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"boxes {boxes}")


_jitted_paste = jax.jit(ra.paste_masks_in_image, static_argnums=(2,), static_argnames=("padding",))


def test_host_paste_equals_the_jitted_whole_image_paste():
    """Same support, values within float32 rounding (XLA fuses some multiply-adds)."""
    rng = np.random.default_rng(12)
    for _ in range(40):  # one image size and count: a compile per mask size and padding only
        masks, boxes, hw, padding = _random_case(rng, image_hw=(45, 70), n=6)
        got = ra.paste_masks_in_boxes(masks, boxes, hw, padding=padding)
        jitted = jax.jit(
            lambda m, b, hw=hw, p=padding: ra.paste_masks_in_image(m, b, hw, padding=p)
        )
        want = np.asarray(jitted(masks, boxes))
        np.testing.assert_array_equal(got != 0, want != 0)
        np.testing.assert_allclose(got, want, rtol=0, atol=3e-7)


def test_boxes_at_the_border_tiny_and_outside():
    masks = np.ones((4, 28, 28), np.float32)
    boxes = np.array(
        [[-10, -10, 4, 4], [38, 28, 45, 35], [3.2, 3.2, 3.3, 3.3], [50, 50, 60, 60]], np.float32
    )
    got = ra.paste_masks_in_boxes(masks, boxes, (30, 40))
    want = _reference_paste(masks, boxes, 30, 40)
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert got[0, 0, 0] > 0.5 and got[0, 10:].max() == 0  # cut at the top-left border
    assert got[1, -1, -1] > 0.5 and got[1, :25].max() == 0  # cut at the bottom-right border
    assert np.count_nonzero(got[2]) <= 4  # a tiny box stays a few pixels
    assert not got[3].any()  # entirely outside


def test_maskrcnn_paste_masks_is_the_host_paste_with_padding_one():
    rng = np.random.default_rng(13)
    masks = rng.uniform(size=(5, 28, 28)).astype(np.float32)
    boxes = np.array(
        [[3, 5, 40, 30], [-4, -3, 20, 70], [50, 2, 90, 19], [0, 0, 0, 0], [10, 10, 11, 60]],
        np.float32,
    )
    got = transform.paste_masks(masks, boxes, (61, 83))
    np.testing.assert_array_equal(got, ra.paste_masks_in_boxes(masks, boxes, (61, 83), padding=1))
    assert transform.paste_masks(masks[:0], boxes[:0], (61, 83)).shape == (0, 61, 83)


def test_bad_arguments_are_rejected():
    masks, boxes = np.zeros((3, 6, 6), np.float32), np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"paste_masks_in_boxes: expected masks \[3, M, M\]"):
        ra.paste_masks_in_boxes(masks[:, :5], boxes, (8, 8))
    with pytest.raises(ValueError, match=r"padding=-1, expected an int >= 0"):
        ra.paste_masks_in_boxes(masks, boxes, (8, 8), padding=-1)
