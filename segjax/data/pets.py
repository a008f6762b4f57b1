"""Oxford-IIIT Pet (TFDS ``oxford_iiit_pet``): trimaps turned into segmentation classes.

The trimap PNGs hold 1 = pet, 2 = background, 3 = border / not classified. With
``config.data.config_name``:

- ``"binary"`` (default, ``""``): 0 background, 1 pet; border → 255 (ignore).
- ``"trimap"``: 0 background, 1 pet, 2 border (every pixel labelled, as in the TensorFlow
  segmentation tutorial, which uses the same three classes in another order).
- ``"species"``: 0 background, 1 cat, 2 dog (the image's species); border → 255.
- ``"breeds"``: 0 background, 1..37 the image's breed (TFDS label + 1); border → 255.

Splits: ``train`` 3,680 (the official trainval) and ``test`` 3,669. TFDS downloads the data
(``images.tar.gz``, ``annotations.tar.gz`` from robots.ox.ac.uk) on first use.
"""

from __future__ import annotations

import functools

import tensorflow_datasets as tfds

from segjax.data.base import Source
from segjax.errors import ConfigError
from segjax.evaluation.metrics import IGNORE_INDEX
from segjax.runtime.lazy_imports import tf

TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3
SPECIES = ("cat", "dog")
BREEDS = (
    "Abyssinian",
    "american_bulldog",
    "american_pit_bull_terrier",
    "basset_hound",
    "beagle",
    "Bengal",
    "Birman",
    "Bombay",
    "boxer",
    "British_Shorthair",
    "chihuahua",
    "Egyptian_Mau",
    "english_cocker_spaniel",
    "english_setter",
    "german_shorthaired",
    "great_pyrenees",
    "havanese",
    "japanese_chin",
    "keeshond",
    "leonberger",
    "Maine_Coon",
    "miniature_pinscher",
    "newfoundland",
    "Norwegian_Forest_Cat",
    "pomeranian",
    "pug",
    "Ragdoll",
    "Russian_Blue",
    "saint_bernard",
    "samoyed",
    "scottish_terrier",
    "shiba_inu",
    "Siamese",
    "Sphynx",
    "staffordshire_bull_terrier",
    "wheaten_terrier",
    "yorkshire_terrier",
)
MODES = {
    "binary": ("background", "pet"),
    "trimap": ("background", "pet", "border"),
    "species": ("background", *SPECIES),
    "breeds": ("background", *BREEDS),
}


def trimap_to_classes(
    trimap: tf.Tensor, species: tf.Tensor, breed: tf.Tensor, mode: str
) -> tf.Tensor:
    """Maps a trimap ``[H, W]`` (values 1/2/3) to class ids of ``mode`` (see module docstring).

    ``species`` and ``breed`` are the example's 0-based TFDS labels. Any other trimap value
    becomes 255.
    """
    trimap = tf.cast(trimap, tf.int32)
    if mode == "binary":
        pet = tf.constant(1)
    elif mode == "species":
        pet = tf.cast(species, tf.int32) + 1
    elif mode == "breeds":
        pet = tf.cast(breed, tf.int32) + 1
    elif mode == "trimap":
        pet = tf.constant(1)
    else:
        raise ConfigError(f"unknown Oxford-IIIT Pet mode {mode!r}; expected one of {list(MODES)}")
    border = 2 if mode == "trimap" else IGNORE_INDEX
    out = tf.fill(tf.shape(trimap), IGNORE_INDEX)
    out = tf.where(trimap == TRIMAP_PET, pet, out)
    out = tf.where(trimap == TRIMAP_BACKGROUND, 0, out)
    out = tf.where(trimap == TRIMAP_BORDER, border, out)
    return tf.cast(out, tf.uint8)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(
            f"config.data.config_name={mode!r} is not an Oxford-IIIT Pet mode; "
            f"expected one of {list(MODES)}"
        )


def pet_example(ex: dict, mode: str) -> dict:
    """The pipeline's example from an ``oxford_iiit_pet`` example, its trimap mapped to the
    class ids of ``mode``."""
    mask = trimap_to_classes(ex["segmentation_mask"][..., 0], ex["species"], ex["label"], mode)
    return {"image": ex["image"], "mask": mask, "id": ex["file_name"]}


def source_from_builder(builder, mode: str = "binary") -> Source:
    """The Pet source of ``mode`` over a prepared ``oxford_iiit_pet`` builder (any builder with
    its features).

    Raises:
      ValueError: ``mode`` is not one of :data:`MODES`.
    """
    _check_mode(mode)
    return Source.from_builder(
        builder,
        name="pets",
        class_names=MODES[mode],
        to_example=functools.partial(pet_example, mode=mode),
    )


def load(data_config) -> Source:
    """The ``pets`` dataset (downloads and prepares ``oxford_iiit_pet`` on first use).

    Reads ``data_dir`` and ``config_name`` (the mode; ``""`` = ``"binary"``).
    """
    mode = data_config.config_name or "binary"
    _check_mode(mode)  # fail before a download
    builder = tfds.builder("oxford_iiit_pet", data_dir=data_config.data_dir or None)
    builder.download_and_prepare()
    return source_from_builder(builder, mode)
