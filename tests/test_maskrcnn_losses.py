"""Mask R-CNN training losses: parity with torchvision, matching, sampling, mask targets, grads.

The parity fixture (``tests/fixtures/torchvision/maskrcnn_losses.npz``, made by
``tools/make_maskrcnn_loss_fixture.py`` with torch) holds torchvision's training run of the
slim Mask R-CNN of ``maskrcnn.npz`` (the same weights) on two padded images: the ground truth,
its training proposals, the match labels and sampled indices its samplers saw and drew, and the
five losses. segjax is fed the same proposals and samples and must agree within 1e-4 relative.
"""

import functools
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import maskrcnn
from segjax.models.maskrcnn import losses, targets
from segjax.models.maskrcnn.targets import BELOW_LOW, BETWEEN, Sample
from tests.helpers import random_variables
from tests.test_maskrcnn_parity import fixture_model, fixture_variables

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision")
sys.path.insert(0, FIXTURES)
import fixture_values  # noqa: E402

RTOL = 1e-4
CONFIG = losses.LossConfig()


# ----------------------------------------------------------------------------- parity fixture


@functools.cache
def _fixture() -> dict[str, np.ndarray]:
    with np.load(os.path.join(FIXTURES, "maskrcnn_losses.npz")) as data:
        return {k: data[k] for k in data.files}


def fixture_batch() -> dict[str, np.ndarray]:
    """The instance batch of the fixture; images rebuilt from ``fixture_values``."""
    ref = _fixture()
    n, hp, wp = ref["masks"].shape[0], *ref["masks"].shape[2:]
    images = fixture_values.image((n, hp, wp, 3), "maskrcnn_loss_images")
    for image, (h, w) in zip(images, ref["image_size"]):
        image[h:], image[:, w:] = 0, 0
    assert fixture_values.checksum({"x": images}) == ref["images_checksum"]
    fields = ("image_size", "boxes", "labels", "masks", "instance_valid")
    batch = {k: ref[k] for k in fields}
    return {**batch, "image": images, "is_crowd": np.zeros_like(ref["instance_valid"])}


def torchvision_sample(positive, negative, slots: int, remap=None) -> Sample:
    """torchvision's sampled indices ``[B, ·]`` (padded with −1) in segjax's layout."""
    index, is_positive, valid = (
        np.zeros((len(positive), slots), t) for t in (np.int32, bool, bool)
    )
    for i, (pos, neg) in enumerate(zip(positive, negative)):
        pos, neg = pos[pos >= 0], neg[neg >= 0]
        chosen = np.concatenate([pos, neg])
        index[i, : len(chosen)] = chosen if remap is None else remap(i, chosen)
        is_positive[i, : len(pos)] = True
        valid[i, : len(chosen)] = True
    return Sample(jnp.asarray(index), jnp.asarray(is_positive), jnp.asarray(valid))


def roi_remap(num_proposals: np.ndarray, padded: int):
    """torchvision's RoI index (its proposals, then the image's ground truth) → segjax's
    (proposals padded to ``padded``, then the ground truth padded to M)."""

    def remap(i, index):
        n = num_proposals[i]
        return np.where(index < n, index, padded + index - n)

    return remap


@functools.cache
def parity_run():
    """segjax's losses and details with torchvision's proposals and samples (one jit)."""
    ref = _fixture()
    proposals = ref["proposals"]
    count = ref["num_proposals"]
    proposal_valid = np.arange(proposals.shape[1])[None] < count[:, None]
    rpn = torchvision_sample(ref["rpn_positive"], ref["rpn_negative"], 256)
    roi = torchvision_sample(
        ref["roi_positive"], ref["roi_negative"], 512, roi_remap(count, proposals.shape[1])
    )
    samplers = losses.Samplers(lambda labels: rpn, lambda labels: roi)
    model = fixture_model()

    def run(variables, batch):
        _, terms, details = losses.losses_with_samplers(
            model, variables, batch, samplers, proposals=(proposals, proposal_valid)
        )
        rpn_labels = targets.match_labels(details["rpn_matches"])
        roi_labels = jax.vmap(targets.match_labels)(details["roi_matches"], batch["labels"])
        return terms, rpn_labels, roi_labels

    return jax.device_get(jax.jit(run)(fixture_variables(), fixture_batch()))


