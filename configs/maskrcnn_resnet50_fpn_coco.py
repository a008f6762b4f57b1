"""Mask R-CNN ResNet-50-FPN for COCO, as torchvision's ``maskrcnn_resnet50_fpn`` (91 classes).

Instance segmentation of your images with torchvision's COCO weights, imported once:

    python -m segjax.weights.import_torchvision --arch maskrcnn_resnet50_fpn \\
        --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --output /ckpt/maskrcnn_r50_fpn
    python -m segjax.predict --config configs/maskrcnn_resnet50_fpn_coco.py \\
        --checkpoint /ckpt/maskrcnn_r50_fpn IMAGE_OR_FOLDER ... --output /tmp/pred

writes per image a COCO-results JSON, a 16-bit instance-id PNG and an overlay with class names
(``segjax.data.coco_names``) and scores (see ``segjax.predict``). Training on COCO, with

    python -m segjax.train --config configs/maskrcnn_resnet50_fpn_coco.py --workdir /tmp/maskrcnn

is the next issue: ``segjax.train`` does not train instance models yet (no COCO builder or
detection losses). ``:runlocal`` swaps in ``maskrcnn_tiny`` on the ``shapes`` data for smoke
tests.
"""

import ml_collections

from segjax import recipes
from segjax.config import base_config, parse_arg
from segjax.data import coco_names


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.name = "maskrcnn_resnet50_fpn"
    c.model.num_classes = coco_names.NUM_CLASSES  # torchvision's layout: label = COCO id
    # torchvision's COCO_V1 weights run their frozen BatchNorms with eps = 0 (overwrite_eps).
    c.model.kwargs = ml_collections.ConfigDict({"bn_eps": 0.0})
    c.data.name = "coco"
    c.data.class_names = coco_names.CATEGORIES
    # The batch shape the variables are initialised (and restored) with: any size gives the
    # same variables; this one is a default padded bucket of the model's transform.
    c.data.crop_size = (800, 1088)
    if args.runlocal:
        recipes.runlocal(c, model_name="maskrcnn_tiny")
        c.data.class_names = ()
    return c
