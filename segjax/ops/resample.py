"""Transposed convolutions and pooling in the forms XLA:CPU runs fast (same numbers).

:func:`conv_transpose_subpixel` (the stride-``f`` transposed conv of FCN's bilinear upsampling
as one ordinary conv and a depth-to-space), :func:`upconv2x2` (U-Net's 2×2 stride-2 up-conv
with a matmul backward pass) and :func:`max_pool2x2` (a reshape and a max). The flax modules
that call them (``layers.BilinearConvTranspose``, ``unet.UpConv2x2``, the U-Nets) live in
``segjax.models``.
"""

import jax
import jax.numpy as jnp
from einops import rearrange

from segjax.errors import ConfigError

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_transpose_subpixel(x: jax.Array, kernel: jax.Array, factor: int) -> jax.Array:
    """The transposed conv of ``BilinearConvTranspose`` as one ordinary conv + depth-to-space.

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

    Raises:
      ValueError: ``k > 2·factor``.
    """
    k, _, c_out, c_in = kernel.shape
    f = factor
    if k > 2 * f:
        raise ValueError(f"conv_transpose_subpixel: kernel {k} > 2 * stride {f}")
    full = jnp.pad(kernel, ((0, 2 * f - k), (0, 2 * f - k), (0, 0), (0, 0)))
    # w[a, b, ci, (p, q, co)] = K[(1 − a)·f + p, (1 − b)·f + q, co, ci]
    w = full.reshape(2, f, 2, f, c_out, c_in)[::-1, :, ::-1]
    w = rearrange(w, "a p b q co ci -> a b ci (p q co)")
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = jax.lax.conv_general_dilated(
        xp, w.astype(x.dtype), (1, 1), "VALID", dimension_numbers=_NHWC
    )
    y = rearrange(y, "b h w (p q c) -> b (h p) (w q) c", p=f, q=f)  # depth-to-space
    h_out, w_out = (x.shape[1] - 1) * f + k, (x.shape[2] - 1) * f + k
    return y[:, :h_out, :w_out]


def _upconv_as_einsum(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The 2×2 stride-2 transposed convolution as one matmul and a depth-to-space.

    With kernel size equal to stride the output windows do not overlap: output pixel
    ``(2i + a, 2j + b)`` is ``x[i, j] @ kernel[1 - a, 1 - b]`` (``lax.conv_transpose`` flips
    the kernel, as a true transposed convolution does).
    """
    n, h, w, _ = x.shape
    y = jnp.einsum("nijc,abco->niajbo", x, kernel[::-1, ::-1])
    return y.reshape(n, 2 * h, 2 * w, kernel.shape[-1])


@jax.custom_vjp
def upconv2x2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """2×2 stride-2 transposed convolution (NHWC, HWIO kernel) via ``lax.conv_transpose``.

    The forward pass is ``lax.conv_transpose`` (lhs dilation). Its gradient as XLA:CPU derives it
    is a dilated convolution about 15× slower than the forward pass; the backward pass here is
    the gradient of the equal matmul form (:func:`_upconv_as_einsum`), which costs about as much
    as the forward pass. Values and gradients equal ``nn.ConvTranspose``'s within float rounding.
    """
    return jax.lax.conv_transpose(x, kernel, (2, 2), "VALID", dimension_numbers=_NHWC)


def _upconv_fwd(x, kernel):
    return upconv2x2(x, kernel), (x, kernel)


def _upconv_bwd(res, g):
    _, vjp = jax.vjp(_upconv_as_einsum, *res)
    return vjp(g)


upconv2x2.defvjp(_upconv_fwd, _upconv_bwd)


def max_pool2x2(x: jax.Array) -> jax.Array:
    """2×2 stride-2 max pool of an NHWC map with even sides, as a reshape and a max.

    Equal to ``nn.max_pool(x, (2, 2), (2, 2))``; its gradient is elementwise instead of XLA's
    select-and-scatter, about 3× faster on CPU. (Exact ties split the gradient equally
    instead of picking one; after a ReLU the only ties are zeros, whose gradient is zero.)

    Raises:
      ValueError: an odd height or width.
    """
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ConfigError(f"max_pool2x2: expected even height and width, got {h}×{w}")
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
