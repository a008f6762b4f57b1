"""Instance quickstart: a small Mask R-CNN on the built-in ``instance_shapes`` data, on a CPU.

    python -m segjax.train --config configs/maskrcnn_quickstart.py --workdir /tmp/instances

trains ``maskrcnn_small`` (a narrow ResNet-FPN Mask R-CNN, the full model's structure and
losses) from scratch on 500 synthetic 128×128 images of circles, squares and triangles, and
evaluates COCO mask and box AP on the 100 validation images (see docs/INSTANCES.md for the
figures and the time). ``:runlocal`` is a seconds-long smoke test on the tiny split.
"""

from segjax import recipes
from segjax.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, steps=600)
    c = base_config()
    c.model.name = "maskrcnn_small"
    recipes.instance_shapes_maskrcnn(c)
    c.train.batch_size = 8
    c.train.num_steps = args.steps
    c.train.log_every = 50
    c.train.eval_every = 0
    c.train.checkpoint_every = 200
    c.train.num_vis_images = 4
    # A few objects per image: fewer sampled RoIs than torchvision's 512 lose nothing.
    c.train.detection.box_batch_size_per_image = 128
    c.eval.batch_size = 20
    c.optim.name = "sgd"
    c.optim.lr = 0.02
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.optim.end_lr = 0.0
    c.optim.warmup_steps = 100
    c.optim.warmup_init_factor = 1e-3
    c.optim.clip_grad_norm = 10.0
    if args.runlocal:
        recipes.runlocal_instances(c, model_name="maskrcnn_tiny")
    return c
