"""DeepLab v3+ on ResNet-50 for Cityscapes (19 train ids), mmsegmentation's 512×1024 recipe.

    python -m segjax.train --config configs/deeplabv3plus_resnet50_cityscapes.py \
        --workdir /tmp/deeplabv3plus_resnet50_cityscapes \
        --config.data.manual_dir=/data/cityscapes_archives \
        --config.init_from=/path/to/imported_resnet50

Cityscapes needs a manual download (``leftImg8bit_trainvaltest.zip`` and
``gtFine_trainvaltest.zip`` in ``manual_dir``; docs/DATASETS.md). Recipe
(:func:`segjax.recipes.cityscapes`): crop 512×1024, scale 0.5–2.0, photometric distortion,
cat_max_ratio 0.75, SGD 0.9, lr 0.01 → 1e-4 (poly 0.9), weight decay 5e-4, batch 8, 80k steps,
auxiliary loss weight 0.4, output stride 8.
Validation runs on the full 1024×2048 images; ``--config.eval.mode`` is not needed, use
``python -m segjax.evaluate --mode slide`` for sliding-window evaluation.
``:runlocal`` swaps in the tiny model on the built-in ``shapes`` data for a smoke test.
"""

from segjax import recipes
from segjax.config import base_config, parse_arg


def get_config(arg=None):
    """The DeepLab v3+ Cityscapes config; ``arg``: ``runlocal``."""
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.name = "deeplabv3plus_resnet50"
    c.model.kwargs.output_stride = 8
    c.model.kwargs.aux = True
    recipes.cityscapes(c)
    if args.runlocal:
        recipes.runlocal(c, model_name="deeplabv3plus_tiny")
    return c
