"""DeepLab v3+ on ResNet-50 / 101, aligned Xception-65 or MobileNetV2: separable ASPP, decoder.

    python -m segjax.train --config configs/deeplabv3plus_voc.py:variant=resnet50 \
        --workdir /tmp/deeplabv3plus_resnet50_voc --config.init_from=/path/to/imported_backbone
    python -m segjax.train --config configs/deeplabv3plus_voc.py:variant=resnet101 \
        --workdir /tmp/deeplabv3plus_resnet101_voc --config.init_from=/path/to/imported_backbone
    python -m segjax.train --config configs/deeplabv3plus_voc.py:variant=xception65 \
        --workdir /tmp/deeplabv3plus_xception65_voc --config.init_from=/path/to/imported_backbone
    python -m segjax.train --config configs/deeplabv3plus_voc.py:variant=mobilenetv2 \
        --workdir /tmp/deeplabv3plus_mobilenetv2_voc \
        --config.init_from=/path/to/imported_backbone

``variant`` (default ``resnet50``) picks the backbone, all at output stride 16; the ResNets add an
aux head on layer3. PASCAL VOC 2012 + SBD (``voc_aug``, docs/DATASETS.md) with mmsegmentation's
VOC recipe (:func:`segjax.recipes.voc_aug`: crop 512, batch 16, 40k steps of SGD, poly lr
0.01 → 1e-4).
Published: mmsegmentation DeepLabV3+ R-50-D8 / R-101-D8, i.e. at output stride 8
(``--config.model.kwargs.output_stride=8``), 40k: 76.81 / 78.62 mIoU; Xception-65 82.20 mIoU
at OS 16 (TF DeepLab model zoo, with COCO pre-training and its own recipe, so not directly
comparable). Start from ImageNet weights (``init_from``).
``aux`` (model kwarg, ResNets) drops the auxiliary head when False.
``output_stride`` (model kwarg, 8 or 16) trades accuracy for speed and memory.
``:runlocal`` swaps in the tiny model on the built-in ``shapes`` data for a smoke test.
"""

from segjax import recipes
from segjax.config import base_config, parse_arg

VARIANTS = ("resnet50", "resnet101", "xception65", "mobilenetv2")


def get_config(arg=None):
    """The DeepLab v3+ VOC config; ``arg``: ``variant=`` one of VARIANTS, ``runlocal``."""
    args = parse_arg(arg, variant="resnet50", runlocal=False, choices={"variant": VARIANTS})
    c = base_config()
    c.model.name = f"deeplabv3plus_{args.variant}"
    c.model.kwargs.output_stride = 16
    if args.variant.startswith("resnet"):
        c.model.kwargs.aux = True
        tiny_model = "deeplabv3plus_tiny"
    else:
        tiny_model = f"deeplabv3plus_{args.variant}_tiny"
    recipes.voc_aug(c, num_steps=40_000)
    if args.runlocal:
        recipes.runlocal(c, model_name=tiny_model)
    return c
