"""Photometric distortion and the class-balanced (cat_max_ratio) crop, eagerly and in tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from segjax import augment


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


def _dominated_mask(size=32):
    """Class 1 everywhere except a 6x6 patch of class 2 in the bottom-right corner."""
    mask = np.ones((size, size), np.uint8)
    mask[-6:, -6:] = 2
    mask[0, :] = 255
    return mask


def _ratio(mask):
    labels = mask[mask != 255]
    counts = np.bincount(labels)
    return counts.max() / counts.sum(), np.count_nonzero(counts)


@pytest.mark.parametrize("seed", range(6))
def test_cat_max_ratio_crop_prefers_mixed_windows(seed):
    mask_np = _dominated_mask()
    # The image encodes each pixel's position, so the crop's window can be checked exactly.
    yy, xx = np.mgrid[0:32, 0:32]
    image = tf.constant(np.stack([yy, xx, yy * 0], -1), tf.float32)
    mask = tf.constant(mask_np)
    out_image, out_mask = augment.crop_cat_max_ratio(
        image, mask, (12, 12), tf.constant([seed, 1], tf.int64), cat_max_ratio=0.95, max_tries=50
    )
    y0, x0 = int(out_image[0, 0, 0]), int(out_image[0, 0, 1])
    np.testing.assert_array_equal(out_mask.numpy(), mask_np[y0 : y0 + 12, x0 : x0 + 12])
    ratio, present = _ratio(out_mask.numpy())
    assert present > 1 and ratio < 0.95


def test_cat_max_ratio_falls_back_to_last_window():
    mask = tf.ones((20, 20), tf.uint8)  # one class everywhere: no window qualifies
    image = tf.zeros((20, 20, 3))
    _, out = augment.crop_cat_max_ratio(image, mask, (8, 8), tf.constant([0, 0], tf.int64))
    assert out.shape == (8, 8)


def test_cat_max_ratio_one_is_a_plain_crop_and_inside_tf_data():
    mask_np = _dominated_mask()
    mask = tf.constant(mask_np)
    image = tf.zeros((32, 32, 3))

    def crop(i):
        return augment.crop_cat_max_ratio(
            image, mask, (12, 12), tf.stack([tf.constant(0, tf.int64), i]), cat_max_ratio=0.9
        )[1]

    for i, out in enumerate(tf.data.Dataset.range(3).map(crop).as_numpy_iterator()):
        np.testing.assert_array_equal(out, crop(tf.constant(i, tf.int64)).numpy())
    seed = tf.constant([0, 0], tf.int64)
    u = tf.random.stateless_uniform([10, 2], seed=seed)
    _, plain = augment.crop_cat_max_ratio(image, mask, (12, 12), seed, cat_max_ratio=1.0)
    _, expected = augment.crop(image, mask, (12, 12), u[0, 0], u[0, 1])
    np.testing.assert_array_equal(plain.numpy(), expected.numpy())


@pytest.mark.parametrize("hw", [(37, 50), (20, 15), (64, 40)])
@pytest.mark.parametrize("scale_range", [(0.5, 2.0), (1.0, 1.0)])
def test_fast_train_transform_equals_train_transform(hw, scale_range):
    rng = np.random.default_rng(hw[0])
    image = tf.constant(rng.integers(0, 256, (*hw, 3)), tf.uint8)
    mask = tf.constant(rng.integers(0, 5, hw), tf.uint8)
    for i in range(12):
        seed = tf.constant([3, i], tf.int64)
        kw = {"crop_size": (24, 32), "scale_range": scale_range}
        ref_image, ref_mask = augment.train_transform(image, mask, seed, **kw)
        image_out, mask_out = augment.train_transform_fast(image, mask, seed, **kw)
        np.testing.assert_allclose(image_out.numpy(), ref_image.numpy(), atol=1e-3)
        np.testing.assert_array_equal(mask_out.numpy(), ref_mask.numpy())


def test_fast_transform_keeps_image_and_mask_aligned_with_extras():
    # The mask is derived from the image (class = bright or dark); after the joint geometric
    # ops they must still agree away from edges, whatever photometric does to the colours.
    yy, xx = np.mgrid[0:40, 0:60]
    bright = ((xx // 10 + yy // 10) % 2).astype(np.uint8)
    image = tf.constant(np.repeat(bright[..., None] * 200 + 20, 3, -1), tf.uint8)
    mask = tf.constant(bright)

    def transform(i):
        return augment.train_transform_fast(
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
    out_image, _ = augment.train_transform_fast(
        image, mask, tf.constant([0, 0], tf.int64), crop_size=(32, 32), photometric=True
    )
    assert out_image.shape == (32, 32, 3)


def test_fast_transform_with_extras_is_a_pure_function_of_the_seed():
    rng = np.random.default_rng(7)
    image = tf.constant(rng.integers(0, 256, (30, 40, 3)), tf.uint8)
    mask = tf.constant(rng.integers(0, 3, (30, 40)), tf.uint8)
    kw = {"crop_size": (16, 16), "photometric": True, "cat_max_ratio": 0.6, "colour_model": "hsv"}
    runs = [
        augment.train_transform_fast(image, mask, tf.constant([2, i % 3], tf.int64), **kw)
        for i in range(6)
    ]
    for a, b in zip(runs[:3], runs[3:]):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert not np.array_equal(runs[0][0].numpy(), runs[1][0].numpy())
