"""COCO-format instance segmentation (TFDS builder): COCO 2017, or any COCO-format export.

Two ways to name the data (``config.data.name = "coco"``):

- **COCO 2017** (every ``config.data.coco`` path empty): ``annotations/instances_train2017.json``
  and ``instances_val2017.json`` with the image folders ``train2017/`` and ``val2017/``, read from
  the manual directory as extracted folders or as the zips ``annotations_trainval2017.zip``,
  ``train2017.zip``, ``val2017.zip`` (or downloaded with ``config.data.download``);
- **your export** (CVAT, Label Studio, Roboflow, labelme2coco …): ``config.data.coco.train_json``
  / ``train_images`` and ``val_json`` / ``val_images``, an annotation file and the folder its
  ``file_name`` s are relative to. Either split may be left out.

Splits ``train`` and ``validation``. Each example is one image with all its objects
(``segjax.data.base`` module docstring, instance contract): ``boxes`` (COCO's ``[x, y, w, h]`` as
``x1, y1, x2, y2``, clipped to the image), ``labels``, ``masks`` (polygons and RLE, compressed
or not, rasterised by pycocotools), ``is_crowd`` (``iscrowd`` objects are kept, flagged) and
``areas`` (the annotation's ``area``, else the mask's pixel count).

Labels: ``config.data.coco.label_map = "contiguous"`` numbers the categories of the annotation
files 1..K in ascending id order (class names ``("__background__", names…)``,
``DatasetInfo.category_ids[label]`` = the category id); ``"category_id"`` makes the label the
category id itself, with ``"N/A"`` names in the gaps: COCO's 91 slots, the layout of
torchvision's COCO models, so their weights apply as they are. The prepared data stores the
contiguous labels; the label map is applied when reading, so changing it prepares nothing again.

Every annotation is checked while the dataset is prepared; a bad one stops preparation with one
line naming the annotation file, the annotation (or image) and what was expected. Geometry
problems of single annotations (a box of zero size, a polygon of fewer than three points or
outside the image, an RLE of the wrong size, no segmentation) can be dropped instead and counted
(``config.data.coco.invalid_annotations = "drop"``: COCO 2017's own train file has a few boxes of
zero height). Images without annotations stop preparation unless
``config.data.coco.empty_images`` is ``"keep"`` (all-background examples), ``"drop"`` or
``"drop_train"`` (dropped from ``train``, kept in ``validation``: torchvision's reference recipe,
which trains without them and evaluates on every image). Image files that are missing or
unreadable are skipped and counted with ``config.data.skip_bad_examples``.

The prepared copy is keyed by a fingerprint of the annotation files (path, size, modification
time), the image folders and the options that change what is stored, so editing an export
prepares it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from pycocotools import mask as mask_utils

from segjax import config as config_lib
from segjax.data import builders, image_io
from segjax.data.base import Source
from segjax.data.image_io import DataError
from segjax.errors import ConfigError
from segjax.runtime.lazy_imports import tf

BACKGROUND = "__background__"
PLACEHOLDER = "N/A"  # names of the category ids a dataset does not use (label_map="category_id")
FIELDS = ("boxes", "labels", "masks", "is_crowd", "areas")
SPLITS = {"train": "train", "validation": "val"}  # split → config key prefix
LABEL_MAPS = ("contiguous", "category_id")
EMPTY_IMAGES = ("error", "keep", "drop", "drop_train")
INVALID_ANNOTATIONS = ("error", "drop")
# Polygon points may lie this far (pixels) outside the image: annotation tools snap to pixel
# edges or centres and round; further out means the wrong image or a wrong size in the file.
EDGE_TOLERANCE = 1.0
# Part of the fingerprint: bump it when what is stored changes, so old copies are prepared again.
_FORMAT_VERSION = 1
_MAX_LISTED = 5  # dropped items named in one log line
_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)  # [256, 8], MSB first

ANNOTATIONS_ZIP = "annotations_trainval2017.zip"
TRAIN_ZIP = "train2017.zip"
VAL_ZIP = "val2017.zip"
ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
TRAIN_URL = "http://images.cocodataset.org/zips/train2017.zip"
VAL_URL = "http://images.cocodataset.org/zips/val2017.zip"
COCO2017_FILES = {"train": "instances_train2017.json", "validation": "instances_val2017.json"}
MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put these files (zips as downloaded, or their extracted folders) in the manual directory
(`config.data.manual_dir`, default <data_dir>/downloads/manual):

  {ANNOTATIONS_ZIP}  (241 MB)  from {ANNOTATIONS_URL}
      or the extracted folder annotations/ (instances_train2017.json, instances_val2017.json)
  {TRAIN_ZIP}  (18 GB)  from {TRAIN_URL}
      or the extracted folder train2017/
  {VAL_ZIP}  (778 MB)  from {VAL_URL}
      or the extracted folder val2017/

With `config.data.download=True` the builder downloads them itself. For a COCO-format export of
your own, set config.data.coco.train_json / train_images (and val_json / val_images) instead.
"""


