"""PSPNet on dilated ResNet-50 for ADE20K / SceneParsing (150 classes), mmsegmentation's recipe.

    python -m segjax.train --config configs/pspnet_resnet50_ade20k.py \
        --workdir /tmp/pspnet_resnet50_ade20k \
        --config.data.manual_dir=/data/ade \
        --config.init_from=/path/to/imported_resnet50

``ADEChallengeData2016.zip`` in ``manual_dir`` (or ``--config.data.download=True``); the
annotation mapping is in docs/DATASETS.md. Recipe: crop 512, scale 0.5–2.0, photometric
distortion, cat_max_ratio 0.75, SGD 0.9, lr 0.01 → 1e-4 (poly 0.9), weight decay 5e-4,
batch 16, 80k steps, auxiliary loss weight 0.4, output stride 8.
``:runlocal`` swaps in the tiny model on the built-in ``shapes`` data for a smoke test.
"""

from segjax.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.name = "pspnet_resnet50"
    c.model.num_classes = 150
    c.model.kwargs.aux = True
    c.data.name = "ade20k"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.crop_size = (512, 512)
    c.data.eval_pad_size = (2048, 2048)
    c.data.scale_range = (0.5, 2.0)
    c.data.photometric = True
    c.data.cat_max_ratio = 0.75
    c.train.batch_size = 16
    c.train.num_steps = 80_000
    c.train.aux_weight = 0.4
    c.train.log_every = 50
    c.train.eval_every = 8000
    c.train.checkpoint_every = 2000
    c.optim.name = "sgd"
    c.optim.lr = 0.01
    c.optim.end_lr = 1e-4
    c.optim.schedule = "poly"
    c.optim.power = 0.9
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.eval.batch_size = 1
    if args.runlocal:
        c.model.name = "pspnet_tiny"
        c.model.num_classes = 4
        c.data.name = "shapes"
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
