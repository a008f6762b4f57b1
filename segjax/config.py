"""The config schema: every knob the code reads, with its default.

Config files in ``configs/`` define ``get_config(arg=None)``: they start from
:func:`base_config`, change what their experiment needs and return the ConfigDict. ``arg`` is
an optional string like ``"runlocal,variant=r101"`` parsed by :func:`parse_arg`; pass it on the
command line as ``--config configs/x.py:runlocal``.
"""

import dataclasses

import ml_collections

from segjax.errors import ConfigError
from segjax.input import augment


def base_config() -> ml_collections.ConfigDict:
    """The full schema with defaults. Experiments override fields; they never add new ones."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dtype = "float32"  # compute dtype: float32 | bfloat16 (params, stats, logits stay f32)
    c.runtime = _runtime_schema()
    c.init_from = ""  # a checkpoint directory (e.g. an imported torchvision backbone) to start from
    c.model = _model_schema()
    c.data = _data_schema()
    c.train = _train_schema()
    c.optim = _optim_schema()
    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 16
    # What computes COCO AP (instance models; segjax.evaluation.coco_eval): "pycocotools" (the
    # reference) |
    # "faster_coco_eval" (the same statistics, faster; pip install -e ".[coco-fast]").
    c.eval.coco_backend = "pycocotools"
    c.mesh = _mesh_schema()
    return c


def _runtime_schema() -> ml_collections.ConfigDict:
    """``config.runtime``: how the process runs the model, read only by :mod:`segjax.runtime`
    (backend rewrites, compiler options, compilation cache, host devices). Results do not depend
    on them beyond float rounding; speed, memory and compile time do."""
    rt = ml_collections.ConfigDict()
    # How traced nn.Conv layers are computed, forward and gradients: "gemm" (the exact matmul /
    # Winograd rewrites of segjax.xla_cpu, which XLA:CPU runs fast; residual block outputs are
    # stored once) | "xla" (XLA's own convolution) | "auto" ("gemm" on the CPU backend, "xla"
    # elsewhere). Results agree within float rounding; see docs/XLA_CPU.md. Every jit site
    # applies it through segjax.runtime.jit.
    rt.conv_impl = "auto"
    # XLA:CPU's instruction scheduler for compiled steps: "memory" (memory-optimised: runs the
    # step's ops one after another; faster and smaller on CPU, docs/XLA_CPU.md) |
    # "concurrency" | "xla" (XLA's default, concurrency-optimised). No effect on GPU/TPU.
    rt.cpu_scheduler = "memory"
    # JAX's persistent compilation cache (segjax.runtime.compile_cache), so that a resumed run,
    # evaluate and predict load the executables an earlier process compiled: enabled; dir
    # ("" = $XDG_CACHE_HOME/segjax/jax or ~/.cache/segjax/jax); min_compile_time_secs (only
    # compilations at least this long are written). SEGJAX_COMPILE_CACHE=off|DIR overrides.
    rt.compile_cache = ml_collections.ConfigDict(
        {"enabled": True, "dir": "", "min_compile_time_secs": 0.0}
    )
    # CPU hosts: XLA devices to split each host into (segjax.runtime.host_devices; 0 = auto: one
    # per core, as many as divide the batch sizes; 1 = one device). Ignored when XLA_FLAGS
    # already sets a count.
    rt.host_devices = 0
    return rt


def _model_schema() -> ml_collections.ConfigDict:
    """``config.model``: which network and its constructor arguments."""
    model = ml_collections.ConfigDict()
    model.name = "unet_small"
    model.num_classes = 4
    # Constructor keyword arguments of the model (output_stride, aux, width …); a config sets
    # the ones its model accepts: c.model.kwargs = ml_collections.ConfigDict({"aux": True}).
    model.kwargs = ml_collections.ConfigDict()
    return model


def _data_schema() -> ml_collections.ConfigDict:
    """``config.data``: dataset, splits, augmentation and the tf.data pipeline."""
    data = ml_collections.ConfigDict()
    data.name = "shapes"
    # TFDS data_dir; "" = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    data.data_dir = ""
    data.manual_dir = ""  # where manually downloaded archives live (VOC, SBD, Cityscapes …)
    data.root = ""  # folder datasets: directory with images/ and masks/
    data.config_name = ""  # builder config (e.g. VOC "2012" or "aug")
    data.download = False  # let builders fetch archives themselves (VOC, SBD, ADE20K)
    data.class_names = ()  # folder datasets: optional names, one per class
    data.palette = ()  # folder datasets: optional RGB colour per class for predictions
    data.num_classes = 0  # folder datasets: number of classes (0 = from class_names)
    data.value_range = ()  # 16-bit images: (lo, hi) to scale to 0-255; () = each image's range
    data.skip_bad_examples = False  # count, log and skip unreadable examples instead of failing
    data.train_split = "train"
    data.eval_split = "validation"
    data.crop_size = (64, 64)
    data.scale_range = (0.5, 2.0)
    data.hflip = True
    data.photometric = False
    data.cat_max_ratio = 1.0  # < 1: retry crops where one class covers more than this ratio
    data.mean = augment.IMAGENET_MEAN
    data.std = augment.IMAGENET_STD
    data.eval_pad_size = (64, 64)  # evaluation images are padded (not resized) to this size
    # Training: keep the encoded records read so far in memory (small datasets); evaluation:
    # cache the decoded, padded examples.
    data.cache = True
    data.num_threads = 4
    # Folder datasets: "class" (masks hold class ids) | "instance" (masks hold instance ids,
    # 0 = background, every object its own id; the class mask is derived, and the ids stay
    # available to evaluation for object-level metrics).
    data.mask_type = "class"
    # Instance masks: a JSON file {image stem: {instance id: class id}} giving each instance its
    # class (relative paths are under data.root); "" = every instance is class 1.
    data.instance_classes = ""
    # Folder datasets: what the examples are for. "semantic": class masks (+ "instances" ids)
    # for semantic models | "instance": detection examples (boxes, labels, per-instance masks)
    # for Mask R-CNN, one instance per id of an instance-id mask (needs mask_type="instance";
    # class names start with "__background__").
    data.folder_task = "semantic"
    data.weight_map = _weight_map_schema()
    data.elastic = _elastic_schema()
    data.instances = _instances_schema()
    data.coco = _coco_schema()
    return data


def _coco_schema() -> ml_collections.ConfigDict:
    """``config.data.coco``: COCO-format instance datasets (``data.name = "coco"``,
    :mod:`segjax.data.coco`). With every path empty: COCO 2017 from ``data.manual_dir``."""
    coco = ml_collections.ConfigDict()
    coco.train_json = ""  # an export's train annotation file (COCO format)
    coco.train_images = ""  # the folder the file_names of train_json are relative to
    coco.val_json = ""  # the same for the "validation" split (either split may be left out)
    coco.val_images = ""
    # "contiguous": categories numbered 1..K in id order | "category_id": label = category id,
    # "N/A" in the gaps (COCO's 91 slots, as torchvision's COCO models predict them)
    coco.label_map = "contiguous"
    # Images without annotations: "error" | "keep" (all background) | "drop" | "drop_train"
    # (dropped from train, kept in validation: torchvision's reference recipe)
    coco.empty_images = "error"
    # Annotations with a zero-size box, a bad polygon or RLE: "error" | "drop" (counted, logged)
    coco.invalid_annotations = "error"
    return coco


def _weight_map_schema() -> ml_collections.ConfigDict:
    """``config.data.weight_map``: the U-Net border weight map of instance-mask datasets,
    computed once when the dataset is prepared (``segjax.losses.unet_weight_map``)."""
    wm = ml_collections.ConfigDict()
    wm.enabled = False
    wm.w0 = 10.0  # border weight (paper: 10)
    wm.sigma = 5.0  # border width in pixels (paper: ≈ 5)
    wm.class_weights = ()  # () = balance class frequencies per image; else w_c per class id
    wm.border_on_background_only = True  # border term only in the gaps between instances
    return wm


def _elastic_schema() -> ml_collections.ConfigDict:
    """``config.data.elastic``: the U-Net paper's elastic deformation of training crops."""
    el = ml_collections.ConfigDict()
    el.enabled = False
    el.grid = 3  # coarse grid of random displacement vectors (paper: 3×3)
    el.sigma = 10.0  # standard deviation of the displacements in pixels (paper: 10)
    return el


