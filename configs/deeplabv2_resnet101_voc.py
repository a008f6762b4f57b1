"""DeepLab v2: dilated ResNet-101 (output stride 8) with ASPP-v2 (rates 6/12/18/24, summed).

    python -m segjax.train --config configs/deeplabv2_resnet101_voc.py \
        --workdir /tmp/deeplabv2_resnet101_voc \
        --config.init_from=/path/to/imported_backbone

PASCAL VOC 2012 + SBD (``voc_aug``, docs/DATASETS.md) with mmsegmentation's VOC recipe:
crop 512, scale 0.5–2.0, photometric distortion, cat_max_ratio 0.75, SGD 0.9, lr 0.01 → 1e-4
(poly 0.9), weight decay 5e-4, batch 16, 20k steps, auxiliary loss weight 0.4.
Start from ImageNet weights (``init_from``).
``output_stride`` (model kwarg, 8 or 16) trades accuracy for speed and memory.
``:runlocal`` swaps in the tiny model on the built-in ``shapes`` data for a smoke test.
"""

from segjax.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.name = "deeplabv2_resnet101"
    c.model.num_classes = 21
    c.model.kwargs.output_stride = 8
    c.data.name = "voc_aug"
    c.data.train_split = "train_aug"
    c.data.eval_split = "validation"
    c.data.crop_size = (512, 512)
    c.data.eval_pad_size = (512, 512)
    c.data.scale_range = (0.5, 2.0)
    c.data.photometric = True
    c.data.cat_max_ratio = 0.75
    c.train.batch_size = 16
    c.train.num_steps = 20_000
    c.train.aux_weight = 0.4
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    c.optim.name = "sgd"
    c.optim.lr = 0.01
    c.optim.end_lr = 1e-4
    c.optim.schedule = "poly"
    c.optim.power = 0.9
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.eval.batch_size = 8
    if args.runlocal:
        c.model.name = "deeplabv2_tiny"
        c.model.num_classes = 4
        c.data.name = "shapes"
        c.data.train_split = "train"
        c.data.eval_split = "validation"
        c.data.crop_size = (64, 64)
        c.data.eval_pad_size = (64, 64)
        c.data.photometric = False
        c.data.cat_max_ratio = 1.0
        c.train.num_steps = 4
        c.train.log_every = 2
        c.train.eval_every = 0
        c.train.checkpoint_every = 2
        c.train.batch_size = 8
        c.eval.batch_size = 8
    return c
