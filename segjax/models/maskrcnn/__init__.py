"""Instance segmentation: Mask R-CNN with a ResNet-FPN backbone, faithful to torchvision.

Modules: :mod:`.backbone` (frozen-BN ResNet + FPN), :mod:`.anchors`, :mod:`.rpn`, :mod:`.heads`,
:mod:`.postprocess`, :mod:`.transform` (host-side resize / bucketing / mask pasting) and
:mod:`.model` (the :class:`MaskRCNN` module, its output contract and the constructors), with
:func:`inference_fn` for the jitted forward pass.
"""

from segjax.models.maskrcnn.inference import inference_fn, predict_images
from segjax.models.maskrcnn.model import (
    MaskRCNN,
    maskrcnn_resnet50_fpn,
    maskrcnn_small,
    maskrcnn_tiny,
    trainable_mask,
)
from segjax.models.maskrcnn.transform import ImageTransform, paste_masks

MODELS = {
    "maskrcnn_resnet50_fpn": maskrcnn_resnet50_fpn,
    "maskrcnn_small": maskrcnn_small,
    "maskrcnn_tiny": maskrcnn_tiny,
}

__all__ = [
    "MODELS",
    "ImageTransform",
    "MaskRCNN",
    "inference_fn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_small",
    "maskrcnn_tiny",
    "paste_masks",
    "predict_images",
    "trainable_mask",
]
