"""DeepLab v1 (LargeFOV), v2, v3 and v3+ (Chen et al. 2015, 2017, 2017, 2018).

Atrous convolution is ``nn.Conv(kernel_dilation=r)`` (``rhs_dilation`` of
``lax.conv_general_dilated``); depthwise-separable convolution is ``feature_group_count=C``
followed by a 1×1 conv (``layers.SeparableConvBN``). DeepLab v2, v3 and v3+ are the shared
:class:`~segjax.models.segmenter.Segmenter` skeleton (backbone → head → upsampling → auxiliary
``FCNHead``) with their own heads; v1 keeps its VGG trunk, which returns one feature map.

Models (parameter counts for 21 classes, from ``jax.eval_shape``; "+ aux" includes the FCNHead
on the stride-8/16 feature):

=================================  ===========================================  ==============
name                               what                                         parameters
=================================  ===========================================  ==============
deeplabv1_vgg16                    VGG16 LargeFOV, OS 8, fc6 3×3 rate 12 ×1024  20,505,429
deeplabv2_resnet101                ResNet-101 OS 8, ASPP-v2 rates 6/12/18/24 Σ  44,048,532
deeplabv3_resnet50                 torchvision DeepLabV3 (OS 8, 12/24/36)       42,004,074 aux
                                                                                39,638,869 w/o
deeplabv3_resnet101                torchvision DeepLabV3                        60,996,202 aux
                                                                                58,630,997 w/o
deeplabv3_mobilenet_v3_large       torchvision (dilated MobileNetV3, OS 16)     11,029,328 aux
                                                                                11,025,477 w/o
deeplabv3plus_resnet50             separable ASPP + decoder, OS 16, + aux       29,061,338
                                                                                26,696,133 w/o
deeplabv3plus_resnet101            same on ResNet-101, + aux                    48,053,466
                                                                                45,688,261 w/o
deeplabv3plus_xception65           aligned Xception-65, OS 16                   41,055,413
deeplabv3plus_mobilenetv2          MobileNetV2 (320-ch output), OS 16           2,719,813
=================================  ===========================================  ==============

The ``deeplabv3_*`` names are torchvision's ``deeplabv3_resnet50/101`` and
``deeplabv3_mobilenet_v3_large`` exactly (with ``output_stride=8``, ``multi_grid=(1, 1, 1)``
defaults for ResNet; pass ``output_stride=16, multi_grid=(1, 2, 4), head_conv=False`` for the
paper's DeepLab v3). Mapping of their Flax paths to torchvision state-dict keys (conv kernels
HWIO ↔ OIHW; BN ``scale``/``bias``/``mean``/``var`` ↔ ``weight``/``bias``/``running_mean``/
``running_var``)::

    backbone/…                            backbone.…  (see backbones.resnet / backbones.mobilenet)
    classifier/aspp/convs_{k}/{conv,bn}    classifier.0.convs.{k}.{0,1}      k = 0..3
    classifier/aspp/convs_4/{conv,bn}      classifier.0.convs.4.{1,2}        (image pooling)
    classifier/aspp/project/{conv,bn}      classifier.0.project.{0,1}
    classifier/conv/{conv,bn}              classifier.{1,2}
    classifier/out/{kernel,bias}           classifier.4.{weight,bias}
    aux_classifier/{conv,bn}               aux_classifier.{0,1}    (segmenter.FCNHead)
    aux_classifier/cls/{kernel,bias}       aux_classifier.4.{weight,bias}

For MobileNetV3 ``backbone/features_{i}/…`` ↔ ``backbone.{i}.…``.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.errors import ConfigError
from segjax.models import backbones
from segjax.models.backbones import vgg
from segjax.models.layers import ConvBN, SeparableConvBN, resize_bilinear
from segjax.models.segmenter import FCNHead, Segmenter, upsample_logits

Dtype = Any


# ----------------------------------------------------------------------------- heads


def default_rates(output_stride: int, base: Sequence[int] = (6, 12, 18)) -> tuple[int, ...]:
    """ASPP rates for ``output_stride``: ``base`` at stride 16, scaled by ``16 / output_stride``.

    Gives the papers' (6, 12, 18) at OS 16 and (12, 24, 36) at OS 8.
    """
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"deeplab: output_stride must be 8, 16 or 32, got {output_stride}")
    return tuple(max(1, r * 16 // output_stride) for r in base)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab v3; torchvision's ``ASPP``).

    Branches: 1×1 conv, one 3×3 atrous conv per rate (depthwise-separable when ``separable``),
    image pooling (global mean → 1×1 conv → broadcast); each conv + BN + ReLU. The concatenation
    is projected by a 1×1 conv + BN + ReLU and dropout.

    Attributes:
      rates: atrous rates of the 3×3 branches.
      features: channels of every branch and of the output.
      separable: depthwise-separable atrous branches (DeepLab v3+).
      dropout: dropout rate after the projection (torchvision 0.5, TF DeepLab 0.1).
      dtype: compute dtype.
    """

    rates: Sequence[int] = (12, 24, 36)
    features: int = 256
    separable: bool = False
    dropout: float = 0.5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        branches = [ConvBN(self.features, 1, dtype=self.dtype, name="convs_0")(x, train=train)]
        for i, rate in enumerate(self.rates, start=1):
            block = SeparableConvBN if self.separable else ConvBN
            branches.append(
                block(self.features, 3, dilation=rate, dtype=self.dtype, name=f"convs_{i}")(
                    x, train=train
                )
            )
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
        pooled = ConvBN(self.features, 1, dtype=self.dtype, name=f"convs_{len(self.rates) + 1}")(
            pooled, train=train
        )
        # Bilinear upsampling of a 1×1 map is a broadcast.
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], self.features)))
        y = jnp.concatenate(branches, axis=-1)
        y = ConvBN(self.features, 1, dtype=self.dtype, name="project")(y, train=train)
        return nn.Dropout(self.dropout, deterministic=not train)(y)


