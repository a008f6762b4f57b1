"""PSPNet on dilated ResNet-50 for ADE20K / SceneParsing (150 classes), mmsegmentation's recipe.

    python -m segjax.train --config configs/pspnet_resnet50_ade20k.py \
        --workdir /tmp/pspnet_resnet50_ade20k \
        --config.data.manual_dir=/data/ade \
        --config.init_from=/path/to/imported_resnet50

``ADEChallengeData2016.zip`` in ``manual_dir`` (or ``--config.data.download=True``); the
annotation mapping is in docs/DATASETS.md. Recipe (:func:`segjax.recipes.ade20k`): crop 512,
scale 0.5–2.0, photometric distortion, cat_max_ratio 0.75, SGD 0.9, lr 0.01 → 1e-4 (poly 0.9),
weight decay 5e-4, batch 16, 80k steps, auxiliary loss weight 0.4, output stride 8.
``:runlocal`` swaps in the tiny model on the built-in ``shapes`` data for a smoke test.
"""

from segjax import recipes
from segjax.config import base_config, parse_arg


def get_config(arg=None):
    """The PSPNet ADE20K config; ``arg``: ``runlocal``."""
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.name = "pspnet_resnet50"
    c.model.kwargs.aux = True
    recipes.ade20k(c)
    if args.runlocal:
        recipes.runlocal(c, model_name="pspnet_tiny")
    return c
