"""Tests for segjax.models.unet (padded and original U-Net, overlap-tile) and the border weights."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from segjax import losses, models
from segjax.models import unet
from tests.helpers import random_variables


def test_original_param_count_and_paper_sizes():
    model = models.create("unet_original", num_classes=2)
    out, variables = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, 572, 572, 1)))
    )
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables)) == 31_030_658
    assert set(variables) == {"params"}  # no BatchNorm
    chex.assert_shape(out["out"], (1, 388, 388, 2))
    assert out["out"].dtype == jnp.float32


def test_output_and_input_size_helpers():
    assert unet.unet_original_output_size(572) == 388
    assert unet.unet_original_input_size(388) == 572
    assert unet.unet_original_margin(4) == 92
    assert unet.unet_original_tile_geometry(388) == (388, 92)
    for depth in (2, 3, 4):
        step = 2**depth
        for wanted in range(1, 120, 7):
            n = unet.unet_original_input_size(wanted, depth)
            got = unet.unet_original_output_size(n, depth)
            assert wanted <= got < wanted + step  # smallest valid output at least ``wanted``
            assert n - got == 2 * unet.unet_original_margin(depth)
    with pytest.raises(ValueError, match="570"):
        unet.unet_original_output_size(570)
    model = models.create("unet_original_tiny", num_classes=2)
    with pytest.raises(ValueError, match="odd"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 45, 45, 1))))


@pytest.mark.parametrize("size", [(1, 1), (5, 8), (33, 40), (64, 17)])
def test_original_mirror_pad_keeps_the_input_size(size):
    model = models.create("unet_original_tiny", num_classes=3, mirror_pad=True)
    out = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, *size, 3)))[0]
    )
    chex.assert_shape(out["out"], (2, *size, 3))


@pytest.mark.parametrize("name", ["unet", "unet_small", "unet_tiny"])
@pytest.mark.parametrize("size", [(32, 32), (31, 45)])
def test_padded_unet_names_and_shapes(name, size):
    model = models.create(name, num_classes=4)
    out, variables = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, *size, 3)))
    )
    chex.assert_shape(out["out"], (1, *size, 4))
    assert "batch_stats" in variables


@pytest.mark.parametrize("pads", [((5, 0), (2, 3)), ((9, 11), (0, 7))])
def test_mirror_pad_matches_numpy_reflect(pads):
    x = np.arange(4 * 3 * 2, dtype=np.float32).reshape(1, 4, 3, 2)
    expected = np.pad(x, ((0, 0), *pads, (0, 0)), mode="reflect")
    np.testing.assert_array_equal(unet.mirror_pad(jnp.asarray(x), pads), expected)


def test_overlap_tile_reassembles_tiles_exactly():
    images = jax.random.normal(jax.random.key(0), (2, 23, 30, 3))

    def centre(tiles):  # a "model" whose output is the centre of its input window
        return tiles[:, 4:-4, 4:-4]

    out = jax.jit(
        lambda x: unet.overlap_tile_predict(centre, x, tile_size=8, margin=4, tiles_per_call=5)
    )(images)
    np.testing.assert_array_equal(out, images)


def test_overlap_tile_equals_a_convolution_over_the_mirrored_image():
    images = jax.random.normal(jax.random.key(0), (1, 13, 10, 1))
    kernel = jax.random.normal(jax.random.key(1), (5, 5, 1, 2))

    def conv(x):
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    out = unet.overlap_tile_predict(conv, images, tile_size=4, margin=2)
    expected = conv(jnp.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect"))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_overlap_tile_rejects_wrong_tile_output():
    with pytest.raises(ValueError, match="expected"):
        unet.overlap_tile_predict(lambda t: t, jnp.zeros((1, 8, 8, 1)), tile_size=4, margin=2)


def test_overlap_tile_unet_original_matches_whole_image_prediction():
    # At depth 2 valid output tiles are multiples of 4 = 2**depth, so every tile sees the same
    # pooling grid as one whole-image pass and the two agree exactly.
    model = models.create("unet_original_tiny", num_classes=2)
    tile, margin = unet.unet_original_tile_geometry(8, depth=2)
    assert (tile, margin) == (8, 20)
    images = jax.random.normal(jax.random.key(0), (1, 30, 21, 1))
    variables = random_variables(model, jnp.zeros((1, tile + 2 * margin, tile + 2 * margin, 1)))
    tiled = unet.overlap_tile_predict(
        lambda t: model.apply(variables, t)["out"], images, tile_size=tile, margin=margin
    )
    whole = models.create("unet_original_tiny", num_classes=2, mirror_pad=True)
    expected = whole.apply(variables, images)["out"]
    chex.assert_shape(tiled, (1, 30, 21, 2))
    np.testing.assert_allclose(tiled, expected, rtol=1e-4, atol=1e-5)


class UNetOriginalVariantsTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_forward_finite(self):
        model = models.create("unet_original_tiny", num_classes=3)
        x = jax.random.normal(jax.random.key(0), (2, 44, 48, 1))
        variables = random_variables(model, x)
        out = self.variant(lambda v, x: model.apply(v, x, train=False))(variables, x)
        chex.assert_shape(out["out"], (2, 4, 8, 3))
        chex.assert_tree_all_finite(out)


# ---- border weight map ----


def test_weight_map_closed_form():
    # Two one-pixel instances 8 px apart on a 1×9 strip: the middle pixel has d1 = d2 = 4.
    instances = np.zeros((1, 9), np.int32)
    instances[0, 0], instances[0, 8] = 1, 2
    w = losses.unet_weight_map(instances)
    w_background, w_foreground = 9 / (2 * 7), 9 / (2 * 2)
    np.testing.assert_allclose(w[0, 4], w_background + 10 * np.exp(-(8**2) / (2 * 5**2)), 1e-6)
    np.testing.assert_allclose(w[0, 1], w_background + 10 * np.exp(-((1 + 7) ** 2) / 50), 1e-6)
    np.testing.assert_allclose(w[0, [0, 8]], w_foreground)  # no border term inside instances
    assert w.dtype == np.float32
    everywhere = losses.unet_weight_map(instances, border_on_background_only=False)
    np.testing.assert_allclose(everywhere[0, 0], w_foreground + 10 * np.exp(-64 / 50), 1e-6)


def test_weight_map_gap_between_cells_outweighs_open_background():
    instances = np.zeros((40, 40), np.int32)
    instances[5:20, 5:19] = 1
    instances[5:20, 21:35] = 2  # a 2-pixel gap at columns 19-20
    w = losses.unet_weight_map(instances, w0=10.0, sigma=5.0)
    gap, open_background = w[12, 19], w[35, 35]
    assert gap > open_background + 5
    # Far from both cells only the class weight is left.
    np.testing.assert_allclose(open_background, w[38, 1], rtol=1e-3)


def test_weight_map_options():
    instances = np.zeros((6, 6), np.int32)
    instances[1:3, 1:3] = 7
    classes = np.where(instances > 0, 2, 0)
    classes[5, 5] = 255
    w = losses.unet_weight_map(instances, classes, class_weights=[0.5, 0.0, 3.0])
    # One instance: no border term; explicit class weights; ignored pixel gets 0.
    np.testing.assert_allclose(w[1, 1], 3.0)
    np.testing.assert_allclose(w[0, 0], 0.5)
    assert w[5, 5] == 0
    batch = losses.unet_weight_map(np.stack([instances, instances.T]))
    chex.assert_shape(batch, (2, 6, 6))
    with pytest.raises(ValueError, match="class_weights"):
        losses.unet_weight_map(instances, classes, class_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        losses.unet_weight_map(instances, classes[:3])


def _touching_cells(seed=0, size=24):
    rng = np.random.default_rng(seed)
    instances = np.zeros((size, size), np.int32)
    instances[2:11, 2:11] = 1
    instances[2:11, 12:21] = 2  # one-pixel gap at column 11
    instances[13:22, 5:14] = 3  # two-pixel gap at rows 11-12
    image = np.where(instances > 0, 1.0, 0.0) + 0.3 * rng.normal(size=instances.shape)
    return image[None, ..., None].astype(np.float32), instances


def test_weighted_loss_trains_on_touching_cells():
    image, instances = _touching_cells()
    labels = jnp.asarray((instances > 0).astype(np.int32))[None]
    weights = jnp.asarray(losses.unet_weight_map(instances))[None]
    model = models.create("unet_original_tiny", num_classes=2, mirror_pad=True, dropout_rate=0.0)
    variables = random_variables(model, jnp.asarray(image))
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(variables["params"])

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            logits = model.apply({"params": p}, image, train=True)["out"]
            return losses.cross_entropy(logits, labels, weights=weights)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    params = variables["params"]
    history = []
    for _ in range(40):
        params, opt_state, loss, grads = step(params, opt_state)
        history.append(float(loss))
    chex.assert_tree_all_finite(grads)
    assert history[-1] < 0.5 * history[0], history
    # The gap pixels, weighted most, end up classified as background.
    logits = model.apply({"params": params}, image)["out"][0]
    assert int(jnp.argmax(logits[6, 11])) == 0 and int(jnp.argmax(logits[11, 8])) == 0


@pytest.mark.parametrize("jit", [True, False])
def test_upconv_matches_flax_conv_transpose_values_and_gradients(jit):
    # Same parameters as nn.ConvTranspose(2×2, stride 2); the custom backward pass must give
    # the gradients autodiff gives through lax.conv_transpose.
    import flax.linen as nn

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 7, 6)), jnp.float32)
    ours = unet.UpConv2x2(4)
    ref = nn.ConvTranspose(4, (2, 2), (2, 2), padding="VALID")
    params = ours.init(jax.random.key(1), x)["params"]
    chex.assert_trees_all_equal_shapes(params, ref.init(jax.random.key(1), x)["params"])
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    w = jnp.asarray(rng.normal(size=(2, 10, 14, 4)), jnp.float32)

    def loss(module):
        return lambda p, x: jnp.sum(module.apply({"params": p}, x) * w)

    maybe_jit = jax.jit if jit else (lambda f: f)
    y = maybe_jit(ours.apply)({"params": params}, x)
    chex.assert_trees_all_close(y, ref.apply({"params": params}, x), atol=1e-5)
    g_ours = maybe_jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    chex.assert_trees_all_close(g_ours, g_ref, atol=1e-4, rtol=1e-5)