class DeepLabHead(nn.Module):
    """torchvision's ``DeepLabHead``: ASPP → [3×3 conv + BN + ReLU] → 1×1 classifier.

    Attributes:
      num_classes: output channels.
      rates: ASPP rates.
      features: ASPP / conv channels.
      head_conv: the extra 3×3 conv of torchvision (the paper's v3 goes straight to logits).
      separable: separable ASPP branches.
      dropout: ASPP dropout.
      dtype: compute dtype.
    """

    num_classes: int
    rates: Sequence[int] = (12, 24, 36)
    features: int = 256
    head_conv: bool = True
    separable: bool = False
    dropout: float = 0.5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = ASPP(
            tuple(self.rates), self.features, self.separable, self.dropout, self.dtype, name="aspp"
        )(x, train=train)
        if self.head_conv:
            x = ConvBN(self.features, 3, dtype=self.dtype, name="conv")(x, train=train)
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="out")(x)


def _aux_head(aux: bool, num_classes: int, dtype: Dtype) -> FCNHead | None:
    """The ``aux_classifier`` FCNHead when ``aux``; call it in the model's compact scope."""
    return FCNHead(num_classes, dtype=dtype, name="aux_classifier") if aux else None


# ----------------------------------------------------------------------------- models


class DeepLabV3(nn.Module):
    """DeepLab v3: dilated backbone → ASPP head → bilinear upsampling to the input size.

    The defaults are torchvision's ``deeplabv3_resnet50`` (output stride 8, ASPP rates 12/24/36,
    256 channels, extra 3×3 head conv, dropout 0.5, aux FCNHead on layer3).

    Attributes:
      num_classes: output channels.
      backbone: a :func:`segjax.models.backbones.create` name.
      output_stride: 8, 16 or 32.
      multi_grid: rate multipliers of the last backbone stage (paper: (1, 2, 4)).
      rates: ASPP rates; ``None`` → :func:`default_rates` of the output stride.
      aspp_features: ASPP channels.
      head_conv: torchvision's extra 3×3 conv after the ASPP.
      aux: auxiliary FCNHead (output ``"aux"``).
      dtype: compute dtype.
    """

    num_classes: int
    backbone: str = "resnet50"
    output_stride: int = 8
    multi_grid: Sequence[int] = (1, 1, 1)
    rates: Sequence[int] | None = None
    aspp_features: int = 256
    head_conv: bool = True
    aux: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Runs the model on NHWC ``images``; returns ``{"out": logits[, "aux": logits]}``."""
        backbone, roles = backbones.create(
            self.backbone,
            output_stride=self.output_stride,
            multi_grid=self.multi_grid,
            dtype=self.dtype,
        )
        rates = self.rates if self.rates is not None else default_rates(self.output_stride)
        head = DeepLabHead(
            self.num_classes,
            tuple(rates),
            self.aspp_features,
            self.head_conv,
            dtype=self.dtype,
            name="classifier",
        )
        return Segmenter(
            backbone,
            head,
            head_features=roles["out"],
            aux_head=_aux_head(self.aux, self.num_classes, self.dtype),
            aux_feature=roles["aux"],
        )(images, train=train)


class DeepLabV3Plus(nn.Module):
    """DeepLab v3+: v3 encoder + decoder with a low-level skip (Chen et al. 2018).

    Encoder: backbone → ASPP (depthwise-separable atrous branches when ``separable``, dropout
    0.1 as TF DeepLab). Decoder: low-level feature → 1×1 conv to 48 channels + BN + ReLU;
    concatenated with the ×4-upsampled encoder output; two 3×3 (separable) convs of 256 + BN +
    ReLU; 1×1 classifier; bilinear upsampling to the input size.

    Attributes:
      num_classes: output channels.
      backbone: a :func:`segjax.models.backbones.create` name.
      output_stride: 8, 16 (default) or 32.
      multi_grid: rate multipliers of the last backbone stage.
      rates: ASPP rates; ``None`` → :func:`default_rates`.
      aspp_features: ASPP and decoder channels (256).
      low_level_features: channels of the low-level projection (48).
      separable: separable ASPP and decoder convs (the paper) instead of dense ones.
      aux: auxiliary FCNHead on the backbone's ``aux`` feature (ResNet: layer3).
      dtype: compute dtype.
    """

    num_classes: int
    backbone: str = "resnet50"
    output_stride: int = 16
    multi_grid: Sequence[int] = (1, 1, 1)
    rates: Sequence[int] | None = None
    aspp_features: int = 256
    low_level_features: int = 48
    separable: bool = True
    aux: bool = False
    dtype: Dtype = jnp.float32

    def _head(self, x: jax.Array, low: jax.Array, *, train: bool) -> jax.Array:
        """ASPP on ``x``, the decoder with the ``low`` skip, the classifier: logits at stride 4.

        A method rather than a module so that ``aspp``, ``low_level_project``, ``decoder_{i}``
        and ``classifier`` stay top-level parameter paths.
        """
        rates = self.rates if self.rates is not None else default_rates(self.output_stride)
        x = ASPP(tuple(rates), self.aspp_features, self.separable, 0.1, self.dtype, name="aspp")(
            x, train=train
        )
        low = ConvBN(self.low_level_features, 1, dtype=self.dtype, name="low_level_project")(
            low, train=train
        )
        x = resize_bilinear(x, low.shape[1:3])
        x = jnp.concatenate([x, low], axis=-1)
        block = SeparableConvBN if self.separable else ConvBN
        for i in range(2):
            x = block(self.aspp_features, 3, dtype=self.dtype, name=f"decoder_{i}")(x, train=train)
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(x)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Runs the model on NHWC ``images``; returns ``{"out": logits[, "aux": logits]}``."""
        backbone, roles = backbones.create(
            self.backbone,
            output_stride=self.output_stride,
            multi_grid=self.multi_grid,
            dtype=self.dtype,
        )
        return Segmenter(
            backbone,
            self._head,
            head_features=(roles["out"], roles["low"]),
            aux_head=_aux_head(self.aux, self.num_classes, self.dtype),
            aux_feature=roles["aux"],
        )(images, train=train)