def _is_annotations_root(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in COCO2017_FILES.values())


ANNOTATIONS = builders.ManualArchive(
    filename=ANNOTATIONS_ZIP,
    url=ANNOTATIONS_URL,
    size="241 MB",
    what="COCO 2017 annotations",
    subdirs=("annotations", "coco/annotations"),
    is_root=_is_annotations_root,
)


def _images_archive(folder: str, url: str, size: str) -> builders.ManualArchive:
    """The zip of one COCO 2017 image folder (``train2017`` / ``val2017``)."""
    return builders.ManualArchive(
        filename=f"{folder}.zip",
        url=url,
        size=size,
        what=f"COCO 2017 {folder} images",
        subdirs=(folder, f"coco/{folder}"),
        is_root=os.path.isdir,
    )


IMAGES = {
    "train": _images_archive("train2017", TRAIN_URL, "18 GB"),
    "validation": _images_archive("val2017", VAL_URL, "778 MB"),
}


# ---------------------------------------------------------------------------------------------
# Options


@dataclasses.dataclass(frozen=True)
class SplitFiles:
    """One split of an export: its annotation file and the folder of its images."""

    annotations: str
    images: str


@dataclasses.dataclass(frozen=True)
class CocoOptions:
    """``config.data.coco`` (and ``skip_bad_examples``), checked.

    Attributes:
      files: split → its files; empty for COCO 2017 from the manual directory.
      label_map: ``"contiguous"`` | ``"category_id"`` (applied when reading).
      empty_images: ``"error"`` | ``"keep"`` | ``"drop"`` | ``"drop_train"``.
      invalid_annotations: ``"error"`` | ``"drop"``.
      skip_bad_examples: skip (and count) images whose file is missing or unreadable.
    """

    files: dict[str, SplitFiles]
    label_map: str
    empty_images: str
    invalid_annotations: str
    skip_bad_examples: bool

    def stored_options(self) -> tuple:
        """What of these options the prepared examples depend on (not ``label_map``)."""
        return (self.empty_images, self.invalid_annotations, self.skip_bad_examples)


def _choice(value: str, key: str, choices: Iterable[str]) -> str:
    if value not in choices:
        raise ConfigError(
            f"config.data.coco.{key}={value!r}; expected one of {', '.join(map(repr, choices))}"
        )
    return value


def _split_files(coco, split: str, prefix: str) -> SplitFiles | None:
    """The files of ``split`` from ``<prefix>_json`` / ``<prefix>_images``, or None if unset."""
    json_path, images = coco[f"{prefix}_json"], coco[f"{prefix}_images"]
    if not json_path and not images:
        return None
    if not json_path or not images:
        missing, given = ("json", "images") if not json_path else ("images", "json")
        raise ConfigError(
            f"config.data.coco.{prefix}_{given} is set but {prefix}_{missing} is not; split "
            f"{split!r} needs its annotation file and the folder its file_names are relative to"
        )
    return SplitFiles(os.path.abspath(json_path), os.path.abspath(images))


