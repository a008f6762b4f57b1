"""Shared building blocks: conv + norm + activation, separable and atrous convs, resize,
bilinear-initialised transposed convolution.

All blocks are NHWC. ``dtype`` is the compute dtype; parameters stay float32. Architecture
only: the convolutions are plain ``nn.Conv`` / ``lax`` calls, and how XLA:CPU runs them fast
lives in :mod:`segjax.xla_cpu` (applied at every jit site by ``segjax.runtime.jit``);
``BilinearConvTranspose``'s ``impl="subpixel"`` calls the model op
:func:`segjax.ops.resample.conv_transpose_subpixel`.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.errors import ConfigError
from segjax.ops.resample import conv_transpose_subpixel

Dtype = Any

# torchvision's BatchNorm2d: momentum 0.1 (flax: 1 - 0.1), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torchvision's conv initialisation (ResNet, VGG, MobileNet): kaiming_normal_(mode="fan_out",
# nonlinearity="relu").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


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

    torchvision's ``Conv2dNormActivation``: padding ``d·(k − 1) / 2``, no bias, He (fan-out)
    initialisation; the submodules ``conv`` and ``bn`` are its torch indices ``.0`` and ``.1``.
    Atrous convolution goes through ``kernel_dilation`` (``rhs_dilation`` of
    ``lax.conv_general_dilated``); depthwise convolution through ``feature_group_count``.

    Attributes:
      features: output channels.
      kernel_size: k of the k×k kernel.
      strides: stride.
      dilation: atrous rate (padding grows with it, so the size only follows the stride).
      groups: ``feature_group_count`` (the input channels for a depthwise conv).
      use_bias: a conv bias (off: the BatchNorm's bias replaces it).
      use_norm: the BatchNorm (off: a bare conv, still named ``conv``).
      act: activation after the norm; ``None`` for a linear unit.
      dtype: compute dtype.
      bn_momentum: flax BatchNorm momentum (torchvision's MobileNetV3: 0.99).
      bn_epsilon: BatchNorm epsilon (torchvision's MobileNetV3: 1e-3).
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
    bn_momentum: float = BN_MOMENTUM
    bn_epsilon: float = BN_EPSILON

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
            kernel_init=conv_init,
            name="conv",
        )(x)
        if self.use_norm:
            x = batch_norm(
                train, self.dtype, name="bn", momentum=self.bn_momentum, epsilon=self.bn_epsilon
            )(x)
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
        ``"subpixel"`` (:func:`segjax.ops.resample.conv_transpose_subpixel`, same result,
        faster on CPU).
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
            raise ConfigError(
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
