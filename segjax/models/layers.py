"""Shared building blocks: conv + norm + activation, separable and atrous convs, resize,
bilinear-initialised transposed convolution.

All blocks are NHWC. ``dtype`` is the compute dtype; parameters stay float32.
"""

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# torchvision's BatchNorm2d: momentum 0.1 (flax: 1 - 0.1), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype: Dtype = jnp.float32, name: str | None = None, **kw) -> nn.Module:
    """BatchNorm with torchvision's defaults; statistics in float32 whatever the compute dtype."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=kw.pop("momentum", BN_MOMENTUM),
        epsilon=kw.pop("epsilon", BN_EPSILON),
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        **kw,
    )


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def same_padding(kernel: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit symmetric padding of a k×k conv with dilation d.

    The same as PyTorch's ``padding=d*(k-1)//2``.

    Unlike Flax's ``"SAME"`` (which pads asymmetrically for strided convs), this matches
    torchvision numerically for every stride.
    """
    p = dilation * (kernel - 1) // 2
    return ((p, p), (p, p))


class ConvBN(nn.Module):
    """Conv (optionally atrous / grouped) → BatchNorm → activation.

    Atrous convolution goes through ``kernel_dilation`` (``rhs_dilation`` of
    ``lax.conv_general_dilated``); depthwise convolution through ``feature_group_count``.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    groups: int = 1
    use_bias: bool = False
    use_norm: bool = True
    act: Callable[[jax.Array], jax.Array] | None = nn.relu
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.Conv(
            self.features,
            _pair(self.kernel_size),
            strides=_pair(self.strides),
            padding=same_padding(self.kernel_size, self.dilation),
            kernel_dilation=_pair(self.dilation),
            feature_group_count=self.groups,
            use_bias=self.use_bias,
            dtype=self.dtype,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            name="conv",
        )(x)
        if self.use_norm:
            x = batch_norm(train, self.dtype, name="bn")(x)
        if self.act is not None:
            x = self.act(x)
        return x


class SeparableConvBN(nn.Module):
    """Depthwise k×k (atrous) conv + BN (+act) then pointwise 1×1 conv + BN + act (DeepLab v3+)."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    act_depthwise: bool = True
    act: Callable[[jax.Array], jax.Array] | None = nn.relu
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        channels = x.shape[-1]
        x = ConvBN(
            channels,
            self.kernel_size,
            self.strides,
            self.dilation,
            groups=channels,
            act=self.act if self.act_depthwise else None,
            dtype=self.dtype,
            name="depthwise",
        )(x, train=train)
        return ConvBN(self.features, 1, act=self.act, dtype=self.dtype, name="pointwise")(
            x, train=train
        )


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Bilinear resize of NHWC ``x`` to ``size`` = (H, W), half-pixel centres.

    Equals PyTorch's ``F.interpolate(..., mode="bilinear", align_corners=False)`` (no
    antialiasing, also when shrinking).
    """
    h, w = size
    if x.shape[1:3] == (h, w):
        return x
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear", antialias=False)


def bilinear_kernel(factor: int, channels: int) -> np.ndarray:
    """Closed-form bilinear upsampling kernel for a transposed conv with stride ``factor``.

    Kernel size is ``2 * factor - factor % 2``; each channel upsamples itself only (the FCN
    reference's ``upsample_filt`` on the diagonal). Returns HWIO ``[k, k, channels, channels]``.
    """
    size = 2 * factor - factor % 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size, dtype=np.float64)
    filt1d = 1 - np.abs(og - center) / factor
    filt = np.outer(filt1d, filt1d).astype(np.float32)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = filt[:, :, None]
    return kernel


def bilinear_init(factor: int) -> Callable[..., jax.Array]:
    """A Flax kernel initialiser producing :func:`bilinear_kernel` (shape ``[k, k, C, C]``)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        k, k2, cin, cout = shape
        if k != k2 or k != 2 * factor - factor % 2 or cin != cout:
            raise ValueError(
                f"bilinear init for factor {factor} needs a square [k,k,C,C] kernel, got {shape}"
            )
        return jnp.asarray(bilinear_kernel(factor, cin), dtype)

    return init


def conv_transpose_subpixel(x: jax.Array, kernel: jax.Array, factor: int) -> jax.Array:
    """The transposed conv of :class:`BilinearConvTranspose` as one ordinary conv + depth-to-space.

    With kernel ``k ≤ 2·factor`` and stride ``factor``, output ``factor·j + p`` only receives
    ``x[j]·K[p] + x[j−1]·K[p + factor]``: a 2×2 conv over the zero-padded input producing
    ``factor²·C_out`` channels, rearranged into pixels. Same result (up to float rounding) as
    ``lax.conv_transpose``, but XLA:CPU runs it — and especially its gradient — much faster
    (``benchmarks/transposed_conv.py``).

    Args:
      x: ``[B, H, W, C_in]``.
      kernel: HWOI ``[k, k, C_out, C_in]`` with ``k ≤ 2·factor`` (as stored by the module).
      factor: the stride.

    Returns:
      ``[B, (H − 1)·factor + k, (W − 1)·factor + k, C_out]``.
    """
    k, _, c_out, c_in = kernel.shape
    f = factor
    if k > 2 * f:
        raise ValueError(f"conv_transpose_subpixel: kernel {k} > 2 * stride {f}")
    full = jnp.pad(kernel, ((0, 2 * f - k), (0, 2 * f - k), (0, 0), (0, 0)))
    # w[a, b, ci, p, q, co] = K[(1 − a)·f + p, (1 − b)·f + q, co, ci]
    w = full.reshape(2, f, 2, f, c_out, c_in)[::-1, :, ::-1]
    w = w.transpose(0, 2, 5, 1, 3, 4).reshape(2, 2, c_in, f * f * c_out)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = jax.lax.conv_general_dilated(
        xp, w.astype(x.dtype), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    b, h1, w1, _ = y.shape
    y = y.reshape(b, h1, w1, f, f, c_out).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(b, h1 * f, w1 * f, c_out)
    h_out, w_out = (x.shape[1] - 1) * f + k, (x.shape[2] - 1) * f + k
    return y[:, :h_out, :w_out]


class BilinearConvTranspose(nn.Module):
    """Learnable ×``factor`` upsampling: a transposed conv initialised to bilinear interpolation.

    Caffe / PyTorch ``ConvTranspose2d`` semantics with no padding and no bias: kernel
    ``k = 2·factor − factor % 2``, stride ``factor``, output size ``(n − 1)·factor + k``, and
    ``out[factor·i + t] += x[i] · kernel[t]``. Callers crop (FCN's offsets). The kernel is
    stored HWOI (``kernel[h, w, o, i] = torch_weight[i, o, h, w]``).

    Attributes:
      factor: upsampling stride.
      trainable: ``False`` stops the gradient to the kernel (the FCN reference fixes it).
      impl: ``"conv_transpose"`` (``jax.lax.conv_transpose(..., transpose_kernel=True)``) or
        ``"subpixel"`` (:func:`conv_transpose_subpixel`, same result, faster on CPU).
      dtype: compute dtype (the kernel stays float32).
    """

    factor: int
    trainable: bool = True
    impl: str = "conv_transpose"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        size = 2 * self.factor - self.factor % 2
        kernel = self.param(
            "kernel", bilinear_init(self.factor), (size, size, channels, channels), jnp.float32
        )
        if not self.trainable:
            kernel = jax.lax.stop_gradient(kernel)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if self.impl == "subpixel":
            return conv_transpose_subpixel(x, kernel, self.factor)
        if self.impl != "conv_transpose":
            raise ValueError(
                f"BilinearConvTranspose: impl must be 'conv_transpose' or 'subpixel', "
                f"got {self.impl!r}"
            )
        return jax.lax.conv_transpose(
            x,
            kernel,
            (self.factor, self.factor),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            transpose_kernel=True,
        )


# --- Convolutions as matmuls where XLA:CPU's convolution is slow -------------------------------
#
# XLA:CPU lowers the weight gradient of a convolution to a "backward-filter" convolution whose
# inner (feature) dimension is the batch size, which misses its fast conv kernels: measured 3–4×
# slower than the forward conv, and ~50× for transposed convs (docs/PERFORMANCE.md).
# ``conv_general_dilated_fast`` computes the same numbers with what XLA:CPU runs fast:
#
# * the weight gradient as one matmul per kernel tap, ``dW[i, j] = shift_ij(x)ᵀ · dy``
#   contracting N·Ho·Wo (forward and input gradient stay XLA's convolutions);
# * 1×1 convs as matmuls (forward and both gradients);
# * depthwise convs as sums of shifted, per-channel scaled slices (one fused loop);
# * atrous convs whose taps mostly read padding (ASPP rates 12/24/36 on 32×32 maps) as shifted
#   matmuls over the output regions each tap really reaches;
# * dense stride-1 3×3 convs (≥ 64 channels) as Winograd F(2×2, 3×3): 16 GEMMs per conv with
#   2.25× fewer multiply-adds, forward and both gradients.

_NHWC = ("NHWC", "HWIO", "NHWC")


def _own_transpose(v, perm):
    """``jnp.transpose`` run as a copy of its own, of an already materialised buffer.

    Left to itself XLA:CPU fuses the transposing copy a weight-gradient dot needs into the
    elementwise ops producing its operand (batch-norm backward, a shifted slice), and its loop
    emitter then reads every input in transposed order: measured 5–15× slower than the same
    transpose alone, a third of a ResNet-50 train step. The barriers keep the producer out and
    stop the dot from folding the transpose back into its dimension numbers.
    """
    barrier = jax.lax.optimization_barrier
    return barrier(jnp.transpose(barrier(v), perm))


def _taps_weight_grad(
    x, dy, kshape, strides, padding, rhs_dilation, groups, out_dtype, lhs_dilation=(1, 1)
):
    """dL/dkernel of an NHWC/HWIO conv as ``KH·KW`` matmuls (float32 accumulation).

    Tap ``(i, j)`` pairs every output pixel with the input pixel it reads: a strided slice of the
    padded input (plain / strided / atrous convs) or, for input-dilated (transposed) convs with
    unit stride and kernel dilation, a strided slice of the padded output gradient against the
    undilated input (no multiplications by the inserted zeros). Every tap contracts the pixels,
    so one operand must be pixel-minor: the narrower of the two is transposed once, up front,
    and each tap is a plain ``[C, P] · [P, C']`` GEMM.
    """
    kh, kw, cig, co = kshape
    n, h, w, ci = x.shape
    _, ho, wo, _ = dy.shape
    (sh, sw), (dh, dw) = strides, rhs_dilation
    cog = co // groups
    if tuple(lhs_dilation) == (1, 1):
        # Tap (i, j): a window of the padded input against the whole output gradient.
        varying, fixed, steps = x, dy, (sh, sw)
        pad_cfg = ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0))

        def window(i, j):
            return (i * dh, j * dw), (ho, wo)

    else:
        if (sh, sw, dh, dw) != (1, 1, 1, 1):
            raise ValueError(
                "_taps_weight_grad: input dilation needs unit window strides and kernel dilation, "
                f"got strides {strides}, rhs_dilation {rhs_dilation}"
            )
        # Tap (i, j): the undilated input against a strided window of the padded output grad.
        (lh, lw), (lo_h, lo_w) = lhs_dilation, (padding[0][0], padding[1][0])
        left_h, left_w = kh - 1 + max(0, -lo_h), kw - 1 + max(0, -lo_w)
        right_h = max(0, lo_h + lh * (h - 1) + 1 - ho)
        right_w = max(0, lo_w + lw * (w - 1) + 1 - wo)
        varying, fixed, steps = dy, x, (lh, lw)
        pad_cfg = ((0, 0, 0), (left_h, right_h, 0), (left_w, right_w, 0), (0, 0, 0))

        def window(i, j):
            return (lo_h - i + left_h, lo_w - j + left_w), (h, w)

    if any(v for dim in pad_cfg for v in dim):
        varying = jax.lax.pad(varying, jnp.zeros((), varying.dtype), pad_cfg)
    p = n * fixed.shape[1] * fixed.shape[2]

    def window_bounds(i, j):  # spatial start, stop and strides of tap (i, j)'s window
        (top, left), (rows, cols) = window(i, j)
        stop = (top + (rows - 1) * steps[0] + 1, left + (cols - 1) * steps[1] + 1)
        return (top, left), stop, steps

    def nhwc_window(i, j):  # [N, rows, cols, C] window of the (padded) varying operand
        start, stop, strides_ = window_bounds(i, j)
        c = varying.shape[-1]
        return jax.lax.slice(varying, (0, *start, 0), (n, *stop, c), (1, *strides_, 1))

    acc = jnp.promote_types(x.dtype, jnp.float32)  # float32 accumulation, float64 kept
    dot = lambda a, b: jax.lax.dot(a, b, preferred_element_type=acc)
    if groups == 1 and cig > 1:
        x_varies = tuple(lhs_dilation) == (1, 1)
        c_var, c_fix = (ci, co) if x_varies else (co, ci)
        taps = []
        if c_fix <= c_var:  # transpose the fixed operand once: [c_fix, P] · window [P, c_var]
            fixed_t = _own_transpose(fixed.reshape(p, c_fix), (1, 0))
            for i in range(kh):
                for j in range(kw):
                    win = nhwc_window(i, j).reshape(p, c_var)
                    taps.append(dot(fixed_t, win))  # [c_fix, c_var]
            out = jnp.stack(taps)  # [taps, c_fix, c_var]
            out = out.transpose(0, 2, 1) if x_varies else out  # → [taps, ci, co]
        else:  # transpose the varying operand once: window [c_var, P] · [P, c_fix]
            var_t = _own_transpose(varying, (3, 0, 1, 2))  # [c_var, N, H, W]
            fixed_flat = fixed.reshape(p, c_fix)
            for i in range(kh):
                for j in range(kw):
                    start, stop, strides_ = window_bounds(i, j)
                    win = jax.lax.slice(var_t, (0, 0, *start), (c_var, n, *stop), (1, 1, *strides_))
                    taps.append(dot(win.reshape(c_var, p), fixed_flat))  # [c_var, c_fix]
            out = jnp.stack(taps)
            out = out if x_varies else out.transpose(0, 2, 1)
        return out.reshape(kh, kw, ci, co).astype(out_dtype)

    taps = []  # grouped and depthwise kernels: pixel-major operands, batched over groups
    for i in range(kh):
        for j in range(kw):
            win = nhwc_window(i, j)
            a, b = (win, dy) if tuple(lhs_dilation) == (1, 1) else (x, win)
            a, b = a.reshape(p, groups, cig), b.reshape(p, groups, cog)
            if cig == 1:  # depthwise: a per-channel reduction, not a matmul
                t = jnp.sum(a.astype(acc) * b.astype(acc), axis=0)
            else:  # [G, cig, cog] batched over groups, contracting the pixels
                t = jax.lax.dot_general(
                    a, b, (((0,), (0,)), ((1,), (1,))), preferred_element_type=acc
                ).transpose(1, 0, 2)
            taps.append(t.reshape(cig, co).astype(out_dtype))
    return jnp.stack(taps).reshape(kh, kw, cig, co)


