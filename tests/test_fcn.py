"""Tests for segjax.models.fcn (FCN-32s/16s/8s on VGG16, FCN-ResNet)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from segjax import models
from segjax.errors import ConfigError
from segjax.models import fcn
from segjax.models.backbones import vgg
from segjax.models.layers import BilinearConvTranspose
from tests.helpers import num_params, random_variables


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("fcn32s_vgg16", {}, 136_152_917),
        ("fcn16s_vgg16", {}, 134_815_994),
        ("fcn8s_vgg16", {}, 134_489_759),
        ("fcn8s_vgg16", {"paper_alignment": False}, 134_489_759),
        ("fcn_resnet50", {}, 35_322_218),
        ("fcn_resnet50", {"aux": False}, 32_957_013),
        ("fcn_resnet101", {}, 54_314_346),
        ("fcn_resnet101", {"aux": False}, 51_949_141),
    ],
)
def test_param_counts_match_published(name, kwargs, expected):
    assert num_params(models.create(name, num_classes=21, **kwargs)) == expected


def _closed_form_bilinear(factor):
    """The FCN reference's ``upsample_filt``, written out independently."""
    size = 2 * factor - factor % 2
    center = (size - 1) / 2  # = factor - 0.5 for even sizes, factor - 1 for odd ones
    ramp = 1 - np.abs(np.arange(size) - center) / factor
    return np.outer(ramp, ramp)


@pytest.fixture(scope="module")
def fresh_fcn8s_tiny():
    """A real ``init`` of FCN-8s tiny; the backbone kernels start at zero to keep it fast."""
    model = models.create("fcn8s_vgg16_tiny", num_classes=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vgg, "conv_init", nn.initializers.zeros)
        mp.setattr(vgg, "fc_init", nn.initializers.zeros)
        variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 40, 40, 3)))
    return model, variables


@pytest.mark.parametrize("name, factor", [("upscore2", 2), ("upscore_pool4", 2), ("upscore8", 8)])
def test_upsampling_initialised_bilinear(fresh_fcn8s_tiny, name, factor):
    _, variables = fresh_fcn8s_tiny
    kernel = np.asarray(variables["params"][name]["kernel"])
    assert set(variables["params"][name]) == {"kernel"}  # no bias
    expected = np.zeros_like(kernel)
    for c in range(kernel.shape[-1]):
        expected[:, :, c, c] = _closed_form_bilinear(factor)
    np.testing.assert_allclose(kernel, expected, atol=1e-7)


def test_score_layers_start_at_zero(fresh_fcn8s_tiny):
    _, variables = fresh_fcn8s_tiny
    for name in ("score_fr", "score_pool4", "score_pool3"):
        chex.assert_trees_all_equal(
            variables["params"][name],
            jax.tree.map(jnp.zeros_like, variables["params"][name]),
        )


@pytest.mark.parametrize("factor", [2, 3, 8, 32])
def test_bilinear_layer_upsamples_constant_in_interior(factor):
    x = jnp.full((1, 4, 4, 2), 3.0)
    out = BilinearConvTranspose(factor).apply(
        BilinearConvTranspose(factor).init(jax.random.key(0), x), x
    )
    k = 2 * factor - factor % 2
    chex.assert_shape(out, (1, 3 * factor + k, 3 * factor + k, 2))
    lo, hi = k - factor, 3 * factor + 1  # outputs covered by two inputs per axis
    np.testing.assert_allclose(out[0, lo:hi, lo:hi], 3.0, rtol=1e-6)


def _scatter_add_reference(x, torch_weight, factor):
    """PyTorch/Caffe ConvTranspose2d (no padding) by definition: out[f·i + t] += x[i]·W[:, :, t]."""
    n_h, n_w, c_in = x.shape[1:]
    _, c_out, k, _ = torch_weight.shape
    out = np.zeros((x.shape[0], (n_h - 1) * factor + k, (n_w - 1) * factor + k, c_out))
    for i in range(n_h):
        for j in range(n_w):
            patch = np.einsum("bc,cohw->bhwo", x[:, i, j], torch_weight)
            out[:, factor * i : factor * i + k, factor * j : factor * j + k] += patch
    return out


