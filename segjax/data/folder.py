"""Folder datasets: your own ``images/`` + ``masks/`` paired by file stem.

Layout under ``config.data.root`` (one of)::

    root/images/<split>/**/<stem>.<jpg|png|tif|...>     root/images/**/<stem>.jpg
    root/masks/<split>/**/<stem>.<png|tif|...>          root/masks/**/<stem>.png
    (each subdirectory of images/ is a split)           (flat: a single split "train")

An image and its mask share the relative path without extension. Masks hold class ids: a
single-channel (8- or 16-bit) PNG or TIFF, or a palette PNG whose palette index is the class;
255 means ignore. Images may be RGB, RGBA, CMYK, palette or 8/16-bit grayscale and are stored as
RGB (see :mod:`segjax.data.image_io` for the exact conversion and ``value_range``).

With ``config.data.mask_type = "instance"`` masks hold instance ids instead, as microscopy and
annotation tools export them: 0 = background, every object its own id, in a single-channel 8-,
16- or 32-bit PNG or TIFF (ids up to 65535; palette and colour files are refused). Examples then
also carry ``"instances"`` (int32 ``[H, W]``) and ``"mask"`` is derived from them: 0 on the
background, each instance's class elsewhere. Instance masks have no ignore region (no 255).
Classes come from ``config.data.instance_classes``, a JSON file (relative to ``root``)::

    {"<image id>": {"<instance id>": <class id>, ...}, ...}

where the image id is the example's ``id`` (the stem relative to its split folder, e.g.
``"sub/c"``), or ``"<split>/<id>"`` to tell apart images of two splits that share a stem (that
form wins). The table is strict: every image needs an entry, every instance of the image a
class in ``[1, num_classes)`` (0 is the background), and every id it names must occur in the
mask; entries for images not in the folder are allowed. Without a table every instance is
class 1 and the classes default to ``("background", "object")``; with one, the classes are
named as for class masks (below).

With ``config.data.weight_map.enabled`` (instance masks only) the U-Net border weight map
(:func:`segjax.losses.unet_weight_map` with ``w0``, ``sigma``, ``class_weights`` and
``border_on_background_only``) is computed once per example while the dataset is prepared and
carried as ``"weights"`` (float32 ``[H, W]``).

With ``config.data.folder_task = "instance"`` (default ``"semantic"``: everything above) an
instance-mask folder is instance (detection) data for Mask R-CNN, as :mod:`segjax.data.coco` and
:mod:`segjax.data.instance_shapes` are: every nonzero id of a mask is one object, and examples
are ``{"image", "id", "boxes", "labels", "masks", "is_crowd", "areas"}``
(:func:`segjax.input.augment_instances.instances_from_id_map`: boxes are the masks' pixel extents
``x1, y1, x2 + 1, y2 + 1``, labels the classes of the table above or 1 without one, no crowd
regions). ``DatasetInfo.task`` is then ``"instance"`` and the class names are the ones below with
the first (the background) named ``"__background__"``, so ``config.model.num_classes`` is the
number of object classes + 1. It needs ``mask_type = "instance"`` and no weight map (a semantic
loss weight); the prepared dataset is the same for both tasks, so switching is free.

Class names come from ``config.data.class_names`` or, if empty, ``root/classes.txt`` (one per line);
``config.data.num_classes`` may be given instead (names ``class_0 ...``). The palette for colour
outputs is ``config.data.palette`` or the VOC colour map.

The folder is read once into a TFDS dataset under ``data_dir``: every file is decoded and checked
while it is prepared, so a bad file stops preparation with its name (or is skipped and counted with
``config.data.skip_bad_examples``). The prepared copy is keyed by a fingerprint of the file list
(names, sizes, modification times) and options (for instance masks also the class table's
content and the weight-map options), so editing the folder prepares it again.
"""

import dataclasses
import hashlib
import json
import os
import re

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from segjax import config as config_lib
from segjax.data import base, builders, image_io
from segjax.data.base import Source
from segjax.data.image_io import DataError
from segjax.errors import ConfigError
from segjax.evaluation.metrics import IGNORE_INDEX
from segjax.input import augment_instances

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")
MASK_TYPES = ("class", "instance")
FOLDER_TASKS = ("semantic", "instance")  # config.data.folder_task
INSTANCE_CLASS_NAMES = ("background", "object")  # instance masks without a class table
# Part of the fingerprint of weight-map datasets: bump it when unet_weight_map's output changes,
# so datasets prepared with the old maps are prepared again.
_WEIGHT_MAP_VERSION = 1
_MAX_LISTED = 10  # ids listed in one error message


