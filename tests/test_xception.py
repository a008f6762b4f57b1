"""Tests for segjax.models.backbones.xception (aligned Xception-65)."""

import functools

import chex
import jax
import jax.numpy as jnp
import pytest

from segjax.models.backbones import xception
from tests.helpers import (
    abstract_init,
    abstract_variables,
    conv_rates,
    random_variables,
    tree_size,
)


def test_param_count_from_the_paper_architecture():
    def conv_bn(cin, cout, k):
        return cin * cout * k * k + 2 * cout

    def separable(cin, cout):
        return cin * 9 + 2 * cin + conv_bn(cin, cout, 1)

    def unit(cin, depths, conv_shortcut):
        total, c = 0, cin
        for d in depths:
            total, c = total + separable(c, d), d
        return total + (conv_bn(cin, depths[-1], 1) if conv_shortcut else 0)

    expected = conv_bn(3, 32, 3) + conv_bn(32, 64, 3)
    expected += unit(64, [128] * 3, True) + unit(128, [256] * 3, True) + unit(256, [728] * 3, True)
    expected += 16 * unit(728, [728] * 3, False)
    expected += unit(728, [728, 1024, 1024], True) + unit(1024, [1536, 1536, 2048], False)
    variables = abstract_variables(xception.Xception65(), (1, 64, 64, 3))
    assert tree_size(variables["params"]) == expected
    assert len([k for k in variables["params"] if k.startswith("middle_flow_unit")]) == 16


@pytest.mark.parametrize(
    "output_stride, multi_grid, rates",
    [(32, (1, 1, 1), {1}), (16, (1, 1, 1), {1, 2}), (16, (1, 2, 4), {1, 2, 4, 8}),
     (8, (1, 1, 1), {1, 2, 4})],
)  # fmt: skip
def test_output_stride_odd_sizes_and_rates(output_stride, multi_grid, rates):
    x = jnp.zeros((1, 67, 45, 3))
    module = xception.Xception65(output_stride, multi_grid, width_mult=0.125, middle_units=2)
    _, out = abstract_init(module, x)
    size = lambda n, s: -(-n // s)
    chex.assert_shape(out["out"], (1, size(67, output_stride), size(45, output_stride), 256))
    chex.assert_shape(out["low"], (1, size(67, 4), size(45, 4), 32))
    chex.assert_shape(
        out["middle"], (1, size(67, min(16, output_stride)), size(45, min(16, output_stride)), 91)
    )
    assert conv_rates(module, x) == rates


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="output_stride"):
        abstract_variables(xception.Xception65(output_stride=4), (1, 32, 32, 3))
    with pytest.raises(ValueError, match="multi_grid"):
        abstract_variables(xception.Xception65(multi_grid=(1, 2)), (1, 32, 32, 3))


class XceptionUnitVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_unit_with_conv_shortcut(self):
        unit = xception.XceptionUnit((8, 8, 12), "conv", strides=2, rates=(1, 1, 1))
        x = jax.random.normal(jax.random.key(0), (2, 9, 7, 4))
        variables = random_variables(unit, x, train=False)
        out, second = self.variant(functools.partial(unit.apply, train=False))(variables, x)
        chex.assert_shape(out, (2, 5, 4, 12))
        chex.assert_shape(second, (2, 9, 7, 8))
        chex.assert_tree_all_finite((out, second))

    @chex.variants(with_jit=True, without_jit=True)
    def test_identity_shortcut_adds_input(self):
        # Zeroing the last pointwise BatchNorm makes the residual branch zero.
        unit = xception.XceptionUnit((6, 6, 6), "sum", rates=(2, 2, 2))
        x = jax.random.normal(jax.random.key(0), (1, 7, 7, 6))
        variables = random_variables(unit, x, train=False)
        bn = variables["params"]["separable_conv3"]["pointwise"]["bn"]
        variables["params"]["separable_conv3"]["pointwise"]["bn"] = jax.tree.map(jnp.zeros_like, bn)
        out, _ = self.variant(functools.partial(unit.apply, train=False))(variables, x)
        chex.assert_trees_all_close(out, x)


def test_forward_finite_tiny():
    module = xception.Xception65(16, width_mult=0.125, middle_units=2)
    x = jax.random.normal(jax.random.key(0), (1, 33, 31, 3))
    variables = random_variables(module, x)
    out = jax.jit(functools.partial(module.apply, train=False))(variables, x)
    chex.assert_tree_all_finite(out)
    chex.assert_shape(out["out"], (1, 3, 2, 256))
