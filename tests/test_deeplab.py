"""Tests for segjax.models.deeplab (DeepLab v1/v2/v3/v3+) and the atrous / separable convs."""

import functools

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import models
from segjax.errors import ConfigError
from segjax.models import deeplab, fcn
from segjax.models.layers import ConvBN, SeparableConvBN
from tests.helpers import (
    abstract_init,
    abstract_variables,
    conv_dilations,
    random_variables,
    tree_size,
)


def _counts(name, **kw):
    params = abstract_variables(models.create(name, num_classes=21, **kw), (1, 64, 64, 3))
    total = tree_size(params["params"])
    return total, total - tree_size(params["params"].get("aux_classifier", {}))


# ----------------------------------------------------------------------------- atrous / separable


def _zero_dilate(kernel: np.ndarray, rate: int) -> np.ndarray:
    """Inserts ``rate - 1`` zeros between kernel taps: an HWIO k×k kernel → ((k-1)·r+1)²."""
    k = kernel.shape[0]
    size = (k - 1) * rate + 1
    out = np.zeros((size, size, *kernel.shape[2:]), kernel.dtype)
    out[::rate, ::rate] = kernel
    return out


def _dense_conv(x, kernel, padding, groups=1):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision="highest",
    )


@pytest.mark.parametrize("rate", [2, 5])
def test_atrous_conv_equals_dense_conv_with_zero_dilated_kernel(rate):
    x = jax.random.normal(jax.random.key(1), (2, 13, 11, 4))
    block = ConvBN(6, 3, dilation=rate, use_norm=False, act=None)
    params = random_variables(block, x, train=False)
    atrous = jax.jit(functools.partial(block.apply, train=False))(params, x)
    kernel = np.asarray(params["params"]["conv"]["kernel"])
    dense = _dense_conv(x, _zero_dilate(kernel, rate), [(rate, rate), (rate, rate)])
    chex.assert_shape(atrous, (2, 13, 11, 6))
    chex.assert_trees_all_close(atrous, dense, atol=1e-5, rtol=1e-5)


def test_zero_dilated_kernel_is_not_the_plain_kernel():
    # Guards the test above: with rate 2 the result must differ from an undilated conv.
    x = jax.random.normal(jax.random.key(1), (1, 9, 9, 2))
    block = ConvBN(3, 3, dilation=2, use_norm=False, act=None)
    params = random_variables(block, x, train=False)
    plain = _dense_conv(x, params["params"]["conv"]["kernel"], [(1, 1), (1, 1)])
    assert not np.allclose(block.apply(params, x, train=False), plain, atol=1e-3)


def _bn_eval(x, scale, bias, mean, var, eps=1e-5):
    return (x - mean) / np.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize("rate, stride", [(2, 1), (1, 2)])
