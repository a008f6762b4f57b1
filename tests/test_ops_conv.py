"""Tests of segjax.xla_cpu.conv (convolutions as GEMMs) and xla_cpu.winograd, which it routes to:
every rewrite against ``lax.conv_general_dilated``, values and gradients, float32 and float64."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.xla_cpu import conv, winograd

DN = ("NHWC", "HWIO", "NHWC")

# (input NHWC, kernel HWIO, strides, padding, rhs_dilation, groups)
CASES = {
    "3x3 d1": ((2, 7, 7, 4), (3, 3, 4, 5), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    "3x3 d2": ((2, 8, 8, 4), (3, 3, 4, 6), (1, 1), ((2, 2), (2, 2)), (2, 2), 1),
    "3x3 s2 odd": ((1, 9, 7, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),
    "7x7 s2 asym": ((1, 10, 10, 3), (7, 7, 3, 4), (2, 2), ((3, 2), (2, 3)), (1, 1), 1),
    "depthwise d2": ((2, 6, 6, 4), (3, 3, 1, 4), (1, 1), ((2, 2), (2, 2)), (2, 2), 4),
    "depthwise x2": ((1, 6, 6, 3), (3, 3, 1, 6), (2, 2), ((1, 1), (1, 1)), (1, 1), 3),
    "grouped 1x1": ((2, 5, 5, 6), (1, 1, 3, 4), (1, 1), ((0, 0), (0, 0)), (1, 1), 2),
    "grouped 3x3": ((1, 5, 5, 6), (3, 3, 2, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), 3),
    "dense 128": ((1, 4, 4, 128), (3, 3, 128, 8), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    "dead taps d8": ((1, 6, 6, 4), (3, 3, 4, 5), (1, 1), ((8, 8), (8, 8)), (8, 8), 1),
    "dead rows d5": ((1, 4, 12, 4), (3, 3, 4, 5), (1, 1), ((5, 5), (5, 5)), (5, 5), 1),
    "1x1 s2 wide→narrow": ((2, 7, 7, 12), (1, 1, 12, 5), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),
    "1x1 narrow→wide": ((2, 5, 5, 3), (1, 1, 3, 8), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    "winograd odd": ((1, 7, 5, 512), (3, 3, 512, 64), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    "winograd d3 asym": ((1, 9, 8, 512), (3, 3, 512, 64), (1, 1), ((3, 2), (1, 3)), (3, 3), 1),
    "winograd 2048": ((1, 4, 4, 2048), (3, 3, 2048, 64), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
}


def _arrays(x_shape, k_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
    return x, k


def _reference(x, k, strides, padding, dilation, groups):
    return jax.lax.conv_general_dilated(
        x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=DN,
        feature_group_count=groups,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_taps_weight_grad_matches_xla(dtype):
    """The per-tap weight gradient equals XLA's on every case, whichever operand it transposes
    (input or output gradient, by channel count), also where _use_taps keeps XLA's; float64
    stays float64 (no float32 accumulation)."""
    with jax.enable_x64(dtype == jnp.float64):
        for name, case in CASES.items():
            _check_taps_weight_grad(name, *case, dtype=dtype)


def _check_taps_weight_grad(name, x_shape, k_shape, strides, padding, dilation, groups, dtype):
    x, k = (a.astype(dtype) for a in _arrays(x_shape, k_shape))
    reference = functools.partial(
        _reference, strides=strides, padding=padding, dilation=dilation, groups=groups
    )
    y, vjp = jax.vjp(functools.partial(reference, x), k)
    dy = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), dtype)
    want = vjp(dy)[0]
    got = conv._taps_weight_grad(x, dy, k.shape, strides, padding, dilation, groups, k.dtype)
    chex.assert_shape(got, k.shape)
    chex.assert_type(got, dtype)
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    chex.assert_trees_all_close(got, want, rtol=tol, atol=tol, custom_message=name)


@pytest.mark.parametrize(
    "shape, padding, d",
    [
        ((2, 7, 5, 3), ((1, 1), (1, 1)), 1),  # odd sizes: partial 2×2 output blocks
        ((1, 8, 8, 2), ((0, 0), (0, 0)), 1),  # VALID
        ((1, 9, 11, 2), ((2, 2), (2, 2)), 2),
        ((1, 10, 7, 2), ((4, 1), (0, 3)), 3),  # asymmetric padding, atrous
        ((1, 12, 12, 2), ((12, 12), (12, 12)), 12),  # rate as large as the map
        ((2, 13, 9, 3), ((2, 2), (2, 2)), 2),  # F(4×4): partial 8×8 blocks, atrous
    ],
)
@pytest.mark.parametrize("m", winograd.OUTPUT_TILES)
def test_winograd_conv_is_exact(shape, padding, d, m):
    """Winograd F(m×m, 3×3), m = 2 and 4, equals the direct convolution (float64: only
    rounding differs), forward and both gradients; odd sizes leave partial output blocks."""
    tol = 1e-12 if m == 2 else 1e-10  # F(4×4, 3×3)'s transforms have coefficients up to 8
    with jax.enable_x64(True):
        x, k = (a.astype(jnp.float64) for a in _arrays(shape, (3, 3, shape[-1], 4)))
        ref = functools.partial(
            _reference, strides=(1, 1), padding=padding, dilation=(d, d), groups=1
        )
        wino = lambda x, k: winograd.conv3x3_winograd(x, k, padding, d, None, m)
        chex.assert_trees_all_close(wino(x, k), ref(x, k), rtol=tol, atol=tol)
        loss = lambda f: jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))), (0, 1))(x, k)
        chex.assert_trees_all_close(loss(wino), loss(ref), rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "shape, padding, d",
    [
        ((2, 12, 12, 3), ((12, 12), (12, 12)), 12),  # ASPP rate 12 on a 12×12 map
        ((1, 9, 14, 2), ((5, 5), (5, 5)), 5),  # non-square, every tap partly live
        ((1, 10, 7, 2), ((6, 1), (0, 4)), 4),  # asymmetric padding
        ((1, 4, 4, 2), ((9, 9), (9, 9)), 9),  # only the centre tap reads the input
    ],
)
def test_shifted_matmul_conv_is_exact(shape, padding, d):
    """The live-region shifted matmuls equal the direct atrous convolution in float64, forward
    and both gradients (its own VJP re-slices the input)."""
    with jax.enable_x64(True):
        x, k = (a.astype(jnp.float64) for a in _arrays(shape, (3, 3, shape[-1], 4)))
        ref = functools.partial(
            _reference, strides=(1, 1), padding=padding, dilation=(d, d), groups=1
        )
        shifted = lambda x, k: conv._shifted_matmul_conv(x, k, padding, (d, d), None)
        chex.assert_trees_all_close(shifted(x, k), ref(x, k), rtol=1e-12, atol=1e-12)
        loss = lambda f: jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))), (0, 1))(x, k)
        chex.assert_trees_all_close(loss(shifted), loss(ref), rtol=1e-12, atol=1e-12)


def test_shifted_matmul_conv_saves_only_its_operands():
    """Its backward keeps x and k, not one window of x per tap (8 shifted copies of a
    2048-channel ASPP input: gigabytes at 512²)."""
    x, k = _arrays((2, 16, 16, 8), (3, 3, 8, 4))
    padding, d = ((6, 6), (6, 6)), (6, 6)
    _, vjp = jax.vjp(lambda x, k: conv._shifted_matmul_conv(x, k, padding, d, None), x, k)
    saved = sum(leaf.nbytes for leaf in jax.tree.leaves(vjp) if hasattr(leaf, "nbytes"))
    assert saved == x.nbytes + k.nbytes, (saved, x.nbytes, k.nbytes)


def test_winograd_routing():
    """Dense stride-1 3×3 convs from 512 input channels take the Winograd custom VJP."""
    for name in ("winograd odd", "winograd d3 asym", "winograd 2048"):
        x_shape, k_shape, strides, padding, dilation, groups = CASES[name]
        assert winograd.use_winograd(x_shape, k_shape, strides, padding, dilation, groups), name
    for name in ("dense 128", "3x3 s2 odd", "grouped 3x3"):
        x_shape, k_shape, strides, padding, dilation, groups = CASES[name]
        assert not winograd.use_winograd(x_shape, k_shape, strides, padding, dilation, groups)


class GemmConvTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_value_and_gradients_match_lax(self):
        for name, (x_shape, k_shape, strides, padding, dilation, groups) in CASES.items():
            x, k = _arrays(x_shape, k_shape)
            k = k / np.sqrt(np.prod(k_shape[:3]))  # unit-variance outputs, as with He init

            def loss(conv, x, k, strides=strides, padding=padding, d=dilation, g=groups):
                y = conv(
                    x, k, strides, padding, rhs_dilation=d, dimension_numbers=DN,
                    feature_group_count=g,
                )  # fmt: skip
                return jnp.sum(jnp.sin(y)), y

            fast = self.variant(jax.value_and_grad(
                lambda x, k: loss(conv.conv_general_dilated_gemm, x, k), (0, 1), has_aux=True
            ))  # fmt: skip
            (_, y), grads = fast(x, k)
            (_, y_ref), grads_ref = jax.value_and_grad(
                lambda x, k: loss(jax.lax.conv_general_dilated, x, k), (0, 1), has_aux=True
            )(x, k)
            chex.assert_trees_all_close(y, y_ref, rtol=1e-4, atol=1e-4, custom_message=name)
            chex.assert_trees_all_close(grads, grads_ref, rtol=1e-4, atol=1e-4, custom_message=name)

    def test_string_padding_and_fallthrough(self):
        x, k = _arrays((1, 7, 7, 3), (3, 3, 3, 2))
        for padding in ("SAME", "VALID"):
            got = conv.conv_general_dilated_gemm(x, k, (2, 2), padding, dimension_numbers=DN)
            want = jax.lax.conv_general_dilated(x, k, (2, 2), padding, dimension_numbers=DN)
            chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
        # Input dilation with string padding falls through to lax (which rejects it).
        with pytest.raises(ValueError, match="String padding"):
            conv.conv_general_dilated_gemm(
                x, k, (1, 1), "SAME", lhs_dilation=(2, 2), dimension_numbers=DN
            )

    @chex.variants(with_jit=True, without_jit=True)
    def test_transposed_conv_gradients_match_lax(self):
        """Input-dilated convs (lax.conv_transpose): weight gradient from dy slices."""
        cases = {  # input, kernel, lhs_dilation, padding, groups
            "4x4/2 torch p1": ((2, 5, 5, 3), (4, 4, 3, 4), (2, 2), ((2, 2), (2, 2)), 1),
            "3x3/2 asym": ((1, 4, 6, 2), (3, 3, 2, 3), (2, 2), ((1, 2), (2, 1)), 1),
            "4x4/3 no pad": ((1, 3, 3, 2), (4, 4, 2, 2), (3, 3), ((0, 0), (0, 0)), 1),
            "depthwise 4x4/2": ((1, 4, 4, 3), (4, 4, 1, 3), (2, 2), ((2, 2), (2, 2)), 3),
            "4x4/2 wide→narrow": ((1, 4, 4, 6), (4, 4, 6, 2), (2, 2), ((2, 2), (2, 2)), 1),
        }
        for name, (x_shape, k_shape, dil, padding, groups) in cases.items():
            x, k = _arrays(x_shape, k_shape)

            def loss(conv, x, k, dil=dil, padding=padding, g=groups):
                y = conv(
                    x, k, (1, 1), padding, lhs_dilation=dil, dimension_numbers=DN,
                    feature_group_count=g,
                )  # fmt: skip
                return jnp.sum(jnp.sin(y))

            got = self.variant(jax.grad(
                lambda x, k: loss(conv.conv_general_dilated_gemm, x, k), (0, 1)
            ))(x, k)  # fmt: skip
            want = jax.grad(lambda x, k: loss(jax.lax.conv_general_dilated, x, k), (0, 1))(x, k)
            chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4, custom_message=name)

    def test_dead_taps_are_cropped(self):
        k = jnp.ones((3, 3, 4, 5))
        cropped, padding = conv._crop_dead_taps((6, 6), k, (1, 1), ((8, 8), (8, 8)), (8, 8))
        chex.assert_shape(cropped, (1, 1, 4, 5))
        self.assertEqual(padding, ((0, 0), (0, 0)))
        kept, padding = conv._crop_dead_taps((32, 32), k, (1, 1), ((12, 12), (12, 12)), (12, 12))
        chex.assert_shape(kept, (3, 3, 4, 5))
        self.assertEqual(padding, ((12, 12), (12, 12)))


def test_live_fraction_of_atrous_convs():
    # ASPP on a 32×32 map: rate 1 wastes only the border, rate 36 keeps the centre tap alone.
    np.testing.assert_allclose(conv._live_fraction((32, 32), (3, 3), ((1, 1),) * 2, (1, 1)),
                               (94 / 96) ** 2)  # fmt: skip
    np.testing.assert_allclose(conv._live_fraction((32, 32), (3, 3), ((12, 12),) * 2, (12, 12)),
                               ((32 + 20 + 20) / 96) ** 2)  # fmt: skip
    np.testing.assert_allclose(conv._live_fraction((32, 32), (3, 3), ((36, 36),) * 2, (36, 36)),
                               1 / 9)  # fmt: skip
