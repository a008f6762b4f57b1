"""Inference strategies on a tiny U-Net: sliding window, multi-scale + flip, overlap-tile."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import models
from segjax.evaluation import inference
from tests.helpers import random_variables


@pytest.fixture(scope="module")
def tiny_unet():
    model = models.create("unet", num_classes=3, width=4, depth=2)
    variables = random_variables(model, (1, 16, 16, 3))
    return model, variables


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def test_tile_starts_cover_and_stay_inside():
    assert inference.tile_starts(10, 4, 3) == [0, 3, 6]
    assert inference.tile_starts(11, 4, 3) == [0, 3, 6, 7]
    assert inference.tile_starts(4, 8, 3) == [0]


def test_sliding_window_equals_whole_image_when_crop_covers(tiny_unet):
    model, variables = tiny_unet
    logits_fn = lambda x: model.apply(variables, x)["out"]
    images = _images((2, 20, 28, 3))
    whole = jax.jit(logits_fn)(images)
    slide = jax.jit(
        functools.partial(
            inference.sliding_window, logits_fn, crop=(32, 32), stride=(16, 16), tile_batch=2
        )
    )(images)
    chex.assert_shape(slide, (2, 20, 28, 3))
    scale = float(jnp.abs(whole).max())  # tolerance relative to the logits' magnitude
    chex.assert_trees_all_close(slide, whole, atol=1e-5 * scale, rtol=1e-5)


def test_sliding_window_averages_overlapping_tiles():
    # A per-tile "model" that returns each tile's mean value everywhere: the averaged result at
    # a pixel is the mean over the tiles covering it, computed here independently.
    logits_fn = lambda x: jnp.broadcast_to(x.mean(axis=(1, 2), keepdims=True)[..., :1], x.shape)
    images = _images((1, 10, 7, 3), seed=1)
    out = inference.sliding_window(logits_fn, images, crop=(4, 4), stride=(3, 2), tile_batch=3)
    img = np.asarray(images)[0, :, :, 0]
    total = np.zeros((10, 7))
    count = np.zeros((10, 7))
    for y in inference.tile_starts(10, 4, 3):
        for x in inference.tile_starts(7, 4, 2):
            total[y : y + 4, x : x + 4] += img[y : y + 4, x : x + 4].mean()
            count[y : y + 4, x : x + 4] += 1
    np.testing.assert_allclose(np.asarray(out)[0, :, :, 0], total / count, rtol=1e-5, atol=1e-6)


def test_sliding_window_rejects_stride_larger_than_crop():
    with pytest.raises(ValueError, match="stride"):
        inference.sliding_window(lambda x: x, _images((1, 8, 8, 3)), crop=(4, 4), stride=(5, 4))


def test_multi_scale_flip_is_mean_of_individual_predictions(tiny_unet):
    model, variables = tiny_unet
    logits_fn = lambda x: model.apply(variables, x)["out"]
    images = _images((2, 12, 16, 3), seed=2)
    scales = (0.5, 1.0, 1.5)
    tta = jax.jit(
        functools.partial(inference.multi_scale_flip, logits_fn, scales=scales, flip=True)
    )(images)

    @jax.jit
    def individually(images):
        expected = []
        for s in scales:
            h, w = inference.scaled_size(12, 16, s)
            x = jax.image.resize(images, (2, h, w, 3), "bilinear") if s != 1.0 else images
            for flipped in (False, True):
                logits = logits_fn(x[:, :, ::-1] if flipped else x)  # one image set per call
                logits = logits[:, :, ::-1] if flipped else logits
                logits = jax.image.resize(logits, (2, 12, 16, 3), "bilinear")
                expected.append(jax.nn.softmax(logits, axis=-1))
        return jnp.mean(jnp.stack(expected), axis=0), jax.nn.softmax(logits_fn(images))

    expected, plain = individually(images)
    chex.assert_trees_all_close(tta, expected, atol=1e-5)
    # Not trivially equal to the plain prediction.
    assert float(jnp.abs(tta - plain).max()) > 1e-4


def test_predictor_modes_share_argmax_when_equivalent(tiny_unet):
    model, variables = tiny_unet
    images = _images((1, 16, 16, 3), seed=3)
    whole = jax.jit(inference.make_predictor(model, inference.InferenceOptions()))
    slide = jax.jit(
        inference.make_predictor(
            model, inference.InferenceOptions(mode="slide", crop=(16, 16), stride=(8, 8))
        )
    )
    expected = whole(variables, images)
    scale = float(jnp.abs(expected).max())
    chex.assert_trees_all_close(slide(variables, images), expected, atol=1e-5 * scale, rtol=1e-5)


def test_overlap_tile_matches_mirror_padded_whole_image():
    model = models.create("unet_original_tiny", num_classes=2, mirror_pad=True)
    images = _images((1, 20, 20, 3), seed=4)
    variables = random_variables(model, images.shape, seed=1)
    options = inference.InferenceOptions(mode="tile", tile_size=8, tile_batch=4)
    tiled = jax.jit(inference.make_predictor(model, options))(variables, images)
    chex.assert_shape(tiled, (1, 20, 20, 2))
    whole = model.apply(variables, images)["out"]
    chex.assert_trees_all_close(tiled, whole, atol=1e-5 * float(jnp.abs(whole).max()), rtol=1e-5)
    with pytest.raises(ValueError, match="valid-convolution"):
        inference.make_predictor(models.create("unet", num_classes=2, width=4, depth=2), options)


def test_parse_scales():
    assert inference.parse_scales("0.5, 1,1.75") == (0.5, 1.0, 1.75)
    with pytest.raises(ValueError, match="positive"):
        inference.parse_scales("0,1")
    with pytest.raises(ValueError, match="numbers"):
        inference.parse_scales("a,b")
