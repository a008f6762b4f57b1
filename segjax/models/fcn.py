"""Fully convolutional networks (Long, Shelhamer & Darrell 2015) and torchvision's FCN-ResNet.

**FCN-32s / 16s / 8s on VGG16** (:class:`FCN`), as in the paper and its reference Caffe nets
(``voc-fcn{32,16,8}s/net.py``): ``score_fr`` (1×1 on fc7), ``score_pool4`` / ``score_pool3``
(1×1 on pool4 / pool3), all three initialised to zero as the paper does; learnable upsampling by
transposed convolutions without bias, initialised to bilinear interpolation
(``upscore2``: 4/2, ``upscore_pool4``: 4/2, ``upscore8``: 16/8, ``upscore16``: 32/16,
``upscore``: 64/32). Two alignments:

* ``paper_alignment=True`` (faithful): conv1_1 padded by 100, valid fc6, Caffe ``crop`` layers
  with the reference offsets — 32s: 19; 16s: 5 (pool4) and 27; 8s: 5 (pool4), 9 (pool3), 31.
* ``paper_alignment=False`` (aligned): "same" convs everywhere; every upsampling extends its
  input by one edge pixel and crops ``factor + factor/2``, which is exactly bilinear
  interpolation with half-pixel centres (PyTorch ``align_corners=False``) at initialisation,
  borders included.

Either way the output has the input's height and width for any size, odd ones included.
``fixed_upsampling=True`` freezes the transposed convs (the reference code sets ``lr_mult: 0``);
``at_once_scaling=True`` scales pool4 by 0.01 and pool3 by 1e-4 before scoring
(``voc-fcn8s-atonce``). ``upsample_impl="subpixel"`` computes the same transposed convs as one
ordinary conv + depth-to-space (identical numbers; 3–9× faster forward+backward on XLA:CPU in
``benchmarks/transposed_conv.py``); the default is ``lax.conv_transpose``.

**FCN-ResNet-50/101** (:class:`FCNResNet`), as ``torchvision.models.segmentation.fcn_resnet*``:
a dilated ResNet at output stride 8, ``FCNHead`` (3×3 conv without bias → BN → ReLU →
dropout 0.1 → 1×1 conv) on layer4, an auxiliary ``FCNHead`` on layer3 (``aux=True``), bilinear
upsampling of both to the input size: the shared :class:`~segjax.models.segmenter.Segmenter`
skeleton (where ``FCNHead`` lives) with these parts. Names map to torchvision's state dict:
``backbone/…`` ↔ ``backbone.…`` (see :mod:`segjax.models.backbones.resnet`),
``classifier/conv`` ↔ ``classifier.0``, ``classifier/bn`` ↔ ``classifier.1``,
``classifier/cls`` ↔ ``classifier.4``, likewise ``aux_classifier``.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.errors import ConfigError
from segjax.models.backbones import resnet, vgg
from segjax.models.layers import BilinearConvTranspose
from segjax.models.segmenter import FCNHead, Segmenter

Dtype = Any

# Crop offsets of the reference Caffe nets (computed there by Caffe's coordinate maps).
PAPER_OFFSETS: dict[str, dict[str, int]] = {
    "32s": {"out": 19},
    "16s": {"pool4": 5, "out": 27},
    "8s": {"pool4": 5, "pool3": 9, "out": 31},
}
AT_ONCE_SCALES = {"pool4": 0.01, "pool3": 0.0001}


def _crop(x: jax.Array, offset: int, size: Sequence[int]) -> jax.Array:
    """Caffe ``crop``: ``x[:, o:o+h, o:o+w]``; errors if ``x`` is too small."""
    h, w = size
    if x.shape[1] < offset + h or x.shape[2] < offset + w:
        raise ValueError(
            f"fcn: cannot crop {h}x{w} at offset {offset} from a {x.shape[1]}x{x.shape[2]} map"
        )
    return x[:, offset : offset + h, offset : offset + w]


class FCN(nn.Module):
    """FCN-32s / FCN-16s / FCN-8s on a convolutionalised VGG16.

    Attributes:
      num_classes: output classes (21 for PASCAL VOC).
      variant: ``"32s"``, ``"16s"`` or ``"8s"``.
      paper_alignment: pad-100-and-crop alignment of the reference (default) or the aligned
        "same"-padding form (see the module docstring).
      fixed_upsampling: stop gradients to the bilinear transposed convs.
      at_once_scaling: scale pool4/pool3 by 0.01/1e-4 before scoring (FCN-8s at-once).
      upsample_impl: ``"conv_transpose"`` or ``"subpixel"`` (see
        :class:`~segjax.models.layers.BilinearConvTranspose`).
      width: VGG16 base width (64); tiny variants use fewer channels.
      fc_features: fc6/fc7 channels (4096).
      dropout_rate: dropout after fc6 and fc7.
      dtype: compute dtype.
    """

    num_classes: int
    variant: str = "8s"
    paper_alignment: bool = True
    fixed_upsampling: bool = False
    at_once_scaling: bool = False
    upsample_impl: str = "conv_transpose"
    width: int = 64
    fc_features: int = 4096
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32

    def _score(self, x: jax.Array, name: str) -> jax.Array:
        return nn.Conv(
            self.num_classes,
            (1, 1),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros,
            name=name,
        )(x)

    def _transposed(self, factor: int, name: str) -> BilinearConvTranspose:
        return BilinearConvTranspose(
            factor,
            trainable=not self.fixed_upsampling,
            impl=self.upsample_impl,
            dtype=self.dtype,
            name=name,
        )

    def _upsample(self, x: jax.Array, factor: int, name: str, offset: int, size) -> jax.Array:
        up = self._transposed(factor, name)
        if self.paper_alignment:
            return _crop(up(x), offset, size)
        # One edge pixel on each side gives every output its two bilinear neighbours; the
        # transposed conv then centres input i on output factor·i + (factor − 1)/2.
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        return _crop(up(x), factor + factor // 2, size)

    def _fuse(self, score: jax.Array, skip: jax.Array, name: str, offset: int) -> jax.Array:
        """×2-upsampled ``score`` plus the skip's score map, aligned as the variant demands."""
        if self.paper_alignment:
            # The paper crops the skip scores to the upsampled map ...
            up = self._transposed(2, name)(score)
            return up + _crop(skip, offset, up.shape[1:3])
        # ... the aligned form crops the upsampled map to the skip scores (no offset).
        return self._upsample(score, 2, name, 0, skip.shape[1:3]) + skip

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        if self.variant not in PAPER_OFFSETS:
            raise ConfigError(f"fcn: variant must be '32s', '16s' or '8s', got {self.variant!r}")
        height, width = images.shape[1:3]
        offsets = PAPER_OFFSETS[self.variant]
        feats = vgg.VGG16(
            width=self.width,
            fc_features=self.fc_features,
            paper_alignment=self.paper_alignment,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            name="backbone",
        )(images, train=train)
        score = self._score(feats["fc7"], "score_fr")
        if self.variant == "32s":
            out = self._upsample(score, 32, "upscore", offsets["out"], (height, width))
            return {"out": out.astype(jnp.float32)}

        def skip(name: str) -> jax.Array:
            x = feats[name]
            if self.at_once_scaling:
                x = x * AT_ONCE_SCALES[name]
            return self._score(x, f"score_{name}")

        score = self._fuse(score, skip("pool4"), "upscore2", offsets["pool4"])
        if self.variant == "16s":
            out = self._upsample(score, 16, "upscore16", offsets["out"], (height, width))
            return {"out": out.astype(jnp.float32)}
        score = self._fuse(score, skip("pool3"), "upscore_pool4", offsets["pool3"])
        out = self._upsample(score, 8, "upscore8", offsets["out"], (height, width))
        return {"out": out.astype(jnp.float32)}