def test_fixture_is_not_vacuous():
    ref = _fixture()
    assert (ref["rpn_positive"] >= 0).sum(1).min() >= 10
    assert (ref["roi_positive"] >= 0).sum(1).min() >= 5
    assert (ref["rpn_negative"] >= 0).sum(1).tolist() == [
        256 - p for p in (ref["rpn_positive"] >= 0).sum(1)
    ]
    assert np.all(ref["losses"] > 0.1)


def test_five_losses_match_torchvision():
    terms, _, _ = parity_run()
    got = np.asarray([terms[k] for k in losses.LOSS_NAMES], np.float64)
    errors = np.abs(got - _fixture()["losses"]) / np.abs(_fixture()["losses"])
    print("relative differences:", dict(zip(losses.LOSS_NAMES, errors.tolist())))
    assert np.all(errors <= RTOL), dict(zip(losses.LOSS_NAMES, errors))


def test_matching_on_real_anchors_and_proposals_is_torchvisions():
    ref = _fixture()
    _, rpn_labels, roi_labels = parity_run()
    np.testing.assert_array_equal(rpn_labels, ref["rpn_labels"])
    padded = ref["proposals"].shape[1]
    for i, n in enumerate(ref["num_proposals"]):
        gt = int(ref["instance_valid"][i].sum())
        expected = ref["roi_labels"][i, : n + gt]
        got = np.concatenate([roi_labels[i, :n], roi_labels[i, padded : padded + gt]])
        np.testing.assert_array_equal(got, expected)
        assert np.all(roi_labels[i, n:padded] == -1), "padded proposals must be ignored"


# ----------------------------------------------------------------------------- matching


def _boxes(*rows) -> jnp.ndarray:
    return jnp.asarray(rows, jnp.float32)


def test_matcher_thresholds_and_ignore_band():
    gt = _boxes((0, 0, 10, 10))
    # IoUs with the gt box: 1, 0.75, 0.7, 0.69, 0.3, 0.29, 0.
    boxes = _boxes(
        (0, 0, 10, 10),
        (0, 0, 10, 7.5),
        (0, 0, 10, 7),
        (0, 0, 10, 6.9),
        (0, 0, 10, 3),
        (0, 0, 10, 2.9),
        (20, 20, 30, 30),
    )
    rpn = dict(high=0.7, low=0.3, allow_low_quality=False)
    matches = targets.match_boxes(gt, jnp.array([True]), boxes, **rpn)
    assert matches.tolist() == [0, 0, 0, BETWEEN, BETWEEN, BELOW_LOW, BELOW_LOW]
    roi = dict(high=0.5, low=0.5, allow_low_quality=False)
    matches = targets.match_boxes(gt, jnp.array([True]), boxes, **roi)
    assert matches.tolist() == [0, 0, 0, 0, BELOW_LOW, BELOW_LOW, BELOW_LOW]


def test_low_quality_matches_keep_every_tied_best_box():
    gt = _boxes((0, 0, 10, 10), (40, 0, 50, 10))
    # gt 1's best boxes (IoU 0.5 each, a tie) are below 0.7: they still match gt 1.
    boxes = _boxes((0, 0, 10, 10), (40, 0, 50, 5), (40, 5, 50, 10), (40, 0, 50, 4))
    low = targets.match_boxes(gt, jnp.array([True, True]), boxes, high=0.7, low=0.3,
                              allow_low_quality=True)  # fmt: skip
    assert low.tolist() == [0, 1, 1, BETWEEN]
    strict = targets.match_boxes(gt, jnp.array([True, True]), boxes, high=0.7, low=0.3,
                                 allow_low_quality=False)  # fmt: skip
    assert strict.tolist() == [0, BETWEEN, BETWEEN, BETWEEN]