def read_options(data_config) -> CocoOptions:
    """The COCO options of ``data_config`` (``coco.*`` and ``skip_bad_examples``); keys a
    hand-made config lacks take the schema's defaults (:mod:`segjax.config`).

    Raises:
      ValueError: an unknown choice, or a split given by only one of its two paths.
    """
    coco = config_lib.base_config().data.coco
    if "coco" in data_config:
        coco.update(data_config.coco)
    files = {}
    for split, prefix in SPLITS.items():
        if (found := _split_files(coco, split, prefix)) is not None:
            files[split] = found
    return CocoOptions(
        files=files,
        label_map=_choice(coco.label_map, "label_map", LABEL_MAPS),
        empty_images=_choice(coco.empty_images, "empty_images", EMPTY_IMAGES),
        invalid_annotations=_choice(
            coco.invalid_annotations, "invalid_annotations", INVALID_ANNOTATIONS
        ),
        skip_bad_examples=bool(data_config.skip_bad_examples),
    )


def fingerprint(options: CocoOptions) -> str:
    """A short hash of the files an export is read from (annotation files: path, size, mtime;
    image folders: path, mtime) and the stored options.

    The image files themselves are not listed (a COCO folder holds 118k of them); adding or
    removing one changes its folder's mtime, editing one in place does not.
    """
    h = hashlib.sha1(repr((_FORMAT_VERSION, options.stored_options())).encode())
    for split, files in sorted(options.files.items()):
        h.update(split.encode())
        for path in (files.annotations, files.images):
            st = os.stat(path) if os.path.exists(path) else None
            stamp = (st.st_size, st.st_mtime_ns) if st else "missing"
            h.update(f"\0{path}\0{stamp}".encode())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Reading and checking an annotation file


class InvalidAnnotationError(DataError):
    """One annotation whose geometry cannot be used (droppable with
    ``invalid_annotations="drop"``), as opposed to a broken file."""


