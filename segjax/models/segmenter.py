"""The semantic segmenter skeleton: backbone → head → upsample to the input → auxiliary head.

:class:`Segmenter` is the forward pass that DeepLab v2 / v3 / v3+, PSPNet and FCN-ResNet share:
the backbone returns a dict of named features, the head turns the ones it reads into logits, and
an optional auxiliary head (:class:`FCNHead` in all of them) scores an intermediate feature for
the auxiliary loss. Both logit maps are cast to float32 and bilinearly resized to the input's
height and width, so the result follows the model contract of :mod:`segjax.models`.

The skeleton owns no parameters. A model builds its parts inside its own ``@nn.compact``
``__call__`` with the names its checkpoints use (``backbone``, ``classifier``,
``aux_classifier``) and hands them over; a module created in the model's scope stays the
model's child, so the parameter paths are the model's, not ``Segmenter_0/…``. A head whose
layers sit at the model's top level (PSPNet's ``ppm`` / ``bottleneck`` / ``classifier``) is
passed as a method of the model, which builds them in the model's scope::

    class MyModel(nn.Module):
        num_classes: int

        @nn.compact
        def __call__(self, images, *, train=False):
            return Segmenter(
                backbone=resnet.resnet(50, output_stride=8, name="backbone"),
                head=FCNHead(self.num_classes, name="classifier"),
                head_features="layer4",
                aux_head=FCNHead(self.num_classes, name="aux_classifier"),
                aux_feature="layer3",
            )(images, train=train)
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import batch_norm, conv_init, resize_bilinear, same_padding

Dtype = Any


def upsample_logits(logits: jax.Array, size: Sequence[int]) -> jax.Array:
    """``logits`` as float32, bilinearly resized (half-pixel centres) to ``size`` = (H, W)."""
    return resize_bilinear(logits.astype(jnp.float32), tuple(size))


class FCNHead(nn.Module):
    """torchvision's ``FCNHead``: 3×3 conv (no bias) to C/4 → BN → ReLU → dropout → 1×1 conv.

    The classifier of FCN-ResNet and the auxiliary head of FCN-ResNet, DeepLab v3 / v3+ and
    PSPNet. Its flat names are the indices of torchvision's ``Sequential``: ``conv`` ↔ ``.0``,
    ``bn`` ↔ ``.1``, ``cls`` ↔ ``.4``.

    Attributes:
      num_classes: output channels.
      dropout_rate: dropout before the classifier (0.1 as torchvision).
      dtype: compute dtype.
    """

    num_classes: int
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.Conv(
            x.shape[-1] // 4,
            (3, 3),
            padding=same_padding(3),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=conv_init,
            name="conv",
        )(x)
        x = nn.relu(batch_norm(train, self.dtype, name="bn")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Conv(
            self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name="cls"
        )(x)


class Segmenter(nn.Module):
    """Backbone → head → logits at the input size, plus an auxiliary head when one is given.

    Attributes:
      backbone: ``backbone(images, train=…)`` → dict of features by name.
      head: ``head(*features, train=…)`` → logits, called with the backbone features named by
        ``head_features`` in that order: a module, or a method of the enclosing model whose
        layers belong at the model's top level.
      head_features: key of the backbone output the head reads, or a sequence of keys (the
        v3+ decoder reads the high- and the low-level feature).
      aux_head: ``aux_head(feature, train=…)`` → auxiliary logits; ``None`` → no ``"aux"``.
      aux_feature: key of the backbone output the auxiliary head reads.
    """

    backbone: Callable[..., dict[str, jax.Array]]
    head: Callable[..., jax.Array]
    head_features: str | Sequence[str] = "out"
    aux_head: Callable[..., jax.Array] | None = None
    aux_feature: str = "aux"

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Runs the model on NHWC ``images``; returns ``{"out": logits[, "aux": logits]}``."""
        size = images.shape[1:3]
        feats = self.backbone(images, train=train)
        keys = (self.head_features,) if isinstance(self.head_features, str) else self.head_features
        out = self.head(*(feats[k] for k in keys), train=train)
        result = {"out": upsample_logits(out, size)}
        if self.aux_head is not None:
            result["aux"] = upsample_logits(
                self.aux_head(feats[self.aux_feature], train=train), size
            )
        return result