def _stems(directory: str, extensions) -> dict[str, str]:
    """Relative path without extension → relative path, for the files under ``directory``."""
    stems: dict[str, str] = {}
    for rel in image_io.find_files(directory, extensions):
        stem = os.path.splitext(rel)[0]
        if stem in stems:
            raise DataError(
                f"{os.path.join(directory, rel)}: two files share the stem {stem!r} "
                f"(also {os.path.join(directory, stems[stem])}); pairing needs unique stems"
            )
        stems[stem] = rel
    return stems


def discover_splits(root: str) -> dict[str, tuple[str, str]]:
    """Split name → (images dir, masks dir) of a folder dataset.

    Raises:
      DataError: ``images/`` or ``masks/`` is missing, or a split name is not ``[A-Za-z0-9_]+``.
    """
    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    for d in (images, masks):
        if not os.path.isdir(d):
            raise DataError(f"{d}: directory not found (a folder dataset has images/ and masks/)")
    entries = sorted(e for e in os.listdir(images) if not e.startswith("."))
    subdirs = [e for e in entries if os.path.isdir(os.path.join(images, e))]
    if any(e.lower().endswith(image_io.IMAGE_EXTENSIONS) for e in entries) or not subdirs:
        return {"train": (images, masks)}
    splits = {}
    for split in subdirs:
        if not _SPLIT_NAME.match(split):
            raise DataError(
                f"{os.path.join(images, split)}: split name {split!r} must match [A-Za-z0-9_]+"
            )
        splits[split] = (os.path.join(images, split), os.path.join(masks, split))
    return splits


def pair_files(image_dir: str, mask_dir: str) -> list[tuple[str, str | None, str | None]]:
    """``(key, image path or None, mask path or None)`` for every stem, sorted by stem.

    A ``None`` marks an image without mask or a mask without image; the builder turns it into an
    error (or a counted skip).
    """
    images = _stems(image_dir, image_io.IMAGE_EXTENSIONS)
    masks = _stems(mask_dir, image_io.MASK_EXTENSIONS) if os.path.isdir(mask_dir) else {}
    pairs = []
    for stem in sorted(set(images) | set(masks)):
        image = os.path.join(image_dir, images[stem]) if stem in images else None
        mask = os.path.join(mask_dir, masks[stem]) if stem in masks else None
        pairs.append((stem, image, mask))
    return pairs


