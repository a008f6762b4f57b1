"""Winograd F(m×m, 3×3) for dense stride-1 3×3 NHWC/HWIO convs (:func:`conv3x3_winograd`).

Each m×m block of outputs is computed from an (m+2)×(m+2) input tile (Lavin & Gray, 2016):
input tiles and the kernel are transformed by small constant matrices, multiplied as (m+2)²
independent ``[tiles, Cin] · [Cin, Cout]`` GEMMs, and transformed back. Two tile sizes:

* ``m = 2``, F(2×2, 3×3): 16 GEMMs, 2.25× fewer multiply-adds than the direct conv; the
  transformed input is 16/4 = 4× the input. Transforms are 0/±1/±½: nearly exact.
* ``m = 4``, F(4×4, 3×3): 36 GEMMs, 4× fewer multiply-adds; the transformed input is 36/16 =
  2.25× the input. Points 0, ±1, ±2, ∞: coefficients up to 8 (and 1/24 in the kernel
  transform) cost accuracy — measured on ResNet-like data in docs/PERFORMANCE.md.

Forward and both gradients (by autodiff of the same formulation) are GEMMs, which XLA:CPU runs
at its matmul rate. Atrous convs tile in dilated space (a tile's rows are ``d`` apart), so no
reshuffling. float64 agrees with the direct convolution to ~1e-12 (m = 2) and ~1e-10 (m = 4)
(tests/test_ops_conv.py, tests/test_winograd.py). :data:`DEFAULT_OUTPUT_TILE` is the size
:func:`conv3x3_winograd` uses when not told; :func:`output_tile_scope` changes it while
tracing. The backward recomputes the transforms and is fenced with :func:`after` so that no
tile outlives its conv's backward (docs/PERFORMANCE.md, 2026-12-02).
"""

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from segjax.errors import ConfigError

# (input transform Bᵀ, kernel transform G, output transform Aᵀ) per output tile size m.
_TRANSFORMS = {
    2: (
        ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0)),
        ((1, 1, 1, 0), (0, 1, -1, -1)),
    ),
    4: (
        (
            (4, 0, -5, 0, 1, 0),
            (0, -4, -4, 1, 1, 0),
            (0, 4, -4, -1, 1, 0),
            (0, -2, -1, 2, 1, 0),
            (0, 2, -1, -2, 1, 0),
            (0, 4, 0, -5, 0, 1),
        ),
        (
            (1 / 4, 0.0, 0.0),
            (-1 / 6, -1 / 6, -1 / 6),
            (-1 / 6, 1 / 6, -1 / 6),
            (1 / 24, 1 / 12, 1 / 6),
            (1 / 24, -1 / 12, 1 / 6),
            (0.0, 0.0, 1.0),
        ),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
    ),
}
OUTPUT_TILES = tuple(_TRANSFORMS)
# The output tile size used when the caller names none (docs/PERFORMANCE.md, 2026-12-02).
DEFAULT_OUTPUT_TILE = 2
_ACTIVE_OUTPUT_TILE: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "segjax_winograd_output_tile", default=None
)
# Smallest channel counts taking the Winograd path (below, XLA's convolution and the per-tap
# weight gradient were as fast; benchmarks/conv_impl.py).
_WINOGRAD_MIN_CHANNELS = 64


def _check_tile(m) -> int:
    if m not in _TRANSFORMS:
        raise ConfigError(f"Winograd output tile {m!r}: expected one of {OUTPUT_TILES}")
    return m


def active_output_tile() -> int:
    """The output tile size convs traced now use: the innermost :func:`output_tile_scope`'s,
    else :data:`DEFAULT_OUTPUT_TILE`."""
    m = _ACTIVE_OUTPUT_TILE.get()
    return DEFAULT_OUTPUT_TILE if m is None else m


@contextlib.contextmanager
def output_tile_scope(m: int | None) -> Iterator[int]:
    """Context manager: Winograd convs traced inside use F(m×m, 3×3) (``None``: the default).

    Only tracing is affected (wrap the ``.lower`` / first call of a jitted function); the
    compiled program differs, so a compilation cache keys the two apart. Yields the size.

    Raises:
      ValueError: ``m`` is not one of :data:`OUTPUT_TILES`.
    """
    token = _ACTIVE_OUTPUT_TILE.set(None if m is None else _check_tile(m))
    try:
        yield active_output_tile()
    finally:
        _ACTIVE_OUTPUT_TILE.reset(token)


def _combine(matrix, terms):
    """``[Σ_j m_ij · terms_j for each row i]``; ±1 coefficients as adds and subtracts."""
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


def _kernel_transform(k, g):
    """``G·k·Gᵀ`` per channel pair as ``[r][s]`` lists of ``[Cin, Cout]``, written as scaled
    adds (an einsum here became a K=3 matmul over Cin·Cout rows, slower than the conv's GEMMs).
    """
    a = len(g)
    k_rows = [_combine(g, [k[i, j] for i in range(3)]) for j in range(3)]  # [j][r]
    return [_combine(g, [k_rows[j][r] for j in range(3)]) for r in range(a)]  # [r][s]


