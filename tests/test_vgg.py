"""Tests for segjax.models.backbones.vgg."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from segjax.models.backbones import vgg
from tests.helpers import random_variables


def test_param_count_and_names_match_torchvision():
    variables = jax.eval_shape(
        lambda: vgg.vgg16().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    )
    params = variables["params"]
    # torchvision vgg16 (138,357,544) minus its fc8 (4096·1000 + 1000).
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == 138_357_544 - 4_097_000
    torch_conv_indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert set(params) == {f"features_{i}" for i in torch_conv_indices} | {"fc6", "fc7"}
    chex.assert_shape(params["features_28"]["kernel"], (3, 3, 512, 512))
    chex.assert_shape(params["fc6"]["kernel"], (7, 7, 512, 4096))
    chex.assert_shape(params["fc7"]["kernel"], (1, 1, 4096, 4096))


@pytest.mark.parametrize(
    "paper, size, pools, fc7",
    [
        # Pad 100, ceil-mode pools: 33 + 198 = 231 → 116, 58, 29, 15, 8; valid fc6 → 2.
        (True, 33, (29, 15, 8), 2),
        (True, 1, (25, 13, 7), 1),
        # "Same" padding: ceil(33 / 2**k).
        (False, 33, (5, 3, 2), 2),
        (False, 64, (8, 4, 2), 2),
    ],
)
def test_feature_shapes(paper, size, pools, fc7):
    model = vgg.vgg16_tiny(paper_alignment=paper)
    feats = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, size, size + 1, 3)))[0]
    )
    width = size + 1
    for name, side in zip(("pool3", "pool4", "pool5"), pools):
        assert feats[name].shape[1] == side, name
    # Width is one more than height; check it follows the same arithmetic.
    expected_w = width + 198 if paper else width
    for _ in range(5):
        expected_w = -(-expected_w // 2)
    assert feats["pool5"].shape[2] == expected_w
    chex.assert_shape(feats["pool3"], (2, pools[0], None, 32))
    chex.assert_shape(feats["fc7"], (2, fc7, None, 32))


def test_max_pool_ceil_keeps_last_row():
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    out = vgg.max_pool_ceil(x)
    np.testing.assert_array_equal(np.asarray(out[0, :, :, 0]), [[4.0, 5.0], [7.0, 8.0]])


def test_dropout_uses_dropout_rng():
    model = vgg.vgg16_tiny(paper_alignment=False)
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    variables = random_variables(model, x)
    apply = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
    a = apply(variables, x, jax.random.key(1))["fc7"]
    b = apply(variables, x, jax.random.key(2))["fc7"]
    assert not np.allclose(a, b)
    # Some units are dropped (exact zeros after ReLU are possible too, so compare with eval).
    evaluated = model.apply(variables, x, train=False)["fc7"]
    assert np.mean(np.asarray(a) == 0) > np.mean(np.asarray(evaluated) == 0)
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, x, train=True)


class VGGVariantsTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_forward_finite(self):
        model = vgg.vgg16_tiny()
        x = jax.random.normal(jax.random.key(0), (1, 21, 18, 3))
        variables = random_variables(model, x)
        feats = self.variant(lambda v, x: model.apply(v, x, train=False))(variables, x)
        chex.assert_tree_all_finite(feats)
        chex.assert_shape(feats["pool4"], (1, 14, 14, 64))
