"""Winograd F(2×2, 3×3) for dense stride-1 3×3 NHWC/HWIO convs (:func:`conv3x3_winograd`).

Each 2×2 block of outputs is computed from a 4×4 input tile with 16 multiplications per
channel pair instead of 36 (Lavin & Gray, 2016): input tiles and the kernel are transformed by
small 0/±1/±½ matrices, multiplied as 16 independent [tiles, Cin] · [Cin, Cout] GEMMs, and
transformed back. Forward and both gradients (by autodiff of the same formulation) do 2.25×
fewer multiply-adds than the direct convolution, in GEMMs, which XLA:CPU runs at its matmul
rate. Atrous convs tile in dilated space (a tile's rows are ``d`` apart), so no reshuffling.
Only the rounding of the transforms' additions differs from the direct convolution: results
agree to ~1e-6 relative in float32 and to 1e-12 in float64 (tests/test_ops_conv.py).
"""

import jax
import jax.numpy as jnp

_WINO_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))  # input transform
_WINO_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))  # kernel
_WINO_AT = ((1, 1, 1, 0), (0, 1, -1, -1))  # output transform
# Smallest channel counts taking the Winograd path (below, XLA's convolution and the per-tap
# weight gradient were as fast; benchmarks/conv_impl.py).
_WINOGRAD_MIN_CHANNELS = 64


def _combine(matrix, terms):
    """``[Σ_j m_ij · terms_j for each row i]`` with 0/±1 coefficients as adds and subtracts."""
    out = []
    for row in matrix:
        acc = None
        for coef, term in zip(row, terms):
            if coef == 0:
                continue
            if acc is None:
                acc = term if coef == 1 else (-term if coef == -1 else coef * term)
            elif coef in (1, -1):
                acc = acc + term if coef == 1 else acc - term
            else:
                acc = acc + coef * term
        out.append(acc)
    return out


def use_winograd(x_shape, k_shape, strides, padding, rhs_dilation, groups) -> bool:
    """Whether a conv takes :func:`conv3x3_winograd`: dense stride-1 3×3 convs with ≥ 64
    channels each way and non-negative padding."""
    kh, kw, ci, co = k_shape
    return (
        (kh, kw) == (3, 3)
        and tuple(strides) == (1, 1)
        and groups == 1
        and rhs_dilation[0] == rhs_dilation[1]
        and min(ci, co) >= _WINOGRAD_MIN_CHANNELS
        and all(v >= 0 for pad in padding for v in pad)
        and all(x_shape[1 + a] + sum(padding[a]) - 2 * rhs_dilation[a] > 0 for a in (0, 1))
    )


def _winograd_conv(x, k, padding, d, precision=None):
    """Stride-1, dilation-``d`` 3×3 NHWC/HWIO conv by Winograd F(2×2, 3×3) (module docstring).

    ``padding`` is ``((top, bottom), (left, right))``, non-negative; :func:`use_winograd` says
    where this form is used.
    """
    n, h, w, c = x.shape
    co = k.shape[-1]
    (top, bottom), (left, right) = padding
    ho, wo = h + top + bottom - 2 * d, w + left + right - 2 * d
    bh, bw = -(-ho // (2 * d)), -(-wo // (2 * d))  # blocks of 2d×2d outputs
    hp, wp = (bh + 1) * 2 * d, (bw + 1) * 2 * d
    xp = jnp.pad(x, ((0, 0), (top, hp - h - top), (left, wp - w - left), (0, 0)))
    # Padded row 2d·b + d·e + p (e ∈ {0, 1}, p < d) → index [b, e, p]; tile row r of block
    # (b, p) is block b + r // 2, half r % 2.
    xr = xp.reshape(n, bh + 1, 2, d, bw + 1, 2, d, c)
    tiles = n * bh * d * bw * d

    def tile(r, s):
        return xr[:, r // 2 : r // 2 + bh, r % 2, :, s // 2 : s // 2 + bw, s % 2, :, :]

    # Kernel transform G·k·Gᵀ as adds and halvings (an einsum here became a K=3 matmul over
    # Cin·Cout rows, slower than the whole conv's GEMMs).
    k_rows = [_combine(_WINO_G, [k[i, j] for i in range(3)]) for j in range(3)]  # [j][r]
    u = [_combine(_WINO_G, [k_rows[j][r] for j in range(3)]) for r in range(4)]  # [r][s]
    rows = [_combine(_WINO_BT, [tile(r, s) for s in range(4)]) for r in range(4)]  # [r][s']
    m = [[None] * 4 for _ in range(4)]
    for s in range(4):
        column = _combine(_WINO_BT, [rows[r][s] for r in range(4)])  # [r'] at column s'
        for r in range(4):
            v = column[r].reshape(tiles, c)
            m[r][s] = jnp.dot(v, u[r][s], precision=precision).reshape(n, bh, d, bw, d, co)
    mr = [_combine(_WINO_AT, m[r]) for r in range(4)]  # [r][j]
    y = [[None, None], [None, None]]
    for j in range(2):
        for i, yi in enumerate(_combine(_WINO_AT, [mr[r][j] for r in range(4)])):
            y[i][j] = yi
    # [N, bh, i, d, bw, j, d, Cout] → output row 2d·b + d·i + p.
    y = jnp.stack([jnp.stack(y[i], axis=4) for i in range(2)], axis=2)
    return y.reshape(n, bh * 2 * d, bw * 2 * d, co)[:, :ho, :wo]


# Winograd forward; the backward recomputes the input transform from (x, k) instead of keeping
# the transformed tiles (4× the input) alive between the passes.
conv3x3_winograd = jax.custom_vjp(_winograd_conv, nondiff_argnums=(2, 3, 4))


def _conv3x3_winograd_fwd(x, k, padding, d, precision):
    return conv3x3_winograd(x, k, padding, d, precision), (x, k)


def _conv3x3_winograd_bwd(padding, d, precision, res, dy):
    _, vjp = jax.vjp(lambda x, k: _winograd_conv(x, k, padding, d, precision), *res)
    return vjp(dy)


conv3x3_winograd.defvjp(_conv3x3_winograd_fwd, _conv3x3_winograd_bwd)