def _use_taps(kshape, groups, lhs_dilation=(1, 1)) -> bool:
    """Where per-tap matmuls beat XLA:CPU's backward-filter conv (benchmarks/conv_backward.py)."""
    kh, kw, cig, _ = kshape
    if kh * kw > 49:  # one matmul per tap: keep the unrolled graph small (FCN's 64×64 convT)
        return False
    return tuple(lhs_dilation) != (1, 1) or kh * kw == 1 or cig == 1 or cig >= 128


def _xla_conv(x, k, strides, padding, lhs_dilation, rhs_dilation, groups, precision):
    return jax.lax.conv_general_dilated(
        x,
        k,
        strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=_NHWC,
        feature_group_count=groups,
        precision=precision,
    )


_conv_taps = jax.custom_vjp(_xla_conv, nondiff_argnums=(2, 3, 4, 5, 6, 7))


def _conv_taps_fwd(x, k, strides, padding, lhs_dilation, rhs_dilation, groups, precision):
    y = _conv_taps(x, k, strides, padding, lhs_dilation, rhs_dilation, groups, precision)
    return y, (x, k)


def _conv_taps_bwd(strides, padding, lhs_dilation, rhs_dilation, groups, precision, res, dy):
    x, k = res
    conv = lambda x, k: _xla_conv(
        x, k, strides, padding, lhs_dilation, rhs_dilation, groups, precision
    )
    if not _use_taps(k.shape, groups, lhs_dilation):
        return jax.vjp(conv, x, k)[1](dy)
    (dx,) = jax.vjp(lambda x: conv(x, k), x)[1](dy)  # XLA's input gradient (fast already)
    dk = _taps_weight_grad(
        x, dy, k.shape, strides, padding, rhs_dilation, groups, k.dtype, lhs_dilation
    )
    return dx, dk


