"""What every dataset adapter provides to the input pipeline: a :class:`Source`.

A source yields full-resolution examples ``{"image": uint8 [H, W, 3], "mask": uint8 [H, W],
"id": string}`` where mask values are class ids in ``[0, num_classes)`` or 255 (ignore), in a
deterministic order, restricted to one process's part of the split. Every dataset is a prepared
TFDS builder; what differs between datasets is how one stored example becomes that dict.

Some sources yield more per-pixel fields, each ``[H, W]`` and aligned with ``mask``; their names
are listed in ``DatasetInfo.fields`` so the pipeline knows what to carry through augmentation
and evaluation:

- ``"instances"``: int32 instance ids, 0 = background (folder datasets with instance masks);
- ``"weights"``: float32 per-pixel loss weights, e.g. the U-Net border weight map computed when
  the dataset was prepared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import tensorflow_datasets as tfds

from segjax.data.records import RecordReader
from segjax.errors import ConfigError
from segjax.runtime.lazy_imports import tf


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a segmentation dataset.

    Attributes:
      name: dataset name as used in configs.
      num_classes: number of classes (labels ``0 .. num_classes-1``; 255 is ignore).
      class_names: one name per class.
      palette: one RGB colour per class (for colour masks and overlays).
      splits: split name → number of examples.
      fields: the per-pixel fields examples carry besides ``image`` and ``mask`` (see the
        module docstring), e.g. ``("instances", "weights")``; ``()`` for class-mask datasets.
        Instance (detection) datasets list their per-object fields instead: ``("boxes",
        "labels", "masks", "is_crowd", "areas")``.
      task: ``"semantic"`` (examples carry a class ``mask``) or ``"instance"`` (examples carry
        per-object ``boxes``, ``labels``, ``masks`` …; ``class_names[0]`` is
        ``"__background__"``).
      category_ids: instance datasets: label → the dataset's own category id (COCO's ids),
        ``()`` when labels are the ids.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    splits: dict[str, int]
    fields: tuple[str, ...] = ()
    task: str = "semantic"
    category_ids: tuple[int, ...] = ()


def segmentation_example(ex: dict) -> dict:
    """The pipeline's example from the features every segjax builder stores (``image``,
    one-channel ``segmentation_mask`` of class ids, ``file_name``)."""
    return {"image": ex["image"], "mask": ex["segmentation_mask"][..., 0], "id": ex["file_name"]}


def instance_example(ex: dict) -> dict:
    """:func:`segmentation_example` plus ``"instances"`` (stored as uint16, yielded as int32)
    and, when stored, ``"weights"`` (float32), of builders with instance masks."""
    example = segmentation_example(ex)
    example["instances"] = tf.cast(ex["instances"], tf.int32)
    if "weights" in ex:
        example["weights"] = tf.cast(ex["weights"], tf.float32)
    return example


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
        raise ConfigError(
            f"split {split!r} has {num_examples} examples, fewer than the {process_count} processes"
        )
    if process_count == 1:
        return split
    return tfds.even_splits(split, n=process_count)[process_index]


class Source:
    """A dataset the input pipeline can read: a prepared TFDS builder, the dataset's
    :class:`DatasetInfo`, and ``to_example``, which maps one stored TFDS example to
    ``{"image", "mask", "id"}`` (see the module docstring) inside ``tf.data``."""

    def __init__(
        self,
        builder: tfds.core.DatasetBuilder,
        info: DatasetInfo,
        to_example: Callable[[dict], dict] = segmentation_example,
    ):
        self.builder = builder
        self.info = info
        self.to_example = to_example

    @classmethod
    def from_builder(
        cls,
        builder: tfds.core.DatasetBuilder,
        *,
        name: str,
        class_names: Sequence[str],
        palette: Sequence[tuple[int, int, int]] = (),
        to_example: Callable[[dict], dict] = segmentation_example,
        fields: Sequence[str] = (),
        task: str = "semantic",
        category_ids: Sequence[int] = (),
    ) -> Source:
        """The source of a prepared ``builder`` with every split it holds; ``palette`` defaults
        to :func:`default_palette`; ``fields`` names the extra fields ``to_example`` yields,
        ``task`` and ``category_ids`` are :class:`DatasetInfo`'s."""
        info = DatasetInfo(
            name=name,
            num_classes=len(class_names),
            class_names=tuple(class_names),
            palette=tuple(palette) or default_palette(len(class_names)),
            splits={k: v.num_examples for k, v in builder.info.splits.items()},
            fields=tuple(fields),
            task=task,
            category_ids=tuple(int(i) for i in category_ids),
        )
        return cls(builder, info, to_example)

    def _require_split(self, split: str) -> None:
        if split not in self.info.splits:
            raise ConfigError(
                f"dataset {self.info.name!r} has no split {split!r}; "
                f"splits: {', '.join(sorted(self.info.splits))}"
            )

    def as_dataset(
        self, split: str, *, process_index: int = 0, process_count: int = 1
    ) -> tf.data.Dataset:
        """Examples of ``split`` that belong to ``process_index`` (of ``process_count``),
        in a fixed order; every example belongs to exactly one process.

        Raises:
          ValueError: the dataset has no split ``split`` (the message lists its splits).
        """
        self._require_split(split)
        sub = process_split(split, self.info.splits[split], process_index, process_count)
        ds = self.builder.as_dataset(
            split=sub,
            shuffle_files=False,
            read_config=tfds.ReadConfig(
                interleave_cycle_length=1, add_tfds_id=False, try_autocache=False
            ),
        )
        return ds.map(self.to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def record_reader(self, split: str, *, cache: bool = False) -> RecordReader:
        """Random access to the serialized examples of the whole ``split``, in the order of
        :meth:`as_dataset` (decode one with :meth:`decode`); ``cache`` keeps what was read.

        Raises:
          ValueError: the dataset has no split ``split``.
        """
        self._require_split(split)
        return RecordReader(self.builder.info.splits[split].file_instructions, cache=cache)

    def decode(self, serialized: tf.Tensor) -> dict:
        """The example (see the module docstring) of one serialized record of the builder."""
        return self.to_example(self.builder.info.features.deserialize_example(serialized))
