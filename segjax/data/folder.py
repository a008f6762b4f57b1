"""Folder datasets: your own ``images/`` + ``masks/`` paired by file stem.

Layout under ``config.data.root`` (one of)::

    root/images/<split>/**/<stem>.<jpg|png|tif|...>     root/images/**/<stem>.jpg
    root/masks/<split>/**/<stem>.<png|tif|...>          root/masks/**/<stem>.png
    (each subdirectory of images/ is a split)           (flat: a single split "train")

An image and its mask share the relative path without extension. Masks hold class ids: a
single-channel (8- or 16-bit) PNG or TIFF, or a palette PNG whose palette index is the class;
255 means ignore. Images may be RGB, RGBA, CMYK, palette or 8/16-bit grayscale and are stored as
RGB (see :mod:`segjax.data.image_io` for the exact conversion and ``value_range``).

Class names come from ``config.data.class_names`` or, if empty, ``root/classes.txt`` (one per line);
``config.data.num_classes`` may be given instead (names ``class_0 ...``). The palette for colour
outputs is ``config.data.palette`` or the VOC colour map.

The folder is read once into a TFDS dataset under ``data_dir``: every file is decoded and checked
while it is prepared, so a bad file stops preparation with its name (or is skipped and counted with
``config.data.skip_bad_examples``). The prepared copy is keyed by a fingerprint of the file list
(names, sizes, modification times) and options, so editing the folder prepares it again.
"""

import hashlib
import os
import re

import tensorflow_datasets as tfds

from segjax.data import builders, image_io
from segjax.data.base import Source
from segjax.data.image_io import DataError
from segjax.metrics import IGNORE_INDEX

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")


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


class FolderConfig(tfds.core.BuilderConfig):
    """One folder + options; the name embeds the fingerprint."""

    def __init__(self, *, root, num_classes, value_range, skip_bad_examples, **kwargs):
        super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
        self.root = root
        self.num_classes = num_classes
        self.value_range = tuple(value_range or ())
        self.skip_bad_examples = skip_bad_examples


class SegjaxFolder(tfds.core.GeneratorBasedBuilder):
    """A folder of images and masks (see the module docstring)."""

    name = "segjax_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return builders.segmentation_info(self, __doc__)

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
            mask = image_io.decode_mask(image_io.read_bytes(mask_path), path=mask_path)
            return builders.file_example(
                key,
                image_path,
                mask,
                mask_path,
                num_classes=cfg.num_classes,
                value_range=cfg.value_range,
            )

        counter = image_io.SkipCounter(cfg.skip_bad_examples)
        yield from image_io.generate_checked(pairs, make, counter, f"{cfg.root} split {split!r}")


def class_names_of(data_config) -> tuple[str, ...]:
    """Class names from the config, ``root/classes.txt``, or ``num_classes`` generic names.

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


def load(data_config) -> Source:
    """The ``folder`` dataset at ``data_config.root``, prepared (when new or changed).

    Reads ``root``, ``num_classes``, ``class_names``, ``palette``, ``value_range``,
    ``skip_bad_examples`` and ``data_dir`` of ``data_config``.
    """
    root = data_config.root
    if not root or not os.path.isdir(root):
        raise DataError(f"config.data.root={root!r}: folder dataset directory not found")
    names = class_names_of(data_config)
    palette = tuple(tuple(int(c) for c in rgb) for rgb in (data_config.palette or ()))
    if palette and len(palette) != len(names):
        raise DataError(f"config.data.palette has {len(palette)} colours for {len(names)} classes")
    value_range = tuple(float(v) for v in (data_config.value_range or ()))
    if value_range and len(value_range) != 2:
        raise DataError(f"config.data.value_range={value_range}; expected (low, high) or ()")
    skip = bool(data_config.skip_bad_examples)
    options = (len(names), value_range, skip)
    slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(os.path.abspath(root)).lower()).strip("_")
    config = FolderConfig(
        name=f"{slug or 'folder'}_{fingerprint(root, options)}",
        root=root,
        num_classes=len(names),
        value_range=value_range,
        skip_bad_examples=skip,
    )
    builder = SegjaxFolder(config=config, data_dir=data_config.data_dir or None)
    builders.prepare(builder, where=f"folder {root}")
    return Source.from_builder(builder, name="folder", class_names=names, palette=palette)