def test_padded_and_unmatched_ground_truth_never_match():
    gt = _boxes((0, 0, 10, 10), (20, 20, 30, 30), (100, 100, 110, 110))
    boxes = _boxes((0, 0, 10, 10), (20, 20, 30, 30), (50, 50, 60, 60))
    # gt 1 is padding (identical to box 1); gt 2 overlaps nothing: with torchvision's rule
    # every box of IoU 0 with it would become a low-quality positive.
    matches = targets.match_boxes(gt, jnp.array([True, False, True]), boxes, high=0.7,
                                  low=0.3, allow_low_quality=True)  # fmt: skip
    assert matches.tolist() == [0, BELOW_LOW, BELOW_LOW]
    none = targets.match_boxes(gt, jnp.zeros(3, bool), boxes, high=0.7, low=0.3,
                               allow_low_quality=True)  # fmt: skip
    assert none.tolist() == [BELOW_LOW] * 3


def test_invalid_boxes_are_ignored():
    gt = _boxes((0, 0, 10, 10))
    boxes = _boxes((0, 0, 10, 10), (0, 0, 0, 0), (30, 30, 40, 40))
    matches = targets.match_boxes(gt, jnp.array([True]), boxes, jnp.array([True, False, True]),
                                  high=0.5, low=0.5, allow_low_quality=False)  # fmt: skip
    assert matches.tolist() == [0, BETWEEN, BELOW_LOW]
    assert targets.match_labels(matches, jnp.array([3])).tolist() == [3, -1, 0]
    assert targets.match_labels(matches).tolist() == [1, -1, 0]


def test_crowd_regions_ignore_their_negatives_only():
    crowd = _boxes((0, 0, 100, 100))
    boxes = _boxes((10, 10, 20, 20), (90, 0, 110, 10), (80, 0, 110, 10), (10, 10, 30, 30))
    matches = jnp.array([BELOW_LOW, BELOW_LOW, BELOW_LOW, 0])
    # Fractions of the boxes inside the crowd: 1, 0.5, 0.667, 1 (a positive: kept).
    got = targets.ignore_in_crowd(matches, boxes, crowd, jnp.array([True]))
    assert got.tolist() == [BETWEEN, BELOW_LOW, BELOW_LOW, 0]
    assert targets.ignore_in_crowd(matches, boxes, crowd, jnp.array([True]), 0.6)[2] == BETWEEN
    unchanged = targets.ignore_in_crowd(matches, boxes, crowd, jnp.array([False]))
    assert unchanged.tolist() == matches.tolist()


def test_crowd_ground_truth_is_never_matched_in_the_loss_targets():
    gt = {
        "boxes": _boxes((0, 0, 40, 40), (50, 0, 90, 40))[None],
        "labels": jnp.array([[1, 2]]),
        "matchable": jnp.array([[True, False]]),
        "crowd": jnp.array([[False, True]]),
    }
    boxes = _boxes((0, 0, 40, 40), (50, 0, 90, 40), (55, 5, 65, 15), (0, 50, 10, 60))
    match = functools.partial(
        losses._match, high=0.7, low=0.3, allow_low_quality=True, crowd_ioa_thresh=0.7
    )
    matches = jax.jit(match)(gt, boxes, jnp.ones(4, bool))
    assert matches[0].tolist() == [0, BETWEEN, BETWEEN, BELOW_LOW]


# ----------------------------------------------------------------------------- sampling


def _labels(positives: int, negatives: int, ignored: int = 50) -> jnp.ndarray:
    values = np.concatenate([np.full(positives, 2), np.zeros(negatives), -np.ones(ignored)])
    return jnp.asarray(np.random.default_rng(0).permutation(values), jnp.int32)


