"""Published training recipes that config files apply to :func:`segjax.config.base_config`.

A config file names its model and then applies one recipe, which sets the dataset, the
augmentation, the schedule, the optimiser and the evaluation settings of a published recipe
family; :func:`runlocal` shrinks any config into a smoke test on the built-in ``shapes`` data.
The module lives in the package (``from segjax import recipes``) because config files are loaded
by path, so a user's config anywhere on disk can use it, not only the files in ``configs/``::

    c = base_config()
    c.model.name = "pspnet_resnet50"
    c.model.kwargs.aux = True
    recipes.voc_aug(c)
    if args.runlocal:
        recipes.runlocal(c, model_name="pspnet_tiny")

Each function only assigns schema keys, so a config can still change any value afterwards.
"""

import ml_collections

__all__ = [
    "ade20k",
    "cityscapes",
    "coco_maskrcnn",
    "instance_shapes_maskrcnn",
    "runlocal",
    "runlocal_instances",
    "sgd_poly",
    "voc_aug",
]

# The built-in ``shapes`` dataset (segjax.data.shapes): background, square, circle, triangle.
SHAPES_NUM_CLASSES = 4
# The built-in ``instance_shapes`` (segjax.data.instance_shapes): background, circle, square,
# triangle; 128×128 images with at most 6 objects.
INSTANCE_SHAPES_NUM_CLASSES = 4
INSTANCE_SHAPES_SIZE = 128
# COCO 2017 train images with at least one usable annotation (torchvision's reference drops
# the others: ``_coco_remove_images_without_annotations``), for epochs → steps.
COCO_TRAIN_IMAGES = 117_266


def sgd_poly(
    c: ml_collections.ConfigDict,
    *,
    lr: float = 0.01,
    end_lr: float = 1e-4,
    weight_decay: float = 5e-4,
) -> None:
    """SGD (momentum 0.9) with polynomial decay (power 0.9) from ``lr`` to ``end_lr``.

    mmsegmentation's ``schedule_20k/40k/80k`` optimiser (``SGD`` + ``PolyLR``, ``min_lr=1e-4``,
    weight decay 5e-4) with the defaults; the DeepLab papers' "poly" policy in general.
    """
    c.optim.name = "sgd"
    c.optim.lr = lr
    c.optim.end_lr = end_lr
    c.optim.schedule = "poly"
    c.optim.power = 0.9
    c.optim.momentum = 0.9
    c.optim.weight_decay = weight_decay


def _mmseg_train(c, *, crop_size, batch_size, num_steps, eval_every) -> None:
    """The pipeline and schedule all of mmsegmentation's dataset recipes share."""
    c.data.crop_size = crop_size
    c.data.scale_range = (0.5, 2.0)  # mmseg's RandomResize ratio_range
    c.data.photometric = True  # mmseg's PhotoMetricDistortion
    c.data.cat_max_ratio = 0.75  # mmseg's RandomCrop(cat_max_ratio=0.75)
    c.train.batch_size = batch_size
    c.train.num_steps = num_steps
    c.train.aux_weight = 0.4  # mmseg's auxiliary_head loss_weight
    c.train.log_every = 50
    c.train.eval_every = eval_every
    c.train.checkpoint_every = 2000
    sgd_poly(c)


def voc_aug(c: ml_collections.ConfigDict, *, num_steps: int = 20_000) -> None:
    """mmsegmentation's PASCAL VOC 2012 + SBD recipe (``pascal_voc12_aug.py`` + ``schedule_20k``).

    21 classes on ``voc_aug`` (train_aug: 10,582 images; validation: 1,449), crop 512×512,
    scale 0.5–2.0, photometric distortion, cat_max_ratio 0.75, batch 16, SGD 0.9 with
    lr 0.01 → 1e-4 (poly 0.9), weight decay 5e-4, auxiliary loss weight 0.4, evaluation every
    2000 steps on images padded to 512×512. mmsegmentation trains DeepLab v3+ for 40k steps
    (``num_steps=40_000``).
    """
    c.model.num_classes = 21
    c.data.name = "voc_aug"
    c.data.train_split = "train_aug"
    c.data.eval_split = "validation"
    c.data.eval_pad_size = (512, 512)
    _mmseg_train(c, crop_size=(512, 512), batch_size=16, num_steps=num_steps, eval_every=2000)
    c.eval.batch_size = 8