def _instances_schema() -> ml_collections.ConfigDict:
    """``config.data.instances``: instance (Mask R-CNN) examples: resize, large-scale jitter,
    static padding (``segjax.input.augment_instances``); flip, mean and std are
    ``config.data``'s."""
    inst = ml_collections.ConfigDict()
    inst.max_instances = 100  # static number of instance entries per image
    # An image with more instances: "error" stops naming it | "drop_smallest" (counted, logged)
    inst.overflow = "error"
    inst.min_size = (800,)  # training draws the shorter side from these; evaluation uses the last
    inst.max_size = 1333  # cap of the longer side (torchvision's 800 / 1333)
    inst.pad_size = ()  # static padded (height, width); () = max_size rounded up, square
    inst.size_divisible = 32  # rounding of the default pad_size
    # Large-scale jitter: scale to pad_size times a random factor, then crop / pad to pad_size.
    inst.large_scale_jitter = ml_collections.ConfigDict()
    inst.large_scale_jitter.enabled = False
    inst.large_scale_jitter.scale_range = (0.1, 2.0)  # torchvision's and detectron2's LSJ
    return inst


def _train_schema() -> ml_collections.ConfigDict:
    """``config.train``: batch, steps, loss weights, logging and checkpoint cadence."""
    # Imported here: the data builders import this module, and the model package imports them.
    from segjax.models.maskrcnn.losses import LossConfig

    train = ml_collections.ConfigDict()
    train.batch_size = 16  # global batch over all processes and devices
    train.num_steps = 1000
    train.grad_accum_steps = 1  # split each batch into this many sequential micro-batches
    train.aux_weight = 0.4  # weight of the auxiliary head's loss (models with one)
    train.label_smoothing = 0.0
    train.class_weights = ()  # () = unweighted; else one weight per class
    # The loss: a weighted sum of named terms (segjax.losses.build_loss), applied the same way
    # to the auxiliary head (times aux_weight). A weight of 0 leaves a term out.
    train.loss = ml_collections.ConfigDict(
        {
            "ce": 1.0,
            "dice": 0.0,
            "jaccard": 0.0,
            "tversky": 0.0,
            "focal": 0.0,
            "lovasz": 0.0,
            "ohem": 0.0,
        }
    )
    train.loss_params = _loss_params_schema()
    # Instance models: Mask R-CNN's anchor / RoI matching and sampling (torchvision's defaults,
    # segjax.models.maskrcnn.losses.LossConfig).
    train.detection = ml_collections.ConfigDict(dataclasses.asdict(LossConfig()))
    train.max_nonfinite_skips = 0  # non-finite loss/grad: skip up to this many updates, then stop
    train.log_every = 50
    train.eval_every = 500  # 0 = only at the end
    train.checkpoint_every = 500
    train.keep_checkpoints = 3
    train.num_vis_images = 4  # validation predictions written to TensorBoard
    return train


