"""FCN-16s (VGG16) on PASCAL VOC 2012 + SBD (Long et al. 2015), paper alignment (pad 100, crop).

    python -m segjax.train --config configs/fcn16s_vgg16_voc.py --workdir /tmp/fcn16s_voc \
        --config.init_from=/path/to/imported_vgg16

Needs the ``voc_aug`` dataset (docs/DATASETS.md) and, to be meaningful, ImageNet VGG16 weights
(``init_from``; fc6/fc7 convolutionalised). Published: FCN-32s / 16s / 8s 63.6 / 65.0 / 65.5 mIoU
(reference Caffe models, seg11valid). The paper trains with an unnormalised per-pixel loss,
batch 20 (later batch 1, momentum 0.99); with segjax's mean loss we use the DeepLab-VGG style
recipe: SGD 0.9, lr 1e-3 with poly decay, weight decay 5e-4, batch 20, crop 512.
``:runlocal`` swaps in the tiny model on the built-in ``shapes`` data for a smoke test.
"""

from segjax.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.name = "fcn16s_vgg16"
    c.model.num_classes = 21
    c.model.kwargs.paper_alignment = True
    # "subpixel" computes the same transposed convs as conv + depth-to-space: identical
    # numbers, 3-12x faster forward+backward on XLA:CPU (benchmarks/transposed_conv.py).
    c.model.kwargs.upsample_impl = "conv_transpose"
    c.data.name = "voc_aug"
    c.data.train_split = "train_aug"
    c.data.eval_split = "validation"
    c.data.crop_size = (512, 512)
    c.data.eval_pad_size = (512, 512)
    c.data.scale_range = (0.5, 2.0)
    c.data.photometric = True
    c.train.batch_size = 20
    c.train.num_steps = 30_000
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    c.optim.name = "sgd"
    c.optim.lr = 1e-3
    c.optim.end_lr = 1e-5
    c.optim.schedule = "poly"
    c.optim.power = 0.9
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.eval.batch_size = 8
    if args.runlocal:
        c.model.name = "fcn16s_vgg16_tiny"
        c.model.num_classes = 4
        c.data.name = "shapes"
        c.data.train_split = "train"
        c.data.eval_split = "validation"
        c.data.crop_size = (64, 64)
        c.data.eval_pad_size = (64, 64)
        c.data.photometric = False
        c.train.num_steps = 4
        c.train.log_every = 2
        c.train.eval_every = 0
        c.train.checkpoint_every = 2
        c.train.batch_size = 8
        c.eval.batch_size = 8
    return c