_conv_taps.defvjp(_conv_taps_fwd, _conv_taps_bwd)


def _pointwise_fwd_impl(x, k, precision):
    return jnp.einsum("nhwc,cd->nhwd", x, k, precision=precision)


_pointwise = jax.custom_vjp(_pointwise_fwd_impl, nondiff_argnums=(2,))


def _pointwise_fwd(x, k, precision):
    return _pointwise(x, k, precision), (x, k)


def _pointwise_bwd(precision, res, dy):
    x, k = res
    dx = jnp.einsum("nhwd,cd->nhwc", dy, k, precision=precision)
    dk = _taps_weight_grad(x, dy, (1, 1, *k.shape), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, k.dtype)
    return dx, dk[0, 0]


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def conv_general_dilated_fast(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """Drop-in ``lax.conv_general_dilated`` that runs convolutions as matmuls where that is faster.

    1×1 convs are einsums; depthwise convs are sums of shifted slices times per-channel weights;
    stride-1 atrous convs doing mostly padding work are shifted matmuls over live regions; dense
    stride-1 3×3 convs with ≥ 64 channels run as Winograd F(2×2, 3×3) GEMMs (forward and both
    gradients); every other conv keeps XLA's forward and input gradient and gets a per-tap
    matmul weight gradient (custom VJP).

    Same forward result and the same gradients (within float rounding) as
    ``lax.conv_general_dilated``. 2-D NHWC/HWIO convs take the custom VJP (input-dilated, i.e.
    transposed, ones only with unit strides and kernel dilation and explicit padding, which is
    what ``lax.conv_transpose`` produces); everything else falls through to
    ``lax.conv_general_dilated``. Pass it to
    ``nn.Conv(conv_general_dilated=...)`` or use :func:`fast_conv_backward`.
    """
    nd = lhs.ndim - 2
    lhs_dilation = tuple(lhs_dilation or (1,) * nd)
    rhs_dilation = tuple(rhs_dilation or (1,) * nd)
    nhwc = dimension_numbers == _NHWC or (
        isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers)
        and nd == 2
        and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    transposed = any(v != 1 for v in lhs_dilation)
    if not (
        nd == 2
        and nhwc
        and (not transposed or all(v == 1 for v in (*window_strides, *rhs_dilation)))
        and not (transposed and isinstance(padding, str))
        and batch_group_count == 1
        and preferred_element_type is None
    ):
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        window = tuple((k - 1) * d + 1 for k, d in zip(rhs.shape[:2], rhs_dilation))
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], window, strides, padding)
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    if (
        not transposed
        and rhs.shape[:2] == (1, 1)
        and feature_group_count == 1
        and all(v == 0 for pad in padding for v in pad)
    ):
        # 1×1 conv: a matmul (XLA:CPU runs dots ~2× faster than the same 1×1 convolution).
        x = lhs[:, :: strides[0], :: strides[1]] if strides != (1, 1) else lhs
        return _pointwise(x, rhs[0, 0], precision)
    channels = lhs.shape[-1]
    if not transposed and feature_group_count == channels == rhs.shape[-1] and channels > 1:
        return _depthwise_taps_conv(lhs, rhs, strides, padding, rhs_dilation)
    if not transposed and strides == (1, 1) and feature_group_count == 1:
        live = _live_fraction(lhs.shape[1:3], rhs.shape[:2], padding, rhs_dilation)
        # Measured: a win on ASPP (2048 → 256 channels) from 56 % live work down, a loss on
        # 256-channel convs unless most taps are dead (benchmarks/conv_backward.py).
        if live <= 0.3 or (live <= 0.8 and channels >= 512):
            return _shifted_matmul_conv(lhs, rhs, padding, rhs_dilation, precision)
    if not transposed:
        rhs, padding = _crop_dead_taps(lhs.shape[1:3], rhs, strides, padding, rhs_dilation)
        if _use_winograd(lhs.shape, rhs.shape, strides, padding, rhs_dilation, feature_group_count):
            return _conv_winograd(lhs, rhs, padding, rhs_dilation[0], precision)
    return _conv_taps(
        lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, int(feature_group_count), precision
    )


