"""DeepLab v3 as torchvision builds it: deeplabv3_resnet50 / resnet101 / mobilenet_v3_large.

    python -m segjax.train --config configs/deeplabv3_voc.py:variant=resnet50 \
        --workdir /tmp/deeplabv3_resnet50_voc --config.init_from=/path/to/imported_backbone
    python -m segjax.train --config configs/deeplabv3_voc.py:variant=resnet101 \
        --workdir /tmp/deeplabv3_resnet101_voc --config.init_from=/path/to/imported_backbone
    python -m segjax.train --config configs/deeplabv3_voc.py:variant=mobilenet_v3_large \
        --workdir /tmp/deeplabv3_mobilenet_v3_large_voc \
        --config.init_from=/path/to/imported_backbone

``variant`` (default ``resnet50``) picks the backbone: the ResNets at output stride 8 with ASPP
12/24/36 and an aux FCNHead; MobileNetV3-Large dilated to output stride 16.
PASCAL VOC 2012 + SBD (``voc_aug``, docs/DATASETS.md) with mmsegmentation's VOC recipe
(:func:`segjax.recipes.voc_aug`: crop 512, batch 16, 20k steps of SGD, poly lr 0.01 → 1e-4).
Published: mmsegmentation DeepLabV3 R-50-D8 / R-101-D8, 20k: 76.17 / 78.70 mIoU.
Start from ImageNet weights (``init_from``).
For the ResNets, ``--config.model.kwargs.output_stride=16
--config.model.kwargs.multi_grid='(1,2,4)' --config.model.kwargs.head_conv=False`` gives the
paper's DeepLab v3.
``aux`` (model kwarg) drops the auxiliary head when False.
``output_stride`` (model kwarg; 8 or 16 for the ResNets, 16 or 32 for MobileNetV3) trades
accuracy for speed and memory.
``:runlocal`` swaps in the tiny model on the built-in ``shapes`` data for a smoke test.
"""

from segjax import recipes
from segjax.config import base_config, parse_arg

VARIANTS = ("resnet50", "resnet101", "mobilenet_v3_large")


def get_config(arg=None):
    """The DeepLab v3 config; ``arg``: ``variant=`` one of VARIANTS, ``runlocal``."""
    args = parse_arg(arg, variant="resnet50", runlocal=False, choices={"variant": VARIANTS})
    c = base_config()
    c.model.name = f"deeplabv3_{args.variant}"
    if args.variant == "mobilenet_v3_large":
        c.model.kwargs.output_stride = 16
        tiny_model = "deeplabv3_mobilenet_v3_large_tiny"
    else:
        c.model.kwargs.output_stride = 8
        c.model.kwargs.multi_grid = (1, 1, 1)
        c.model.kwargs.head_conv = True
        tiny_model = "deeplabv3_tiny"
    c.model.kwargs.aux = True
    recipes.voc_aug(c)
    if args.runlocal:
        recipes.runlocal(c, model_name=tiny_model)
    return c
