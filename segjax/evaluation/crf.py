"""Fully connected CRF with mean-field inference (Krähenbühl & Koltun, NIPS 2011), in JAX.

The model over labels ``x`` of the ``N`` pixels of one image is

    E(x) = sum_i psi_u(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j),
    k(f_i, f_j) = w1 exp(-|p_i-p_j|^2 / 2 sxy_b^2 - |I_i-I_j|^2 / 2 srgb^2)   (bilateral)
                + w2 exp(-|p_i-p_j|^2 / 2 sxy_g^2)                              (gaussian)

with ``psi_u = -log P(x_i)`` from the network, ``mu`` the Potts compatibility ``[l != l']``
(or a general symmetric ``[C, C]`` matrix), ``p`` pixel positions and ``I`` RGB in 0..255.
Mean-field inference iterates, in parallel over all pixels,

    Q_i(l) <- softmax_l( -psi_u(i, l) - sum_l' mu(l, l') sum_m w_m sum_{j != i} kn_m(i, j) Q_j(l') )

where ``kn_m`` is kernel ``m`` after the normalisation ``pydensecrf`` applies by default
(``"symmetric"``: ``D^-1/2 K D^-1/2`` with ``D = diag(K 1)``, so the weights are relative to a
kernel whose rows sum to about one) or the raw kernel (``"none"``, the paper's model).
The self-term ``j = i`` is removed (the paper's model; ``pydensecrf`` keeps it, which matters
only for the small spatial kernel and is a ~2 % difference there).

Filtering (the expensive ``sum_j k(i, j) Q_j``), never O(N^2) memory:

* gaussian kernel: exact separable Gaussian filtering on the pixel grid, truncated at 5 sigma
  (4e-6 of the peak; the truncated kernel is positive semi-definite up to that size);
* bilateral kernel: a 5-D bilateral grid (x, y, r, g, b). Each pixel is splatted with
  multilinear (tent) weights onto a grid with ``grid_spatial_samples`` cells per ``sxy`` and
  ``grid_range_samples`` cells per ``srgb``; the grid is blurred with a separable Gaussian of
  ``sqrt(s^2 - 1/3)`` cells per axis (the two tents add variance 1/3 cell^2, so the effective
  kernel width is ``sxy`` and ``srgb``), scaled so the peak matches, and sliced back with the
  same tent weights. The blur is not truncated (a dense per-axis matrix of sampled
  Gaussian values, which is positive definite), so the approximate kernel ``S^T B S`` is
  symmetric positive semi-definite and everything said below holds for it as well.
* ``filter="exact"``: brute-force dense ``N x N`` kernels, for validation on small images.

Energy and convergence. ``mean_field_energy`` returns the mean-field free energy
``F(Q) = sum_i Q_i.psi_i + 1/2 sum_{i != j} kn(i, j) Q_i^T mu Q_j + sum_i Q_i.log Q_i``
(= ``KL(Q || P) - log Z``). A step ``Q <- Q + a_i (Q' - Q)`` from the parallel update ``Q'``
changes it by at most ``sum_i a_i (-KL(Q_i || Q'_i) + a_i c_i |Q'_i - Q_i|^2 / 2)`` when the
kernels are positive semi-definite and ``mu`` is negative semi-definite on the simplex tangent
space (true for Potts), where ``c_i = |mu_T| sum_m w_m kn_m(i, i)``. With Pinsker's inequality the
energy cannot increase if ``a_i c_i <= 1`` for every pixel. ``convergent=True`` uses the per-pixel
step ``a_i = min(step_size, 1 / c_i)`` and so never increases ``F`` (up to float32 rounding).
The plain update (``a = 1``, ``convergent=False``, as in pydensecrf) has no such guarantee: with
the symmetric normalisation ``kn(i, i) = 1 / sum_j k(i, j)`` is small for most pixels, but a pixel
whose colour is unlike its neighbours' has ``c_i`` up to ``w1 + w2`` (the energy still went down
on every image we tried); with ``normalization="none"`` ``c_i = w1 + w2`` everywhere and the
plain update can oscillate (``tests/test_crf.py`` has such a case).

Defaults follow the common ``pydensecrf`` usage of DeepLab-style post-processing:
bilateral ``sxy=80, srgb=13, w=10``; gaussian ``sxy=3, w=3``; 10 iterations; symmetric
normalisation; Potts compatibility.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from segjax.errors import ConfigError

_FILTERS = ("grid", "exact")
_NORMALIZATIONS = ("symmetric", "none")
_EXACT_MAX_PIXELS = 4096
_GAUSS_TRUNCATE = 5.0


@dataclasses.dataclass(frozen=True)
class CRFParams:
    """Dense-CRF settings (hashable, so it can be a static argument of ``jax.jit``).

    Attributes:
      iterations: mean-field iterations.
      bilateral_sxy: spatial std of the appearance kernel, in pixels (theta_alpha).
      bilateral_srgb: colour std of the appearance kernel, in 0..255 RGB units (theta_beta).
      bilateral_weight: weight w1 of the appearance kernel.
      gaussian_sxy: spatial std of the smoothness kernel, in pixels (theta_gamma).
      gaussian_weight: weight w2 of the smoothness kernel.
      compatibility: ``None`` for Potts ``[l != l']``, else a symmetric ``C x C`` matrix as a
        tuple of tuples (label compatibility ``mu(l, l')``, the cost of labels l, l' together).
      normalization: ``"symmetric"`` (pydensecrf's default) or ``"none"`` (the raw kernels).
      step_size: mean-field step ``a`` in ``Q <- Q + a (Q' - Q)``; 1 is the standard update.
      convergent: use the per-pixel step ``min(step_size, 1 / c_i)`` that provably never
        increases the mean-field energy (see the module docstring).
      filter: ``"grid"`` (bilateral grid, any image size) or ``"exact"`` (brute force, at most
        4096 pixels; for validation).
      grid_spatial_samples: bilateral-grid cells per ``bilateral_sxy`` (>= 1).
      grid_range_samples: bilateral-grid cells per ``bilateral_srgb`` (>= 1). Memory grows as
        ``spatial^2 * range^3``.
    """

    iterations: int = 10
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_weight: float = 10.0
    gaussian_sxy: float = 3.0
    gaussian_weight: float = 3.0
    compatibility: tuple[tuple[float, ...], ...] | None = None
    normalization: str = "symmetric"
    step_size: float = 1.0
    convergent: bool = False
    filter: str = "grid"
    grid_spatial_samples: float = 1.0
    grid_range_samples: float = 1.0

    def __post_init__(self):
        checks = [
            (self.iterations >= 0, "iterations", "an integer >= 0"),
            (self.bilateral_sxy > 0, "bilateral_sxy", "> 0"),
            (self.bilateral_srgb > 0, "bilateral_srgb", "> 0"),
            (self.gaussian_sxy > 0, "gaussian_sxy", "> 0"),
            (self.bilateral_weight >= 0, "bilateral_weight", ">= 0"),
            (self.gaussian_weight >= 0, "gaussian_weight", ">= 0"),
            (0 < self.step_size <= 1, "step_size", "in (0, 1]"),
            (self.normalization in _NORMALIZATIONS, "normalization", f"one of {_NORMALIZATIONS}"),
            (self.filter in _FILTERS, "filter", f"one of {_FILTERS}"),
            (self.grid_spatial_samples >= 1, "grid_spatial_samples", ">= 1"),
            (self.grid_range_samples >= 1, "grid_range_samples", ">= 1"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(
                    f"segjax/evaluation/crf.py CRFParams: {name}={getattr(self, name)!r}, "
                    f"expected {expected}"
                )
        if self.compatibility is not None:
            mu = np.asarray(self.compatibility, np.float64)
            if mu.ndim != 2 or mu.shape[0] != mu.shape[1] or not np.allclose(mu, mu.T):
                raise ConfigError(
                    "segjax/evaluation/crf.py CRFParams: compatibility must be a symmetric "
                    "C x C matrix, "
                    f"got {self.compatibility!r}"
                )
            # Hashable and exact: store as nested tuples of floats.
            object.__setattr__(
                self, "compatibility", tuple(tuple(float(v) for v in row) for row in mu)
            )


# --------------------------------------------------------------------------------------------
# Unaries and compatibility


def unary_from_logits(logits: jax.Array) -> jax.Array:
    """``-log softmax(logits)``: the unary energy ``[..., C]`` in float32."""
    return -jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def unary_from_probabilities(probabilities: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``-log(max(p, eps))``: the unary energy ``[..., C]`` in float32."""
    return -jnp.log(jnp.maximum(probabilities.astype(jnp.float32), eps))


def _compatibility(params: CRFParams, num_classes: int) -> np.ndarray:
    if params.compatibility is None:
        return 1.0 - np.eye(num_classes, dtype=np.float32)
    mu = np.asarray(params.compatibility, np.float32)
    if mu.shape != (num_classes, num_classes):
        raise ConfigError(
            f"segjax/evaluation/crf.py: compatibility is {mu.shape[0]}x{mu.shape[1]}, expected "
            f"{num_classes}x{num_classes} for scores with {num_classes} classes"
        )
    return mu


def compatibility_tangent_norm(params: CRFParams, num_classes: int) -> float:
    """``|P mu P|_2`` with ``P`` the projection onto ``{v: sum v = 0}`` (1 for Potts).

    Raises:
      ValueError: if ``P mu P`` has a positive eigenvalue (a non-attractive compatibility, for
        which parallel mean field has no descent guarantee).
    """
    mu = _compatibility(params, num_classes).astype(np.float64)
    proj = np.eye(num_classes) - 1.0 / num_classes
    eig = np.linalg.eigvalsh(proj @ mu @ proj)
    if eig.max() > 1e-6 * max(1.0, np.abs(eig).max()):
        raise ConfigError(
            "segjax/evaluation/crf.py: convergent=True needs a compatibility that is "
            "negative semi-definite "
            f"on the simplex tangent space; largest eigenvalue is {eig.max():.4g}"
        )
    return float(np.abs(eig).max())


def _apply_compatibility(messages: jax.Array, mu: np.ndarray) -> jax.Array:
    if np.array_equal(mu, 1.0 - np.eye(mu.shape[0], dtype=mu.dtype)):
        # Potts: sum_l' [l != l'] m(l') without a C x C matmul.
        return jnp.sum(messages, axis=-1, keepdims=True) - messages
    return jnp.einsum("...k,lk->...l", messages, jnp.asarray(mu))


# --------------------------------------------------------------------------------------------
# Filtering of one image. Pixels are flattened row-major: q has shape [H * W, C].


def _images_to_float(images: jax.Array) -> jax.Array:
    # Float images are taken to be in 0..255 like uint8; the grid spans exactly that range.
    return jnp.clip(images.astype(jnp.float32), 0.0, 255.0)


def _gauss_taps(sigma: float, radius: int) -> np.ndarray:
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    return np.exp(-0.5 * (k / sigma) ** 2)


def _filter_axis(x: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
    """Zero-padded 'same' correlation of ``x`` with symmetric ``taps`` along ``axis``."""
    radius = min((len(taps) - 1) // 2, x.shape[axis] - 1)
    centre = (len(taps) - 1) // 2
    taps = jnp.asarray(taps[centre - radius : centre + radius + 1], jnp.float32)
    size = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad)

    # A loop over taps rather than a fully unrolled sum of shifted slices: fully unrolled, XLA
    # keeps every shifted copy alive when a softmax follows (about 40 full-size buffers at
    # 512x512x21, 860 MiB). Unrolling by 6 measured fastest (2-3x the plain loop) at ~65 MiB.
    def add_tap(k, acc):
        return acc + taps[k] * jax.lax.dynamic_slice_in_dim(padded, k, size, axis=axis)

    return jax.lax.fori_loop(0, 2 * radius + 1, add_tap, jnp.zeros_like(x), unroll=6)


def _band_matrix(taps: np.ndarray, size: int) -> np.ndarray:
    """``size x size`` matrix of zero-padded 'same' correlation with symmetric ``taps``."""
    radius = (len(taps) - 1) // 2
    offsets = np.arange(size)[None, :] - np.arange(size)[:, None]
    inside = np.abs(offsets) <= radius
    return np.where(inside, taps[np.clip(offsets + radius, 0, len(taps) - 1)], 0.0).astype(
        np.float32
    )


def _gaussian_filter(q: jax.Array, height: int, width: int, sxy: float) -> jax.Array:
    """Exact sum_j exp(-|p_i - p_j|^2 / 2 sxy^2) q_j (self included), truncated at 5 sxy."""
    taps = _gauss_taps(sxy, max(1, math.ceil(_GAUSS_TRUNCATE * sxy)))
    x = q.reshape(height, width, -1)
    x = _filter_axis(x, taps, 0)
    x = _filter_axis(x, taps, 1)
    return x.reshape(height * width, -1)


class _Grid(NamedTuple):
    """Static layout and per-pixel splat coordinates of one bilateral grid."""

    base: jax.Array  # [5, N] int32 lower cell index per axis
    frac: jax.Array  # [5, N] float32 position inside the cell
    shape: tuple[int, ...]  # grid cells per axis (static)
    taps: tuple[np.ndarray, ...]  # blur taps per axis (static)
    scale: float  # peak calibration (static)


def _grid_layout(params: CRFParams, height: int, width: int):
    """Static cell sizes, grid shape, blur taps and peak scale of the bilateral grid."""
    s_sp, s_rg = params.grid_spatial_samples, params.grid_range_samples
    cell = [params.bilateral_sxy / s_sp] * 2 + [params.bilateral_srgb / s_rg] * 3
    extent = [height - 1, width - 1, 255.0, 255.0, 255.0]
    shape = tuple(int(math.floor(e / c)) + 2 for e, c in zip(extent, cell))
    taps, scale = [], 1.0
    for s, size in zip([s_sp] * 2 + [s_rg] * 3, shape):
        # Splat and slice tents each add 1/6 cell^2 of variance.
        sigma_b = math.sqrt(s * s - 1.0 / 3.0)
        # Untruncated over the grid (keeps the blur positive definite and costs nothing extra:
        # it is a dense per-axis matrix product) and at least 8 sigma long, so that sum(t) below
        # is the full Gaussian sum even when the grid has only 2-3 cells on an axis.
        t = _gauss_taps(sigma_b, max(size - 1, math.ceil(8.0 * sigma_b)))
        taps.append(t)
        # The effective 1-D kernel is ~ Gaussian with integral sum(t) cells and std s cells;
        # rescale it to peak 1 like the exact kernel.
        scale *= math.sqrt(2.0 * math.pi) * s / float(t.sum())
    return cell, shape, tuple(taps), scale


def _make_grid(image: jax.Array, params: CRFParams) -> _Grid:
    height, width, _ = image.shape
    cell, shape, taps, scale = _grid_layout(params, height, width)
    yy, xx = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    rgb = image.reshape(-1, 3)
    coords = jnp.stack([yy.reshape(-1), xx.reshape(-1), rgb[:, 0], rgb[:, 1], rgb[:, 2]])
    u = coords / jnp.asarray(cell, jnp.float32)[:, None]
    base = jnp.floor(u)
    # Keep base + 1 inside the grid even at the exact upper edge.
    base = jnp.minimum(base, jnp.asarray(shape, jnp.float32)[:, None] - 2)
    frac = u - base
    return _Grid(base.astype(jnp.int32), frac, shape, taps, scale)


_CORNERS = np.array(list(itertools.product((0, 1), repeat=5)), np.int32)  # [32, 5]


def _corner_index_weight(grid: _Grid, bits: jax.Array):
    strides = np.cumprod((grid.shape[1:] + (1,))[::-1])[::-1].astype(np.int32)
    idx = jnp.sum((grid.base + bits[:, None]) * jnp.asarray(strides)[:, None], axis=0)
    weight = jnp.prod(jnp.where(bits[:, None] == 1, grid.frac, 1.0 - grid.frac), axis=0)
    return idx, weight


def _grid_filter(q: jax.Array, grid: _Grid) -> jax.Array:
    """Approximate sum_j k_bilateral(i, j) q_j (self included) with splat -> blur -> slice."""
    num_cells = int(np.prod(grid.shape))
    channels = q.shape[-1]

    def splat(acc, bits):
        idx, weight = _corner_index_weight(grid, bits)
        return acc.at[idx].add(weight[:, None] * q, mode="promise_in_bounds"), None

    values, _ = jax.lax.scan(splat, jnp.zeros((num_cells, channels), q.dtype), _CORNERS)
    values = values.reshape(grid.shape + (channels,))
    # Per-axis matrix products are ~3x faster on CPU than shifted sums over this 6-D array.
    letters = "abcdef"
    for axis, taps in enumerate(grid.taps):
        out_letters = letters[:axis] + "z" + letters[axis + 1 :]
        band = jnp.asarray(_band_matrix(taps, grid.shape[axis]))
        values = jnp.einsum(f"z{letters[axis]},{letters}->{out_letters}", band, values)
    values = values.reshape(num_cells, channels) * grid.scale

    def slice_(acc, bits):
        idx, weight = _corner_index_weight(grid, bits)
        return acc + weight[:, None] * values.at[idx].get(mode="promise_in_bounds"), None

    out, _ = jax.lax.scan(slice_, jnp.zeros_like(q), _CORNERS)
    return out


def _grid_diagonal(grid: _Grid) -> jax.Array:
    """Diagonal of the grid operator S^T B S: per axis (1-f)^2 b0 + f^2 b0 + 2 f (1-f) b1."""
    diag = jnp.full(grid.frac.shape[1:], grid.scale, jnp.float32)
    for axis, taps in enumerate(grid.taps):
        r = (len(taps) - 1) // 2
        b0, b1 = float(taps[r]), float(taps[r + 1])
        f = grid.frac[axis]
        diag = diag * (((1 - f) ** 2 + f**2) * b0 + 2 * f * (1 - f) * b1)
    return diag


def _exact_kernels(image: jax.Array, params: CRFParams) -> tuple[jax.Array, jax.Array]:
    """Dense N x N bilateral and gaussian kernels (self included) for brute-force filtering."""
    height, width, _ = image.shape
    yy, xx = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    pos = jnp.stack([yy.reshape(-1), xx.reshape(-1)], axis=-1)
    rgb = image.reshape(-1, 3)

    def sqdist(a):
        return jnp.sum((a[:, None, :] - a[None, :, :]) ** 2, axis=-1)

    d_pos, d_rgb = sqdist(pos), sqdist(rgb)
    bilateral = jnp.exp(
        -0.5 * d_pos / params.bilateral_sxy**2 - 0.5 * d_rgb / params.bilateral_srgb**2
    )
    gaussian = jnp.exp(-0.5 * d_pos / params.gaussian_sxy**2)
    return bilateral, gaussian


class _Kernel(NamedTuple):
    """One pairwise kernel of one image, ready to filter: kn = norm K norm - diag(kdiag)."""

    apply: Any  # q [N, C] -> K q (self included, unnormalised)
    norm: jax.Array  # [N] per-pixel normalisation (D^-1/2 or ones)
    diag: jax.Array  # [N] diagonal of the normalised kernel, removed from messages
    weight: float


def _kernels(image: jax.Array, params: CRFParams) -> list[_Kernel]:
    height, width, _ = image.shape
    n = height * width
    if params.filter == "exact":
        bilateral, gaussian = _exact_kernels(image, params)
        ops = [(lambda q, k=k: k @ q, jnp.ones(n, jnp.float32)) for k in (bilateral, gaussian)]
    else:
        grid = _make_grid(image, params)
        ops = [
            (functools.partial(_grid_filter, grid=grid), _grid_diagonal(grid)),
            (
                functools.partial(
                    _gaussian_filter, height=height, width=width, sxy=params.gaussian_sxy
                ),
                jnp.ones(n, jnp.float32),
            ),
        ]
    weights = [params.bilateral_weight, params.gaussian_weight]
    kernels = []
    for (apply, raw_diag), weight in zip(ops, weights):
        if params.normalization == "symmetric":
            degree = apply(jnp.ones((n, 1), jnp.float32))[:, 0]
            norm = jax.lax.rsqrt(jnp.maximum(degree, 1e-20))
        else:
            norm = jnp.ones(n, jnp.float32)
        kernels.append(_Kernel(apply, norm, raw_diag * norm * norm, float(weight)))
    return kernels


def _messages(kernels: list[_Kernel], q: jax.Array) -> jax.Array:
    """sum_m w_m sum_{j != i} kn_m(i, j) q_j for one image, q [N, C]."""
    total = jnp.zeros_like(q)
    for k in kernels:
        if k.weight == 0:
            continue
        filtered = k.norm[:, None] * k.apply(k.norm[:, None] * q) - k.diag[:, None] * q
        total = total + k.weight * filtered
    return total


def _step_bound(kernels: list[_Kernel], mu_norm: float) -> jax.Array:
    """c_i = |mu_T| sum_m w_m kn_m(i, i) from the descent bound (module docstring)."""
    return mu_norm * sum(k.weight * k.diag for k in kernels)


# --------------------------------------------------------------------------------------------
# Public API


def _check(scores: jax.Array, images: jax.Array, params: CRFParams) -> None:
    if scores.ndim != 4 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            "segjax/evaluation/crf.py: expected scores [B, H, W, C] and images [B, H, W, 3], got "
            f"{scores.shape} and {images.shape}"
        )
    if scores.shape[:3] != images.shape[:3]:
        raise ValueError(
            f"segjax/evaluation/crf.py: scores {scores.shape} and images {images.shape} differ "
            "in B, H, W"
        )
    n = scores.shape[1] * scores.shape[2]
    if params.filter == "exact" and n > _EXACT_MAX_PIXELS:
        raise ConfigError(
            f"segjax/evaluation/crf.py: filter='exact' builds N x N kernels; N = {n} pixels "
            f"exceeds {_EXACT_MAX_PIXELS}. Use filter='grid'."
        )


@functools.partial(jax.jit, static_argnames=("params",))
def pairwise_messages(q: jax.Array, images: jax.Array, params: CRFParams) -> jax.Array:
    """Weighted filtered messages ``sum_m w_m sum_{j != i} kn_m(i, j) Q_j``.

    Args:
      q: ``[B, H, W, C]`` marginals (or any per-pixel values to filter).
      images: ``[B, H, W, 3]`` uint8, or float in 0..255.
      params: ``CRFParams`` (its ``filter`` chooses grid or brute force).

    Returns:
      ``[B, H, W, C]`` float32 messages, before the compatibility is applied.
    """
    _check(q, images, params)
    batch, height, width, channels = q.shape

    def one(qb, image):
        kernels = _kernels(image, params)
        return _messages(kernels, qb.reshape(-1, channels)).reshape(height, width, channels)

    return jax.vmap(one)(q.astype(jnp.float32), _images_to_float(images))


def _energy(q, unary, messages, mu):
    """Mean-field free energy of one image from q, unary and _messages(kernels, q), all [N, C]."""
    pairwise = _apply_compatibility(messages, mu)
    entropy_term = jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0)), 0.0))
    return jnp.sum(q * unary) + 0.5 * jnp.sum(q * pairwise) + entropy_term