def fingerprint(root: str, options: tuple) -> str:
    """A short hash of the folder's file list (names, sizes, mtimes) and the options."""
    h = hashlib.sha1(repr((os.path.abspath(root), options)).encode())
    for sub in ("images", "masks"):
        base = os.path.join(root, sub)
        for rel in image_io.find_files(base, image_io.IMAGE_EXTENSIONS + image_io.MASK_EXTENSIONS):
            st = os.stat(os.path.join(base, rel))
            h.update(f"{sub}/{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def _ids_text(ids) -> str:
    """``ids`` as a short list for messages: at most ``_MAX_LISTED`` of them, then the count."""
    ids = [int(i) for i in ids]
    more = f" … ({len(ids)} in all)" if len(ids) > _MAX_LISTED else ""
    return f"[{', '.join(map(str, ids[:_MAX_LISTED]))}{more}]"


def _parse_instance_entry(path: str, stem: str, entry, num_classes: int) -> dict[int, int]:
    """One image's ``{instance id: class id}`` of the table at ``path``, checked."""
    if not isinstance(entry, dict):
        raise DataError(
            f"{path}: entry {stem!r} is a {type(entry).__name__}; expected an object "
            "{instance id: class id}"
        )
    classes: dict[int, int] = {}
    for id_text, cls in entry.items():
        text = id_text.strip()
        instance = int(text) if text.isascii() and text.isdigit() else -1
        if not 1 <= instance <= image_io.INSTANCE_ID_MAX:
            raise DataError(
                f"{path}: entry {stem!r}: instance id {id_text!r} is not an integer in "
                f"1..{image_io.INSTANCE_ID_MAX} (0 is the background)"
            )
        if instance in classes:
            raise DataError(f"{path}: entry {stem!r}: instance id {instance} given twice")
        if isinstance(cls, bool) or not isinstance(cls, int) or not 1 <= cls < num_classes:
            raise DataError(
                f"{path}: entry {stem!r} instance {instance}: class {cls!r} outside "
                f"[1, {num_classes}) (0 is the background; instances take classes "
                f"1..{num_classes - 1})"
            )
        classes[instance] = cls
    return classes


def load_instance_classes(path: str, num_classes: int) -> dict[str, dict[int, int]]:
    """The class table of an instance-mask folder (format in the module docstring):
    image id → {instance id → class id}.

    Raises:
      DataError: the file cannot be read or is not JSON, is not ``{stem: {id: class}}``, an id
        is not in ``1..65535`` or given twice, or a class is outside ``[1, num_classes)``.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the instance class table ({e})") from e
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno}); expected "
            "{image stem: {instance id: class id}}"
        ) from e
    if not isinstance(raw, dict):
        raise DataError(
            f"{path}: a JSON {type(raw).__name__}; expected an object "
            "{image stem: {instance id: class id}}"
        )
    return {stem: _parse_instance_entry(path, stem, e, num_classes) for stem, e in raw.items()}


@dataclasses.dataclass(frozen=True)
class WeightMapOptions:
    """Arguments of :func:`segjax.losses.unet_weight_map` for every example of a dataset."""

    w0: float
    sigma: float
    class_weights: tuple[float, ...] | None  # None = balance class frequencies per image
    border_on_background_only: bool

    def compute(self, instances: np.ndarray, class_mask: np.ndarray) -> np.ndarray:
        """The float32 ``[H, W]`` weight map of one example."""
        # Imported here: segjax.losses pulls in optax (the training stack), which reading a
        # dataset for evaluation or prediction does not need.
        from segjax import losses

        return losses.unet_weight_map(
            instances,
            class_mask,
            w0=self.w0,
            sigma=self.sigma,
            class_weights=self.class_weights,
            border_on_background_only=self.border_on_background_only,
        )


@dataclasses.dataclass(frozen=True, eq=False)
class InstanceOptions:
    """How a folder's instance masks become examples.

    Attributes:
      table_path: the class table (``""``: none, every instance is class 1).
      table: its content (:func:`load_instance_classes`).
      table_digest: hash of the table file's bytes, for the fingerprint.
      weight_map: the weight-map options, or None when the map is off.
    """

    table_path: str
    table: dict[str, dict[int, int]]
    table_digest: str
    weight_map: WeightMapOptions | None

    def fingerprint_options(self) -> tuple:
        """What of these options the prepared examples depend on."""
        weights = None
        if self.weight_map is not None:
            weights = (dataclasses.astuple(self.weight_map), _WEIGHT_MAP_VERSION)
        return ("instance", self.table_digest, weights)

    def class_mask(self, instances: np.ndarray, *, split: str, key: str, mask_path: str):
        """The uint8 class mask of ``instances`` (the decoded mask at ``mask_path`` of example
        ``key`` in ``split``): 0 on the background, each instance's class elsewhere.

        Raises:
          DataError: with a table: the image has no entry, an instance has no class, or the
            entry names an id the mask does not hold.
        """
        if not self.table_path:
            return (instances != 0).astype(np.uint8)
        name = f"{split}/{key}" if f"{split}/{key}" in self.table else key
        if name not in self.table:
            raise DataError(
                f"{mask_path}: image {key!r} has no entry in {self.table_path} (every image "
                "needs the classes of its instances)"
            )
        entry = self.table[name]
        present = np.unique(instances)
        present = set(present[present != 0].tolist())
        if missing := sorted(present - set(entry)):
            raise DataError(
                f"{mask_path}: instance ids {_ids_text(missing)} have no class in "
                f"{self.table_path} entry {name!r}"
            )
        if absent := sorted(set(entry) - present):
            raise DataError(
                f"{self.table_path}: entry {name!r} names instance ids {_ids_text(absent)} "
                f"that are not in {mask_path}"
            )
        lookup = np.zeros(image_io.INSTANCE_ID_MAX + 1, np.uint8)
        lookup[list(entry)] = list(entry.values())
        return lookup[instances]


def check_mask_type(data_config) -> bool:
    """Whether ``data_config`` reads instance masks (``mask_type``), after checking that the
    instance-only options are not set for class masks.

    Raises:
      ValueError: ``mask_type`` unknown, or ``weight_map.enabled`` / ``instance_classes`` with
        class masks.
    """
    mask_type, table_value = data_config.mask_type, data_config.instance_classes
    if mask_type not in MASK_TYPES:
        raise ConfigError(f"config.data.mask_type={mask_type!r}; expected 'class' or 'instance'")
    if mask_type == "class" and data_config.weight_map.enabled:
        raise ConfigError(
            "config.data.weight_map.enabled=True needs config.data.mask_type='instance' "
            "(got 'class'): the border weights are computed from instance ids"
        )
    if mask_type == "class" and table_value:
        raise ConfigError(
            f"config.data.instance_classes={table_value!r} needs "
            "config.data.mask_type='instance' (got 'class')"
        )
    return mask_type == "instance"


def check_folder_task(data_config) -> bool:
    """Whether ``data_config`` reads the folder as instance (detection) data
    (``folder_task``), after checking that the mask options allow it.

    Raises:
      ValueError: ``folder_task`` unknown, or ``"instance"`` with class masks or with the
        weight map.
    """
    task = data_config.folder_task
    if task not in FOLDER_TASKS:
        raise ConfigError(f"config.data.folder_task={task!r}; expected 'semantic' or 'instance'")
    if task == "semantic":
        return False
    if data_config.mask_type != "instance":
        raise ConfigError(
            f"config.data.folder_task='instance' needs config.data.mask_type='instance' (got "
            f"{data_config.mask_type!r}): objects are read from instance-id masks"
        )
    if data_config.weight_map.enabled:
        raise ConfigError(
            "config.data.weight_map.enabled=True with config.data.folder_task='instance'; "
            "expected False (the border weight map is a semantic U-Net loss weight)"
        )
    return True


def detection_example(ex: dict) -> dict:
    """The instance contract's example (``image``, ``id``, ``boxes``, ``labels``, ``masks``,
    ``is_crowd``, ``areas``) of one stored instance-mask example, inside ``tf.data``: one
    object per nonzero id, its label the derived class mask's value on it."""
    example = base.instance_example(ex)
    objects = augment_instances.instances_from_id_map(example["instances"], example["mask"])
    return {"image": example["image"], "id": example["id"], **objects}


