"""Backbones: feature extractors returning a dict of named stage features.

``resnet``: torchvision-structured ResNet with dilation / output stride / multi-grid.
``vgg``: VGG16 with fc6/fc7 convolutionalised (FCN).
"""

from segjax.models.backbones import resnet, vgg

__all__ = ["resnet", "vgg"]
