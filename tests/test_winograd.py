"""Tests of segjax.xla_cpu.winograd's tile-size choice: F(4×4, 3×3) beside F(2×2, 3×3).

Exactness of both sizes against the direct convolution (float64, forward and both gradients) is
``tests/test_ops_conv.py::test_winograd_conv_is_exact``; here: the float32 error on ResNet-like
data, the scope that picks the size and the routing through ``conv_general_dilated_gemm``.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.xla_cpu import conv, winograd

DN = ("NHWC", "HWIO", "NHWC")


def _resnet_like(shape, cout, seed=0):
    """Post-BN-ReLU activations (half-normal) and a He-initialised 3×3 kernel, float32."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=shape), 0).astype(np.float32)
    k = rng.normal(0, np.sqrt(2 / (9 * shape[-1])), (3, 3, shape[-1], cout)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(k)


@pytest.mark.parametrize("m, bound", [(2, 2e-6), (4, 2e-5)])
def test_float32_error_relative_to_max_output(m, bound):
    """float32 Winograd vs a float64 direct conv, as a share of max |y| (atrous, 256 channels).

    The bounds are ~4× the errors measured on this data (docs/PERFORMANCE.md, 2026-12-02).
    """
    x, k = _resnet_like((1, 16, 16, 256), 32)
    padding, d = ((2, 2), (2, 2)), 2
    with jax.enable_x64(True):
        want = jax.lax.conv_general_dilated(
            x.astype(jnp.float64), k.astype(jnp.float64), (1, 1), padding,
            rhs_dilation=(d, d), dimension_numbers=DN,
        )  # fmt: skip
        got = winograd.conv3x3_winograd(x, k, padding, d, None, m)
        chex.assert_type(got, jnp.float32)
        rel = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
    assert rel < bound, f"F({m}×{m}, 3×3) float32 error {rel:.2e} × max|y|, bound {bound:.0e}"


def test_output_tile_scope_picks_the_size_and_restores_it():
    default = winograd.active_output_tile()
    assert default == winograd.DEFAULT_OUTPUT_TILE
    with winograd.output_tile_scope(4) as m:
        assert m == winograd.active_output_tile() == 4
        with winograd.output_tile_scope(None):
            assert winograd.active_output_tile() == default
    assert winograd.active_output_tile() == default
    with pytest.raises(ValueError, match="Winograd output tile 3"):
        with winograd.output_tile_scope(3):
            pass
    with pytest.raises(ValueError, match="expected one of"):
        winograd.conv3x3_winograd(
            jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), ((1, 1),) * 2, 1, m=6
        )


@pytest.mark.parametrize("m", winograd.OUTPUT_TILES)
def test_gemm_conv_routes_to_the_scoped_tile(m):
    """Under the scope a routed conv gives the direct conv's value and gradients (float32),
    and the traced program holds that tile size's (m+2)² GEMMs."""
    x, k = _resnet_like((1, 9, 7, 64), 64)
    padding = ((1, 1), (1, 1))

    def loss(f, x, k):
        return jnp.sum(jnp.sin(f(x, k, (1, 1), padding, dimension_numbers=DN)))

    with winograd.output_tile_scope(m):
        jaxpr = jax.make_jaxpr(lambda x, k: loss(conv.conv_general_dilated_gemm, x, k))(x, k)
        got = jax.jit(jax.grad(lambda x, k: loss(conv.conv_general_dilated_gemm, x, k), (0, 1)))(
            x, k
        )
    assert str(jaxpr).count("dot_general") == (m + 2) ** 2
    want = jax.grad(lambda x, k: loss(jax.lax.conv_general_dilated, x, k), (0, 1))(x, k)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4)


def test_after_is_an_exact_fence():
    """``after`` returns its value bit for bit (finite dependencies) and makes it depend on them:
    a non-finite dependency shows (NaN), so a fenced gradient cannot hide one."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    dep = jnp.arange(6.0).reshape(2, 3)
    got = jax.jit(winograd.after)(x, dep, dep[0])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(x))
    assert bool(jnp.all(jnp.isnan(winograd.after(x, dep.at[0, 0].set(jnp.inf)))))