def instance_options(data_config, num_classes: int) -> InstanceOptions | None:
    """The instance-mask options of ``data_config`` (``mask_type``, ``instance_classes``,
    ``weight_map``), checked; None for class masks.

    Raises:
      ValueError: see :func:`check_mask_type`; fewer than 2 classes; bad weight-map options.
      DataError: the class table is missing or bad (:func:`load_instance_classes`).
    """
    if not check_mask_type(data_config):
        return None
    table_value, wm = data_config.instance_classes, data_config.weight_map
    if num_classes < 2:
        raise ConfigError(
            f"config.data.mask_type='instance' needs at least 2 classes (background + objects), "
            f"got {num_classes}"
        )
    table, digest, table_path = {}, "", ""
    if table_value:
        table_path = os.path.join(data_config.root, table_value)
        if not os.path.isfile(table_path):
            raise DataError(
                f"config.data.instance_classes={table_value!r}: file not found ({table_path})"
            )
        table = load_instance_classes(table_path, num_classes)
        with open(table_path, "rb") as f:
            digest = hashlib.sha1(f.read()).hexdigest()
    weight_map = _weight_map_options(wm, num_classes) if wm.enabled else None
    return InstanceOptions(table_path, table, digest, weight_map)


def _weight_map_options(wm, num_classes: int) -> WeightMapOptions:
    """``config.data.weight_map`` as :class:`WeightMapOptions`, checked (ValueError)."""
    if not float(wm.sigma) > 0 or not float(wm.w0) >= 0:
        raise ConfigError(
            f"config.data.weight_map: w0={wm.w0}, sigma={wm.sigma}; expected w0 >= 0, sigma > 0"
        )
    class_weights = tuple(float(w) for w in wm.class_weights) or None
    if class_weights is not None and len(class_weights) != num_classes:
        raise ConfigError(
            f"config.data.weight_map.class_weights has {len(class_weights)} weights for "
            f"{num_classes} classes; expected one per class or () (balance per image)"
        )
    return WeightMapOptions(
        w0=float(wm.w0),
        sigma=float(wm.sigma),
        class_weights=class_weights,
        border_on_background_only=bool(wm.border_on_background_only),
    )


