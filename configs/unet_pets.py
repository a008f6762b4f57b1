"""Padded U-Net (BatchNorm) on Oxford-IIIT Pet: background / pet, trimap borders ignored.

    python -m segjax.train --config configs/unet_pets.py --workdir /tmp/unet_pets

TFDS downloads the pets data on first use (``oxford_iiit_pet``; docs/DATASETS.md);
``--config.data.config_name=trimap --config.model.num_classes=3`` learns the border too. Crop 256,
scale 0.5–2.0, AdamW 1e-3 cosine, batch 16, 20k steps. Evaluation pads each image (never
resizes it) to ``data.eval_pad_size``; an image larger than that stops with an error naming
the size; raise it, or evaluate with ``python -m segjax.evaluate --mode slide``.
``:runlocal`` runs a narrow U-Net on the built-in ``shapes`` data for a smoke test.
"""

import ml_collections

from segjax import recipes
from segjax.config import base_config, parse_arg


def get_config(arg=None):
    """The Oxford-IIIT Pet U-Net config; ``arg``: ``runlocal``."""
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.name = "unet"
    c.model.num_classes = 2
    c.model.kwargs = ml_collections.ConfigDict({"width": 32, "depth": 4})
    c.data.name = "pets"
    c.data.config_name = "binary"
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.crop_size = (256, 256)
    c.data.eval_pad_size = (1024, 1024)
    c.data.scale_range = (0.5, 2.0)
    c.train.batch_size = 16
    c.train.num_steps = 20_000
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 1000
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 500
    c.optim.weight_decay = 1e-4
    c.eval.batch_size = 2
    if args.runlocal:
        recipes.runlocal(c, width=4, depth=2)
    return c
