"""PSPNet on dilated ResNet-50 / 101 (output stride 8, pyramid bins 1/2/3/6, aux head on layer3).

    python -m segjax.train --config configs/pspnet_voc.py:variant=resnet50 \
        --workdir /tmp/pspnet_resnet50_voc --config.init_from=/path/to/imported_backbone
    python -m segjax.train --config configs/pspnet_voc.py:variant=resnet101 \
        --workdir /tmp/pspnet_resnet101_voc --config.init_from=/path/to/imported_backbone

``variant`` (default ``resnet50``) picks the backbone.
PASCAL VOC 2012 + SBD (``voc_aug``, docs/DATASETS.md) with mmsegmentation's VOC recipe
(:func:`segjax.recipes.voc_aug`: crop 512, batch 16, 20k steps of SGD, poly lr 0.01 → 1e-4).
Start from ImageNet weights (``init_from``).
``aux`` (model kwarg) drops the auxiliary head when False.
``output_stride`` (model kwarg, 8 or 16) trades accuracy for speed and memory.
``:runlocal`` swaps in the tiny model on the built-in ``shapes`` data for a smoke test.
"""

from segjax import recipes
from segjax.config import base_config, parse_arg

VARIANTS = ("resnet50", "resnet101")


def get_config(arg=None):
    """The PSPNet VOC config; ``arg``: ``variant=resnet50|resnet101``, ``runlocal``."""
    args = parse_arg(arg, variant="resnet50", runlocal=False, choices={"variant": VARIANTS})
    c = base_config()
    c.model.name = f"pspnet_{args.variant}"
    c.model.kwargs.output_stride = 8
    c.model.kwargs.aux = True
    recipes.voc_aug(c)
    if args.runlocal:
        recipes.runlocal(c, model_name="pspnet_tiny")
    return c
