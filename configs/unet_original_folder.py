"""U-Net as the paper trains it (Ronneberger et al. 2015) on your own cell images.

    python -m segjax.train --config configs/unet_original_folder.py:variant=original \
        --workdir /tmp/unet_cells --config.data.root=/data/cells
    python -m segjax.train --config configs/unet_original_folder.py:variant=padded \
        --workdir /tmp/unet_cells_padded --config.data.root=/data/cells

``data.root`` holds ``images/{train,val}/`` and ``masks/{train,val}/`` whose masks are
INSTANCE ids (0 = background, one id per cell; 8/16-bit PNG or TIFF, docs/DATASETS.md). The
class mask (background / cell, or a class per instance from ``data.instance_classes``) and the
border weight map ``w(x) = w_c(x) + w0·exp(−(d1 + d2)²/(2σ²))`` (w0 = 10, σ = 5 px, classes
balanced per image) are derived once when the folder is prepared; the weight map weights the
pixel cross-entropy, and travels with the mask through crop, flip, scale and the elastic
deformation (3×3 grid of displacements with σ = 10 px, bicubically interpolated). Evaluation
reports mIoU / Dice and the object-level precision, recall, F1 at IoU 0.5 and AJI.

Variants:

- ``original`` (default): the valid-convolution U-Net without BatchNorm; ``mirror_pad`` mirror-
  extends every crop by the 92-pixel context the valid convolutions consume, so a 388×388 crop
  runs as the paper's 572×572 tile (overlap-tile; ``segjax.evaluate --mode tile`` for large
  images). SGD with momentum 0.99 on few large tiles, He-normal init, dropout 0.5 at the end of
  the contracting path.
- ``padded``: the same recipe on the padded BatchNorm U-Net (width 32) at 256×256 crops and
  Adam — several times quicker on a CPU.

``:runlocal`` runs the tiny model on the built-in ``shapes`` data (no instance masks there, so
without the weight map) for a smoke test.
"""

from segjax import recipes
from segjax.config import base_config, parse_arg

VARIANTS = ("original", "padded")


def get_config(arg=None):
    """The U-Net paper recipe; ``arg``: ``variant=original|padded``, ``runlocal``."""
    args = parse_arg(arg, variant="original", runlocal=False, choices={"variant": VARIANTS})
    c = base_config()
    c.model.num_classes = 2
    c.data.name = "folder"
    c.data.num_classes = 2
    c.data.class_names = ("background", "cell")
    c.data.mask_type = "instance"
    c.data.weight_map.enabled = True
    c.data.weight_map.w0 = 10.0
    c.data.weight_map.sigma = 5.0
    c.data.elastic.enabled = True
    c.data.elastic.grid = 3
    c.data.elastic.sigma = 10.0
    c.data.train_split = "train"
    c.data.eval_split = "val"
    c.data.scale_range = (0.8, 1.25)
    c.data.eval_pad_size = (512, 512)
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.optim.weight_decay = 0.0
    if args.variant == "original":
        c.model.name = "unet_original"
        c.model.kwargs.mirror_pad = True
        c.data.crop_size = (388, 388)
        c.train.batch_size = 4
        c.train.num_steps = 10_000
        c.optim.name = "sgd"
        c.optim.lr = 1e-3
        c.optim.schedule = "constant"
        c.optim.momentum = 0.99
        c.eval.batch_size = 4
    else:
        c.model.name = "unet"
        c.model.kwargs.width = 32
        c.model.kwargs.depth = 4
        c.data.crop_size = (256, 256)
        c.train.batch_size = 8
        c.train.num_steps = 4000
        c.optim.name = "adamw"
        c.optim.lr = 1e-3
        c.optim.schedule = "cosine"
        c.optim.warmup_steps = 100
        c.eval.batch_size = 4
    if args.runlocal:
        tiny = "unet_original_tiny" if args.variant == "original" else "unet_tiny"
        tiny_kwargs = {"width": 4, "depth": 2} if args.variant == "padded" else {}
        recipes.runlocal(c, model_name=tiny, **tiny_kwargs)
        c.data.class_names = ()
        c.data.mask_type = "class"
        c.data.weight_map.enabled = False
    return c
