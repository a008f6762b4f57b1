"""The training transform (scale, pad, crop, flip, class-balanced crop) and photometric
distortion, eagerly and in tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from segjax.input import augment


def _image(seed=0, h=6, w=7):
    return tf.constant(np.random.default_rng(seed).uniform(0, 255, (h, w, 3)), tf.float32)


def test_adjust_photometric_identity():
    image = _image()
    out = augment.adjust_photometric(image)
    np.testing.assert_allclose(out.numpy(), image.numpy(), atol=1e-3)


def test_brightness_and_contrast_clip():
    image = tf.constant([[[10.0, 100.0, 250.0]]])
    out = augment.adjust_photometric(image, brightness=20.0)
    np.testing.assert_allclose(out.numpy(), [[[30.0, 120.0, 255.0]]], atol=1e-3)
    out = augment.adjust_photometric(image, contrast=2.0)
    np.testing.assert_allclose(out.numpy(), [[[20.0, 200.0, 255.0]]], atol=1e-3)


def test_contrast_order_matters_only_when_clipping():
    bright = tf.constant([[[200.0, 100.0, 50.0]]])

    def both(image):
        kw = {"contrast": 2.0, "saturation": 0.5}
        first = augment.adjust_photometric(image, contrast_first=True, **kw).numpy()
        last = augment.adjust_photometric(image, contrast_first=False, **kw).numpy()
        return first, last

    first, last = both(bright)
    # first: (255, 200, 100) clipped, then half saturation: min = 255 * (1 - 0.304) = 177.5;
    # last: half saturation of (200, 100, 50) gives min 125, doubled to 250.
    np.testing.assert_allclose(first[0, 0, 2], 177.5, atol=0.1)
    np.testing.assert_allclose(last[0, 0, 2], 250.0, atol=0.1)
    first, last = both(tf.constant([[[100.0, 50.0, 25.0]]]))  # nothing clips: same result
    np.testing.assert_allclose(first, last, atol=1e-3)


def test_saturation_zero_is_gray_and_hue_half_turn_is_complement():
    image = _image(1)
    gray = augment.adjust_photometric(image, saturation=0.0).numpy()
    np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-3)
    np.testing.assert_allclose(gray[..., 0], image.numpy().max(-1), atol=1e-2)  # HSV value
    red = tf.constant([[[255.0, 0.0, 0.0]]])
    cyan = augment.adjust_photometric(red, hue=90.0)  # 90 of 180 = half a turn
    np.testing.assert_allclose(cyan.numpy(), [[[0.0, 255.0, 255.0]]], atol=1e-2)


def test_yiq_colour_model():
    image = _image(4)
    same = augment.adjust_photometric(image, saturation=1.0, hue=0.0, colour_model="yiq")
    np.testing.assert_allclose(same.numpy(), image.numpy(), atol=1e-3)
    # A non-trivial change that is the identity: a full turn of hue (180 OpenCV units).
    turn = augment.adjust_photometric(image, saturation=1.0, hue=180.0, colour_model="yiq")
    np.testing.assert_allclose(turn.numpy(), image.numpy(), atol=1e-2)
    luma = image.numpy() @ np.array([0.299, 0.587, 0.114], np.float32)
    gray = augment.adjust_photometric(image, saturation=0.0, colour_model="yiq").numpy()
    for c in range(3):
        np.testing.assert_allclose(gray[..., c], np.clip(luma, 0, 255), atol=1e-2)
    # Hue rotation keeps luma (where nothing clips) and changes the colour.
    mid = tf.constant([[[150.0, 110.0, 90.0]]])
    rotated = augment.adjust_photometric(mid, hue=30.0, colour_model="yiq").numpy()
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(rotated @ weights, mid.numpy() @ weights, atol=1e-2)
    assert np.abs(rotated - mid.numpy()).max() > 10
    with pytest.raises(ValueError, match=r"colour_model='lab'"):
        augment.adjust_photometric(mid, hue=1.0, colour_model="lab")


def test_photometric_distortion_is_a_pure_function_of_the_seed():
    image = _image(2, 16, 16)
    seeds = [tf.constant([0, i], tf.int64) for i in range(8)]
    outs = [augment.photometric_distortion(image, s).numpy() for s in seeds]
    again = augment.photometric_distortion(image, seeds[3]).numpy()
    np.testing.assert_array_equal(outs[3], again)
    assert len({o.tobytes() for o in outs}) > 4  # different seeds, different results
    for o in outs:
        assert o.dtype == np.float32 and o.min() >= 0 and o.max() <= 255


def test_photometric_distortion_inside_tf_data_matches_eager():
    image = _image(3, 8, 8)
    ds = tf.data.Dataset.range(4).map(
        lambda i: augment.photometric_distortion(image, tf.stack([tf.constant(5, tf.int64), i]))
    )
    for i, out in enumerate(ds.as_numpy_iterator()):
        eager = augment.photometric_distortion(image, tf.constant([5, i], tf.int64))
        np.testing.assert_allclose(out, eager.numpy(), atol=1e-4)


IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _position_image(h, w):
    """Channels = each pixel's row, column and 0, so a crop's window can be read off it."""
    yy, xx = np.mgrid[0:h, 0:w]
    return tf.constant(np.stack([yy, xx, yy * 0], -1), tf.float32)


def _reference_transform(image, mask, seed, crop_size, scale_range, mean, std):
    """The documented steps one at a time, with the transform's random draws: resize (image
    bilinear, mask nearest) → pad bottom/right (image mean, mask 255) → crop → flip → normalise."""
    u = tf.random.stateless_uniform([4], seed=seed).numpy()
    lo, hi = scale_range
    image = tf.cast(image, tf.float32)
    mask = tf.constant(mask)[..., None]
    if (lo, hi) != (1.0, 1.0):
        size = tf.cast(tf.shape(mask)[:2], tf.float32) * (lo + (hi - lo) * u[0])
        size = tf.maximum(tf.cast(tf.round(size), tf.int32), 1)
        image = tf.image.resize(image, size, method="bilinear")
        mask = tf.image.resize(mask, size, method="nearest")
    image, mask = image.numpy(), mask.numpy()[..., 0]
    pad = [(0, max(c - n, 0)) for c, n in zip(crop_size, mask.shape)]
    image = np.pad(image - np.float32(mean), pad + [(0, 0)]) + np.float32(mean)
    mask = np.pad(mask, pad, constant_values=255)
    y0, x0 = (
        int(np.floor(np.float32(v) * np.float32(n - c + 1)))
        for v, n, c in zip(u[1:3], mask.shape, crop_size)
    )
    window = (slice(y0, y0 + crop_size[0]), slice(x0, x0 + crop_size[1]))
    image, mask = image[window], mask[window]
    if u[3] < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return (image - np.float32(mean)) / np.float32(std), mask


@pytest.mark.parametrize("hw", [(37, 50), (20, 15), (64, 40)])
@pytest.mark.parametrize("scale_range", [(0.5, 2.0), (1.0, 1.0)])
def test_train_transform_is_scale_pad_crop_flip_normalise(hw, scale_range):
    rng = np.random.default_rng(hw[0])
    image = rng.integers(0, 256, (*hw, 3)).astype(np.uint8)
    mask = rng.integers(0, 5, hw).astype(np.uint8)
    flipped = set()
    for i in range(12):
        seed = tf.constant([3, i], tf.int64)
        kw = {"crop_size": (24, 32), "scale_range": scale_range}
        out_image, out_mask = augment.train_transform(image, mask, seed, **kw)
        ref_image, ref_mask = _reference_transform(
            image, mask, seed, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD, **kw
        )
        np.testing.assert_allclose(out_image.numpy(), ref_image, atol=1e-3)
        np.testing.assert_array_equal(out_mask.numpy(), ref_mask)
        flipped.add(bool(tf.random.stateless_uniform([4], seed=seed)[3] < 0.5))
    assert flipped == {True, False}  # both branches were checked


def test_train_transform_pads_image_with_mean_and_mask_with_ignore():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    mask = rng.integers(0, 4, (10, 12)).astype(np.uint8)
    mean, std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)
    sides = set()
    for i in range(8):
        out_image, out_mask = augment.train_transform(
            image,
            mask,
            tf.constant([0, i], tf.int64),
            crop_size=(16, 16),
            scale_range=(1.0, 1.0),
            mean=mean,
            std=std,
        )
        out_image, out_mask = out_image.numpy(), out_mask.numpy()
        flipped = out_mask[0, 0] == 255  # nothing to crop: padding is right, or left if flipped
        sides.add(bool(flipped))
        cols = slice(4, 16) if flipped else slice(0, 12)
        inside, padding = np.zeros((16, 16), bool), np.ones((16, 16), bool)
        inside[:10, cols], padding[:10, cols] = True, False
        assert np.all(out_mask[padding] == 255)
        np.testing.assert_allclose(out_image[padding], 0.0, atol=1e-5)  # the normalised mean
        expected = image[:, ::-1] if flipped else image
        np.testing.assert_array_equal(out_mask[:10, cols], mask[:, ::-1] if flipped else mask)
        np.testing.assert_allclose(
            out_image[:10, cols], (expected - np.float32(mean)) / np.float32(std), atol=1e-5
        )
    assert sides == {True, False}


def test_train_transform_crops_a_window_anywhere():
    mask_np = np.random.default_rng(0).integers(0, 4, (32, 32)).astype(np.uint8)
    corners = set()
    for i in range(16):
        out_image, out_mask = augment.train_transform(
            _position_image(32, 32),
            tf.constant(mask_np),
            tf.constant([1, i], tf.int64),
            crop_size=(12, 12),
            scale_range=(1.0, 1.0),
            hflip=False,
            **IDENTITY,
        )
        y0, x0 = int(out_image[0, 0, 0]), int(out_image[0, 0, 1])
        yy, xx = np.mgrid[y0 : y0 + 12, x0 : x0 + 12]
        np.testing.assert_array_equal(out_image.numpy()[..., :2], np.stack([yy, xx], -1))
        np.testing.assert_array_equal(out_mask.numpy(), mask_np[y0 : y0 + 12, x0 : x0 + 12])
        corners.add((y0, x0))
    assert len(corners) > 8 and all(0 <= c <= 20 for corner in corners for c in corner)


def _dominated_mask(size=32):
    """Class 1 everywhere except a 12x12 block of class 2 in the bottom-right corner."""
    mask = np.ones((size, size), np.uint8)
    mask[-12:, -12:] = 2
    mask[0, :] = 255
    return mask


def _sampled_ratio(mask):
    """Largest class share and number of classes on every 4th row and column (what the
    class-balanced crop measures)."""
    labels = mask[::4, ::4][mask[::4, ::4] != 255]
    counts = np.bincount(labels)
    return counts.max() / counts.sum(), np.count_nonzero(counts)


def _crop_12(mask, seed, **kw):
    return augment.train_transform(
        _position_image(*mask.shape),
        tf.constant(mask),
        tf.constant([seed, 1], tf.int64),
        crop_size=(12, 12),
        scale_range=(1.0, 1.0),
        hflip=False,
        **IDENTITY,
        **kw,
    )


def test_cat_max_ratio_crop_prefers_mixed_windows():
    mask = _dominated_mask()
    changed = 0
    for seed in range(6):
        out_image, out_mask = _crop_12(mask, seed, cat_max_ratio=0.95, max_tries=50)
        y0, x0 = int(out_image[0, 0, 0]), int(out_image[0, 0, 1])
        np.testing.assert_array_equal(out_mask.numpy(), mask[y0 : y0 + 12, x0 : x0 + 12])
        ratio, present = _sampled_ratio(out_mask.numpy())
        assert present > 1 and ratio < 0.95
        _, plain = _crop_12(mask, seed)
        changed += not np.array_equal(plain.numpy(), out_mask.numpy())
    assert changed  # some plain draws were single-class and got re-drawn


def test_cat_max_ratio_falls_back_to_the_last_window():
    _, out = _crop_12(np.ones((20, 20), np.uint8), 0, cat_max_ratio=0.75)  # nothing qualifies
    assert out.shape == (12, 12)


def test_cat_max_ratio_keeps_a_balanced_first_window():
    # Stripes 4 pixels wide: every window, sampled on every 4th column, holds both classes.
    mask = np.broadcast_to((np.arange(32) // 4 % 2).astype(np.uint8), (32, 32)).copy()
    for seed in range(4):
        balanced = _crop_12(mask, seed, cat_max_ratio=0.75)
        plain = _crop_12(mask, seed)
        for a, b in zip(balanced, plain):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_train_transform_keeps_image_and_mask_aligned_with_extras():
    # The mask is derived from the image (class = bright or dark); after the joint geometric
    # ops they must still agree away from edges, whatever photometric does to the colours.
    yy, xx = np.mgrid[0:40, 0:60]
    bright = ((xx // 10 + yy // 10) % 2).astype(np.uint8)
    image = tf.constant(np.repeat(bright[..., None] * 200 + 20, 3, -1), tf.uint8)
    mask = tf.constant(bright)

    def transform(i):
        return augment.train_transform(
            image,
            mask,
            tf.stack([tf.constant(1, tf.int64), i]),
            crop_size=(32, 32),
            photometric=False,
            cat_max_ratio=0.75,
        )

    for out_image, out_mask in tf.data.Dataset.range(6).map(transform).as_numpy_iterator():
        valid = out_mask != 255
        predicted = out_image.mean(-1) > (out_image.mean(-1)[valid].mean())
        agree = (predicted[valid] == (out_mask[valid] == 1)).mean()
        assert agree > 0.85
        labels = out_mask[valid]
        assert np.bincount(labels).max() / labels.size < 0.75 or len(np.unique(labels)) == 1
    out_image, _ = augment.train_transform(
        image, mask, tf.constant([0, 0], tf.int64), crop_size=(32, 32), photometric=True
    )
    assert out_image.shape == (32, 32, 3)


def test_train_transform_with_extras_is_a_pure_function_of_the_seed():
    rng = np.random.default_rng(7)
    image = tf.constant(rng.integers(0, 256, (30, 40, 3)), tf.uint8)
    mask = tf.constant(rng.integers(0, 3, (30, 40)), tf.uint8)
    kw = {"crop_size": (16, 16), "photometric": True, "cat_max_ratio": 0.6, "colour_model": "hsv"}
    runs = [
        augment.train_transform(image, mask, tf.constant([2, i % 3], tf.int64), **kw)
        for i in range(6)
    ]
    for a, b in zip(runs[:3], runs[3:]):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert not np.array_equal(runs[0][0].numpy(), runs[1][0].numpy())
