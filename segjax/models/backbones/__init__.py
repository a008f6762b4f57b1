"""Backbones: feature extractors returning a dict of named stage features.

``resnet``: torchvision-structured ResNet with dilation / output stride / multi-grid.
``vgg``: VGG16 with fc6/fc7 convolutionalised (FCN).
``mobilenet``: torchvision's MobileNetV2 and MobileNetV3-Large, dilated for an output stride.
``xception``: aligned Xception-65 (DeepLab v3+).

The heads that pick a backbone by name (DeepLab v2/v3/v3+, PSPNet, LR-ASPP) build it with
:func:`extract_features` (or :func:`create`) from :data:`BACKBONES`, the one name →
constructor table; FCN builds its VGG16 or ResNet itself, with the options only those have
(``paper_alignment``, ``width``, ``stage_blocks``).
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.errors import ConfigError, UnknownNameError
from segjax.models.backbones import mobilenet, resnet, vgg, xception

Dtype = Any

# Roles the heads read → keys of each family's output dict: "out" (high-level feature), "low"
# (stride-4/8 feature for the v3+ decoder and LR-ASPP) and "aux" (auxiliary head's input).
RESNET_FEATURES = {"out": "layer4", "low": "layer1", "aux": "layer3"}
XCEPTION_FEATURES = {"out": "out", "low": "low", "aux": "middle"}
MOBILENET_V2_FEATURES = {"out": "out", "low": "low", "aux": "features_13"}
MOBILENET_V3_FEATURES = {"out": "out", "low": "low", "aux": "low"}


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One named backbone.

    Attributes:
      build: ``build(output_stride, multi_grid, dtype, name)`` → the Flax module.
      features: roles ``"out"``, ``"low"``, ``"aux"`` → keys of the module's output dict.
    """

    build: Callable[[int, tuple[int, ...], Dtype, str], nn.Module]
    features: Mapping[str, str]


def _resnet(depth: int) -> Backbone:
    def build(output_stride, multi_grid, dtype, name):
        return resnet.resnet(
            depth, output_stride=output_stride, multi_grid=multi_grid, dtype=dtype, name=name
        )

    return Backbone(build, RESNET_FEATURES)


def _resnet_tiny(output_stride, multi_grid, dtype, name):
    # One layer4 block per multi-grid entry, since a multi-grid rate is given per block.
    blocks = (1, 1, 1, max(1, len(multi_grid)))
    return resnet.resnet_tiny(
        output_stride=output_stride,
        stage_blocks=blocks,
        multi_grid=multi_grid,
        dtype=dtype,
        name=name,
    )


def _xception(width_mult: float, middle_units: int) -> Backbone:
    def build(output_stride, multi_grid, dtype, name):
        return xception.Xception65(
            output_stride, multi_grid, width_mult, middle_units, dtype=dtype, name=name
        )

    return Backbone(build, XCEPTION_FEATURES)


def _mobilenet_v2(width_mult: float) -> Backbone:
    def build(output_stride, multi_grid, dtype, name):
        del multi_grid  # MobileNets have no multi-grid stage.
        return mobilenet.MobileNetV2(output_stride, width_mult, dtype=dtype, name=name)

    return Backbone(build, MOBILENET_V2_FEATURES)


def _mobilenet_v3_large(width_mult: float) -> Backbone:
    def build(output_stride, multi_grid, dtype, name):
        del multi_grid
        if output_stride not in (16, 32):
            raise ConfigError(
                f"mobilenet_v3_large: output_stride must be 16 (dilated) or 32 as in "
                f"torchvision, got {output_stride}"
            )
        return mobilenet.MobileNetV3Large(output_stride == 16, width_mult, dtype=dtype, name=name)

    return Backbone(build, MOBILENET_V3_FEATURES)


BACKBONES: dict[str, Backbone] = {
    "resnet50": _resnet(50),
    "resnet101": _resnet(101),
    "resnet_tiny": Backbone(_resnet_tiny, RESNET_FEATURES),
    "xception65": _xception(1.0, 16),
    "xception_tiny": _xception(0.125, 2),
    "mobilenetv2": _mobilenet_v2(1.0),
    "mobilenetv2_tiny": _mobilenet_v2(0.25),
    "mobilenet_v3_large": _mobilenet_v3_large(1.0),
    "mobilenet_v3_large_tiny": _mobilenet_v3_large(0.25),
}
"""Backbone name → :class:`Backbone`; the ``_tiny`` entries are few-channel test variants."""


def names() -> list[str]:
    """Every backbone name :func:`create` accepts, sorted."""
    return sorted(BACKBONES)


def create(
    kind: str,
    *,
    output_stride: int,
    multi_grid: Sequence[int] = (1, 1, 1),
    dtype: Dtype = jnp.float32,
    name: str = "backbone",
) -> tuple[nn.Module, Mapping[str, str]]:
    """Builds the dilated backbone registered as ``kind``.

    Args:
      kind: a name from :func:`names`.
      output_stride: 8, 16 or 32 (MobileNetV3: 16 or 32, torchvision's ``dilated`` flag).
      multi_grid: rate multipliers of the last stage (ResNet, Xception; MobileNets ignore it).
      dtype: compute dtype.
      name: Flax name of the module.

    Returns:
      ``(module, features)``: ``features`` maps the roles ``"out"``, ``"low"`` and ``"aux"`` to
      keys of the module's output dict.

    Raises:
      ValueError: unknown ``kind`` (the message lists the known ones) or an output stride the
        backbone does not support.
    """
    if kind not in BACKBONES:
        raise UnknownNameError(f"unknown backbone {kind!r}; known backbones: {', '.join(names())}")
    spec = BACKBONES[kind]
    return spec.build(output_stride, tuple(multi_grid), dtype, name), spec.features


def extract_features(
    kind: str,
    images: jax.Array,
    *,
    train: bool,
    output_stride: int,
    multi_grid: Sequence[int] = (1, 1, 1),
    dtype: Dtype = jnp.float32,
) -> dict[str, jax.Array]:
    """Runs backbone ``kind`` on ``images`` as the calling model's ``backbone`` submodule.

    Call it inside the model's ``@nn.compact`` ``__call__``. Arguments as for :func:`create`.

    Returns:
      The features by role: ``"out"``, ``"low"`` and ``"aux"``.
    """
    module, features = create(kind, output_stride=output_stride, multi_grid=multi_grid, dtype=dtype)
    outputs = module(images, train=train)
    return {role: outputs[key] for role, key in features.items()}


__all__ = [
    "BACKBONES",
    "Backbone",
    "create",
    "extract_features",
    "mobilenet",
    "names",
    "resnet",
    "vgg",
    "xception",
]