def cityscapes(c: ml_collections.ConfigDict) -> None:
    """mmsegmentation's Cityscapes recipe (``cityscapes.py``, 512×1024 crops, ``schedule_80k``).

    19 train ids, crop 512×1024, scale 0.5–2.0, photometric distortion, cat_max_ratio 0.75,
    batch 8, 80k steps of SGD 0.9 with lr 0.01 → 1e-4 (poly 0.9), weight decay 5e-4, auxiliary
    loss weight 0.4; evaluation every 8000 steps on the full 1024×2048 images.
    """
    c.model.num_classes = 19
    c.data.name = "cityscapes"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.eval_pad_size = (1024, 2048)
    _mmseg_train(c, crop_size=(512, 1024), batch_size=8, num_steps=80_000, eval_every=8000)
    c.eval.batch_size = 2


def ade20k(c: ml_collections.ConfigDict) -> None:
    """mmsegmentation's ADE20K / SceneParse150 recipe (``ade20k.py`` + ``schedule_80k``).

    150 classes, crop 512×512, scale 0.5–2.0, photometric distortion, cat_max_ratio 0.75,
    batch 16, 80k steps of SGD 0.9 with lr 0.01 → 1e-4 (poly 0.9), weight decay 5e-4,
    auxiliary loss weight 0.4; evaluation every 8000 steps, one image at a time, padded to
    2048×2048.
    """
    c.model.num_classes = 150
    c.data.name = "ade20k"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.eval_pad_size = (2048, 2048)
    _mmseg_train(c, crop_size=(512, 512), batch_size=16, num_steps=80_000, eval_every=8000)
    c.eval.batch_size = 1


def runlocal(c: ml_collections.ConfigDict, model_name: str = "", **model_kwargs) -> None:
    """Shrinks a config into a seconds-long smoke test (big_vision's ``runlocal`` convention).

    Trains for 4 steps at batch 8 on 64×64 crops of the built-in ``shapes`` data (no
    photometric distortion or crop retries), checkpoints at step 2 and evaluates only at the
    end; the rest of the recipe (optimiser, scale range, model kwargs) is kept so the smoke
    test runs the same code path.

    Args:
      c: the config to change in place.
      model_name: the small model to train instead (e.g. ``"deeplabv3_tiny"``); "" keeps it.
      **model_kwargs: model keyword arguments to override (e.g. ``width=4`` for a narrow U-Net).
    """
    if model_name:
        c.model.name = model_name
    c.model.num_classes = SHAPES_NUM_CLASSES
    c.model.kwargs.update(model_kwargs)
    c.data.name = "shapes"
    c.data.config_name = ""
    c.data.num_classes = 0  # shapes knows its classes; folder datasets set this
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.crop_size = (64, 64)
    c.data.eval_pad_size = (64, 64)
    c.data.photometric = False
    c.data.cat_max_ratio = 1.0
    _smoke_test_schedule(c)


def _smoke_test_schedule(c: ml_collections.ConfigDict) -> None:
    """The runlocal recipes' loop: 4 steps of batch 8, logged and checkpointed every 2, one
    evaluation at the end."""
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.eval_every = 0
    c.train.checkpoint_every = 2
    c.train.batch_size = 8
    c.eval.batch_size = 8


def coco_maskrcnn(
    c: ml_collections.ConfigDict,
    *,
    batch_size: int = 16,
    epochs: int = 26,
    lr_steps: tuple[int, int] = (16, 22),
    train_images: int = COCO_TRAIN_IMAGES,
) -> None:
    """torchvision's Mask R-CNN COCO recipe (``references/detection``, ``maskrcnn_resnet50_fpn``:
    ``--epochs 26 --lr-steps 16 22``).

    SGD momentum 0.9, lr 0.02 for a global batch of 16, scaled linearly with ``batch_size``;
    linear warm-up from lr/1000 over the first 1000 steps (torchvision: ``min(1000, one epoch)``
    iterations at ``warmup_factor = 1/1000``); weight decay 1e-4; lr × 0.1 after epochs 16 and
    22 of 26. Images: shorter side 800, longer at most 1333, horizontal flip; at most 100
    instances per image (more: the smallest are dropped and counted); images without
    annotations dropped from train, kept in validation; annotations with a degenerate box
    dropped (COCO 2017 has a zero-height one). Evaluation: COCO bbox and segm AP on val2017 at
    the end (``eval_every`` 0: every ~3 epochs costs an hour on a CPU host; set it to evaluate
    during training). The backbone starts from ImageNet weights through ``init_from`` (import
    them with ``segjax.weights.import_torchvision --arch maskrcnn_resnet50_fpn
    --backbone_only``); torchvision trains layers 2–4 (``trainable_layers`` 3, the model's
    default). One difference: segjax's weight decay skips biases (torchvision decays them too).
    """
    steps_per_epoch = train_images // batch_size
    _coco_format_data(c)
    c.data.coco.invalid_annotations = "drop"
    _detection_sgd(
        c,
        batch_size=batch_size,
        num_steps=epochs * steps_per_epoch,
        checkpoint_every=steps_per_epoch,
        lr=0.02 * batch_size / 16,
        weight_decay=1e-4,
        decay_steps=tuple(e * steps_per_epoch for e in lr_steps),
        warmup_steps=min(1000, steps_per_epoch - 1),
    )