@functools.partial(jax.jit, static_argnames=("params", "num_classes"))
def step_bound(images: jax.Array, params: CRFParams, num_classes: int) -> jax.Array:
    """Per-pixel ``c_i = |mu_T| sum_m w_m kn_m(i, i)`` of the descent bound, ``[B, H, W]``.

    A mean-field step ``a_i`` with ``a_i c_i <= 1`` everywhere never increases the energy
    (module docstring); ``convergent=True`` uses ``a_i = min(step_size, 1 / c_i)``.
    """
    batch, height, width, _ = images.shape
    mu_norm = compatibility_tangent_norm(params, num_classes)

    def one(image):
        return _step_bound(_kernels(image, params), mu_norm).reshape(height, width)

    return jax.vmap(one)(_images_to_float(images))


@functools.partial(jax.jit, static_argnames=("params",))
def mean_field_energy(
    q: jax.Array, unary: jax.Array, images: jax.Array, params: CRFParams | None = None
) -> jax.Array:
    """Mean-field free energy ``F(Q) = KL(Q || P) - log Z`` per image.

    ``F(Q) = sum_i Q_i . psi_i + 1/2 sum_{i != j} kn(i, j) Q_i^T mu Q_j + sum_i Q_i . log Q_i``,
    with the kernels computed by ``params.filter`` (so it is the exact objective of the
    approximate model that ``mean_field`` optimises with the same settings).

    Args:
      q: ``[B, H, W, C]`` marginals (rows on the simplex).
      unary: ``[B, H, W, C]`` unary energies (``unary_from_logits``).
      images: ``[B, H, W, 3]`` uint8, or float in 0..255.
      params: ``CRFParams`` (defaults if ``None``).

    Returns:
      ``[B]`` float32 energies.
    """
    params = params or CRFParams()
    _check(q, images, params)
    channels = q.shape[-1]
    mu = _compatibility(params, channels)

    def one(qb, ub, image):
        kernels = _kernels(image, params)
        qb = qb.reshape(-1, channels)
        return _energy(qb, ub.reshape(-1, channels), _messages(kernels, qb), mu)

    return jax.vmap(one)(q.astype(jnp.float32), unary.astype(jnp.float32), _images_to_float(images))