class FCNResNet(nn.Module):
    """torchvision's ``fcn_resnet50`` / ``fcn_resnet101``.

    Attributes:
      num_classes: output classes.
      depth: ResNet depth (50 or 101; any :class:`~segjax.models.backbones.resnet.ResNet` depth
        with bottlenecks works).
      aux: build the auxiliary head on layer3 (returned as ``"aux"``).
      output_stride: 8 as torchvision; 16 or 32 for cheaper variants.
      multi_grid: layer4 dilation multipliers (all ones = torchvision).
      width: ResNet base width (64); tiny variants use fewer channels.
      stage_blocks: blocks per ResNet stage (``None`` = standard for ``depth``).
      dtype: compute dtype.
    """

    num_classes: int
    depth: int = 50
    aux: bool = True
    output_stride: int = 8
    multi_grid: Sequence[int] = (1, 1, 1)
    width: int = 64
    stage_blocks: Sequence[int] | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Runs the model on NHWC ``images``; returns ``{"out": logits[, "aux": logits]}``."""
        backbone = resnet.resnet(
            self.depth,
            output_stride=self.output_stride,
            multi_grid=self.multi_grid,
            width=self.width,
            stage_blocks=self.stage_blocks,
            dtype=self.dtype,
            name="backbone",
        )
        head = FCNHead(self.num_classes, dtype=self.dtype, name="classifier")
        aux_head = None
        if self.aux:
            aux_head = FCNHead(self.num_classes, dtype=self.dtype, name="aux_classifier")
        return Segmenter(
            backbone, head, head_features="layer4", aux_head=aux_head, aux_feature="layer3"
        )(images, train=train)


_VGG_TINY = {"width": 8, "fc_features": 32}
_RESNET_TINY = {"width": 8, "stage_blocks": (1, 1, 1, 1)}

MODELS = {
    "fcn32s_vgg16": functools.partial(FCN, variant="32s"),
    "fcn16s_vgg16": functools.partial(FCN, variant="16s"),
    "fcn8s_vgg16": functools.partial(FCN, variant="8s"),
    "fcn32s_vgg16_tiny": functools.partial(FCN, variant="32s", **_VGG_TINY),
    "fcn16s_vgg16_tiny": functools.partial(FCN, variant="16s", **_VGG_TINY),
    "fcn8s_vgg16_tiny": functools.partial(FCN, variant="8s", **_VGG_TINY),
    "fcn_resnet50": functools.partial(FCNResNet, depth=50),
    "fcn_resnet101": functools.partial(FCNResNet, depth=101),
    "fcn_resnet50_tiny": functools.partial(FCNResNet, depth=50, **_RESNET_TINY),
}