@dataclasses.dataclass
class ImageRecord:
    """One image of an annotation file and its checked objects.

    ``objects`` holds ``(annotation id, label, box x1y1x2y2, is_crowd, area or None,
    segmentation)`` per object, ``label`` the contiguous one.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    objects: list = dataclasses.field(default_factory=list)


def read_annotation_file(path: str) -> dict:
    """The parsed COCO annotation file at ``path``, its three lists present.

    Raises:
      DataError: unreadable, empty, not JSON, not an object, without ``images`` /
        ``annotations`` / ``categories`` lists, or with no image or no category.
    """
    expected = "expected a COCO object with 'images', 'annotations' and 'categories' lists"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the annotation file ({e})") from e
    if not text.strip():
        raise DataError(f"{path}: annotation file is empty; {expected}")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not JSON ({e.msg} at line {e.lineno}, column {e.colno}); {expected}"
        ) from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a JSON {type(raw).__name__}; {expected}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key), list):
            what = "no" if key not in raw else f"a {type(raw[key]).__name__} as"
            raise DataError(f"{path}: {what} {key!r} key; {expected}")
    for key in ("images", "categories"):
        if not raw[key]:
            raise DataError(f"{path}: annotation file has no {key}; {expected}")
    return raw


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_categories(path: str, raw: dict) -> dict[int, str]:
    """Category id → name of an annotation file.

    Raises:
      DataError: an entry without an integer ``id`` or a string ``name``, or an id given twice.
    """
    categories: dict[int, str] = {}
    for index, entry in enumerate(raw["categories"]):
        if not isinstance(entry, dict) or not _integer(entry.get("id")):
            raise DataError(f"{path}: categories[{index}] has no integer 'id' ({entry!r:.80})")
        cid, name = entry["id"], entry.get("name")
        if not isinstance(name, str):
            raise DataError(f"{path}: category {cid} has no string 'name' (got {name!r})")
        if cid in categories:
            raise DataError(f"{path}: category id {cid} given twice")
        categories[cid] = name
    return categories


def merge_categories(per_file: dict[str, dict[int, str]]) -> dict[int, str]:
    """The union of the categories of several annotation files, sorted by id.

    Raises:
      DataError: two files give one id different names.
    """
    merged: dict[int, str] = {}
    origin: dict[int, str] = {}
    for path, categories in per_file.items():
        for cid, name in categories.items():
            if cid in merged and merged[cid] != name:
                raise DataError(
                    f"{path}: category {cid} is named {name!r} but {merged[cid]!r} in "
                    f"{origin[cid]}; splits must agree on their categories"
                )
            merged.setdefault(cid, name)
            origin.setdefault(cid, path)
    return dict(sorted(merged.items()))


def parse_images(path: str, raw: dict) -> dict[int, ImageRecord]:
    """Image id → :class:`ImageRecord` (without objects) of an annotation file.

    Raises:
      DataError: an entry without an integer ``id``, a string ``file_name`` or positive integer
        ``width`` and ``height``, or an id given twice.
    """
    images: dict[int, ImageRecord] = {}
    for index, entry in enumerate(raw["images"]):
        if not isinstance(entry, dict) or not _integer(entry.get("id")):
            raise DataError(f"{path}: images[{index}] has no integer 'id' ({entry!r:.80})")
        image_id, file_name = entry["id"], entry.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DataError(f"{path}: image {image_id} has no 'file_name' (got {file_name!r})")
        width, height = entry.get("width"), entry.get("height")
        if not (_integer(width) and _integer(height) and width > 0 and height > 0):
            raise DataError(
                f"{path}: image {image_id} ({file_name}) has width={width!r}, "
                f"height={height!r}; expected positive integers"
            )
        if image_id in images:
            raise DataError(f"{path}: image id {image_id} given twice")
        images[image_id] = ImageRecord(image_id, file_name, width, height)
    return images


def _finite_numbers(values) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def _check_polygons(where: str, polygons: list, image: ImageRecord) -> None:
    """Raises :class:`InvalidAnnotationError` for a polygon of fewer than three points, of
    non-numbers, or with a point further than :data:`EDGE_TOLERANCE` outside the image."""
    if not polygons:
        raise InvalidAnnotationError(f"{where}: segmentation is an empty polygon list")
    for k, poly in enumerate(polygons):
        if not _finite_numbers(poly) or len(poly) % 2:
            raise InvalidAnnotationError(
                f"{where}: polygon {k} is not a flat list [x1, y1, x2, y2, …] of finite numbers"
            )
        if len(poly) < 6:
            raise InvalidAnnotationError(
                f"{where}: polygon {k} has {len(poly) // 2} point(s); expected at least 3"
            )
        xy = np.asarray(poly, np.float64).reshape(-1, 2)
        limit = np.array([image.width, image.height]) + EDGE_TOLERANCE
        outside = (xy < -EDGE_TOLERANCE) | (xy > limit)
        if outside.any():
            x, y = xy[np.flatnonzero(outside.any(1))[0]]
            raise InvalidAnnotationError(
                f"{where}: polygon {k} point ({x:g}, {y:g}) is outside the "
                f"{image.width}x{image.height} (WxH) image"
            )


def _check_rle(where: str, rle: dict, image: ImageRecord) -> None:
    """Raises :class:`InvalidAnnotationError` for an RLE of another size than the image, or
    uncompressed counts that do not cover it."""
    size, counts = rle.get("size"), rle.get("counts")
    if size != [image.height, image.width]:
        raise InvalidAnnotationError(
            f"{where}: RLE size {size!r}; expected [height, width] = "
            f"[{image.height}, {image.width}] of the image"
        )
    if isinstance(counts, list):
        if not all(_integer(c) and c >= 0 for c in counts):
            raise InvalidAnnotationError(f"{where}: RLE counts hold a negative or non-integer")
        if sum(counts) != image.height * image.width:
            raise InvalidAnnotationError(
                f"{where}: RLE counts cover {sum(counts)} pixels; expected "
                f"{image.height * image.width} ({image.height}x{image.width})"
            )
    elif not isinstance(counts, str) or not counts:
        raise InvalidAnnotationError(
            f"{where}: RLE 'counts' is {type(counts).__name__}; expected a list of run lengths "
            "or a compressed string"
        )


def _check_box(where: str, bbox, image: ImageRecord) -> list[float]:
    """COCO's ``[x, y, w, h]`` as ``[x1, y1, x2, y2]`` clipped to the image.

    Raises:
      InvalidAnnotationError: not four finite numbers, a non-positive width or height, or nothing
        left inside the image.
    """
    if not _finite_numbers(bbox) or len(bbox) != 4:
        raise InvalidAnnotationError(f"{where}: bbox {bbox!r:.60}; expected [x, y, width, height]")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise InvalidAnnotationError(
            f"{where}: bbox {bbox} has width {w:g} and height {h:g}; expected both > 0"
        )
    box = [min(max(x, 0.0), image.width), min(max(y, 0.0), image.height)]
    box += [min(max(x + w, 0.0), image.width), min(max(y + h, 0.0), image.height)]
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InvalidAnnotationError(
            f"{where}: bbox {bbox} lies outside the {image.width}x{image.height} (WxH) image"
        )
    return box


def _check_segmentation(where: str, seg, image: ImageRecord) -> None:
    if isinstance(seg, list):
        _check_polygons(where, seg, image)
    elif isinstance(seg, dict) and "counts" in seg:
        _check_rle(where, seg, image)
    else:
        raise InvalidAnnotationError(
            f"{where}: {'no' if seg is None else 'unknown'} segmentation ({seg!r:.40}); "
            "expected polygons [[x1, y1, …], …] or an RLE {'size', 'counts'} (instance "
            "datasets need masks)"
        )


def check_annotation(
    path: str, ann, images: dict[int, ImageRecord], labels: dict[int, int]
) -> tuple[ImageRecord, tuple]:
    """The image of one annotation and its object tuple (see :class:`ImageRecord`).

    Args:
      path: the annotation file (for messages).
      ann: the annotation entry.
      images: the file's images (:func:`parse_images`).
      labels: category id → contiguous label.

    Raises:
      DataError: the entry is not an object, or its ``image_id`` or ``category_id`` is unknown.
      InvalidAnnotationError: its box, polygons or RLE cannot be used (see the checks above).
    """
    if not isinstance(ann, dict):
        raise DataError(f"{path}: an annotation is a {type(ann).__name__}; expected an object")
    ann_id = ann.get("id", "(no id)")
    image_id = ann.get("image_id")
    if image_id not in images:
        raise DataError(
            f"{path}: annotation {ann_id} refers to image_id {image_id!r}, which is not in 'images'"
        )
    image = images[image_id]
    where = f"{path}: annotation {ann_id} (image {image.file_name})"
    category = ann.get("category_id")
    if not _integer(category) or category not in labels:
        raise DataError(
            f"{where}: category_id {category!r} is not in 'categories' (ids: "
            f"{', '.join(map(str, sorted(labels)))})"
        )
    seg = ann.get("segmentation")
    _check_segmentation(where, seg, image)
    if "bbox" in ann:
        box = _check_box(where, ann["bbox"], image)
    else:  # the box of the mask, as pycocotools computes it
        box = _check_box(where, mask_utils.toBbox(_rle(seg, image)).tolist(), image)
    area = ann.get("area")
    area = float(area) if _finite_numbers([area]) else None
    return image, (ann_id, labels[category], box, bool(ann.get("iscrowd", 0)), area, seg)


def _rle(seg, image: ImageRecord) -> dict:
    """A checked segmentation as one pycocotools RLE."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, image.height, image.width))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, image.height, image.width)
    return {"size": seg["size"], "counts": seg["counts"].encode()}