@functools.partial(jax.jit, static_argnames=("params", "return_energies"))
def mean_field(
    unary: jax.Array,
    images: jax.Array,
    params: CRFParams | None = None,
    *,
    return_energies: bool = False,
):
    """Mean-field inference of the dense CRF.

    Args:
      unary: ``[B, H, W, C]`` unary energies (``-log p``).
      images: ``[B, H, W, 3]`` uint8, or float in 0..255 (values are clipped to that range).
      params: ``CRFParams`` (defaults if ``None``).
      return_energies: also return the energy before and after every iteration.

    Returns:
      ``Q`` ``[B, H, W, C]`` float32 marginals; with ``return_energies`` a pair
      ``(Q, energies [B, iterations + 1])``.
    """
    params = params or CRFParams()
    _check(unary, images, params)
    batch, height, width, channels = unary.shape
    mu = _compatibility(params, channels)
    mu_norm = compatibility_tangent_norm(params, channels) if params.convergent else 0.0

    def one(ub, image):
        ub = ub.reshape(-1, channels)
        kernels = _kernels(image, params)
        if params.convergent:
            bound = _step_bound(kernels, mu_norm)
            step = jnp.minimum(params.step_size, 1.0 / jnp.maximum(bound, 1e-12))[:, None]
        else:
            step = params.step_size
        q0 = jax.nn.softmax(-ub, axis=-1)
        damped = params.step_size != 1 or params.convergent

        def update(q, messages):
            target = jax.nn.softmax(-ub - _apply_compatibility(messages, mu), axis=-1)
            return q + step * (target - q) if damped else target

        if not return_energies:
            q, _ = jax.lax.scan(
                lambda q, _: (update(q, _messages(kernels, q)), None),
                q0,
                None,
                length=params.iterations,
            )
            return q.reshape(height, width, channels), None

        # Carry the messages of the current Q so each iteration filters once and the energy
        # of the new Q reuses the messages the next update needs.
        def body(carry, _):
            q, messages = carry
            q_new = update(q, messages)
            messages_new = _messages(kernels, q_new)
            return (q_new, messages_new), _energy(q_new, ub, messages_new, mu)

        messages0 = _messages(kernels, q0)
        (q, _), energies = jax.lax.scan(body, (q0, messages0), None, length=params.iterations)
        energies = jnp.concatenate([_energy(q0, ub, messages0, mu)[None], energies])
        return q.reshape(height, width, channels), energies

    q, energies = jax.vmap(one)(unary.astype(jnp.float32), _images_to_float(images))
    return (q, energies) if return_energies else q