@pytest.mark.parametrize("impl", ["conv_transpose", "subpixel"])
@pytest.mark.parametrize("factor", [2, 3, 8])
def test_transposed_conv_semantics_and_torch_layout(impl, factor):
    rng = np.random.default_rng(factor)
    k = 2 * factor - factor % 2
    x = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    torch_weight = rng.normal(size=(3, 3, k, k)).astype(np.float32)  # [in, out, kh, kw]
    kernel = jnp.asarray(torch_weight.transpose(2, 3, 1, 0))  # HWOI, as documented
    out = BilinearConvTranspose(factor, impl=impl).apply({"params": {"kernel": kernel}}, x)
    np.testing.assert_allclose(out, _scatter_add_reference(x, torch_weight, factor), atol=1e-4)


def test_fcn8s_subpixel_upsampling_equals_conv_transpose():
    x = jax.random.normal(jax.random.key(0), (1, 29, 35, 3))
    base = models.create("fcn8s_vgg16_tiny", num_classes=3)
    variables = random_variables(base, x)
    fast = models.create("fcn8s_vgg16_tiny", num_classes=3, upsample_impl="subpixel")
    np.testing.assert_allclose(
        jax.jit(fast.apply)(variables, x)["out"],
        jax.jit(base.apply)(variables, x)["out"],
        rtol=1e-4,
        atol=1e-4,
    )


def _constant_score_variables(model, x, values):
    """Fresh (bilinear) upsampling, zero ``score_fr`` kernel and a per-class constant bias."""
    variables = random_variables(model, x)
    params = dict(variables["params"])
    for name in params:
        if name.startswith("upscore"):
            shape = params[name]["kernel"].shape
            factor = {4: 2, 16: 8, 32: 16, 64: 32}[shape[0]]
            params[name] = {"kernel": jnp.asarray(fcn_bilinear(factor, shape[-1]))}
    params["score_fr"] = {
        "kernel": jnp.zeros_like(params["score_fr"]["kernel"]),
        "bias": jnp.asarray(values, jnp.float32),
    }
    return {"params": params}


def fcn_bilinear(factor, channels):
    kernel = np.zeros((2 * factor, 2 * factor, channels, channels), np.float32)
    for c in range(channels):
        kernel[:, :, c, c] = _closed_form_bilinear(factor)
    return kernel


def _apply_capturing_score(model):
    """Jitted apply returning the logits and the ``score_fr`` output (one compile per model)."""

    def apply(variables, x):
        out, state = model.apply(
            variables,
            x,
            capture_intermediates=lambda module, _: module.name == "score_fr",
            mutable=["intermediates"],
        )
        return out["out"], state["intermediates"]["score_fr"]["__call__"][0]

    return jax.jit(apply)


def test_fcn32s_aligned_constant_and_bilinear_resize():
    """Aligned FCN-32s at init: a constant score map stays that constant everywhere, and any
    score map is upsampled exactly as half-pixel bilinear interpolation (align_corners=False)."""
    model = models.create("fcn32s_vgg16_tiny", num_classes=3, paper_alignment=False)
    apply = _apply_capturing_score(model)
    x = jax.random.normal(jax.random.key(0), (1, 37, 70, 3))
    values = [1.5, -2.0, 0.25]
    variables = _constant_score_variables(model, x, values)
    out, _ = apply(variables, x)
    chex.assert_shape(out, (1, 37, 70, 3))
    np.testing.assert_allclose(out, np.broadcast_to(values, out.shape), rtol=1e-5)

    variables["params"]["score_fr"] = random_variables(model, x, seed=3)["params"]["score_fr"]
    out, score = apply(variables, x)
    n_h, n_w = score.shape[1:3]
    expected = jax.image.resize(score, (1, 32 * n_h, 32 * n_w, 3), "bilinear")[:, :37, :70]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_fcn32s_paper_alignment_constant_away_from_the_border():
    # The reference crops at offset 19 of a 64/32 transposed conv whose first input is centred
    # at 31.5: image rows >= 13 have both bilinear neighbours, rows 0..12 see one (weight < 1).
    model = models.create("fcn32s_vgg16_tiny", num_classes=3)
    x = jax.random.normal(jax.random.key(0), (1, 40, 40, 3))
    values = np.array([1.5, -2.0, 0.25], np.float32)
    out, _ = _apply_capturing_score(model)(_constant_score_variables(model, x, values), x)
    out = np.asarray(out)
    np.testing.assert_allclose(out[0, 13:, 13:], np.broadcast_to(values, (27, 27, 3)), rtol=1e-5)
    weight_row0 = 1 - abs(19 - 31.5) / 32
    np.testing.assert_allclose(out[0, 0, 20], values * weight_row0, rtol=1e-5)


