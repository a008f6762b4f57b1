"""PASCAL VOC 2012 semantic segmentation, optionally augmented with SBD (TFDS builder).

TFDS's own ``voc`` has no segmentation masks; this builder reads the original archives.

Configs:

- ``voc2012``: the official VOC 2012 segmentation set, ``train`` 1,464 / ``validation`` 1,449
  images
  (``ImageSets/Segmentation/{train,val}.txt``), masks from ``SegmentationClass`` palette PNGs.
- ``aug``: the "train_aug" set of DeepLab and mmsegmentation: ``train_aug`` 10,582 = (SBD train
  ∪ SBD val ∪ VOC train) minus VOC val, and ``validation`` (= VOC val) 1,449. Images listed
  in VOC train keep their VOC annotation (with its 255 object borders); the others take SBD's
  ``cls/<id>.mat`` (``GTcls.Segmentation``, no border band).

Both configs have 21 classes (background + 20 objects); 255 (object borders, "difficult") is kept
as ignore. Files (``VOCtrainval_11-May-2012.tar`` and, for ``aug``, SBD's ``benchmark.tgz``) are
read from the manual directory as archives or as extracted folders, or downloaded when allowed.
"""

import os

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from segjax.data import builders, image_io
from segjax.data.base import Source
from segjax.data.image_io import DataError
from segjax.errors import ConfigError

CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES = len(CLASS_NAMES)

VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
SBD_ARCHIVE = "benchmark.tgz"
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = (
    "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
    "benchmark.tgz"
)
MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put these files (archives as downloaded, or their extracted folders) in the manual directory
(`config.data.manual_dir`, default <data_dir>/downloads/manual):

  {VOC_ARCHIVE}   (~2 GB)  from {VOC_URL}
      or the extracted folder VOCdevkit/VOC2012/
      (mirror: http://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar)
  {SBD_ARCHIVE}   (~1.4 GB, only for `voc_aug`) from {SBD_URL}
      or the extracted folder benchmark_RELEASE/dataset/

With `config.data.download=True` the builder tries these URLs itself first.
"""


def _is_voc_root(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "ImageSets", "Segmentation"))


def _is_sbd_root(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "cls")) and os.path.isfile(
        os.path.join(path, "train.txt")
    )


VOC = builders.ManualArchive(
    filename=VOC_ARCHIVE,
    url=VOC_URL,
    size="~2 GB",
    what="VOC2012",
    subdirs=("VOCdevkit/VOC2012", "VOC2012", "VOCtrainval_11-May-2012/VOCdevkit/VOC2012"),
    is_root=_is_voc_root,
)
SBD = builders.ManualArchive(
    filename=SBD_ARCHIVE,
    url=SBD_URL,
    size="~1.4 GB",
    what="SBD dataset",
    subdirs=("benchmark_RELEASE/dataset", "benchmark/benchmark_RELEASE/dataset", "dataset"),
    is_root=_is_sbd_root,
)


def read_id_list(path: str) -> list[str]:
    """The image ids listed one per line in ``path`` (blank lines ignored)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: split list not found")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def read_sbd_mat(path: str) -> np.ndarray:
    """SBD class mask ``GTcls.Segmentation`` of a ``cls/<id>.mat`` file as ``uint8 [H, W]``."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except Exception as e:  # scipy raises several unrelated types for a bad file
        raise DataError(f"{path}: cannot read GTcls.Segmentation ({type(e).__name__}: {e})") from e
    if seg.ndim != 2 or seg.size == 0:
        raise DataError(f"{path}: GTcls.Segmentation has shape {seg.shape}; expected [H, W]")
    if seg.min() < 0 or seg.max() > 255:
        raise DataError(f"{path}: GTcls.Segmentation value {seg.max()} outside 0..255")
    return seg.astype(np.uint8)


class VocConfig(tfds.core.BuilderConfig):
    """A VOC builder config; ``augmented`` adds SBD."""

    def __init__(self, *, augmented: bool, **kwargs):
        super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
        self.augmented = augmented


class SegjaxVoc(builders.ArchiveBuilder):
    """PASCAL VOC 2012 segmentation (+ SBD); see the module docstring."""

    name = "segjax_voc"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        VocConfig(
            name="voc2012", description="VOC 2012: train 1,464 / validation 1,449", augmented=False
        ),
        VocConfig(
            name="aug",
            description="VOC 2012 + SBD: train_aug 10,582 / validation 1,449",
            augmented=True,
        ),
    ]

    def _split_generators(self, dl_manager):
        voc = self.locate(dl_manager, VOC)
        lists = os.path.join(voc, "ImageSets", "Segmentation")
        train = read_id_list(os.path.join(lists, "train.txt"))
        val = read_id_list(os.path.join(lists, "val.txt"))
        sbd = None
        if self.builder_config.augmented:
            sbd = self.locate(dl_manager, SBD)
            sbd_ids = read_id_list(os.path.join(sbd, "train.txt")) + read_id_list(
                os.path.join(sbd, "val.txt")
            )
            voc_train = set(train)
            val_set = set(val)
            # VOC annotations (with border band) win for VOC train images; SBD for the rest.
            items = [(i, "png") for i in train if i not in val_set]
            items += [(i, "mat") for i in sorted(set(sbd_ids) - voc_train - val_set)]
            splits = {"train_aug": items, "validation": [(i, "png") for i in val]}
        else:
            splits = {
                "train": [(i, "png") for i in train],
                "validation": [(i, "png") for i in val],
            }
        for split, items in splits.items():
            if not items:
                raise DataError(f"{lists}: split {split!r} is empty; its list names no image")
        return {
            split: self._generate_examples(items, voc, sbd, split)
            for split, items in splits.items()
        }

    def _generate_examples(self, items, voc, sbd, split):
        def make(item):
            image_id, source = item
            image_path = os.path.join(voc, "JPEGImages", f"{image_id}.jpg")
            if not os.path.isfile(image_path) and sbd is not None:
                image_path = os.path.join(sbd, "img", f"{image_id}.jpg")
            if not os.path.isfile(image_path):
                raise DataError(f"{image_path}: image of {image_id!r} ({split}) not found")
            if source == "png":
                mask_path = os.path.join(voc, "SegmentationClass", f"{image_id}.png")
                if not os.path.isfile(mask_path):
                    raise DataError(f"{mask_path}: mask of image {image_path} not found")
                mask = image_io.decode_mask(image_io.read_bytes(mask_path), path=mask_path)
            else:
                mask_path = os.path.join(sbd, "cls", f"{image_id}.mat")
                if not os.path.isfile(mask_path):
                    raise DataError(f"{mask_path}: mask of image {image_path} not found")
                mask = read_sbd_mat(mask_path)
            return builders.file_example(
                image_id, image_path, mask, mask_path, num_classes=NUM_CLASSES
            )

        counter = image_io.SkipCounter(self._skip_bad_examples)
        yield from image_io.generate_checked(items, make, counter, f"segjax_voc {split}")


def load_builder(data_config, config_name: str) -> Source:
    """Prepares (first use only) builder config ``config_name`` and returns its source.

    Reads ``data_dir``, ``manual_dir``, ``download`` and ``skip_bad_examples`` of
    ``data_config``.
    """
    builder = SegjaxVoc(
        config=config_name,
        data_dir=data_config.data_dir or None,
        download=bool(data_config.download),
        skip_bad_examples=bool(data_config.skip_bad_examples),
    )
    builders.prepare(builder, manual_dir=data_config.manual_dir)
    name = "voc_aug" if config_name == "aug" else "voc"
    return Source.from_builder(builder, name=name, class_names=CLASS_NAMES)


_CONFIG_NAMES = {"": "voc2012", "2012": "voc2012", "voc2012": "voc2012", "aug": "aug"}


def load(data_config) -> Source:
    """The ``voc`` dataset: VOC 2012 train 1,464 / validation 1,449, or with
    ``data_config.config_name="aug"`` the same as ``voc_aug``."""
    name = data_config.config_name
    if name not in _CONFIG_NAMES:
        raise ConfigError(
            f"config.data.config_name={name!r} is not a VOC config; expected '2012' or 'aug'"
        )
    return load_builder(data_config, _CONFIG_NAMES[name])


def load_aug(data_config) -> Source:
    """The ``voc_aug`` dataset: VOC 2012 + SBD, train_aug 10,582 / validation 1,449."""
    return load_builder(data_config, "aug")