@functools.partial(jax.jit, static_argnames=("params", "from_logits"))
def _dense_crf(scores, images, params, from_logits):
    # mean_field is itself jitted; the outer jit fuses the unary computation with it.
    unary = unary_from_logits(scores) if from_logits else unary_from_probabilities(scores)
    return mean_field(unary, images, params)


def dense_crf(
    scores: jax.Array,
    images: jax.Array,
    params: CRFParams | None = None,
    *,
    from_logits: bool = True,
    **overrides,
) -> jax.Array:
    """Refine segmentation scores with a fully connected CRF (jit-compiled, batched).

    ``dense_crf(logits, images, iterations=5, bilateral_sxy=60)`` or
    ``dense_crf(logits, images, **config.crf)``; keyword overrides are ``CRFParams`` fields.
    Defaults: bilateral ``sxy=80, srgb=13, w=10``; gaussian ``sxy=3, w=3``; 10 iterations,
    Potts, symmetric normalisation, bilateral grid at one cell per std.

    Args:
      scores: ``[B, H, W, C]`` logits (``from_logits=True``) or probabilities.
      images: ``[B, H, W, 3]`` uint8 RGB, or float RGB in 0..255 (not mean/std normalised).
      params: base ``CRFParams``; ``overrides`` replace its fields.
      from_logits: whether ``scores`` are logits (else probabilities).

    Returns:
      ``[B, H, W, C]`` float32 refined probabilities (``jnp.log`` of them are valid logits).

    Raises:
      ValueError: on mismatched shapes or invalid settings.
    """
    params = dataclasses.replace(params or CRFParams(), **overrides)
    _check(scores, images, params)
    return _dense_crf(scores, images, params, from_logits)
