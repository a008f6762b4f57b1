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

from segjax.data import image_io
from segjax.data.base import IGNORE_INDEX, DatasetInfo, TfdsSource, default_palette
from segjax.data.image_io import DataError

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


class SegjaxAde20k(tfds.core.GeneratorBasedBuilder):
    """ADEChallengeData2016 (SceneParse150 semantic masks); see the module docstring."""

    name = "segjax_ade20k"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def __init__(self, *, download: bool = False, skip_bad_examples: bool = False, **kwargs):
        self._download = download
        self._skip_bad_examples = skip_bad_examples
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "segmentation_mask"),
            homepage="http://sceneparsing.csail.mit.edu/",
        )

    def _root(self, dl_manager) -> str:
        try:
            manual = os.fspath(dl_manager.manual_dir)
        except AssertionError:
            manual = None
        if manual:
            if _is_root(os.path.join(manual, "ADEChallengeData2016")):
                return os.path.join(manual, "ADEChallengeData2016")
            if os.path.isfile(os.path.join(manual, ARCHIVE)):
                extracted = os.fspath(dl_manager.extract(os.path.join(manual, ARCHIVE)))
                if _is_root(os.path.join(extracted, "ADEChallengeData2016")):
                    return os.path.join(extracted, "ADEChallengeData2016")
                raise DataError(f"{os.path.join(manual, ARCHIVE)}: no ADEChallengeData2016/ inside")
        tried = f"looked in {manual!r}" if manual else "no manual directory exists"
        if self._download:
            try:
                extracted = os.fspath(dl_manager.download_and_extract(URL))
            except Exception as e:  # any network failure ends in the same advice
                raise DataError(
                    f"ADEChallengeData2016 not found ({tried}) and downloading {URL} failed "
                    f"({e}).\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
                ) from e
            return os.path.join(extracted, "ADEChallengeData2016")
        raise DataError(
            f"ADEChallengeData2016 not found ({tried}).\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
        )

    def _split_generators(self, dl_manager):
        root = self._root(dl_manager)
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
            data = image_io.read_bytes(image_path)
            image = image_io.decode_image(data, path=image_path)
            raw = image_io.decode_mask(image_io.read_bytes(mask_path), path=mask_path)
            mask = raw_to_classes(raw, mask_path)
            image_io.check_example(
                image, mask, num_classes=NUM_CLASSES, image_path=image_path, mask_path=mask_path
            )
            return stem, {
                "image": image_io.image_feature_value(data, image),
                "segmentation_mask": mask[..., None],
                "file_name": stem,
            }

        counter = image_io.SkipCounter(self._skip_bad_examples)
        yield from image_io.generate_checked(stems, make, counter, f"segjax_ade20k {split}")


def load(data_config) -> TfdsSource:
    """The ``ade20k`` dataset, prepared on first use.

    Reads ``data_dir``, ``manual_dir``, ``download`` and ``skip_bad_examples``.
    """
    builder = SegjaxAde20k(
        data_dir=data_config.data_dir or None,
        download=bool(data_config.download),
        skip_bad_examples=bool(data_config.skip_bad_examples),
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=data_config.manual_dir or None)
    )
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    image_io.check_splits(builder.name, splits, os.fspath(builder.data_dir))
    info = DatasetInfo(
        name="ade20k",
        num_classes=NUM_CLASSES,
        class_names=CLASS_NAMES,
        palette=default_palette(NUM_CLASSES),
        splits=splits,
    )
    return TfdsSource(builder, info)
