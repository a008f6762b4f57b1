"""Tests for segjax.models.backbones.mobilenet (MobileNetV2, MobileNetV3-Large)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.backbones import mobilenet
from tests.helpers import (
    abstract_init,
    abstract_variables,
    conv_rates,
    num_params,
    random_variables,
)


def test_make_divisible_matches_torchvision():
    # Squeeze channels of torchvision's SE blocks: _make_divisible(expanded // 4, 8).
    assert [mobilenet.make_divisible(c // 4, 8) for c in (72, 120, 480, 672, 960)] == [
        24, 32, 120, 168, 240,
    ]  # fmt: skip
    assert mobilenet.make_divisible(32 * 0.25) == 8  # never below the divisor
    assert mobilenet.make_divisible(18) == 24  # 16 would lose more than 10 %
    assert mobilenet.make_divisible(91) == 88


def test_activations_match_jax_reference():
    x = jnp.linspace(-5.0, 5.0, 101)
    chex.assert_trees_all_close(mobilenet.hardswish(x), jax.nn.hard_swish(x), atol=1e-6)
    chex.assert_trees_all_close(mobilenet.hardsigmoid(x), jax.nn.hard_sigmoid(x), atol=1e-6)


def test_param_counts_match_torchvision():
    # torchvision totals minus the ImageNet classifier layers.
    v3_classifier = (960 * 1280 + 1280) + (1280 * 1000 + 1000)
    assert num_params(mobilenet.MobileNetV3Large(dilated=True)) == 5_483_032 - v3_classifier
    v2 = mobilenet.MobileNetV2(include_last=True)
    assert num_params(v2) == 3_504_872 - (1280 * 1000 + 1000)


def test_v3_structure_follows_torchvision_indices():
    variables = abstract_variables(mobilenet.MobileNetV3Large(), (1, 64, 64, 3))
    p = variables["params"]
    assert sorted(p, key=lambda k: int(k.split("_")[1])) == [f"features_{i}" for i in range(17)]
    # features.1: no expansion (16 → 16): block.0 depthwise, block.1 projection.
    assert set(p["features_1"]) == {"block_0", "block_1"}
    # features.4: expand 24 → 72, 5×5 depthwise, SE(72 → 24), project to 40.
    assert set(p["features_4"]) == {"block_0", "block_1", "block_2", "block_3"}
    chex.assert_shape(p["features_4"]["block_1"]["conv"]["kernel"], (5, 5, 1, 72))
    chex.assert_shape(p["features_4"]["block_2"]["fc1"]["kernel"], (1, 1, 72, 24))
    chex.assert_shape(p["features_4"]["block_2"]["fc2"]["bias"], (72,))
    chex.assert_shape(p["features_16"]["conv"]["kernel"], (1, 1, 160, 960))


def test_v2_structure_follows_torchvision_indices():
    variables = abstract_variables(mobilenet.MobileNetV2(), (1, 64, 64, 3))
    p = variables["params"]
    assert set(p["features_1"]) == {"conv_0", "conv_1", "conv_2"}  # dw, pw conv, BN
    assert set(p["features_2"]) == {"conv_0", "conv_1", "conv_2", "conv_3"}
    chex.assert_shape(p["features_2"]["conv_2"]["kernel"], (1, 1, 96, 24))
    assert set(p["features_2"]["conv_3"]) == {"scale", "bias"}
    assert "features_18" not in p


@pytest.mark.parametrize("dilated, stride, rates", [(False, 32, {1}), (True, 16, {1, 2})])
def test_v3_dilated_variant(dilated, stride, rates):
    x = jnp.zeros((1, 67, 45, 3))
    module = mobilenet.MobileNetV3Large(dilated=dilated, width_mult=0.25)
    _, out = abstract_init(module, x)
    size = lambda n, s: -(-n // s)  # padded convs: ceil(n / s)
    chex.assert_shape(out["out"], (1, size(67, stride), size(45, stride), 240))  # 6 · 40
    chex.assert_shape(out["low"], (1, size(67, 8), size(45, 8), 16))  # 40 · 0.25 → 16
    assert conv_rates(module, x) == rates


@pytest.mark.parametrize("output_stride, rates", [(32, {1}), (16, {1, 2}), (8, {1, 2, 4})])
def test_v2_output_stride(output_stride, rates):
    x = jnp.zeros((1, 67, 45, 3))
    module = mobilenet.MobileNetV2(output_stride=output_stride, width_mult=0.25)
    _, out = abstract_init(module, x)
    size = lambda n: -(-n // output_stride)
    chex.assert_shape(out["out"], (1, size(67), size(45), 320 // 4))
    chex.assert_shape(out["low"], (1, 17, 12, 8))
    assert conv_rates(module, x) == rates


def test_v2_rejects_bad_output_stride():
    with pytest.raises(ValueError, match="output_stride"):
        abstract_variables(mobilenet.MobileNetV2(output_stride=4), (1, 32, 32, 3))


class MobileNetBlockVariantsTest(chex.TestCase):
    """Bottlenecks with and without jit (the whole network runs in test_lraspp)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_v3_bottleneck(self):
        # Dilated 5×5 depthwise, squeeze-excitation, hard-swish, residual (C4 of the dilated net).
        cfgs, _ = mobilenet.mobilenet_v3_large_config(width_mult=0.25, dilated=True)
        block = mobilenet.InvertedResidualV3(cfgs[-1])
        x = jax.random.normal(jax.random.key(0), (2, 7, 5, cfgs[-1].in_channels))
        variables = random_variables(block, x, train=False)
        out = self.variant(functools.partial(block.apply, train=False))(variables, x)
        chex.assert_shape(out, x.shape)
        chex.assert_tree_all_finite(out)
        assert not np.allclose(out, x)

    @chex.variants(with_jit=True, without_jit=True)
    def test_v2_bottleneck(self):
        block = mobilenet.InvertedResidualV2(8, 16, strides=2, dilation=1, expand_ratio=6)
        x = jax.random.normal(jax.random.key(0), (2, 7, 5, 8))
        variables = random_variables(block, x, train=False)
        out = self.variant(functools.partial(block.apply, train=False))(variables, x)
        chex.assert_shape(out, (2, 4, 3, 16))
        chex.assert_tree_all_finite(out)


def test_residual_blocks_add_their_input():
    # With the projection's BatchNorm scale and bias at zero the branch outputs zero, so a block
    # with a residual connection returns exactly its input.
    cfgs, _ = mobilenet.mobilenet_v3_large_config(width_mult=0.25)
    block = mobilenet.InvertedResidualV3(cfgs[2])  # 24 → 24, stride 1
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, cfgs[2].in_channels))
    v = random_variables(block, x, train=False)
    last = max(k for k in v["params"] if k.startswith("block_"))
    v["params"][last]["bn"] = jax.tree.map(jnp.zeros_like, v["params"][last]["bn"])
    chex.assert_trees_all_close(jax.jit(functools.partial(block.apply, train=False))(v, x), x)
