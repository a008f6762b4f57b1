"""Tests of segjax.ops.boxes against NumPy transcriptions of torchvision's box formulas."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.ops import boxes as box_ops


def _boxes(n, seed):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-20, 100, (n, 2))
    return np.concatenate([corner, corner + rng.uniform(0, 50, (n, 2))], 1).astype(np.float32)


def _reference_iou(a, b):
    """Pairwise IoU by loops, the textbook way; 0 where the union is empty."""
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a.astype(np.float64)):
        for j, q in enumerate(b.astype(np.float64)):
            w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
            out[i, j] = w * h / union if union > 0 else 0.0
    return out


def test_box_area_and_iou_match_reference_including_zero_area():
    a, b = _boxes(7, 0), _boxes(5, 1)
    a[0, 2] = a[0, 0]  # zero width
    b[1] = a[0]  # two identical zero-area boxes: union 0
    b[2] = a[3]  # identical boxes: IoU 1
    iou_and_grad = jax.jit(jax.value_and_grad(lambda x, y: box_ops.box_iou(x, y).sum()))
    iou = np.asarray(jax.jit(box_ops.box_iou)(a, b))
    assert np.isfinite(iou).all()
    np.testing.assert_allclose(iou, _reference_iou(a, b), rtol=1e-6, atol=1e-7)
    assert iou[3, 2] == pytest.approx(1.0) and iou[0, 1] == 0.0
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    np.testing.assert_allclose(jax.jit(box_ops.box_area)(a), area, rtol=1e-6)
    chex.assert_tree_all_finite(iou_and_grad(a, b))


def test_clip_boxes_and_min_size_mask():
    boxes = np.array([[-5, -3, 20, 40], [3, 4, 3.5, 9], [10, 10, 12, 12]], np.float32)
    clipped = np.asarray(jax.jit(box_ops.clip_boxes, static_argnums=(1, 2))(boxes, 30, 15))
    expected = np.stack(
        [
            np.clip(boxes[:, 0], 0, 15),
            np.clip(boxes[:, 1], 0, 30),
            np.clip(boxes[:, 2], 0, 15),
            np.clip(boxes[:, 3], 0, 30),
        ],
        1,
    )
    np.testing.assert_array_equal(clipped, expected)
    # Traced sizes (one per image under vmap) work too.
    per_image = jax.jit(jax.vmap(box_ops.clip_boxes))(
        jnp.asarray(np.stack([boxes, boxes])), jnp.array([30, 8]), jnp.array([15, 8])
    )
    np.testing.assert_array_equal(per_image[0], expected)
    assert float(per_image[1].max()) == 8
    mask = jax.jit(box_ops.boxes_min_size_mask, static_argnums=1)(boxes, 1.0)
    np.testing.assert_array_equal(mask, [True, False, True])


def _reference_encode(gt, proposals, weights):
    """torchvision's encode_boxes, transcribed to NumPy (float64)."""
    wx, wy, ww, wh = weights
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    px, py = proposals[:, 0] + 0.5 * pw, proposals[:, 1] + 0.5 * ph
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return np.stack(
        [wx * (gx - px) / pw, wy * (gy - py) / ph, ww * np.log(gw / pw), wh * np.log(gh / ph)], 1
    )


def _reference_decode(codes, boxes, weights, clip):
    """torchvision's decode_single, transcribed to NumPy (float64): codes [N, 4K] → [N, K, 4]."""
    wx, wy, ww, wh = weights
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    dx, dy = codes[:, 0::4] / wx, codes[:, 1::4] / wy
    dw = np.minimum(codes[:, 2::4] / ww, clip)
    dh = np.minimum(codes[:, 3::4] / wh, clip)
    px, py = dx * w[:, None] + cx[:, None], dy * h[:, None] + cy[:, None]
    pw, ph = np.exp(dw) * w[:, None], np.exp(dh) * h[:, None]
    return np.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], -1)