class DeepLabV2(nn.Module):
    """DeepLab v2: dilated ResNet → ASPP-v2 (Chen et al. 2017, TPAMI).

    ASPP-v2 is four parallel 3×3 atrous convs straight to class scores (with bias, no BN),
    summed. Rates are (6, 12, 18, 24) at output stride 8, scaled by ``8 / output_stride``.

    Attributes:
      num_classes: output channels.
      backbone: a :func:`segjax.models.backbones.create` name (ResNet-101 in the paper).
      output_stride: 8 (the paper) or 16.
      rates: ``None`` → the scaled paper rates.
      dtype: compute dtype.
    """

    num_classes: int
    backbone: str = "resnet101"
    output_stride: int = 8
    rates: Sequence[int] | None = None
    dtype: Dtype = jnp.float32

    def _head(self, x: jax.Array, *, train: bool) -> jax.Array:
        """ASPP-v2 on ``x``: the sum of the atrous class-score convs ``aspp_{i}`` (top level)."""
        del train  # no BN or dropout in ASPP-v2
        rates = self.rates
        if rates is None:
            rates = tuple(r * 8 // self.output_stride for r in (6, 12, 18, 24))
        return sum(
            nn.Conv(
                self.num_classes,
                (3, 3),
                padding=((r, r), (r, r)),
                kernel_dilation=(r, r),
                dtype=self.dtype,
                kernel_init=nn.initializers.normal(0.01),
                name=f"aspp_{i}",
            )(x)
            for i, r in enumerate(rates)
        )

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Runs the model on NHWC ``images``; returns ``{"out": logits}``."""
        if self.output_stride not in (8, 16):
            raise ConfigError(f"DeepLabV2: output_stride must be 8 or 16, got {self.output_stride}")
        backbone, roles = backbones.create(
            self.backbone, output_stride=self.output_stride, dtype=self.dtype
        )
        return Segmenter(backbone, self._head, head_features=roles["out"])(images, train=train)


def max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
    """3×3 max pool with padding 1 and Caffe / PyTorch ``ceil_mode`` output size."""
    if stride == 1:
        return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    pads = []
    for n in x.shape[1:3]:
        out = -(-(n - 1) // 2) + 1  # ceil((n + 2 - 3) / 2) + 1
        pads.append((1, (out - 1) * 2 + 3 - n - 1))
    return nn.max_pool(x, (3, 3), (2, 2), tuple(pads))


class LargeFOVTrunk(nn.Module):
    """DeepLab-LargeFOV's VGG16 trunk: the 13 VGG16 convs with DeepLab's pooling.

    pool1-3 are 3×3 / 2 max pools (padding 1, ceil mode), pool4 and pool5 3×3 / 1 (padding 1),
    conv5 uses rate 2, and a 3×3 / 1 average pool (``pool5a``) follows pool5, as in the
    reference Caffe prototxt. With ``output_stride=16`` pool4 keeps stride 2 and conv5 is dense.
    Conv names ``features_{i}`` follow torchvision's ``vgg16().features`` indices (0, 2, 5, …,
    28), so ImageNet VGG16 weights map one to one (see ``backbones.vgg``).

    Attributes:
      output_stride: 8 or 16.
      width: channels of the first block (64).
      dtype: compute dtype.
    """

    output_stride: int = 8
    width: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        pools, torch_index = 0, 0
        for item in vgg.VGG16_CFG:
            if item == "M":
                pools += 1
                stride = 2 if pools <= 3 or (pools == 4 and self.output_stride == 16) else 1
                x = max_pool_3x3(x, stride)
                torch_index += 1
                continue
            rate = 2 if pools == 4 and self.output_stride == 8 else 1
            x = nn.Conv(
                int(item) * self.width // 64,
                (3, 3),
                padding=((rate, rate), (rate, rate)),
                kernel_dilation=(rate, rate),
                dtype=self.dtype,
                kernel_init=vgg.conv_init,
                name=f"features_{torch_index}",
            )(x)
            x = nn.relu(x)
            torch_index += 2
        return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


class DeepLabV1(nn.Module):
    """DeepLab v1 LargeFOV on VGG16 (Chen et al. 2015).

    :class:`LargeFOVTrunk` (VGG16 convs, DeepLab's pooling, conv5 at rate 2), then fc6 as a 3×3
    conv with 1024 channels at rate 12, fc7 1×1 with 1024 (each with ReLU and dropout 0.5) and
    fc8 (1×1 to classes). Output stride 8; with ``output_stride=16`` pool4 keeps stride 2,
    conv5 is dense and fc6 uses rate 6 (same field of view). Logits are bilinearly upsampled to
    the input size.

    Attributes:
      num_classes: output channels.
      output_stride: 8 (the paper) or 16.
      width: channels of the first VGG block (64; tiny variants use 8).
      fc_features: fc6/fc7 channels (1024).
      dtype: compute dtype.
    """

    num_classes: int
    output_stride: int = 8
    width: int = 64
    fc_features: int = 1024
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        if self.output_stride not in (8, 16):
            raise ConfigError(f"DeepLabV1: output_stride must be 8 or 16, got {self.output_stride}")
        size = images.shape[1:3]
        x = LargeFOVTrunk(self.output_stride, self.width, self.dtype, name="backbone")(images)
        rate = 12 * 8 // self.output_stride
        conv = functools.partial(nn.Conv, dtype=self.dtype)
        x = conv(
            self.fc_features,
            (3, 3),
            padding=((rate, rate),) * 2,
            kernel_dilation=(rate, rate),
            name="fc6",
        )(x)
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
        x = nn.Dropout(0.5, deterministic=not train)(
            nn.relu(conv(self.fc_features, (1, 1), name="fc7")(x))
        )
        out = conv(self.num_classes, (1, 1), kernel_init=nn.initializers.normal(0.01), name="fc8")(
            x
        )
        return {"out": upsample_logits(out, size)}


# ----------------------------------------------------------------------------- registry

_TINY_HEAD = {"aspp_features": 16}

MODELS = {
    "deeplabv1_vgg16": DeepLabV1,
    "deeplabv2_resnet101": functools.partial(DeepLabV2, backbone="resnet101"),
    "deeplabv3_resnet50": functools.partial(DeepLabV3, backbone="resnet50"),
    "deeplabv3_resnet101": functools.partial(DeepLabV3, backbone="resnet101"),
    "deeplabv3_mobilenet_v3_large": functools.partial(
        DeepLabV3, backbone="mobilenet_v3_large", output_stride=16, rates=(12, 24, 36)
    ),
    "deeplabv3plus_resnet50": functools.partial(DeepLabV3Plus, backbone="resnet50", aux=True),
    "deeplabv3plus_resnet101": functools.partial(DeepLabV3Plus, backbone="resnet101", aux=True),
    "deeplabv3plus_xception65": functools.partial(DeepLabV3Plus, backbone="xception65"),
    "deeplabv3plus_mobilenetv2": functools.partial(DeepLabV3Plus, backbone="mobilenetv2"),
    # Tiny test variants (same code paths, few parameters).
    "deeplabv1_tiny": functools.partial(DeepLabV1, width=8, fc_features=16),
    "deeplabv2_tiny": functools.partial(DeepLabV2, backbone="resnet_tiny"),
    "deeplabv3_tiny": functools.partial(
        DeepLabV3, backbone="resnet_tiny", multi_grid=(1, 2, 4), **_TINY_HEAD
    ),
    "deeplabv3_mobilenet_v3_large_tiny": functools.partial(
        DeepLabV3,
        backbone="mobilenet_v3_large_tiny",
        output_stride=16,
        rates=(12, 24, 36),
        **_TINY_HEAD,
    ),
    "deeplabv3plus_tiny": functools.partial(
        DeepLabV3Plus, backbone="resnet_tiny", aux=True, low_level_features=8, **_TINY_HEAD
    ),
    "deeplabv3plus_xception65_tiny": functools.partial(
        DeepLabV3Plus, backbone="xception_tiny", low_level_features=8, **_TINY_HEAD
    ),
    "deeplabv3plus_mobilenetv2_tiny": functools.partial(
        DeepLabV3Plus, backbone="mobilenetv2_tiny", low_level_features=8, **_TINY_HEAD
    ),
}
