"""DeepLab v1 LargeFOV (VGG16) and DeepLab v2 (ResNet-101, ASPP-v2), both at output stride 8.

    python -m segjax.train --config configs/deeplab_v1_v2_voc.py:variant=v1 \
        --workdir /tmp/deeplabv1_vgg16_voc --config.init_from=/path/to/imported_backbone
    python -m segjax.train --config configs/deeplab_v1_v2_voc.py:variant=v2 \
        --workdir /tmp/deeplabv2_resnet101_voc --config.init_from=/path/to/imported_backbone

``variant`` (default ``v1``): ``v1`` is ``deeplabv1_vgg16`` (fc6 3×3 at rate 12 with 1024
channels), ``v2`` is ``deeplabv2_resnet101`` (dilated ResNet-101, ASPP rates 6/12/18/24, summed).
PASCAL VOC 2012 + SBD (``voc_aug``, docs/DATASETS.md) with mmsegmentation's VOC recipe
(:func:`segjax.recipes.voc_aug`: crop 512, batch 16, 20k steps of SGD, poly lr 0.01 → 1e-4).
Start from ImageNet weights (``init_from``).
``output_stride`` (model kwarg, 8 or 16) trades accuracy for speed and memory.
``:runlocal`` swaps in the tiny model on the built-in ``shapes`` data for a smoke test.
"""

from segjax import recipes
from segjax.config import base_config, parse_arg

VARIANTS = ("v1", "v2")
_MODELS = {"v1": "deeplabv1_vgg16", "v2": "deeplabv2_resnet101"}


def get_config(arg=None):
    """The DeepLab v1 / v2 config; ``arg``: ``variant=v1|v2``, ``runlocal``."""
    args = parse_arg(arg, variant="v1", runlocal=False, choices={"variant": VARIANTS})
    c = base_config()
    c.model.name = _MODELS[args.variant]
    c.model.kwargs.output_stride = 8
    recipes.voc_aug(c)
    if args.runlocal:
        recipes.runlocal(c, model_name=f"deeplab{args.variant}_tiny")
    return c
