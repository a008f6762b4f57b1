"""The config schema: every knob the code reads, with its default.

Config files in ``configs/`` define ``get_config(arg=None)``: they start from
:func:`base_config`, change what their experiment needs and return the ConfigDict. ``arg`` is
an optional string like ``"runlocal,variant=r101"`` parsed by :func:`parse_arg`; pass it on the
command line as ``--config configs/x.py:runlocal``.
"""

import ml_collections

from segjax import augment


def base_config() -> ml_collections.ConfigDict:
    """The full schema with defaults. Experiments override fields; they never add new ones."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dtype = "float32"  # compute dtype: float32 | bfloat16 (params, stats, logits stay f32)
    # How nn.Conv layers are differentiated: "auto" (the per-tap matmul path of
    # layers.conv_general_dilated_fast on CPU, XLA's own elsewhere) | "taps" | "xla".
    # Results agree within float tolerance; see docs/PERFORMANCE.md.
    c.conv_backward = "auto"
    # XLA:CPU's instruction scheduler for compiled steps: "memory" (memory-optimised: runs the
    # step's ops one after another; faster and smaller on CPU, docs/PERFORMANCE.md) |
    # "concurrency" | "xla" (XLA's default, concurrency-optimised). No effect on GPU/TPU.
    c.cpu_scheduler = "memory"
    c.init_from = ""  # a checkpoint directory (e.g. an imported torchvision backbone) to start from

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet_small"
    c.model.num_classes = 4
    # Constructor keyword arguments of the model (output_stride, aux, width …); a config sets
    # the ones its model accepts: c.model.kwargs = ml_collections.ConfigDict({"aux": True}).
    c.model.kwargs = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.name = "shapes"
    # TFDS data_dir; "" = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    c.data.data_dir = ""
    c.data.manual_dir = ""  # where manually downloaded archives live (VOC, SBD, Cityscapes …)
    c.data.root = ""  # folder datasets: directory with images/ and masks/
    c.data.config_name = ""  # builder config (e.g. VOC "2012" or "aug")
    c.data.download = False  # let builders fetch archives themselves (VOC, SBD, ADE20K)
    c.data.class_names = ()  # folder datasets: optional names, one per class
    c.data.palette = ()  # folder datasets: optional RGB colour per class for predictions
    c.data.num_classes = 0  # folder datasets: number of classes (0 = from class_names)
    c.data.value_range = ()  # 16-bit images: (lo, hi) to scale to 0-255; () = each image's range
    c.data.skip_bad_examples = False  # count, log and skip unreadable examples instead of failing
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.crop_size = (64, 64)
    c.data.scale_range = (0.5, 2.0)
    c.data.hflip = True
    c.data.photometric = False
    c.data.cat_max_ratio = 1.0  # < 1: retry crops where one class covers more than this ratio
    c.data.mean = augment.IMAGENET_MEAN
    c.data.std = augment.IMAGENET_STD
    c.data.eval_pad_size = (64, 64)  # evaluation images are padded (not resized) to this size
    c.data.shuffle_buffer = 10_000
    c.data.cache = True  # cache decoded examples in memory (small datasets)
    c.data.num_threads = 4

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16  # global batch over all processes and devices
    c.train.num_steps = 1000
    c.train.grad_accum_steps = 1  # split each batch into this many sequential micro-batches
    c.train.aux_weight = 0.4  # weight of the auxiliary head's loss (models with one)
    c.train.label_smoothing = 0.0
    c.train.class_weights = ()  # () = unweighted; else one weight per class
    c.train.max_nonfinite_skips = 0  # non-finite loss/grad: skip up to this many updates, then stop
    c.train.log_every = 50
    c.train.eval_every = 500  # 0 = only at the end
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.num_vis_images = 4  # validation predictions written to TensorBoard

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # sgd | adamw
    c.optim.lr = 0.01
    c.optim.end_lr = 0.0
    c.optim.schedule = "poly"  # poly | cosine | constant
    c.optim.power = 0.9
    c.optim.warmup_steps = 0
    c.optim.warmup_init_factor = 0.0
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 1e-4
    c.optim.clip_grad_norm = 0.0  # 0 = no clipping

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 16

    # CPU hosts: XLA devices to split each host into (0 = auto: one per core, as many as
    # divide the batch sizes; 1 = one device). Ignored when XLA_FLAGS already sets a count.
    c.host_devices = 0
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    # (regex on state paths, "replicate" | "fsdp"); first match wins, no match = replicate.
    c.mesh.rules = (("params/.*kernel", "fsdp"),)
    c.mesh.min_shard_size = 2**14  # smaller leaves stay replicated
    return c


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses ``"runlocal,variant=r101,steps=10"`` into a ConfigDict.

    A bare word sets a boolean True; ``k=v`` is typed after the default of ``k`` (str if none).

    Raises:
      ValueError: a key that is not in ``defaults``.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"unknown config argument {key!r}; this config accepts: {', '.join(defaults)}"
            )
        if not sep:
            out[key] = True
        else:
            kind = type(defaults[key]) if defaults[key] is not None else str
            out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return out
