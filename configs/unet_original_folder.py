"""The original U-Net (Ronneberger et al. 2015) on your own images (``folder`` dataset).

    python -m segjax.train --config configs/unet_original_folder.py --workdir /tmp/unet_orig \
        --config.data.root=/data/cells --config.data.num_classes=2 --config.data.eval_split=val

Valid convolutions without BatchNorm; ``mirror_pad=True`` mirror-extends every crop by the
92-pixel context the valid convolutions consume, so a 388×388 crop runs as the paper's 572×572
tile and the logits match the labels' size (any evaluation size works the same way). For large
images at inference, ``segjax.models.unet.overlap_tile_predict`` tiles them. Recipe after the
paper: SGD with momentum 0.99, a few large tiles per step, He-normal init, dropout 0.5 at the
end of the contracting path. Not reproduced here: elastic deformations, and the border weight
map (``segjax.losses.unet_weight_map`` needs instance masks, which folder masks of class ids do
not carry; pass its output as ``cross_entropy(..., weights=...)`` in a custom loop).
``:runlocal`` runs the tiny U-Net on the built-in ``shapes`` data for a smoke test.
"""

from segjax import recipes
from segjax.config import base_config, parse_arg


def get_config(arg=None):
    """The original U-Net config; ``arg``: ``runlocal``."""
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.name = "unet_original"
    c.model.num_classes = 2
    c.model.kwargs.mirror_pad = True
    c.data.name = "folder"
    c.data.num_classes = 2
    c.data.train_split = "train"
    c.data.eval_split = "val"
    c.data.crop_size = (388, 388)
    c.data.eval_pad_size = (512, 512)
    c.data.scale_range = (0.8, 1.25)
    c.train.batch_size = 4
    c.train.num_steps = 10_000
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.optim.name = "sgd"
    c.optim.lr = 1e-3
    c.optim.schedule = "constant"
    c.optim.momentum = 0.99
    c.optim.weight_decay = 0.0
    c.eval.batch_size = 4
    if args.runlocal:
        recipes.runlocal(c, model_name="unet_original_tiny")
    return c