@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)])
def test_box_coder_matches_torchvision_formulas(weights):
    coder = box_ops.BoxCoder(weights)
    encode, decode = jax.jit(coder.encode), jax.jit(coder.decode)
    gt, proposals = _boxes(9, 2) + [0, 0, 1, 1], _boxes(9, 3) + [0, 0, 1, 1]
    codes = encode(gt, proposals)
    expected = _reference_encode(gt.astype(float), proposals.astype(float), weights)
    np.testing.assert_allclose(codes, expected, rtol=1e-5, atol=2e-5)
    # Round trip: decoding the encoding gives the ground truth back.
    np.testing.assert_allclose(decode(codes, proposals)[:, 0], gt, atol=2e-4)
    # K = 3 classes, with dw/dh large enough to hit the clamp at log(1000/16).
    rel = np.random.default_rng(4).normal(0, 3, (9, 12)).astype(np.float32)
    rel[0, 2] = rel[1, 7] = 40 * weights[2]
    decoded = np.asarray(decode(rel, proposals))
    expected = _reference_decode(
        rel.astype(float), proposals.astype(float), weights, math.log(1000 / 16)
    )
    assert decoded.shape == (9, 3, 4)
    np.testing.assert_allclose(decoded, expected, rtol=2e-5, atol=2e-3)
    assert decoded[0, 0, 2] - decoded[0, 0, 0] == pytest.approx(
        1000 / 16 * (proposals[0, 2] - proposals[0, 0]), rel=1e-5
    )


def test_box_coder_leading_dims_broadcast():
    coder = box_ops.BoxCoder((1, 1, 1, 1))
    anchors = jnp.asarray(_boxes(6, 5) + [0, 0, 1, 1]).reshape(2, 3, 4)
    rel = jnp.asarray(np.random.default_rng(6).normal(0, 0.5, (4, 2, 3, 4)), jnp.float32)
    decode = jax.jit(coder.decode)
    decoded = decode(rel, anchors)
    chex.assert_shape(decoded, (4, 2, 3, 1, 4))
    flat = decode(rel.reshape(-1, 4), jnp.tile(anchors.reshape(-1, 4), (4, 1)))
    np.testing.assert_allclose(decoded.reshape(-1, 4), flat.reshape(-1, 4), rtol=1e-6)


def test_box_coder_degenerate_pairs_encode_to_zero_with_finite_gradients():
    coder = box_ops.BoxCoder((10, 10, 5, 5))
    gt = jnp.array([[0, 0, 10, 10], [0, 0, 0, 0], [1, 1, 5, 5]], jnp.float32)
    proposals = jnp.array([[0, 0, 5, 5], [0, 0, 4, 4], [0, 0, 0, 0]], jnp.float32)
    codes, grad = jax.jit(jax.value_and_grad(lambda p: coder.encode(gt, p)[:, 0].sum()))(proposals)
    np.testing.assert_array_equal(jax.jit(coder.encode)(gt, proposals)[1:], 0)
    chex.assert_tree_all_finite((codes, grad))


def test_box_coder_rejects_bad_input():
    with pytest.raises(ValueError, match="four positive numbers"):
        box_ops.BoxCoder((1, 1, 1))
    with pytest.raises(ValueError, match="multiple of 4"):
        box_ops.BoxCoder((1, 1, 1, 1)).decode(jnp.zeros((2, 6)), jnp.zeros((2, 4)))


@pytest.mark.torch
def test_matches_torchvision_box_ops():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.detection import _utils as det_utils

    a, b = _boxes(7, 7) + [0, 0, 1, 1], _boxes(5, 8) + [0, 0, 1, 1]
    expected = torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(box_ops.box_iou(jnp.asarray(a), jnp.asarray(b)), expected, 1e-6)
    ours, theirs = box_ops.BoxCoder((10, 10, 5, 5)), det_utils.BoxCoder((10, 10, 5, 5))
    codes = theirs.encode_single(torch.from_numpy(a), torch.from_numpy(a[::-1].copy())).numpy()
    np.testing.assert_allclose(ours.encode(jnp.asarray(a), jnp.asarray(a[::-1])), codes, atol=1e-5)
    rel = np.random.default_rng(9).normal(0, 2, (7, 8)).astype(np.float32)
    decoded = theirs.decode(torch.from_numpy(rel), [torch.from_numpy(a)]).numpy()
    np.testing.assert_allclose(ours.decode(jnp.asarray(rel), jnp.asarray(a)), decoded, atol=1e-3)
