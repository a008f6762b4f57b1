"""PSPNet (Zhao et al. 2017): pyramid pooling on a dilated ResNet, with an auxiliary head.

Backbone: torchvision-structured ResNet at output stride 8 (layer3 and layer4 dilated; the
paper's deep 3×3 stem is not used, as in mmsegmentation's ``ResNetV1c``-free configs).
Pyramid pooling module (``ppm``): adaptive average pooling to 1×1, 2×2, 3×3 and 6×6 bins
(PyTorch's ``AdaptiveAvgPool2d`` bin edges, exact for any size), each followed by a 1×1 conv to
``C/4`` channels + BN + ReLU and bilinear upsampling; concatenated with the feature, then a
3×3 conv to 512 + BN + ReLU (``bottleneck``), dropout 0.1 and the 1×1 classifier. The
auxiliary ``FCNHead`` sits on layer3 (1024 → 256 → classes); logits are upsampled to the input.
The forward pass is the shared :class:`~segjax.models.segmenter.Segmenter` skeleton; the
pyramid head's layers stay top-level parameter paths (``ppm``, ``bottleneck``, ``classifier``).

Parameters for 21 classes (``jax.eval_shape``): ``pspnet_resnet50`` 48,957,802 with aux
(46,592,597 without); ``pspnet_resnet101`` 67,949,930 (65,584,725).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models import backbones
from segjax.models.layers import ConvBN, resize_bilinear
from segjax.models.segmenter import FCNHead, Segmenter

Dtype = Any


def adaptive_pool_matrix(size: int, bins: int) -> np.ndarray:
    """Averaging matrix ``[bins, size]`` of PyTorch's adaptive average pooling along one axis.

    Bin ``i`` averages ``[floor(i·size/bins), ceil((i+1)·size/bins))``; bins may overlap when
    ``size`` is not a multiple of ``bins`` and repeat inputs when ``size < bins``.
    """
    m = np.zeros((bins, size), np.float32)
    for i in range(bins):
        start = (i * size) // bins
        end = -((-(i + 1) * size) // bins)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, bins: int) -> jax.Array:
    """``AdaptiveAvgPool2d(bins)`` on NHWC ``x`` → ``[B, bins, bins, C]``."""
    ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], bins), x.dtype)
    pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], bins), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", ph, x, pw)


class PyramidPooling(nn.Module):
    """Pyramid pooling module: pooled branches upsampled and concatenated with the input.

    Attributes:
      bins: pooled grid sizes.
      features: channels per branch; ``None`` → input channels / number of bins.
      dtype: compute dtype.
    """

    bins: Sequence[int] = (1, 2, 3, 6)
    features: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        features = self.features or x.shape[-1] // len(self.bins)
        outs = [x]
        for i, b in enumerate(self.bins):
            y = ConvBN(features, 1, dtype=self.dtype, name=f"stages_{i}")(
                adaptive_avg_pool(x, b), train=train
            )
            outs.append(resize_bilinear(y, x.shape[1:3]))
        return jnp.concatenate(outs, axis=-1)


class PSPNet(nn.Module):
    """PSPNet on a dilated backbone.

    Attributes:
      num_classes: output channels.
      backbone: a :func:`segjax.models.backbones.create` name (ResNet-50/101 in the paper).
      output_stride: 8 (the paper) or 16.
      bins: pyramid bins.
      features: channels of the bottleneck conv after pooling (512).
      aux: auxiliary FCNHead on the backbone's ``aux`` feature (layer3).
      dtype: compute dtype.
    """

    num_classes: int
    backbone: str = "resnet50"
    output_stride: int = 8
    bins: Sequence[int] = (1, 2, 3, 6)
    features: int = 512
    aux: bool = True
    dtype: Dtype = jnp.float32

    def _head(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Pyramid pooling → 3×3 bottleneck → dropout → 1×1 classifier, in the model's scope."""
        x = PyramidPooling(tuple(self.bins), dtype=self.dtype, name="ppm")(x, train=train)
        x = ConvBN(self.features, 3, dtype=self.dtype, name="bottleneck")(x, train=train)
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(x)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Runs the model on NHWC ``images``; returns ``{"out": logits[, "aux": logits]}``."""
        backbone, roles = backbones.create(
            self.backbone, output_stride=self.output_stride, dtype=self.dtype
        )
        aux_head = None
        if self.aux:
            aux_head = FCNHead(self.num_classes, dtype=self.dtype, name="aux_classifier")
        return Segmenter(
            backbone,
            self._head,
            head_features=roles["out"],
            aux_head=aux_head,
            aux_feature=roles["aux"],
        )(images, train=train)


MODELS = {
    "pspnet_resnet50": functools.partial(PSPNet, backbone="resnet50"),
    "pspnet_resnet101": functools.partial(PSPNet, backbone="resnet101"),
    "pspnet_tiny": functools.partial(PSPNet, backbone="resnet_tiny", features=16),
}
