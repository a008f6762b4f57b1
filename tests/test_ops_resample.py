"""Tests of segjax.ops.resample: the fast transposed-conv and pooling forms equal XLA's ops."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.ops import resample

DN = ("NHWC", "HWIO", "NHWC")


def _normal(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


@pytest.mark.parametrize("factor, kernel", [(2, 4), (2, 3), (3, 5), (8, 16)])
def test_conv_transpose_subpixel_equals_conv_transpose(factor, kernel):
    """float64: the same values and gradients as ``lax.conv_transpose`` up to rounding."""
    with jax.enable_x64(True):
        x = _normal((2, 5, 4, 3), dtype=jnp.float64)
        k = _normal((kernel, kernel, 2, 3), seed=1, dtype=jnp.float64)  # HWOI

        def ref(x, k):
            return jax.lax.conv_transpose(
                x, k, (factor, factor), "VALID", dimension_numbers=DN, transpose_kernel=True
            )

        fast = lambda x, k: resample.conv_transpose_subpixel(x, k, factor)
        chex.assert_trees_all_close(fast(x, k), ref(x, k), rtol=1e-12, atol=1e-12)
        grads = lambda f: jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))), (0, 1))(x, k)
        chex.assert_trees_all_close(grads(fast), grads(ref), rtol=1e-12, atol=1e-12)


def test_conv_transpose_subpixel_rejects_large_kernel():
    with pytest.raises(ValueError, match="kernel 5 > 2 \\* stride 2"):
        resample.conv_transpose_subpixel(_normal((1, 3, 3, 2)), _normal((5, 5, 2, 2)), 2)


def test_upconv2x2_equals_conv_transpose_values_and_gradients():
    """The matmul backward pass gives ``lax.conv_transpose``'s gradients (float64: rounding)."""
    with jax.enable_x64(True):
        x = _normal((2, 3, 5, 4), dtype=jnp.float64)
        k = _normal((2, 2, 4, 6), seed=1, dtype=jnp.float64)
        ref = lambda x, k: jax.lax.conv_transpose(x, k, (2, 2), "VALID", dimension_numbers=DN)
        chex.assert_trees_all_equal(resample.upconv2x2(x, k), ref(x, k))
        grads = lambda f: jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))), (0, 1))(x, k)
        chex.assert_trees_all_close(grads(resample.upconv2x2), grads(ref), rtol=1e-12, atol=1e-12)


def test_max_pool2x2_matches_flax_max_pool():
    x = _normal((2, 6, 8, 3))
    chex.assert_trees_all_equal(resample.max_pool2x2(x), nn.max_pool(x, (2, 2), (2, 2)))
    g = jax.grad(lambda x: jnp.sum(resample.max_pool2x2(x) ** 2))(x)
    g_ref = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), (2, 2)) ** 2))(x)
    chex.assert_trees_all_close(g, g_ref)
    with pytest.raises(ValueError, match="even"):
        resample.max_pool2x2(x[:, :5])