def _log_dropped(path: str, what: str, items: list[str]) -> None:
    if items:
        more = f" … ({len(items)} in all)" if len(items) > _MAX_LISTED else ""
        logging.warning(
            "%s: dropped %d %s: %s%s", path, len(items), what, "; ".join(items[:_MAX_LISTED]), more
        )


def index_split(
    path: str,
    raw: dict,
    labels: dict[int, int],
    *,
    split: str,
    options: CocoOptions,
) -> list[ImageRecord]:
    """The images of one annotation file with their checked objects, in image id order, after
    the ``invalid_annotations`` and ``empty_images`` policies.

    Raises:
      DataError: a bad image entry or annotation, or an image without annotations where
        ``empty_images`` does not allow it.
    """
    images = parse_images(path, raw)
    dropped = []
    for ann in raw["annotations"]:
        try:
            image, obj = check_annotation(path, ann, images, labels)
        except InvalidAnnotationError as e:
            if options.invalid_annotations != "drop":
                raise DataError(
                    f"{e} (config.data.coco.invalid_annotations='drop' drops such annotations)"
                ) from e
            dropped.append(str(e).removeprefix(f"{path}: "))
            continue
        image.objects.append(obj)
    _log_dropped(path, "invalid annotation(s)", dropped)
    empty = [r for r in images.values() if not r.objects]
    drop = options.empty_images == "drop" or (
        options.empty_images == "drop_train" and split == "train"
    )
    if empty and options.empty_images == "error":
        r = empty[0]
        raise DataError(
            f"{path}: image {r.image_id} ({r.file_name}) has no annotations"
            f"{' left' if dropped else ''} ({len(empty)} such image(s) in split {split!r}); "
            "set config.data.coco.empty_images to 'keep', 'drop' or 'drop_train'"
        )
    if drop:
        _log_dropped(path, "image(s) without annotations", [r.file_name for r in empty])
    return sorted((r for r in images.values() if r.objects or not drop), key=lambda r: r.image_id)