# --- Winograd F(2×2, 3×3) for dense stride-1 3×3 convs -----------------------------------------
#
# Each 2×2 block of outputs is computed from a 4×4 input tile with 16 multiplications per
# channel pair instead of 36 (Lavin & Gray, 2016): input tiles and the kernel are transformed by
# small 0/±1/±½ matrices, multiplied as 16 independent [tiles, Cin] · [Cin, Cout] GEMMs, and
# transformed back. Forward and both gradients (by autodiff of the same formulation) do 2.25×
# fewer multiply-adds than the direct convolution, in GEMMs, which XLA:CPU runs at its matmul
# rate. Atrous convs tile in dilated space (a tile's rows are ``d`` apart), so no reshuffling.
# Only the rounding of the transforms' additions differs from the direct convolution: results
# agree to ~1e-6 relative in float32 and to 1e-12 in float64 (tests/test_benchmark.py).

_WINO_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))  # input transform
_WINO_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))  # kernel
_WINO_AT = ((1, 1, 1, 0), (0, 1, -1, -1))  # output transform
# Smallest channel counts taking the Winograd path (below, XLA's convolution and the per-tap
# weight gradient were as fast; benchmarks/conv_backward.py).
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


def _use_winograd(x_shape, k_shape, strides, padding, rhs_dilation, groups) -> bool:
    """Dense stride-1 3×3 convs with ≥ 64 channels each way and non-negative padding."""
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
    """Stride-1, dilation-``d`` 3×3 NHWC/HWIO conv by Winograd F(2×2, 3×3) (see above)."""
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
_conv_winograd = jax.custom_vjp(_winograd_conv, nondiff_argnums=(2, 3, 4))


