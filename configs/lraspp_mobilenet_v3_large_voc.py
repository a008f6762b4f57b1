"""LR-ASPP on MobileNetV3-Large, torchvision's lraspp_mobilenet_v3_large (dilated, OS 16).

    python -m segjax.train --config configs/lraspp_mobilenet_v3_large_voc.py \
        --workdir /tmp/lraspp_mobilenet_v3_large_voc \
        --config.init_from=/path/to/imported_backbone

PASCAL VOC 2012 + SBD (``voc_aug``, docs/DATASETS.md) with mmsegmentation's VOC recipe
(:func:`segjax.recipes.voc_aug`: crop 512, batch 16, 20k steps of SGD, poly lr 0.01 → 1e-4).
Start from ImageNet weights (``init_from``).
``output_stride`` (model kwarg, 16 or 32) trades accuracy for speed and memory.
``:runlocal`` swaps in the tiny model on the built-in ``shapes`` data for a smoke test.
"""

from segjax import recipes
from segjax.config import base_config, parse_arg


def get_config(arg=None):
    """The LR-ASPP config; ``arg``: ``runlocal``."""
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.name = "lraspp_mobilenet_v3_large"
    c.model.kwargs.output_stride = 16
    recipes.voc_aug(c)
    if args.runlocal:
        recipes.runlocal(c, model_name="lraspp_mobilenet_v3_large_tiny")
    return c