# ---------------------------------------------------------------------------------------------
# The builder


def coco_example(record: ImageRecord, files: SplitFiles) -> tuple[str, dict]:
    """``(key, stored example)`` of one checked image: its file as stored by the other segjax
    builders, its objects, and their masks rasterised by pycocotools.

    Raises:
      DataError: the image cannot be read, or its size differs from the annotation file's.
    """
    path = os.path.join(files.images, record.file_name)
    data = image_io.read_bytes(path)
    image = image_io.decode_image(data, path=path)
    height, width = image.shape[:2]
    if (height, width) != (record.height, record.width):
        raise DataError(
            f"{path}: image is {width}x{height} (WxH) but {files.annotations} gives image "
            f"{record.image_id} as {record.width}x{record.height}"
        )
    masks = np.zeros((len(record.objects), height, width), np.uint8)
    areas = []
    for k, (_, _, _, _, area, seg) in enumerate(record.objects):
        masks[k] = mask_utils.decode(_rle(seg, record))
        areas.append(area if area is not None else float(masks[k].sum()))
    return str(record.image_id), {
        "image": image_io.image_feature_value(data, image),
        "file_name": record.file_name,
        "image_id": record.image_id,
        "boxes": np.asarray([o[2] for o in record.objects], np.float32).reshape(-1, 4),
        "labels": np.asarray([o[1] for o in record.objects], np.int32),
        "is_crowd": np.asarray([o[3] for o in record.objects], np.bool_),
        "areas": np.asarray(areas, np.float32),
        "packed_masks": np.packbits(masks, axis=-1),
    }


def _present(records, files: SplitFiles, counter: image_io.SkipCounter) -> list[ImageRecord]:
    """``records`` whose image file exists; a missing one raises, or is skipped and counted
    with ``skip_bad_examples``, before the (long) generation starts."""
    present = []
    for record in records:
        path = os.path.join(files.images, record.file_name)
        if os.path.isfile(path):
            present.append(record)
            continue
        counter.handle(
            DataError(
                f"{path}: file of image {record.image_id} not found (file_name "
                f"{record.file_name!r} in {files.annotations}, relative to {files.images})"
            )
        )
    return present


class CocoConfig(tfds.core.BuilderConfig):
    """One COCO-format dataset (:class:`CocoOptions`); the name embeds the fingerprint."""

    def __init__(self, *, options: CocoOptions, **kwargs):
        super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
        self.options = options