@pytest.mark.parametrize("name", ["fcn32s_vgg16_tiny", "fcn16s_vgg16_tiny", "fcn8s_vgg16_tiny"])
@pytest.mark.parametrize("paper", [True, False])
@pytest.mark.parametrize("size", [(1, 1), (31, 32), (33, 47), (64, 64)])
def test_vgg_fcn_output_shapes(name, paper, size):
    model = models.create(name, num_classes=5, paper_alignment=paper)
    out = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, *size, 3)))[0]
    )
    assert set(out) == {"out"}
    chex.assert_shape(out["out"], (2, *size, 5))
    assert out["out"].dtype == jnp.float32


@pytest.mark.parametrize("size", [(17, 17), (32, 45)])
@pytest.mark.parametrize("aux", [True, False])
def test_fcn_resnet_output_shapes(size, aux):
    model = models.create("fcn_resnet50_tiny", num_classes=4, aux=aux, dtype=jnp.bfloat16)
    out = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, *size, 3)))[0]
    )
    assert set(out) == ({"out", "aux"} if aux else {"out"})
    for value in out.values():
        chex.assert_shape(value, (2, *size, 4))
        assert value.dtype == jnp.float32


def test_fcn_resnet_names_map_to_torchvision():
    variables = jax.eval_shape(
        lambda: models.create("fcn_resnet50", num_classes=21).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3))
        )
    )
    params = variables["params"]
    assert set(params) == {"backbone", "classifier", "aux_classifier"}
    assert set(params["classifier"]) == {"conv", "bn", "cls"}
    chex.assert_shape(params["classifier"]["conv"]["kernel"], (3, 3, 2048, 512))
    chex.assert_shape(params["aux_classifier"]["conv"]["kernel"], (3, 3, 1024, 256))
    assert "bias" not in params["classifier"]["conv"]


def test_unknown_variant_is_an_error():
    model = fcn.FCN(num_classes=2, variant="4s", width=8, fc_features=8)
    with pytest.raises(ConfigError, match="variant"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))


class FCNVariantsTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_fcn8s_forward_finite(self):
        model = models.create("fcn8s_vgg16_tiny", num_classes=3)
        x = jax.random.normal(jax.random.key(0), (1, 25, 30, 3))
        variables = random_variables(model, x)
        out = self.variant(lambda v, x: model.apply(v, x, train=False))(variables, x)
        chex.assert_shape(out["out"], (1, 25, 30, 3))
        chex.assert_tree_all_finite(out)


def _grads(model, x, labels):
    variables = random_variables(model, x)

    @jax.jit
    def grad_fn(params):
        def loss(p):
            out, updates = model.apply(
                {**variables, "params": p},
                x,
                train=True,
                rngs={"dropout": jax.random.key(0)},
                mutable=["batch_stats"],
            )
            logp = jax.nn.log_softmax(out["out"])
            return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], -1)), updates

        return jax.value_and_grad(loss, has_aux=True)(params)

    (value, updates), grads = grad_fn(variables["params"])
    return value, grads, variables, updates


def test_fcn8s_backward_finite_and_fixed_upsampling_gets_no_gradient():
    model = models.create("fcn8s_vgg16_tiny", num_classes=3, fixed_upsampling=True)
    x = jax.random.normal(jax.random.key(0), (2, 27, 22, 3))
    labels = jax.random.randint(jax.random.key(1), (2, 27, 22), 0, 3)
    value, grads, _, _ = _grads(model, x, labels)
    chex.assert_tree_all_finite((value, grads))
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        assert float(jnp.abs(grads[name]["kernel"]).max()) == 0.0
    for name in ("score_fr", "score_pool3", "backbone"):
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[name])) > 0


def test_fcn_resnet_backward_finite():
    model = models.create("fcn_resnet50_tiny", num_classes=3)
    x = jax.random.normal(jax.random.key(0), (2, 17, 20, 3))
    labels = jax.random.randint(jax.random.key(1), (2, 17, 20), 0, 3)
    value, grads, variables, updates = _grads(model, x, labels)
    chex.assert_tree_all_finite((value, grads))
    assert float(jnp.abs(grads["classifier"]["cls"]["kernel"]).max()) > 0
    # Training mode moves every running statistic of the backbone and the heads.
    moved = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"], variables["batch_stats"]
    )
    assert all(jax.tree.leaves(moved))
    # The auxiliary head is not in this loss; the main head and the backbone are.
    assert float(jnp.abs(grads["aux_classifier"]["cls"]["kernel"]).max()) == 0
    assert float(jnp.abs(grads["backbone"]["conv1"]["kernel"]).max()) > 0
