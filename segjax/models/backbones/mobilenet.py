"""MobileNetV2 and MobileNetV3-Large feature extractors, structured as torchvision builds them.

Both return a dict of named features so segmentation heads can pick the low- and high-level maps.
Atrous convolution replaces striding once the requested output stride is reached.

Mapping to torchvision state-dict keys (mechanical): a Flax path ``a/b_3/c`` is the torch key
``a.b.3.c``; inside a conv + norm unit (:class:`~segjax.models.layers.ConvBN`, torchvision's
``Conv2dNormActivation``) ``conv`` is ``.0`` and ``bn`` is ``.1``;
leaves: ``kernel`` → ``weight`` (HWIO → OIHW), ``bias`` → ``bias``, BatchNorm ``scale`` →
``weight``, ``bias`` → ``bias``, batch_stats ``mean``/``var`` → ``running_mean``/``running_var``.

MobileNetV2 (``torchvision.models.mobilenet_v2().features``)::

    features.0.{0,1}                     features_0/{conv,bn}
    features.{i}.conv.{j}.{0,1}          features_{i}/conv_{j}/{conv,bn}   (expand, depthwise)
    features.{i}.conv.{n}.weight         features_{i}/conv_{n}/kernel      (1×1 projection)
    features.{i}.conv.{n+1}.*            features_{i}/conv_{n+1}/*         (its BatchNorm)
    features.18.{0,1}                    features_18/{conv,bn}              (only if include_last)

MobileNetV3-Large (``torchvision.models.mobilenet_v3_large(dilated=...).features``)::

    features.0.{0,1}                     features_0/{conv,bn}
    features.{i}.block.{j}.{0,1}         features_{i}/block_{j}/{conv,bn}
    features.{i}.block.{j}.fc{1,2}.*     features_{i}/block_{j}/fc{1,2}/*  (squeeze-excitation)
    features.16.{0,1}                    features_16/{conv,bn}

Parameter counts (features only, no ImageNet classifier): MobileNetV3-Large 2,971,952;
MobileNetV2 up to ``features.17`` (320 channels, as DeepLab v3+ uses it) 1,811,712, with
``features.18`` 2,223,872.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.errors import ConfigError
from segjax.models.layers import ConvBN, batch_norm, conv_init

Dtype = Any

# torchvision's MobileNetV3 uses BatchNorm2d(eps=0.001, momentum=0.01); flax momentum = 1 - 0.01.
V3_BN_MOMENTUM = 0.99
V3_BN_EPSILON = 1e-3


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: round ``value`` to a multiple of ``divisor``.

    The result never drops below 90 % of ``value`` (it is bumped up by ``divisor`` if it would).
    """
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def relu6(x: jax.Array) -> jax.Array:
    """ReLU6 (min(max(x, 0), 6))."""
    return jnp.clip(x, 0, 6)


# ----------------------------------------------------------------------------- MobileNetV2


class InvertedResidualV2(nn.Module):
    """MobileNetV2 inverted residual: [1×1 expand] → 3×3 depthwise (atrous) → 1×1 linear."""

    in_channels: int
    out_channels: int
    strides: int
    dilation: int
    expand_ratio: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        hidden = int(round(self.in_channels * self.expand_ratio))
        y, j = x, 0
        if self.expand_ratio != 1:
            y = ConvBN(hidden, 1, act=relu6, dtype=self.dtype, name=f"conv_{j}")(y, train=train)
            j += 1
        y = ConvBN(
            hidden,
            3,
            self.strides,
            self.dilation,
            groups=hidden,
            act=relu6,
            dtype=self.dtype,
            name=f"conv_{j}",
        )(y, train=train)
        y = nn.Conv(
            self.out_channels,
            (1, 1),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=conv_init,
            name=f"conv_{j + 1}",
        )(y)
        y = batch_norm(train, self.dtype, name=f"conv_{j + 2}")(y)
        if self.strides == 1 and self.in_channels == self.out_channels:
            y = x + y
        return y