class SegjaxCoco(builders.ArchiveBuilder):
    """COCO 2017 or a COCO-format export (see the module docstring).

    Stored features: ``image`` (the file's bytes), ``file_name``, ``image_id`` (COCO's),
    ``boxes`` float32 ``[N, 4]``, ``labels`` int32 ``[N]`` (contiguous), ``is_crowd`` bool
    ``[N]``, ``areas`` float32 ``[N]`` and ``packed_masks``: the 0/1 masks ``[N, H, W]``
    bit-packed along the width (``np.packbits``) in one zlib-compressed tensor, unpacked by
    :func:`unpack_masks`. Measured on a 640x480 image with 15 polygon objects (one tf.data
    thread, CPU time per example, shared 2-core machine): bit-packed 6.5 KB, 3.4-3.9 ms to
    decode; plain uint8 + zlib 12.4 KB, 9.6-10.6 ms (inflating 4.6 MB); pycocotools RLE strings
    4.6 KB, 4.1-5.9 ms, but through a Python call per example (GIL-bound); one PNG per object
    15.8 KB, 10.6-10.8 ms. (A COCO JPEG is ~160 KB.)
    ``metadata["categories"]`` lists ``[id, name]`` in id order (label k is entry k - 1).
    """

    name = "segjax_coco"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    HOMEPAGE = "https://cocodataset.org"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        tensor = tfds.features.Tensor
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "file_name": tfds.features.Text(),
                    "image_id": tfds.features.Scalar(np.int64),
                    "boxes": tensor(shape=(None, 4), dtype=np.float32),
                    "labels": tensor(shape=(None,), dtype=np.int32),
                    "is_crowd": tensor(shape=(None,), dtype=np.bool_),
                    "areas": tensor(shape=(None,), dtype=np.float32),
                    "packed_masks": tensor(
                        shape=(None, None, None), dtype=np.uint8, encoding="zlib"
                    ),
                }
            ),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
        )

    def _coco2017_files(self, dl_manager) -> dict[str, SplitFiles]:
        annotations = self.locate(dl_manager, ANNOTATIONS)
        return {
            split: SplitFiles(
                os.path.join(annotations, COCO2017_FILES[split]),
                self.locate(dl_manager, IMAGES[split]),
            )
            for split in SPLITS
        }

    def _split_generators(self, dl_manager):
        options = self.builder_config.options
        files = options.files or self._coco2017_files(dl_manager)
        raws = {split: read_annotation_file(f.annotations) for split, f in files.items()}
        paths = {split: f.annotations for split, f in files.items()}
        categories = merge_categories(
            {paths[split]: parse_categories(paths[split], raw) for split, raw in raws.items()}
        )
        labels = {cid: k + 1 for k, cid in enumerate(categories)}
        self.info.metadata["categories"] = [[cid, name] for cid, name in categories.items()]
        self.info.metadata["annotation_files"] = [f.annotations for f in files.values()]
        generators = {}
        for split, raw in raws.items():
            path = files[split].annotations
            records = index_split(path, raw, labels, split=split, options=options)
            if not records:
                raise DataError(f"{path}: split {split!r} has no image left to prepare")
            counter = image_io.SkipCounter(options.skip_bad_examples)
            records = _present(records, files[split], counter)
            generators[split] = self._generate_examples(records, files[split], split, counter)
        return generators

    def _generate_examples(self, records, files, split, counter):
        yield from image_io.generate_checked(
            records, lambda r: coco_example(r, files), counter, f"{files.annotations} ({split})"
        )


# ---------------------------------------------------------------------------------------------
# The source


def label_layout(
    categories: list[tuple[int, str]], label_map: str, where: str = "the annotation files"
) -> tuple[tuple[str, ...], tuple[int, ...], np.ndarray | None]:
    """``(class_names, category_ids, stored label → label table or None)`` of a dataset's
    categories (``[id, name]`` in id order) under ``label_map`` (see the module docstring).

    Contiguous labels: ``category_ids[label]`` is the category id (``0`` for the background).
    ``"category_id"``: labels are the ids, so ``category_ids`` is ``()``.

    Raises:
      DataError: ``"category_id"`` with a category id below 1 (0 is the background).
    """
    ids = [int(cid) for cid, _ in categories]
    names = [name for _, name in categories]
    if label_map == "contiguous":
        return (BACKGROUND, *names), (0, *ids), None
    if bad := [cid for cid in ids if cid < 1]:
        raise DataError(
            f"{where}: category id {bad[0]} with config.data.coco.label_map='category_id'; "
            "labels equal to the ids need ids >= 1 (0 is the background); use 'contiguous'"
        )
    slots = [PLACEHOLDER] * (max(ids) + 1)
    slots[0] = BACKGROUND
    for cid, name in zip(ids, names):
        slots[cid] = name
    return tuple(slots), (), np.asarray([0, *ids], np.int32)