def _loss_params_schema() -> ml_collections.ConfigDict:
    """``config.train.loss_params``: the parameters of the loss terms."""
    lp = ml_collections.ConfigDict()
    lp.dice_smooth = 1.0  # added to numerator and denominator of soft Dice
    lp.jaccard_smooth = 1.0  # the same for soft Jaccard
    lp.tversky_alpha = 0.5  # weight of false positives
    lp.tversky_beta = 0.5  # weight of false negatives
    lp.tversky_smooth = 1.0
    lp.focal_gamma = 2.0
    lp.ohem_thresh = 0.7  # keep pixels whose true-class probability is below this …
    lp.ohem_min_kept = 100_000  # … but at least this many valid pixels per image (mmseg)
    return lp


def _optim_schema() -> ml_collections.ConfigDict:
    """``config.optim``: optimiser, learning-rate schedule, weight decay, clipping."""
    optim = ml_collections.ConfigDict()
    optim.name = "sgd"  # sgd | adamw
    optim.lr = 0.01
    optim.end_lr = 0.0
    optim.schedule = "poly"  # poly | cosine | constant
    optim.power = 0.9
    optim.warmup_steps = 0
    optim.warmup_init_factor = 0.0
    optim.momentum = 0.9
    optim.nesterov = False
    optim.b1 = 0.9
    optim.b2 = 0.999
    optim.eps = 1e-8
    optim.decay_steps = ()  # multistep: the steps after which lr is multiplied by decay_factor
    optim.decay_factor = 0.1
    optim.weight_decay = 1e-4
    optim.clip_grad_norm = 0.0  # 0 = no clipping
    return optim


def _mesh_schema() -> ml_collections.ConfigDict:
    """``config.mesh``: device mesh axes and which state leaves are sharded."""
    mesh = ml_collections.ConfigDict()
    mesh.data = -1
    mesh.fsdp = 1
    # (regex on state paths, "replicate" | "fsdp"); first match wins, no match = replicate.
    mesh.rules = (("params/.*kernel", "fsdp"),)
    mesh.min_shard_size = 2**14  # smaller leaves stay replicated
    return mesh


def parse_arg(arg: str | None, *, choices=None, **defaults) -> ml_collections.ConfigDict:
    """Parses ``"runlocal,variant=r101,steps=10"`` into a ConfigDict.

    A bare word sets a boolean True; ``k=v`` is typed after the default of ``k`` (str if none).

    Args:
      arg: the text after ``:`` in ``--config file.py:arg``; None or "" keeps the defaults.
      choices: ``{key: allowed values}`` for keys that take one of a few values, e.g.
        ``choices={"variant": VARIANTS}`` in a config file with several published variants.
      **defaults: every accepted key with its default value.

    Raises:
      ValueError: a key that is not in ``defaults``, or a value outside its ``choices``.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in arg.split(",") if arg else ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f"unknown config argument {key!r}; this config accepts: {', '.join(defaults)}"
            )
        if not sep:
            out[key] = True
        else:
            kind = type(defaults[key]) if defaults[key] is not None else str
            out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    for key, allowed in (choices or {}).items():
        if out[key] not in allowed:
            raise ConfigError(
                f"unknown {key}={out[key]!r}; this config's {key}s: "
                + ", ".join(str(a) for a in allowed)
            )
    return out
