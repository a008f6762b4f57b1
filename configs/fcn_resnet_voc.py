"""FCN-ResNet-50 / 101 (torchvision's fcn_resnet50/101: dilated ResNet, OS 8, FCNHead + aux).

    python -m segjax.train --config configs/fcn_resnet_voc.py:variant=resnet50 \
        --workdir /tmp/fcn_r50_voc --config.init_from=/path/to/imported_resnet50
    python -m segjax.train --config configs/fcn_resnet_voc.py:variant=resnet101 \
        --workdir /tmp/fcn_r101_voc --config.init_from=/path/to/imported_resnet101

``variant`` (default ``resnet50``) picks the backbone.
PASCAL VOC 2012 + SBD (``voc_aug``, docs/DATASETS.md) with mmsegmentation's VOC recipe
(:func:`segjax.recipes.voc_aug`: crop 512, batch 16, 20k steps of SGD, poly lr 0.01 → 1e-4).
Published for this recipe (mmsegmentation FCN R-50-D8 / R-101-D8, 20k): 67.08 / 71.16 mIoU.
Start from ImageNet weights (``init_from``). ``aux`` (model kwarg) drops the auxiliary head
when False.
``:runlocal`` swaps in the tiny model on the built-in ``shapes`` data for a smoke test.
"""

from segjax import recipes
from segjax.config import base_config, parse_arg

VARIANTS = ("resnet50", "resnet101")


def get_config(arg=None):
    """The FCN-ResNet config; ``arg``: ``variant=resnet50|resnet101``, ``runlocal``."""
    args = parse_arg(arg, variant="resnet50", runlocal=False, choices={"variant": VARIANTS})
    c = base_config()
    c.model.name = f"fcn_{args.variant}"
    c.model.kwargs.aux = True
    c.model.kwargs.output_stride = 8
    recipes.voc_aug(c)
    if args.runlocal:
        recipes.runlocal(c, model_name="fcn_resnet50_tiny")
    return c