class FolderConfig(tfds.core.BuilderConfig):
    """One folder + options; the name embeds the fingerprint. ``instance`` holds the
    :class:`InstanceOptions` of instance masks (None: class masks)."""

    def __init__(
        self, *, root, num_classes, value_range, skip_bad_examples, instance=None, **kwargs
    ):
        super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
        self.root = root
        self.num_classes = num_classes
        self.value_range = tuple(value_range or ())
        self.skip_bad_examples = skip_bad_examples
        self.instance = instance


class SegjaxFolder(tfds.core.GeneratorBasedBuilder):
    """A folder of images and masks (see the module docstring)."""

    name = "segjax_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        instance = self.builder_config.instance
        extra = None
        if instance is not None:
            extra = builders.instance_features(weights=instance.weight_map is not None)
        return builders.segmentation_info(self, __doc__, extra_features=extra)

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        generators = {}
        for split, (image_dir, mask_dir) in discover_splits(cfg.root).items():
            pairs = pair_files(image_dir, mask_dir)
            if not any(image for _, image, _ in pairs):
                raise DataError(f"{image_dir}: split {split!r} is empty; no image files found")
            generators[split] = self._generate_examples(pairs, split)
        return generators

    def _generate_examples(self, pairs, split):
        cfg = self.builder_config

        def make(pair):
            key, image_path, mask_path = pair
            if mask_path is None:
                raise DataError(
                    f"{image_path}: image without mask (expected masks/.../{key}.png or .tif)"
                )
            if image_path is None:
                raise DataError(f"{mask_path}: mask without image (no images/.../{key}.*)")
            if cfg.instance is not None:
                mask, extra = self._instance_fields(key, mask_path, split)
            else:
                mask = image_io.decode_mask(image_io.read_bytes(mask_path), path=mask_path)
                extra = None
            return builders.file_example(
                key,
                image_path,
                mask,
                mask_path,
                num_classes=cfg.num_classes,
                value_range=cfg.value_range,
                extra=extra,
            )

        counter = image_io.SkipCounter(cfg.skip_bad_examples)
        yield from image_io.generate_checked(pairs, make, counter, f"{cfg.root} split {split!r}")

    def _instance_fields(self, key, mask_path, split):
        """``(class mask, extra fields)`` of an instance mask file: the derived class mask, and
        the ids plus, when enabled, the weight map."""
        cfg = self.builder_config
        instances = image_io.decode_instance_mask(image_io.read_bytes(mask_path), path=mask_path)
        mask = cfg.instance.class_mask(instances, split=split, key=key, mask_path=mask_path)
        extra = {"instances": instances}
        if cfg.instance.weight_map is not None:
            extra["weights"] = cfg.instance.weight_map.compute(instances, mask)
        return mask, extra


