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

import tensorflow_datasets as tfds

from segjax.data import image_io
from segjax.data.base import DatasetInfo

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


def source_from_builder(builder) -> image_io.MappedTfdsSource:
    """The Cityscapes source over a prepared ``cityscapes/semantic_segmentation`` builder."""
    info = DatasetInfo(
        name="cityscapes",
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        palette=PALETTE,
        splits={k: v.num_examples for k, v in builder.info.splits.items()},
    )
    return image_io.MappedTfdsSource(
        builder,
        info,
        image_key="image_left",
        mask_key="segmentation_label",
        id_key="image_id",
        table=image_io.remap_table(LABEL_TO_TRAIN_ID),
    )


def load(data_config) -> image_io.MappedTfdsSource:
    """The ``cityscapes`` dataset, prepared from the manual zips on first use.

    Reads ``data_dir`` and ``manual_dir``.
    """
    data_dir = data_config.data_dir or None
    builder = tfds.builder("cityscapes/semantic_segmentation", data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=data_config.manual_dir or None)
    )
    return source_from_builder(builder)