def unpack_masks(packed: tf.Tensor, width) -> tf.Tensor:
    """uint8 ``[N, H, width]`` 0/1 masks from their ``np.packbits(masks, axis=-1)`` form
    ``[N, H, ceil(width / 8)]`` (most significant bit first), inside ``tf.data``."""
    # One gather from a byte → 8 bits table: ~1.7x faster than shifting and masking each bit.
    bits = tf.gather(tf.constant(_BYTE_BITS), tf.cast(packed, tf.int32))
    shape = tf.shape(packed)
    return tf.reshape(bits, [shape[0], shape[1], shape[2] * 8])[:, :, :width]


def make_to_example(stored_to_label: np.ndarray | None):
    """``to_example`` of the instance contract: the stored example's image, file name and
    objects, the stored (contiguous) labels looked up in ``stored_to_label`` when given."""

    def to_example(ex: dict) -> dict:
        labels = ex["labels"]
        if stored_to_label is not None:
            labels = tf.gather(tf.constant(stored_to_label), labels)
        return {
            "image": ex["image"],
            "id": ex["file_name"],
            "boxes": ex["boxes"],
            "labels": labels,
            "masks": unpack_masks(ex["packed_masks"], tf.shape(ex["image"])[1]),
            "is_crowd": ex["is_crowd"],
            "areas": ex["areas"],
        }

    return to_example


def source_of(builder: tfds.core.DatasetBuilder, label_map: str) -> Source:
    """The ``coco`` source of a prepared :class:`SegjaxCoco` under ``label_map``."""
    metadata = builder.info.metadata
    where = ", ".join(metadata.get("annotation_files", ())) or builder.name
    names, category_ids, table = label_layout(
        [tuple(c) for c in metadata["categories"]], label_map, where
    )
    return Source.from_builder(
        builder,
        name="coco",
        class_names=names,
        to_example=make_to_example(table),
        fields=FIELDS,
        task="instance",
        category_ids=category_ids,
    )


def _check_paths(options: CocoOptions) -> None:
    for split, files in options.files.items():
        prefix = SPLITS[split]
        if not os.path.isfile(files.annotations):
            raise DataError(
                f"config.data.coco.{prefix}_json: annotation file {files.annotations} not found"
            )
        if not os.path.isdir(files.images):
            raise DataError(f"config.data.coco.{prefix}_images: folder {files.images} not found")


def load(data_config: ml_collections.ConfigDict) -> Source:
    """The ``coco`` dataset, prepared on first use (and again when its files or stored options
    change).

    Reads ``coco.*`` (see :mod:`segjax.config`), ``data_dir``, ``manual_dir``, ``download`` and
    ``skip_bad_examples`` of ``data_config``.

    Raises:
      ValueError: an invalid option (:func:`read_options`).
      DataError: files missing (COCO 2017: with the manual-download instructions) or a bad
        annotation, image or file (named in the message).
    """
    options = read_options(data_config)
    _check_paths(options)
    if options.files:
        name = f"export_{fingerprint(options)}"
    else:
        stored = repr((_FORMAT_VERSION, options.stored_options())).encode()
        name = f"coco2017_{hashlib.sha1(stored).hexdigest()[:12]}"
    builder = SegjaxCoco(
        config=CocoConfig(name=name, options=options),
        data_dir=data_config.data_dir or None,
        download=bool(data_config.download),
        skip_bad_examples=options.skip_bad_examples,
    )
    where = ", ".join(f.annotations for f in options.files.values()) or "COCO 2017"
    builders.prepare(builder, manual_dir=data_config.manual_dir, where=f"coco {where}")
    return source_of(builder, options.label_map)