def _winograd_conv(x, k, padding, d, precision=None, m=2):
    """Stride-1, dilation-``d`` 3×3 NHWC/HWIO conv by Winograd F(m×m, 3×3) (module docstring).

    ``padding`` is ``((top, bottom), (left, right))``, non-negative; :func:`use_winograd` says
    where this form is used.
    """
    bt, g, at = _TRANSFORMS[m]
    a = m + 2  # input tile side
    n, h, w, c = x.shape
    co = k.shape[-1]
    (top, bottom), (left, right) = padding
    ho, wo = h + top + bottom - 2 * d, w + left + right - 2 * d
    bh, bw = -(-ho // (m * d)), -(-wo // (m * d))  # blocks of md×md outputs
    hp, wp = (bh + 1) * m * d, (bw + 1) * m * d  # ≥ the padded input, as m ≥ 2
    xp = jnp.pad(x, ((0, 0), (top, hp - h - top), (left, wp - w - left), (0, 0)))
    # Padded row m·d·b + d·e + p (e < m, p < d) → index [b, e, p]; tile row r (< m + 2) of
    # block (b, p) is block b + r // m, part r % m.
    xr = xp.reshape(n, bh + 1, m, d, bw + 1, m, d, c)
    tiles = n * bh * d * bw * d

    def tile(r, s):
        return xr[:, r // m : r // m + bh, r % m, :, s // m : s // m + bw, s % m, :, :]

    u = _kernel_transform(k, g)
    rows = [_combine(bt, [tile(r, s) for s in range(a)]) for r in range(a)]  # [r][s']
    prods = [[None] * a for _ in range(a)]
    for s in range(a):
        column = _combine(bt, [rows[r][s] for r in range(a)])  # [r'] at column s'
        for r in range(a):
            v = column[r].reshape(tiles, c)
            prods[r][s] = jnp.dot(v, u[r][s], precision=precision).reshape(n, bh, d, bw, d, co)
    half = [_combine(at, prods[r]) for r in range(a)]  # [r][j]
    y = [[None] * m for _ in range(m)]
    for j in range(m):
        for i, yi in enumerate(_combine(at, [half[r][j] for r in range(a)])):
            y[i][j] = yi
    # [N, bh, i, d, bw, j, d, Cout] → output row m·d·b + d·i + p.
    y = jnp.stack([jnp.stack(y[i], axis=4) for i in range(m)], axis=2)
    return y.reshape(n, bh * m * d, bw * m * d, co)[:, :ho, :wo]


# Winograd forward; the backward recomputes the input transform from (x, k) instead of keeping
# the transformed tiles ((m+2)²/m² × the input) alive between the passes.
_conv3x3_winograd = jax.custom_vjp(_winograd_conv, nondiff_argnums=(2, 3, 4, 5))


def _conv3x3_winograd_fwd(x, k, padding, d, precision, m):
    return _conv3x3_winograd(x, k, padding, d, precision, m), (x, k)


def after(value, *dependencies):
    """``value``, computed only once every array of ``dependencies`` is: a scheduling fence.

    Adds ``0 · Σ dependency`` (XLA does not fold a float multiplication by zero, and
    ``jax.lax.optimization_barrier`` is expanded before XLA:CPU schedules, so it orders
    nothing there). Exact for finite values; a non-finite dependency makes ``value`` NaN, which
    the trainer's non-finite guard catches as it would the gradient itself.
    """
    zero = sum(jnp.sum(dep) for dep in dependencies) * 0
    return value + zero.astype(value.dtype)


def _conv3x3_winograd_bwd(padding, d, precision, m, res, dy):
    x, k = res
    # Recompute the transform from an input that depends on dy: otherwise XLA's CSE merges it
    # with the forward's, and every conv's tiles ((m+2)²/m² × its input) stay alive from the
    # forward to its backward. One element of dy is enough to order it (cheap).
    x = after(x, dy[(0,) * dy.ndim])
    _, vjp = jax.vjp(lambda x, k: _winograd_conv(x, k, padding, d, precision, m), x, k)
    dx, dk = vjp(dy)
    # The kernel gradient only feeds the optimiser, and XLA:CPU's schedulers (all three)
    # deferred its GEMMs to the end of the backward, keeping this conv's tiles and transformed
    # dy alive through every earlier layer's backward. Making dx wait for dk frees them here.
    return after(dx, dk), dk


_conv3x3_winograd.defvjp(_conv3x3_winograd_fwd, _conv3x3_winograd_bwd)


def conv3x3_winograd(x, k, padding, d, precision=None, m=None):
    """Stride-1, dilation-``d`` 3×3 NHWC/HWIO conv as Winograd F(m×m, 3×3) GEMMs.

    Args:
      x: ``[N, H, W, Cin]`` input.
      k: ``[3, 3, Cin, Cout]`` kernel.
      padding: ``((top, bottom), (left, right))``, non-negative ints.
      d: kernel dilation (the same both ways).
      precision: passed to the GEMMs.
      m: output tile size, 2 or 4; ``None``: :func:`active_output_tile`.

    Returns:
      ``[N, Ho, Wo, Cout]``, the convolution (custom VJP: the backward recomputes the
      transforms from ``x`` and ``k``; nothing of size tiles × channels is kept between passes).

    Raises:
      ValueError: ``m`` is not one of :data:`OUTPUT_TILES`.
    """
    m = active_output_tile() if m is None else _check_tile(m)
    return _conv3x3_winograd(x, k, tuple(map(tuple, padding)), int(d), precision, m)