# (expand ratio t, channels c, repeats n, stride s) — torchvision / the MobileNetV2 paper.
MOBILENET_V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """MobileNetV2 features (torchvision layout) with an output stride.

    Once the running stride reaches ``output_stride``, strided stages run at stride 1 and the
    dilation of the following depthwise convs grows by the skipped stride (the first block of
    such a stage keeps the previous dilation, as torchvision's ResNet does).

    Attributes:
      output_stride: 8, 16 or 32.
      width_mult: channel multiplier (torchvision's ``width_mult``).
      include_last: also run ``features.18`` (1×1 conv to 1280 channels); DeepLab v3+ omits it.
      dtype: compute dtype.

    Returns (``__call__``): dict with ``"low"`` (output of ``features.3``, stride 4, 24 channels
    at width 1), ``"out"`` (last feature map: 320 channels, or 1280 with ``include_last``) and
    every ``"features_{i}"``.
    """

    output_stride: int = 32
    width_mult: float = 1.0
    include_last: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        if self.output_stride not in (8, 16, 32):
            raise ConfigError(
                f"MobileNetV2: output_stride must be 8, 16 or 32, got {self.output_stride}"
            )
        channels = make_divisible(32 * self.width_mult)
        x = ConvBN(channels, 3, 2, act=relu6, dtype=self.dtype, name="features_0")(
            x.astype(self.dtype), train=train
        )
        feats = {"features_0": x}
        index, current_stride, dilation = 1, 2, 1
        for t, c, n, s in MOBILENET_V2_SETTING:
            out_channels = make_divisible(c * self.width_mult)
            previous_dilation = dilation
            if current_stride == self.output_stride:
                stride, dilation = 1, dilation * s
            else:
                stride, current_stride = s, current_stride * s
            for i in range(n):
                x = InvertedResidualV2(
                    channels,
                    out_channels,
                    stride if i == 0 else 1,
                    previous_dilation if i == 0 else dilation,
                    t,
                    dtype=self.dtype,
                    name=f"features_{index}",
                )(x, train=train)
                feats[f"features_{index}"] = x
                channels = out_channels
                index += 1
        if self.include_last:
            last = make_divisible(1280 * max(1.0, self.width_mult))
            x = ConvBN(last, 1, act=relu6, dtype=self.dtype, name=f"features_{index}")(
                x, train=train
            )
            feats[f"features_{index}"] = x
        feats["low"] = feats["features_3"]
        feats["out"] = x
        return feats


# ----------------------------------------------------------------------------- MobileNetV3


def hardswish(x: jax.Array) -> jax.Array:
    """x · ReLU6(x + 3) / 6 (torch.nn.Hardswish)."""
    return x * relu6(x + 3.0) / 6.0


def hardsigmoid(x: jax.Array) -> jax.Array:
    """ReLU6(x + 3) / 6 (torch.nn.Hardsigmoid)."""
    return relu6(x + 3.0) / 6.0


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation`` with MobileNetV3's hard-sigmoid gate."""

    squeeze_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(nn.Conv(self.squeeze_channels, (1, 1), dtype=self.dtype, name="fc1")(s))
        s = nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name="fc2")(s)
        return x * hardsigmoid(s)


