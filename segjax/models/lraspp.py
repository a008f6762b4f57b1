"""Lite R-ASPP (Howard et al. 2019, "Searching for MobileNetV3"), as torchvision's ``lraspp``.

The dilated MobileNetV3-Large (output stride 16) gives a low-level feature (``features.4``,
stride 8, 40 channels) and a high-level one (``features.16``, 960 channels). The head:
``cbr`` = 1×1 conv to 128 + BN + ReLU on the high feature, gated by ``scale`` = global mean →
1×1 conv (no bias) → sigmoid; bilinear upsampling to the low feature's size; logits =
``low_classifier(low) + high_classifier(gated)`` (1×1 convs with bias), then bilinear
upsampling to the input size.

``lraspp_mobilenet_v3_large``: 3,221,538 parameters for 21 classes (torchvision's figure).

Mapping to torchvision state-dict keys (kernels HWIO ↔ OIHW, BN as in ``deeplab``)::

    backbone/features_{i}/…           backbone.{i}.…   (see backbones.mobilenet)
    classifier/cbr/{conv,bn}           classifier.cbr.{0,1}
    classifier/scale/kernel            classifier.scale.1.weight
    classifier/low_classifier/*        classifier.low_classifier.*
    classifier/high_classifier/*       classifier.high_classifier.*
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.errors import ConfigError
from segjax.models import backbones
from segjax.models.layers import ConvBN, resize_bilinear

Dtype = Any


class LRASPPHead(nn.Module):
    """torchvision's ``LRASPPHead``.

    Attributes:
      num_classes: output channels.
      inter_channels: channels of the ``cbr`` branch (128).
      dtype: compute dtype.
    """

    num_classes: int
    inter_channels: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, low: jax.Array, high: jax.Array, *, train: bool) -> jax.Array:
        x = ConvBN(self.inter_channels, 1, dtype=self.dtype, name="cbr")(high, train=train)
        s = jnp.mean(high, axis=(1, 2), keepdims=True)
        s = nn.Conv(self.inter_channels, (1, 1), use_bias=False, dtype=self.dtype, name="scale")(s)
        x = resize_bilinear(x * nn.sigmoid(s), low.shape[1:3])
        low_logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="low_classifier")
        high_logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="high_classifier")
        return low_logits(low) + high_logits(x)


class LRASPP(nn.Module):
    """LR-ASPP segmentation model on a MobileNetV3-Large backbone.

    Attributes:
      num_classes: output channels.
      backbone: ``mobilenet_v3_large`` or ``mobilenet_v3_large_tiny``.
      output_stride: 16 (torchvision's dilated backbone) or 32.
      inter_channels: channels of the head's ``cbr`` branch.
      dtype: compute dtype.
    """

    num_classes: int
    backbone: str = "mobilenet_v3_large"
    output_stride: int = 16
    inter_channels: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        if not self.backbone.startswith("mobilenet_v3"):
            raise ConfigError(f"LRASPP: backbone must be a MobileNetV3 kind, got {self.backbone!r}")
        feats = backbones.extract_features(
            self.backbone, images, train=train, output_stride=self.output_stride, dtype=self.dtype
        )
        out = LRASPPHead(self.num_classes, self.inter_channels, self.dtype, name="classifier")(
            feats["low"], feats["out"], train=train
        )
        return {"out": resize_bilinear(out.astype(jnp.float32), images.shape[1:3])}


MODELS = {
    "lraspp_mobilenet_v3_large": LRASPP,
    "lraspp_mobilenet_v3_large_tiny": functools.partial(
        LRASPP, backbone="mobilenet_v3_large_tiny", inter_channels=16
    ),
}
