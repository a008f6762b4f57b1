"""Quickstart: a small padded U-Net on the built-in ``shapes`` dataset, a few minutes on a CPU.

    python -m segjax.train --config configs/quickstart.py --workdir /tmp/segjax_quickstart

Override anything from the command line, e.g. ``--config.train.num_steps=50``. ``:runlocal``
(``--config configs/quickstart.py:runlocal``) shrinks it to a few steps for smoke tests.
"""

import ml_collections

from segjax.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.name = "unet"
    c.model.num_classes = 4
    c.model.kwargs = ml_collections.ConfigDict({"width": 12, "depth": 3})
    c.data.name = "shapes"
    c.data.crop_size = (64, 64)
    c.data.eval_pad_size = (64, 64)
    # Validation images are unscaled 64×64 scenes: flips only. Random scaling (0.75–1.5 or
    # 1.0–1.25) cost 2–4 mIoU points at this step budget (measured, 1300–1400 steps).
    c.data.scale_range = (1.0, 1.0)
    c.train.batch_size = 16
    c.train.num_steps = 1300
    c.train.log_every = 100
    c.train.eval_every = 650
    c.train.checkpoint_every = 650
    c.optim.name = "adamw"
    c.optim.lr = 6e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 1e-4
    c.eval.batch_size = 40
    if args.runlocal:
        c.train.num_steps = 4
        c.train.log_every = 2
        c.train.eval_every = 0
        c.train.checkpoint_every = 2
        c.train.batch_size = 8
        c.model.kwargs.width = 4
    return c