def class_names_of(data_config, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Class names from the config, ``root/classes.txt``, ``num_classes`` generic names, or
    ``default`` when none of those is set.

    Raises:
      DataError: no way to know the number of classes, or the sources disagree.
    """
    root = data_config.root
    names = tuple(data_config.class_names or ())
    names_file = os.path.join(root, "classes.txt")
    if not names and os.path.isfile(names_file):
        with open(names_file) as f:
            names = tuple(line.strip() for line in f if line.strip())
    num_classes = int(data_config.num_classes or 0)
    if not names and num_classes <= 0 and default:
        return tuple(default)
    if not names:
        if num_classes <= 0:
            raise DataError(
                f"{root}: number of classes unknown; set config.data.num_classes, "
                f"config.data.class_names, or write {names_file} (one name per line)"
            )
        return tuple(f"class_{i}" for i in range(num_classes))
    if num_classes and num_classes != len(names):
        raise DataError(
            f"{root}: config.data.num_classes={num_classes} but {len(names)} class names given"
        )
    if len(names) > IGNORE_INDEX:
        raise DataError(
            f"{root}: {len(names)} classes; uint8 masks ({IGNORE_INDEX} = ignore) fit "
            f"{IGNORE_INDEX}"
        )
    return names


def _with_schema_defaults(data_config) -> ml_collections.ConfigDict:
    """``data_config`` with the schema default (:mod:`segjax.config`) of every key it lacks.

    Configs assembled by hand (scripts, tests) may predate newer keys such as ``mask_type``;
    filling them from the schema keeps every default in one place.
    """

    def fill(config, schema):
        for key, default in schema.items():
            if key not in config:
                config[key] = default
            elif isinstance(default, ml_collections.ConfigDict):
                fill(config[key], default)

    merged = ml_collections.ConfigDict(data_config.to_dict())
    fill(merged, config_lib.base_config().data)
    return merged


def load(data_config) -> Source:
    """The ``folder`` dataset at ``data_config.root``, prepared (when new or changed).

    Reads ``root``, ``num_classes``, ``class_names``, ``palette``, ``value_range``,
    ``skip_bad_examples``, ``data_dir``, ``mask_type``, ``instance_classes``, ``weight_map``
    and ``folder_task`` of ``data_config`` (keys it lacks take the schema's defaults).

    Raises:
      DataError: a problem with the folder's files (named in the message).
      ValueError: an invalid option (see :func:`instance_options` and
        :func:`check_folder_task`).
    """
    data_config = _with_schema_defaults(data_config)
    root = data_config.root
    if not root or not os.path.isdir(root):
        raise DataError(f"config.data.root={root!r}: folder dataset directory not found")
    is_instance = check_mask_type(data_config)
    detection = check_folder_task(data_config)
    names = class_names_of(
        data_config,
        default=INSTANCE_CLASS_NAMES if is_instance and not data_config.instance_classes else (),
    )
    instance = instance_options(data_config, len(names))
    palette = tuple(tuple(int(c) for c in rgb) for rgb in (data_config.palette or ()))
    if palette and len(palette) != len(names):
        raise DataError(f"config.data.palette has {len(palette)} colours for {len(names)} classes")
    value_range = tuple(float(v) for v in (data_config.value_range or ()))
    if value_range and len(value_range) != 2:
        raise DataError(f"config.data.value_range={value_range}; expected (low, high) or ()")
    skip = bool(data_config.skip_bad_examples)
    # Class-mask datasets keep the fingerprint they had before instance masks existed.
    options = (len(names), value_range, skip)
    if instance is not None:
        options += instance.fingerprint_options()
    slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(os.path.abspath(root)).lower()).strip("_")
    config = FolderConfig(
        name=f"{slug or 'folder'}_{fingerprint(root, options)}",
        root=root,
        num_classes=len(names),
        value_range=value_range,
        skip_bad_examples=skip,
        instance=instance,
    )
    builder = SegjaxFolder(config=config, data_dir=data_config.data_dir or None)
    builders.prepare(builder, where=f"folder {root}")
    return _source(builder, names, palette, instance, detection=detection)


def _source(builder, names, palette, instance: InstanceOptions | None, *, detection: bool):
    """The :class:`Source` of a prepared folder ``builder``: semantic examples, or with
    ``detection`` the instance contract's (see the module docstring)."""
    if detection:
        # Class 0 is the background whatever classes.txt calls it; instance datasets name it
        # "__background__" (torchvision's convention, as coco and instance_shapes do).
        return Source.from_builder(
            builder,
            name="folder",
            class_names=("__background__", *names[1:]),
            palette=palette,
            to_example=detection_example,
            fields=augment_instances.INSTANCE_FIELDS,
            task="instance",
            category_ids=(),
        )
    if instance is None:
        return Source.from_builder(builder, name="folder", class_names=names, palette=palette)
    fields = ("instances", "weights") if instance.weight_map is not None else ("instances",)
    return Source.from_builder(
        builder,
        name="folder",
        class_names=names,
        palette=palette,
        to_example=base.instance_example,
        fields=fields,
    )