def _conv_winograd_fwd(x, k, padding, d, precision):
    return _conv_winograd(x, k, padding, d, precision), (x, k)


def _conv_winograd_bwd(padding, d, precision, res, dy):
    _, vjp = jax.vjp(lambda x, k: _winograd_conv(x, k, padding, d, precision), *res)
    return vjp(dy)


_conv_winograd.defvjp(_conv_winograd_fwd, _conv_winograd_bwd)


def _tap_ranges(size, k, d, lo, out):
    """For each tap of one spatial dim: the output range ``[a, b)`` whose input is not padding."""
    return [(max(0, lo - i * d), min(out, size + lo - i * d)) for i in range(k)]


def _live_fraction(spatial, kernel, padding, rhs_dilation) -> float:
    """Share of a stride-1 conv's multiply-adds that read real input rather than padding."""
    fraction = 1.0
    for size, k, d, (lo, hi) in zip(spatial, kernel, rhs_dilation, padding):
        out = size + lo + hi - d * (k - 1)
        if out <= 0:
            return 1.0
        live = sum(max(0, b - a) for a, b in _tap_ranges(size, k, d, lo, out))
        fraction *= live / (k * out)
    return fraction


def _shifted_matmul_conv(x, k, padding, rhs_dilation, precision):
    """A stride-1 NHWC conv as one matmul per kernel tap over the outputs it really reaches.

    Exact reformulation for atrous convs whose rate is large next to the feature map (ASPP rates
    12/24/36 on 32×32 maps): taps that would multiply zero padding are skipped region by
    region, and forward and both gradients are plain matmuls (plus pads and adds).
    """
    n, h, w, _ = x.shape
    kh, kw, _, _ = k.shape
    (dh, dw), ((top, bottom), (left, right)) = rhs_dilation, padding
    ho, wo = h + top + bottom - dh * (kh - 1), w + left + right - dw * (kw - 1)
    rows = _tap_ranges(h, kh, dh, top, ho)
    cols = _tap_ranges(w, kw, dw, left, wo)
    y = None
    for i, (ra, rb) in enumerate(rows):
        for j, (ca, cb) in enumerate(cols):
            if ra >= rb or ca >= cb:
                continue
            xs = x[
                :, ra + i * dh - top : rb + i * dh - top, ca + j * dw - left : cb + j * dw - left
            ]
            part = _pointwise(xs, k[i, j], precision)
            part = jnp.pad(part, ((0, 0), (ra, ho - rb), (ca, wo - cb), (0, 0)))
            y = part if y is None else y + part
    if y is None:  # every tap reads padding only
        return jnp.zeros((n, ho, wo, k.shape[-1]), jnp.result_type(x, k))
    return y


