"""What every dataset adapter provides to the input pipeline.

A *source* yields full-resolution examples ``{"image": uint8 [H, W, 3], "mask": uint8 [H, W],
"id": string}`` where mask values are class ids in ``[0, num_classes)`` or 255 (ignore), in a
deterministic order, restricted to one process's part of the split.
"""

import dataclasses
from typing import Protocol

import tensorflow as tf
import tensorflow_datasets as tfds

IGNORE_INDEX = 255


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a segmentation dataset.

    Attributes:
      name: dataset name as used in configs.
      num_classes: number of classes (labels ``0 .. num_classes-1``; 255 is ignore).
      class_names: one name per class.
      palette: one RGB colour per class (for colour masks and overlays).
      splits: split name → number of examples.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    splits: dict[str, int]


class Source(Protocol):
    """A dataset the input pipeline can read."""

    info: DatasetInfo

    def as_dataset(
        self, split: str, *, process_index: int = 0, process_count: int = 1
    ) -> tf.data.Dataset:
        """Examples of ``split`` that belong to ``process_index`` (of ``process_count``),
        in a fixed order; every example belongs to exactly one process."""
        ...


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map (bit-interleaved), extended to any number of classes."""
    colours = []
    for label in range(num_classes):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def process_split(split: str, num_examples: int, process_index: int, process_count: int) -> str:
    """The TFDS split string of one process's contiguous part of ``split``.

    Parts differ in size by at most one example and cover the split exactly once.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    if num_examples < process_count:
        raise ValueError(
            f"split {split!r} has {num_examples} examples, fewer than the {process_count} processes"
        )
    if process_count == 1:
        return split
    return tfds.even_splits(split, n=process_count)[process_index]


class TfdsSource:
    """A source backed by a prepared TFDS builder with ``image`` and ``segmentation_mask``."""

    def __init__(self, builder: tfds.core.DatasetBuilder, info: DatasetInfo):
        self.builder = builder
        self.info = info

    def as_dataset(
        self, split: str, *, process_index: int = 0, process_count: int = 1
    ) -> tf.data.Dataset:
        if split not in self.info.splits:
            raise ValueError(
                f"dataset {self.info.name!r} has no split {split!r}; "
                f"splits: {', '.join(sorted(self.info.splits))}"
            )
        sub = process_split(split, self.info.splits[split], process_index, process_count)
        ds = self.builder.as_dataset(
            split=sub,
            shuffle_files=False,
            read_config=tfds.ReadConfig(interleave_cycle_length=1, add_tfds_id=False),
        )

        def convert(ex):
            return {
                "image": ex["image"],
                "mask": ex["segmentation_mask"][..., 0],
                "id": ex["file_name"],
            }

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