@dataclasses.dataclass(frozen=True)
class BneckConfig:
    """One MobileNetV3 bottleneck (torchvision's ``InvertedResidualConfig``)."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int
    dilation: int


class InvertedResidualV3(nn.Module):
    """MobileNetV3 bottleneck: [1×1 expand] → k×k depthwise → [SE] → 1×1 linear (+ residual)."""

    cfg: BneckConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c = self.cfg
        act = hardswish if c.use_hs else nn.relu
        unit = dict(bn_momentum=V3_BN_MOMENTUM, bn_epsilon=V3_BN_EPSILON, dtype=self.dtype)
        y, j = x, 0
        if c.expanded != c.in_channels:
            y = ConvBN(c.expanded, 1, act=act, name=f"block_{j}", **unit)(y, train=train)
            j += 1
        # torchvision: a dilated block never strides.
        stride = 1 if c.dilation > 1 else c.stride
        y = ConvBN(
            c.expanded,
            c.kernel,
            stride,
            c.dilation,
            groups=c.expanded,
            act=act,
            name=f"block_{j}",
            **unit,
        )(y, train=train)
        j += 1
        if c.use_se:
            squeeze = make_divisible(c.expanded // 4, 8)
            y = SqueezeExcitation(squeeze, dtype=self.dtype, name=f"block_{j}")(y)
            j += 1
        y = ConvBN(c.out_channels, 1, act=None, name=f"block_{j}", **unit)(y, train=train)
        if c.stride == 1 and c.in_channels == c.out_channels:
            y = x + y
        return y


def mobilenet_v3_large_config(
    width_mult: float = 1.0, dilated: bool = False, reduced_tail: bool = False
) -> tuple[list[BneckConfig], int]:
    """torchvision's ``_mobilenet_v3_conf("mobilenet_v3_large", ...)`` bottleneck list.

    Returns:
      (bottleneck configs, channels of the last 1×1 conv ``features.16``).
    """
    div = 2 if reduced_tail else 1
    dil = 2 if dilated else 1

    def b(cin, k, exp, cout, se, act, s, d):
        ch = lambda v: make_divisible(v * width_mult, 8)
        return BneckConfig(ch(cin), k, ch(exp), ch(cout), se, act == "HS", s, d)

    cfgs = [
        b(16, 3, 16, 16, False, "RE", 1, 1),
        b(16, 3, 64, 24, False, "RE", 2, 1),  # C1
        b(24, 3, 72, 24, False, "RE", 1, 1),
        b(24, 5, 72, 40, True, "RE", 2, 1),  # C2
        b(40, 5, 120, 40, True, "RE", 1, 1),
        b(40, 5, 120, 40, True, "RE", 1, 1),
        b(40, 3, 240, 80, False, "HS", 2, 1),  # C3
        b(80, 3, 200, 80, False, "HS", 1, 1),
        b(80, 3, 184, 80, False, "HS", 1, 1),
        b(80, 3, 184, 80, False, "HS", 1, 1),
        b(80, 3, 480, 112, True, "HS", 1, 1),
        b(112, 3, 672, 112, True, "HS", 1, 1),
        b(112, 5, 672, 160 // div, True, "HS", 2, dil),  # C4
        b(160 // div, 5, 960 // div, 160 // div, True, "HS", 1, dil),
        b(160 // div, 5, 960 // div, 160 // div, True, "HS", 1, dil),
    ]
    return cfgs, 6 * cfgs[-1].out_channels


class MobileNetV3Large(nn.Module):
    """MobileNetV3-Large features exactly as torchvision's ``mobilenet_v3_large().features``.

    ``dilated=True`` is torchvision's segmentation variant: the last stage (C4, ``features.13``
    onwards) runs at stride 1 with dilation 2, so the output stride is 16.

    Attributes:
      dilated: torchvision's ``dilated`` flag (output stride 16 instead of 32).
      width_mult: channel multiplier (tiny test variants use 0.25).
      dtype: compute dtype.

    Returns (``__call__``): dict with every ``"features_{i}"`` (i = 0..16), ``"low"`` =
    ``features_4`` (C2, stride 8, 40 channels: torchvision's ``stage_indices[-4]``) and ``"out"`` =
    ``features_16`` (960 channels).
    """

    dilated: bool = False
    width_mult: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        cfgs, last = mobilenet_v3_large_config(self.width_mult, self.dilated)
        unit = dict(bn_momentum=V3_BN_MOMENTUM, bn_epsilon=V3_BN_EPSILON, dtype=self.dtype)
        x = ConvBN(cfgs[0].in_channels, 3, 2, act=hardswish, name="features_0", **unit)(
            x.astype(self.dtype), train=train
        )
        feats = {"features_0": x}
        for i, cfg in enumerate(cfgs, start=1):
            x = InvertedResidualV3(cfg, dtype=self.dtype, name=f"features_{i}")(x, train=train)
            feats[f"features_{i}"] = x
        i = len(cfgs) + 1
        x = ConvBN(last, 1, act=hardswish, name=f"features_{i}", **unit)(x, train=train)
        feats[f"features_{i}"] = x
        # torchvision: stage_indices = [0] + strided blocks + [last]; low = stage_indices[-4].
        strided = [k for k, c in enumerate(cfgs, start=1) if c.stride > 1]
        stage_indices = [0, *strided, i]
        feats["low"] = feats[f"features_{stage_indices[-4]}"]
        feats["out"] = x
        return feats