def test_separable_conv_equals_depthwise_then_pointwise(rate, stride):
    x = jax.random.normal(jax.random.key(3), (2, 11, 9, 5))
    block = SeparableConvBN(7, 3, strides=stride, dilation=rate)
    variables = random_variables(block, x, train=False)  # random BN statistics too
    got = jax.jit(functools.partial(block.apply, train=False))(variables, x)

    p, s = jax.tree.map(np.asarray, (variables["params"], variables["batch_stats"]))
    dw = np.asarray(p["depthwise"]["conv"]["kernel"])  # [3, 3, 1, C]
    # Depthwise: each channel convolved with its own 3×3 filter, one channel at a time.
    pad = [(rate, rate), (rate, rate)]

    @jax.jit
    def depthwise(x, dw):
        chans = [
            jax.lax.conv_general_dilated(
                x[..., c : c + 1],
                dw[..., c : c + 1],
                (stride, stride),
                pad,
                rhs_dilation=(rate, rate),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision="highest",
            )
            for c in range(x.shape[-1])
        ]
        return jnp.concatenate(chans, axis=-1)

    y = np.asarray(depthwise(x, dw))
    y = np.maximum(_bn_eval(y, **p["depthwise"]["bn"], **s["depthwise"]["bn"]), 0)
    y = np.einsum("bhwc,cd->bhwd", y, np.asarray(p["pointwise"]["conv"]["kernel"])[0, 0])
    y = np.maximum(_bn_eval(y, **p["pointwise"]["bn"], **s["pointwise"]["bn"]), 0)
    chex.assert_trees_all_close(got, y, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- parameter counts


def test_torchvision_deeplabv3_resnet_param_counts():
    assert _counts("deeplabv3_resnet50") == (42_004_074, 39_638_869)
    assert _counts("deeplabv3_resnet101") == (60_996_202, 58_630_997)


def test_torchvision_deeplabv3_mobilenet_v3_param_counts():
    assert _counts("deeplabv3_mobilenet_v3_large") == (11_029_328, 11_025_477)


def _resnet_features(depth):
    # torchvision resnet50 / resnet101 totals minus their 2048·1000 + 1000 fc layer.
    return {50: 25_557_032, 101: 44_549_160}[depth] - 2_049_000


def _conv(cin, cout, k=1, bias=False, bn=True):
    return cin * cout * k * k + (cout if bias else 0) + (2 * cout if bn else 0)


def _sep(cin, cout, k=3):
    return cin * k * k + 2 * cin + _conv(cin, cout)  # depthwise + its BN, pointwise + its BN


@pytest.mark.parametrize("depth", [50, 101])
def test_deeplabv3plus_resnet_param_count_from_architecture(depth):
    c, n = 256, 21
    aspp = _conv(2048, c) + 3 * _sep(2048, c) + _conv(2048, c) + _conv(5 * c, c)
    decoder = _conv(256, 48) + _sep(c + 48, c) + _sep(c, c) + _conv(c, n, bias=True, bn=False)
    aux = _conv(1024, 256, 3) + _conv(256, n, bias=True, bn=False)
    head = aspp + decoder
    total, without = _counts(f"deeplabv3plus_resnet{depth}")
    assert without == _resnet_features(depth) + head
    assert total == without + aux


def test_deeplabv2_and_v1_param_counts_from_architecture():
    n = 21
    aspp_v2 = 4 * _conv(2048, n, 3, bias=True, bn=False)
    assert _counts("deeplabv2_resnet101")[0] == _resnet_features(101) + aspp_v2
    # torchvision vgg16 (138,357,544) minus its three fully connected layers.
    vgg_convs = 138_357_544 - (25088 * 4096 + 4096) - (4096 * 4096 + 4096) - (4096 * 1000 + 1000)
    large_fov = _conv(512, 1024, 3, True, False) + _conv(1024, 1024, 1, True, False)
    fc8 = _conv(1024, n, 1, True, False)
    assert _counts("deeplabv1_vgg16")[0] == vgg_convs + large_fov + fc8 == 20_505_429


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize(
    "name",
    [
        "deeplabv1_tiny",
        "deeplabv2_tiny",
        "deeplabv3_tiny",
        "deeplabv3plus_tiny",
        "deeplabv3plus_xception65_tiny",
        "deeplabv3plus_mobilenetv2_tiny",
    ],
)
def test_output_shapes_odd_sizes(name, output_stride):
    model = models.create(name, num_classes=5, output_stride=output_stride)
    x = jnp.zeros((2, 37, 51, 3))
    _, out = abstract_init(model, x)
    chex.assert_shape(out["out"], (2, 37, 51, 5))
    assert out["out"].dtype == jnp.float32
    if "aux" in out:
        chex.assert_shape(out["aux"], (2, 37, 51, 5))


def test_mobilenet_v3_head_rejects_output_stride_8():
    model = models.create("deeplabv3_mobilenet_v3_large_tiny", num_classes=3, output_stride=8)
    with pytest.raises(ValueError, match="output_stride"):
        abstract_variables(model, (1, 33, 33, 3))


def test_default_rates():
    assert deeplab.default_rates(16) == (6, 12, 18)
    assert deeplab.default_rates(8) == (12, 24, 36)
    with pytest.raises(ConfigError, match="output_stride"):
        deeplab.default_rates(4)


def test_aspp_uses_the_requested_rates():
    x = jnp.zeros((1, 9, 9, 8))
    aspp = deeplab.ASPP(rates=(3, 5, 7), features=4)
    variables = random_variables(aspp, x, train=False)
    dilations = conv_dilations(functools.partial(aspp.apply, train=False), variables, x)
    assert dilations == {(1, 1), (3, 3), (5, 5), (7, 7)}


# ----------------------------------------------------------------------------- forward / backward


class DeepLabHeadVariantsTest(chex.TestCase):
    """The v3+ head pieces with and without jit (the whole model runs jitted below)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_separable_aspp(self):
        aspp = deeplab.ASPP(rates=(1, 2, 3), features=8, separable=True, dropout=0.1)
        x = jax.random.normal(jax.random.key(0), (2, 7, 9, 6))
        variables = random_variables(aspp, x, train=False)
        out = self.variant(functools.partial(aspp.apply, train=False))(variables, x)
        chex.assert_shape(out, (2, 7, 9, 8))
        chex.assert_tree_all_finite(out)

    @chex.variants(with_jit=True, without_jit=True)
    def test_deeplab_head_and_fcn_head(self):
        x = jax.random.normal(jax.random.key(0), (2, 5, 6, 16))
        for head in (deeplab.DeepLabHead(3, (2, 4, 6), 8), fcn.FCNHead(3)):
            variables = random_variables(head, x, train=False)
            out = self.variant(functools.partial(head.apply, train=False))(variables, x)
            chex.assert_shape(out, (2, 5, 6, 3))
            chex.assert_tree_all_finite(out)


def test_forward_backward_finite():
    # v3+ on a ResNet: separable ASPP, decoder, aux head, dropout, BatchNorm in training mode.
    model = models.create("deeplabv3plus_tiny", num_classes=4, output_stride=16)
    x = jax.random.normal(jax.random.key(0), (2, 33, 33, 3))
    labels = jax.random.randint(jax.random.key(1), (2, 33, 33), 0, 4)
    variables = random_variables(model, x)

    def loss_fn(params):
        out, _ = model.apply(
            {**variables, "params": params},
            x,
            train=True,
            rngs={"dropout": jax.random.key(3, impl="rbg")},
            mutable=["batch_stats"],
        )
        assert set(out) == {"out", "aux"}
        chex.assert_shape(list(out.values()), (2, 33, 33, 4))
        total = 0.0
        for logits in out.values():
            logp = jax.nn.log_softmax(logits)
            total -= jnp.take_along_axis(logp, labels[..., None], -1).mean()
        return total

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
    assert np.isfinite(float(loss))
    chex.assert_tree_all_finite(grads)
    norms = jax.tree.leaves(jax.tree.map(lambda g: jnp.abs(g).sum(), grads))
    assert sum(float(n) > 0 for n in norms) > 0.9 * len(norms)
