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

import tensorflow as tf
import tensorflow_datasets as tfds

from segjax.data.base import IGNORE_INDEX, DatasetInfo, default_palette, process_split

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
        raise ValueError(f"unknown Oxford-IIIT Pet mode {mode!r}; expected one of {list(MODES)}")
    border = 2 if mode == "trimap" else IGNORE_INDEX
    out = tf.fill(tf.shape(trimap), IGNORE_INDEX)
    out = tf.where(trimap == TRIMAP_PET, pet, out)
    out = tf.where(trimap == TRIMAP_BACKGROUND, 0, out)
    out = tf.where(trimap == TRIMAP_BORDER, border, out)
    return tf.cast(out, tf.uint8)


class PetsSource:
    """Source over a prepared ``oxford_iiit_pet`` builder (any builder with its features)."""

    def __init__(self, builder, mode: str = "binary"):
        if mode not in MODES:
            raise ValueError(
                f"config.data.config_name={mode!r} is not an Oxford-IIIT Pet mode; "
                f"expected one of {list(MODES)}"
            )
        self.builder = builder
        self.mode = mode
        names = MODES[mode]
        self.info = DatasetInfo(
            name="pets",
            num_classes=len(names),
            class_names=names,
            palette=default_palette(len(names)),
            splits={k: v.num_examples for k, v in builder.info.splits.items()},
        )

    def as_dataset(
        self, split: str, *, process_index: int = 0, process_count: int = 1
    ) -> tf.data.Dataset:
        """Examples of ``split`` in ``process_index``'s part (see ``base.Source``)."""
        if split not in self.info.splits:
            known = ", ".join(sorted(self.info.splits))
            raise ValueError(f"dataset 'pets' has no split {split!r}; splits: {known}")
        sub = process_split(split, self.info.splits[split], process_index, process_count)
        ds = self.builder.as_dataset(
            split=sub,
            shuffle_files=False,
            read_config=tfds.ReadConfig(interleave_cycle_length=1, add_tfds_id=False),
        )
        mode = self.mode

        def convert(ex):
            mask = trimap_to_classes(
                ex["segmentation_mask"][..., 0], ex["species"], ex["label"], mode
            )
            return {"image": ex["image"], "mask": mask, "id": ex["file_name"]}

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def load(data_config) -> PetsSource:
    """The ``pets`` dataset (downloads and prepares ``oxford_iiit_pet`` on first use).

    Reads ``data_dir`` and ``config_name`` (the mode; ``""`` = ``"binary"``).
    """
    mode = data_config.config_name or "binary"
    if mode not in MODES:  # fail before a download
        raise ValueError(
            f"config.data.config_name={mode!r} is not an Oxford-IIIT Pet mode; "
            f"expected one of {list(MODES)}"
        )
    builder = tfds.builder("oxford_iiit_pet", data_dir=data_config.data_dir or None)
    builder.download_and_prepare()
    return PetsSource(builder, mode)