def _detection_sgd(
    c, *, batch_size, num_steps, checkpoint_every, lr, weight_decay, decay_steps, warmup_steps
) -> None:
    """torchvision's detection training loop: SGD momentum 0.9, linear warm-up from lr/1000,
    lr × 0.1 at each of ``decay_steps``; logged every 20 steps, evaluated at the end."""
    c.train.batch_size = batch_size
    c.train.num_steps = num_steps
    c.train.log_every = 20
    c.train.eval_every = 0
    c.train.checkpoint_every = checkpoint_every
    c.eval.batch_size = 2
    c.optim.name = "sgd"
    c.optim.lr = lr
    c.optim.momentum = 0.9
    c.optim.weight_decay = weight_decay
    c.optim.schedule = "multistep"
    c.optim.decay_steps = decay_steps
    c.optim.decay_factor = 0.1
    c.optim.warmup_steps = warmup_steps
    c.optim.warmup_init_factor = 1e-3


def _coco_format_data(c: ml_collections.ConfigDict) -> None:
    """COCO-format instance data as torchvision's detection references read it: shorter side
    800, longer at most 1333, horizontal flip, at most 100 instances per image (more: the
    smallest are dropped and counted), images without annotations dropped from train and kept
    in validation."""
    c.data.name = "coco"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.hflip = True
    c.data.coco.empty_images = "drop_train"
    c.data.instances.min_size = (800,)
    c.data.instances.max_size = 1333
    c.data.instances.max_instances = 100
    c.data.instances.overflow = "drop_smallest"


def finetune_maskrcnn(
    c: ml_collections.ConfigDict, *, batch_size: int = 2, num_steps: int = 2000
) -> None:
    """Fine-tuning a COCO-trained Mask R-CNN on a COCO-format export, as torchvision's
    fine-tuning tutorial does: SGD momentum 0.9, lr 0.005 for a batch of 2 (scaled linearly
    with ``batch_size``), weight decay 5e-4, a short linear warm-up from lr/1000, lr × 0.1
    after 30%, 60% and 90% of ``num_steps`` (the tutorial's ``StepLR`` every 3 of 10 epochs);
    torchvision's data settings (:func:`_coco_format_data`); labels contiguous in the order of
    the export's ``categories``. The weights come in through ``init_from``."""
    _coco_format_data(c)
    c.data.coco.label_map = "contiguous"
    _detection_sgd(
        c,
        batch_size=batch_size,
        num_steps=num_steps,
        checkpoint_every=max(num_steps // 10, 1),
        lr=0.005 * batch_size / 2,
        weight_decay=5e-4,
        decay_steps=tuple(round(f * num_steps) for f in (0.3, 0.6, 0.9)),
        warmup_steps=min(100, max(num_steps // 10, 1)),
    )


def instance_shapes_maskrcnn(c: ml_collections.ConfigDict, *, config_name: str = "") -> None:
    """Mask R-CNN on the built-in ``instance_shapes`` (128×128, no resizing): the instance
    quickstart's data and evaluation settings (``config_name="tiny"`` for smoke tests)."""
    size = INSTANCE_SHAPES_SIZE
    c.model.num_classes = INSTANCE_SHAPES_NUM_CLASSES
    c.data.name = "instance_shapes"
    c.data.config_name = config_name
    c.data.num_classes = 0
    c.data.class_names = ()
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.hflip = True
    c.data.instances.min_size = (size,)
    c.data.instances.max_size = size
    c.data.instances.pad_size = (size, size)
    c.data.instances.max_instances = 8
    c.data.instances.overflow = "error"


def runlocal_instances(c: ml_collections.ConfigDict, model_name: str = "maskrcnn_tiny") -> None:
    """:func:`runlocal` for instance models: a few steps of ``model_name`` on the ``tiny``
    ``instance_shapes`` data, images at 64×64, with the config's optimiser kept."""
    if model_name:
        c.model.name = model_name
    instance_shapes_maskrcnn(c, config_name="tiny")
    c.data.instances.min_size = (64,)
    c.data.instances.max_size = 64
    c.data.instances.pad_size = (64, 64)
    c.optim.schedule = "constant" if c.optim.schedule == "multistep" else c.optim.schedule
    c.optim.decay_steps = ()
    c.optim.warmup_steps = 0
    _smoke_test_schedule(c)