@pytest.mark.parametrize(
    "positives, negatives, batch, fraction, expected",
    [
        (1000, 1000, 256, 0.5, (128, 128)),  # enough of both
        (10, 1000, 256, 0.5, (10, 246)),  # too few positives: negatives fill up
        (10, 20, 256, 0.5, (10, 20)),  # too few of both: the rest of the slots invalid
        (300, 2000, 512, 0.25, (128, 384)),  # the RoI sampler
        (0, 700, 512, 0.25, (0, 512)),
    ],
)
def test_sample_counts_and_members(positives, negatives, batch, fraction, expected):
    labels = _labels(positives, negatives)
    sample = jax.jit(
        functools.partial(targets.sample_balanced, batch_size=batch, positive_fraction=fraction)
    )(jax.random.key(1), labels)
    chex.assert_shape(sample.index, (batch,))
    num_positive, num_valid = int(sample.positive.sum()), int(sample.valid.sum())
    assert (num_positive, num_valid - num_positive) == expected
    assert np.all(np.asarray(sample.positive)[:num_positive]), "positives fill the first slots"
    chosen = np.asarray(sample.index)[np.asarray(sample.valid)]
    assert len(set(chosen.tolist())) == len(chosen), "an index sampled twice"
    got = np.asarray(labels)[chosen]
    assert np.all(got[:num_positive] == 2) and np.all(got[num_positive:] == 0)


def test_sampling_is_uniform_and_follows_the_key():
    labels = _labels(300, 300)
    sample = functools.partial(targets.sample_balanced, batch_size=256, positive_fraction=0.5)
    samples = jax.jit(jax.vmap(sample, in_axes=(0, None)))(
        jax.random.split(jax.random.key(2), 400), labels
    )
    picked = np.zeros(labels.shape[0])
    for index, positive in zip(np.asarray(samples.index), np.asarray(samples.positive)):
        picked[index[positive]] += 1
    frequency = picked[np.asarray(labels) == 2] / 400  # expected 128 / 300 each
    assert abs(frequency.mean() - 128 / 300) < 1e-6
    assert frequency.min() > 0.3 and frequency.max() < 0.56
    assert not np.array_equal(samples.index[0], samples.index[1])


# ----------------------------------------------------------------------------- mask targets


def roi_align_reference(mask: np.ndarray, roi, size: int) -> np.ndarray:
    """torchvision's ``roi_align`` CPU kernel, literally, for one map (scale 1, adaptive grid,
    aligned=False), in float64."""
    h, w = mask.shape
    x1, y1, x2, y2 = roi
    roi_w, roi_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    bin_w, bin_h = roi_w / size, roi_h / size
    grid_h, grid_w = int(np.ceil(roi_h / size)), int(np.ceil(roi_w / size))

    def bilinear(y, x):
        if y < -1 or y > h or x < -1 or x > w:
            return 0.0
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(y), int(x)
        y1_, x1_ = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
        if y0 >= h - 1:
            y0 = y1_ = h - 1
            y = float(y0)
        if x0 >= w - 1:
            x0 = x1_ = w - 1
            x = float(x0)
        ly, lx = y - y0, x - x0
        return ((1 - ly) * ((1 - lx) * mask[y0, x0] + lx * mask[y0, x1_])
                + ly * ((1 - lx) * mask[y1_, x0] + lx * mask[y1_, x1_]))  # fmt: skip

    out = np.zeros((size, size))
    for p in range(size):
        for q in range(size):
            total = 0.0
            for iy in range(grid_h):
                y = y1 + p * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    total += bilinear(y, x1 + q * bin_w + (ix + 0.5) * bin_w / grid_w)
            out[p, q] = total / max(grid_h * grid_w, 1)
    return out


def test_mask_targets_are_roi_align_with_the_adaptive_grid():
    rng = np.random.default_rng(3)
    hp, wp, size = 120, 150, 7
    image_size = (110, 140)
    masks = (rng.uniform(size=(2, hp, wp)) > 0.5).astype(np.uint8)
    # Grids of 1 to 20 samples per axis, sub-pixel and inverted RoIs, RoIs over the border.
    rois = np.array(
        [[3.2, 4.7, 60.1, 104.9], [0.0, 0.0, 140.0, 110.0], [100.5, 90.2, 139.5, 109.5],
         [50.0, 40.0, 50.4, 40.3], [30.0, 30.0, 20.0, 25.0], [-5.0, 80.0, 160.0, 125.0]],
        np.float32,
    )  # fmt: skip
    matches = np.array([0, 1, 1, 0, 1, 0])
    got = jax.jit(targets.project_masks, static_argnums=4)(
        masks, np.asarray(image_size), rois, matches, size
    )
    unpadded = masks[:, : image_size[0], : image_size[1]].astype(np.float64)
    for k, (roi, m) in enumerate(zip(rois, matches)):
        expected = roi_align_reference(unpadded[m], roi.astype(np.float64), size)
        np.testing.assert_allclose(got[k], expected, atol=1e-5, err_msg=f"RoI {k}")