def _depthwise_taps_conv(x, k, strides, padding, rhs_dilation):
    """Depthwise conv (channel multiplier 1) as a sum of shifted, per-channel scaled slices.

    XLA fuses it into one elementwise loop (forward and both gradients), which measured tens of
    times faster than XLA:CPU's grouped convolution with one channel per group.
    """
    n, _, _, c = x.shape
    kh, kw = k.shape[:2]
    (sh, sw), (dh, dw) = strides, rhs_dilation
    xp = jax.lax.pad(
        x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0))
    )
    ho = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    y = None
    for i in range(kh):
        for j in range(kw):
            start = (0, i * dh, j * dw, 0)
            stop = (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c)
            part = jax.lax.slice(xp, start, stop, (1, sh, sw, 1)) * k[i, j, 0]
            y = part if y is None else y + part
    return y


def _crop_dead_taps(spatial, rhs, strides, padding, rhs_dilation):
    """Drops kernel rows/columns that only ever read padding (exact: they add zeros).

    With atrous rates as large as the feature map (ASPP rate 36 on a 32×32 map) the outer taps
    of a 3×3 kernel see nothing but zero padding for every output pixel; the conv is then the
    centre tap alone. The gradient of the dropped taps is exactly zero, as before.
    """
    new_padding, starts, stops = [], [], []
    for size, k, s, d, (lo, hi) in zip(spatial, rhs.shape[:2], strides, rhs_dilation, padding):
        out = (size + lo + hi - d * (k - 1) - 1) // s + 1
        live = [
            i for i in range(k) if any(0 <= o * s + i * d - lo < size for o in range(max(out, 0)))
        ]
        if not live:
            return rhs, padding
        first, last = live[0], live[-1]
        new_lo, new_hi = lo - first * d, hi - (k - 1 - last) * d
        if new_lo < 0 or new_hi < 0:
            return rhs, padding
        new_padding.append((new_lo, new_hi))
        starts.append(first)
        stops.append(last + 1)
    if starts == [0, 0] and stops == list(rhs.shape[:2]):
        return rhs, padding
    return rhs[starts[0] : stops[0], starts[1] : stops[1]], tuple(new_padding)


def _fast_conv_interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (
        type(module) is nn.Conv
        and context.method_name == "__call__"
        and module.conv_general_dilated is None
        and module.conv_general_dilated_cls is None
    ):
        # The bound module is rebuilt on every apply, so this never leaks out of the context.
        object.__setattr__(module, "conv_general_dilated", conv_general_dilated_fast)
    return next_fun(*args, **kwargs)


def fast_conv_backward(enabled: bool | None = None):
    """Context manager: every ``nn.Conv`` traced inside uses :func:`conv_general_dilated_fast`.

    ``enabled=None`` turns it on where it was measured to help: the CPU backend.

    Parameters, names and results are unchanged, so checkpoints and weight converters keep
    working. Wrap the tracing (``jax.jit(...).lower``/first call) of a train step::

        with layers.fast_conv_backward():
            compiled = jax.jit(train_step).lower(state, batch).compile()
    """
    if enabled is None:
        enabled = jax.default_backend() == "cpu"
    return nn.intercept_methods(_fast_conv_interceptor) if enabled else contextlib.nullcontext()
