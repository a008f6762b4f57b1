"""Cityscapes fine annotations (TFDS ``cityscapes/semantic_segmentation``, manual download).

Download from https://www.cityscapes-dataset.com (an account is required)
``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` and put both zips, unextracted,
in the manual directory (``config.data.manual_dir``, default
``<data_dir>/downloads/manual``). Splits: ``train`` 2,975, ``validation`` 500, ``test`` 1,525
(test labels are withheld: its masks are all ignore).

Masks are the ``*_gtFine_labelIds.png`` files; the 34 label ids are mapped to the 19 evaluation
classes ("train ids") of cityscapesScripts ``labels.py``; every other id (unlabeled, ego vehicle,
rectification border, out of roi, static, dynamic, ground, parking, rail track, guard rail,
bridge, tunnel, polegroup, caravan, trailer, license plate) becomes 255.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from segjax.data import builders, image_io
from segjax.data.base import Source
from segjax.errors import MissingFileError
from segjax.runtime.lazy_imports import tf

CLASS_NAMES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
# label id → train id (cityscapesScripts labels.py); unlisted ids → 255.
LABEL_TO_TRAIN_ID = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)
LEFT_ZIP = "leftImg8bit_trainvaltest.zip"
FINE_ZIP = "gtFine_trainvaltest.zip"
_ZIP_SIZES = {LEFT_ZIP: "11 GB", FINE_ZIP: "241 MB"}
_TRAIN_IDS = image_io.remap_table(LABEL_TO_TRAIN_ID)


def train_id_example(ex: dict) -> dict:
    """The pipeline's example from a ``cityscapes/semantic_segmentation`` example, its label
    ids mapped to train ids."""
    label_ids = tf.cast(ex["segmentation_label"][..., 0], tf.int32)
    mask = tf.gather(tf.constant(_TRAIN_IDS), label_ids)
    return {"image": ex["image_left"], "mask": mask, "id": ex["image_id"]}


def source_from_builder(builder) -> Source:
    """The Cityscapes source over a prepared ``cityscapes/semantic_segmentation`` builder."""
    return Source.from_builder(
        builder,
        name="cityscapes",
        class_names=CLASS_NAMES,
        palette=PALETTE,
        to_example=train_id_example,
    )


def _require_zips(manual_dir: str) -> None:
    """Stops with one line naming the missing zips (TFDS itself fails with an assertion)."""
    missing = [n for n in _ZIP_SIZES if not os.path.isfile(os.path.join(manual_dir, n))]
    if missing:
        raise MissingFileError(
            f"Cityscapes: {', '.join(missing)} not found in {manual_dir}; download "
            + " and ".join(f"{n} ({_ZIP_SIZES[n]})" for n in missing)
            + " from https://www.cityscapes-dataset.com (login needed) into that folder, or "
            "set --config.data.manual_dir to where they are"
        )


def load(data_config) -> Source:
    """The ``cityscapes`` dataset, prepared from the manual zips on first use.

    Reads ``data_dir`` and ``manual_dir``.

    Raises:
      DataError: a zip is truncated or corrupt (the message names it), or a split is empty.
    """
    data_dir = data_config.data_dir or None
    builder = tfds.builder("cityscapes/semantic_segmentation", data_dir=data_dir)
    if not builder.is_prepared():
        _require_zips(
            data_config.manual_dir or os.path.join(builder.data_dir_root, "downloads", "manual")
        )
    try:
        builders.prepare(builder, manual_dir=data_config.manual_dir)
    except builders.ExtractError as e:
        message = str(e)
        bad = next((name for name in _ZIP_SIZES if name in message), None)
        if bad is None:
            raise
        # TFDS's builder extracts the zips itself; its message starts with the archive's path.
        path = next((word for word in message.split() if word.endswith(bad)), bad)
        hint = f"{_ZIP_SIZES[bad]}, from https://www.cityscapes-dataset.com"
        raise builders.corrupt_archive_error(path, e, hint) from e
    return source_from_builder(builder)