def test_mask_targets_never_read_the_padding():
    masks = np.zeros((1, 64, 64), np.uint8)
    masks[0, :40, :50] = 1
    masks[0, 40:, :] = masks[0, :, 50:] = 1  # padding set to 1: must not be read
    roi = np.array([[0.0, 0.0, 64.0, 64.0]], np.float32)
    got = targets.project_masks(masks, np.array([40, 50]), roi, np.array([0]), 8)[0]
    expected = roi_align_reference(masks[0, :40, :50].astype(np.float64), roi[0], 8)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[0, 6] == 0.25, "2 of bin 6's 8 samples per row are inside the 50 columns"


# ----------------------------------------------------------------------------- training forward


def tiny_batch():
    """Two 64×96 images with two/three objects, one padded entry, one crowd region."""
    rng = np.random.default_rng(4)
    boxes = np.array(
        [[[5, 6, 40, 50], [30, 10, 90, 60], [0, 0, 0, 0]],
         [[10, 10, 30, 30], [20, 5, 60, 55], [50, 30, 95, 63]]], np.float32,
    )  # fmt: skip
    valid = np.array([[True, True, False], [True, True, True]])
    masks = np.zeros((2, 3, 64, 96), np.uint8)
    for i, j in zip(*np.nonzero(valid)):
        x1, y1, x2, y2 = boxes[i, j].astype(int)
        masks[i, j, y1:y2, x1:x2] = 1
    return {
        "image": rng.normal(size=(2, 64, 96, 3)).astype(np.float32),
        "image_size": np.array([[64, 90], [60, 96]], np.int32),
        "boxes": boxes,
        "labels": np.array([[1, 2, 0], [3, 4, 1]], np.int32),
        "masks": masks,
        "is_crowd": np.array([[False, False, False], [False, False, True]]),
        "instance_valid": valid,
    }


def test_jitted_gradients_are_finite_and_zero_for_frozen_params():
    model = maskrcnn.maskrcnn_tiny()
    batch = tiny_batch()
    variables = random_variables(model, batch["image"].shape)

    def total(params, batch, rng):
        return losses.maskrcnn_losses(model, {**variables, "params": params}, batch, rng)

    step = jax.jit(jax.value_and_grad(total, has_aux=True))
    (value, terms), grads = step(variables["params"], batch, jax.random.key(0))
    assert set(terms) == set(losses.LOSS_NAMES)
    np.testing.assert_allclose(value, sum(terms.values()), rtol=1e-6)
    chex.assert_tree_all_finite((value, grads))
    trainable = maskrcnn.trainable_mask(model, grads)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    flags = jax.tree_util.tree_leaves(trainable)
    frozen = [jax.tree_util.keystr(p) for (p, g), t in zip(flat, flags) if not t]
    assert frozen, "the tiny model freezes conv1 and layer1"
    for (path, g), train in zip(flat, flags):
        if not train:
            assert not np.any(np.asarray(g)), jax.tree_util.keystr(path)
    for name in ("rpn", "box_predictor", "mask_predictor", "layer4_0"):
        assert any(np.any(np.asarray(g)) for (p, g) in flat if name in jax.tree_util.keystr(p)), (
            name
        )


def test_missing_batch_field_is_one_line_error():
    batch = tiny_batch()
    del batch["is_crowd"]
    with pytest.raises(ValueError, match="batch lacks is_crowd"):
        losses.maskrcnn_losses(maskrcnn.maskrcnn_tiny(), {}, batch, jax.random.key(0))
