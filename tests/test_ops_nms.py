"""Tests of segjax.ops.nms: padded greedy NMS equals a NumPy greedy NMS, under jit and vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.ops import nms


def _reference_nms(boxes, scores, threshold, valid=None, groups=None):
    """Greedy NMS in NumPy, one box at a time (torchvision's CPU kernel, ties: lower index).

    Returns the kept indices in order. Boxes of different ``groups`` never suppress each other.
    """
    boxes = np.asarray(boxes, np.float32)
    n = len(scores)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid)
    groups = np.zeros(n, int) if groups is None else np.asarray(groups)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = ~valid
    kept = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if suppressed[i]:
            continue
        kept.append(int(i))
        for j in range(n):
            if suppressed[j] or groups[j] != groups[i] or j == i:
                continue
            w = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            h = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = np.float32(w) * np.float32(h)
            union = areas[i] + areas[j] - inter
            if union > 0 and inter / union > threshold:
                suppressed[j] = True
    return np.array(kept, int)


def _random_boxes(n, seed, clusters=8):
    """Clustered boxes (many overlaps, as RPN proposals), a few of zero area, tied scores."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, 200, (clusters, 2))[rng.integers(0, clusters, n)]
    centre += rng.normal(0, 6, (n, 2))
    size = rng.uniform(5, 60, (n, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
    boxes[::17, 2] = boxes[::17, 0]  # zero width
    boxes[5] = boxes[4]  # identical boxes
    scores = rng.choice(np.linspace(0, 1, 13), n).astype(np.float32)  # exact ties
    return boxes, scores


def _unpadded(indices, keep_valid):
    indices, keep_valid = np.asarray(indices), np.asarray(keep_valid)
    assert keep_valid[: keep_valid.sum()].all(), "valid entries must come first"
    assert (indices[~keep_valid] == 0).all(), "padding indices are 0"
    return indices[keep_valid]


N = 150  # every case is padded to N boxes with `valid`, so each jitted function compiles once


@functools.cache
def _jitted(max_output, tile_size):
    return jax.jit(
        lambda b, s, v: nms.nms(
            b, s, iou_threshold=0.5, max_output=max_output, valid=v, tile_size=tile_size
        )
    )


def _padded(boxes, scores):
    """Small cases embedded in N boxes: the rest are invalid (and must stay out)."""
    n = len(scores)
    rest = _random_boxes(N - n, seed=9)
    valid = np.arange(N) < n
    return np.concatenate([boxes, rest[0]]), np.concatenate([scores, rest[1] + 1]), valid


@pytest.mark.parametrize("max_output, tile_size", [(5, 512), (300, 16)])
def test_nms_equals_reference(max_output, tile_size):
    """Ties, zero-area and identical boxes, one tile or many, max_output below/above kept."""
    boxes, scores = _random_boxes(N, seed=0)
    valid = np.ones(N, bool)
    valid[[3, 40, 41]] = False
    expected = _reference_nms(boxes, scores, 0.5, valid)
    assert 5 < len(expected) < 300
    indices, keep_valid = _jitted(max_output, tile_size)(boxes, scores, valid)
    assert indices.shape == keep_valid.shape == (max_output,)
    assert indices.dtype == jnp.int32 and keep_valid.dtype == jnp.bool_
    np.testing.assert_array_equal(_unpadded(indices, keep_valid), expected[:max_output])


def test_nms_edge_cases():
    """Identical boxes keep the lower index; zero-area boxes suppress nothing; IoU exactly at
    the threshold is kept (torchvision: suppress when IoU > threshold); all invalid."""
    boxes = np.array(
        [[0, 0, 10, 10]] * 3
        + [[20, 20, 20, 30]] * 2  # zero width
        + [[0, 40, 3, 41], [1, 40, 4, 41]]  # IoU 2 / 4 = 0.5 exactly
        + [[10, 40, 13, 41], [10.5, 40, 13.5, 41]]  # IoU 2.5 / 3.5
        # A chain: each box overlaps the next (IoU 7/13) but not the one after (4/16), so
        # greedy keeps every other one, and each kept box decides the next but one.
        + [[3 * i, 60, 3 * i + 10, 61] for i in range(12)],
        np.float32,
    )
    scores = np.array([0.5, 0.9, 0.9, 0.3, 0.3, 0.2, 0.1, 0.2, 0.1], np.float32)
    scores = np.concatenate([scores, np.linspace(0.09, 0.05, 12, dtype=np.float32)])
    run = _jitted(300, 16)
    kept = _unpadded(*run(*_padded(boxes, scores)))
    # Box 2 ties box 1 and loses; the chain spans a tile boundary (tiles of 16).
    np.testing.assert_array_equal(kept, [1, 3, 4, 5, 7, 6, *range(9, 21, 2)])
    boxes, scores, _ = _padded(boxes, scores)
    indices, keep_valid = run(boxes, scores, np.zeros(N, bool))
    assert not np.asarray(keep_valid).any() and not np.asarray(indices).any()


def test_nms_vmap_over_images():
    """vmap over a batch of images equals each image alone (and the reference)."""
    per_image = [_random_boxes(N, seed) for seed in (1, 2, 3)]
    boxes = np.stack([b for b, _ in per_image])
    scores = np.stack([s for _, s in per_image])
    valid = np.ones(scores.shape, bool)
    valid[1, 60:] = False
    indices, keep_valid = jax.vmap(_jitted(300, 16))(boxes, scores, valid)
    for i in range(3):
        expected = _reference_nms(boxes[i], scores[i], 0.5, valid[i])
        np.testing.assert_array_equal(_unpadded(indices[i], keep_valid[i]), expected)


def test_batched_nms_equals_per_class_nms_merged_by_score():
    boxes, scores = _random_boxes(N, seed=4)
    labels = np.random.default_rng(5).integers(0, 4, N)
    valid = scores > 0.1
    indices, keep_valid = jax.jit(
        lambda b, s, c, v: nms.batched_nms(
            b, s, c, iou_threshold=0.5, max_output=200, valid=v, tile_size=16
        )
    )(boxes, scores, labels, valid)
    per_class = np.concatenate(
        [
            np.flatnonzero(labels == c)[
                _reference_nms(boxes[labels == c], scores[labels == c], 0.5, valid[labels == c])
            ]
            for c in range(4)
        ]
    )
    # Merged in descending score, ties by index: the order of a stable sort of the union.
    merged = per_class[np.lexsort((per_class, -scores[per_class]))]
    np.testing.assert_array_equal(_unpadded(indices, keep_valid), merged)
    # The same as the one-call reference with groups, and different from class-agnostic NMS.
    np.testing.assert_array_equal(merged, _reference_nms(boxes, scores, 0.5, valid, labels))
    assert len(merged) > len(_reference_nms(boxes, scores, 0.5, valid))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_output": 0}, "max_output=0"),
        ({"iou_threshold": 1.5}, "iou_threshold=1.5"),
        ({"tile_size": 0}, "tile_size=0"),
    ],
)
def test_nms_rejects_bad_arguments(kwargs, message):
    args = {"iou_threshold": 0.5, "max_output": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        nms.nms(jnp.zeros((3, 4)), jnp.zeros(3), **args)


def test_nms_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
        nms.nms(jnp.zeros((3, 5)), jnp.zeros(3), iou_threshold=0.5, max_output=2)
    with pytest.raises(ValueError, match=r"idxs must be \[3\]"):
        nms.batched_nms(
            jnp.zeros((3, 4)), jnp.zeros(3), jnp.zeros(2), iou_threshold=0.5, max_output=2
        )


@pytest.mark.torch
def test_nms_matches_torchvision():
    """Untied scores: the same indices as torchvision.ops.nms / batched_nms."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    boxes, _ = _random_boxes(150, seed=6)
    scores = np.random.default_rng(7).permutation(150).astype(np.float32)
    labels = np.random.default_rng(8).integers(0, 3, 150)
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    expected = torchvision.ops.nms(tb, ts, 0.5).numpy()
    got = _unpadded(*nms.nms(boxes, scores, iou_threshold=0.5, max_output=150))
    np.testing.assert_array_equal(got, expected)
    expected = torchvision.ops.batched_nms(tb, ts, torch.from_numpy(labels), 0.5).numpy()
    got = nms.batched_nms(boxes, scores, labels, iou_threshold=0.5, max_output=150)
    np.testing.assert_array_equal(_unpadded(*got), expected)
