"""ADE20K / SceneParse150 (the MIT Scene Parsing benchmark), TFDS builder ``segjax_ade20k``.

Annotations: the 150-class semantic masks of ``ADEChallengeData2016.zip``
(``annotations/{training,validation}/ADE_*.png``, one uint8 channel: 0 = "other objects" / not
labelled, 1..150 = the classes of ``objectInfo150.csv``), the set every published ADE20K
mIoU uses. Mapping: 0 → 255 (ignore), k → k − 1 for k in 1..150, so class ids are 0..149 in the
order of ``objectInfo150`` (``CLASS_NAMES[0]`` is "wall"). A raw value above 150 is an error.

TFDS's own ``scene_parse150`` is *not* used: it reads the 2017 instance-segmentation archive
(``annotations_instance``), whose PNGs encode instance ids, not these 150 semantic classes.

Splits: ``train`` 20,210 (images/training), ``validation`` 2,000 (images/validation). The zip
(or its extracted ``ADEChallengeData2016/`` folder) is read from the manual directory, or
downloaded from ``URL`` when ``config.data.download`` is set.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import builders, image_io
from segjax.data.base import Source
from segjax.data.image_io import DataError
from segjax.evaluation.metrics import IGNORE_INDEX

URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
ARCHIVE = "ADEChallengeData2016.zip"
_SPLITS = {"train": "training", "validation": "validation"}

# objectInfo150 order (index = class id after the k → k − 1 mapping).
CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put {ARCHIVE} (~920 MB, from {URL}) or its extracted folder ADEChallengeData2016/ in the
manual directory (`config.data.manual_dir`, default <data_dir>/downloads/manual), or set
`config.data.download=True` to let the builder download it.
"""


def raw_to_classes(raw: np.ndarray, path: str) -> np.ndarray:
    """ADE raw annotation (0 = unlabelled, 1..150) → class ids (255, 0..149)."""
    if raw.max(initial=0) > NUM_CLASSES:
        raise DataError(
            f"{path}: ADE20K label {int(raw.max())} outside 0..{NUM_CLASSES} "
            "(0 = unlabelled, 1..150 = classes)"
        )
    return np.where(raw == 0, IGNORE_INDEX, raw.astype(np.int32) - 1).astype(np.uint8)


def _is_root(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "images")) and os.path.isdir(
        os.path.join(path, "annotations")
    )


ADE = builders.ManualArchive(
    filename=ARCHIVE,
    url=URL,
    size="~920 MB",
    what="ADEChallengeData2016",
    subdirs=("ADEChallengeData2016",),
    is_root=_is_root,
)


class SegjaxAde20k(builders.ArchiveBuilder):
    """ADEChallengeData2016 (SceneParse150 semantic masks); see the module docstring."""

    name = "segjax_ade20k"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    HOMEPAGE = "http://sceneparsing.csail.mit.edu/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _split_generators(self, dl_manager):
        root = self.locate(dl_manager, ADE)
        generators = {}
        for split, sub in _SPLITS.items():
            image_dir = os.path.join(root, "images", sub)
            if not os.path.isdir(image_dir):
                raise DataError(f"{image_dir}: directory of split {split!r} not found")
            names = sorted(f for f in os.listdir(image_dir) if f.lower().endswith(".jpg"))
            if not names:
                raise DataError(f"{image_dir}: split {split!r} is empty; no .jpg images")
            generators[split] = self._generate_examples(
                root, sub, [os.path.splitext(n)[0] for n in names], split
            )
        return generators

    def _generate_examples(self, root, sub, stems, split):
        def make(stem):
            image_path = os.path.join(root, "images", sub, f"{stem}.jpg")
            mask_path = os.path.join(root, "annotations", sub, f"{stem}.png")
            if not os.path.isfile(mask_path):
                raise DataError(f"{image_path}: image without mask (expected {mask_path})")
            raw = image_io.decode_mask(image_io.read_bytes(mask_path), path=mask_path)
            mask = raw_to_classes(raw, mask_path)
            return builders.file_example(stem, image_path, mask, mask_path, num_classes=NUM_CLASSES)

        counter = image_io.SkipCounter(self._skip_bad_examples)
        yield from image_io.generate_checked(stems, make, counter, f"segjax_ade20k {split}")


def load(data_config) -> Source:
    """The ``ade20k`` dataset, prepared on first use.

    Reads ``data_dir``, ``manual_dir``, ``download`` and ``skip_bad_examples``.
    """
    builder = SegjaxAde20k(
        data_dir=data_config.data_dir or None,
        download=bool(data_config.download),
        skip_bad_examples=bool(data_config.skip_bad_examples),
    )
    builders.prepare(builder, manual_dir=data_config.manual_dir)
    return Source.from_builder(builder, name="ade20k", class_names=CLASS_NAMES)
