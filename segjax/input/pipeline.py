"""tf.data pipelines: per-process training stream and exactly-counted evaluation batches.

Training: the global batch of step ``s`` is a pure function of ``(seed, s, dataset)`` on any
topology. Position ``g`` of the global stream holds example ``perm_e(g mod n)`` of the split,
``perm_e`` a pseudorandom permutation of the ``n`` examples per epoch ``e = g // n`` seeded by
``(seed, e)``, augmented with the seed ``(seed, g)``; each process reads (random access) and
decodes only the rows of the global batch it feeds. A run resumed at step ``s``, on the same
or another number of processes and devices, sees exactly the batches an uninterrupted run
would have seen (docs/SCALING.md).

Evaluation: full-resolution images padded to ``config.data.eval_pad_size`` (image → mean, mask
→ 255), the stream padded with all-ignore examples so that every process runs the same number of
batches; every real pixel is counted exactly once and padding never.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import weakref
from collections.abc import Iterator

import ml_collections
import numpy as np

from segjax.data.base import Source
from segjax.errors import ConfigError, DataError
from segjax.evaluation.metrics import IGNORE_INDEX
from segjax.input import augment, augment_instances
from segjax.runtime.lazy_imports import tf

# Extra per-pixel fields (``Source.info.fields``) each pipeline carries through its transform.
TRAIN_FIELDS = ("weights",)
EVAL_FIELDS = ("instances",)


def _check_labels(ex: dict, num_classes: int) -> dict:
    """Fails with the example id and the offending value when a label is out of range."""
    mask = ex["mask"]
    bad = tf.logical_and(mask >= num_classes, mask != IGNORE_INDEX)
    value = tf.reduce_max(tf.where(bad, tf.cast(mask, tf.int32), -1))
    ok = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        [
            "mask of example",
            ex["id"],
            "holds label",
            value,
            f"outside [0, {num_classes}) and not the ignore label {IGNORE_INDEX}",
        ],
    )
    with tf.control_dependencies([ok]):
        return dict(ex, mask=tf.identity(mask))


def _host_batch(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ConfigError(
            f"batch size {global_batch} is not divisible by the {process_count} processes"
        )
    return global_batch // process_count


def _cardinality(ds: tf.data.Dataset, what: str) -> int:
    n = int(ds.cardinality())
    if n < 0:  # unknown: count once
        n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    if n == 0:
        raise DataError(f"{what} is empty: no examples to read")
    return n


def global_positions(
    start_step: int, global_batch: int, host_batch: int, process_index: int
) -> tf.data.Dataset:
    """The positions in the global training stream of this process's rows, from
    ``start_step`` on: row ``j`` of step ``s`` on process ``p`` is position
    ``s * global_batch + p * host_batch + j`` (processes own consecutive rows of every global
    batch, as :func:`segjax.sharding.host_to_global` lays them out)."""
    first = process_index * host_batch

    def position(k):
        step, row = k // host_batch, k % host_batch
        return step * global_batch + first + row

    start = start_step * host_batch
    return tf.data.Dataset.range(start, np.iinfo(np.int64).max).map(position)


def example_index(position: tf.Tensor, num_examples: int, seed: int) -> tf.Tensor:
    """The split index of the example at ``position`` of the training stream: epoch
    ``position // num_examples`` visits every example once, in a pseudorandom permutation
    that depends only on ``(seed, epoch)`` (``tf.random.experimental.index_shuffle``: computed
    per index, never materialised)."""
    epoch, i = position // num_examples, position % num_examples
    return tf.random.experimental.index_shuffle(
        i, seed=tf.stack([tf.constant(seed, tf.int64), epoch]), max_index=num_examples - 1
    )


def train_iterator(
    source: Source,
    config: ml_collections.ConfigDict,
    *,
    transform=None,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless iterator of this process's rows of the global training batches, from
    ``start_step`` on, each example passed through ``transform``.

    The global batch of step ``s`` is a pure function of ``(seed, s, dataset)``, whatever the
    number of processes and devices: position ``g`` of the stream (:func:`global_positions`)
    holds example :func:`example_index` ``(g)``, augmented with the seed ``(seed, g)``. Each
    process reads and decodes only its own rows (random access through
    :meth:`segjax.data.base.Source.record_reader`), so a run resumed at any step, on any
    topology, continues the same sequence.

    Args:
      source: the dataset.
      config: the full run config (reads ``seed``, ``data.*``, ``train.batch_size``).
      transform: ``(position, example) → fields``, chosen by the task's ``train_stream``:
        :func:`semantic_train_transform` (the default) or :func:`instance_train_transform`.
      start_step: first step to produce (for resuming).
      process_index, process_count: this process and how many share the global batch.

    Returns:
      Iterator of ``{"image": float32 [b, h, w, 3], "mask": uint8 [b, h, w]}`` (plus
      ``"weights"`` float32 ``[b, h, w]`` when the source has the U-Net weight map) with
      ``b = train.batch_size / process_count``; with :func:`instance_train_transform` the
      fixed-shape fields of :func:`segjax.input.augment_instances.train_transform_instances`.
    """
    d = config.data
    host_batch = _host_batch(config.train.batch_size, process_count)
    reader = source.record_reader(d.train_split, cache=d.cache)
    num_examples = len(reader)
    if num_examples == 0:
        raise DataError(f"split {d.train_split!r} of {source.info.name!r} is empty")
    seed = int(config.seed)
    if transform is None:
        transform = semantic_train_transform(config, source.info)

    def example_at(position):
        ex = source.decode(reader.read_tf(example_index(position, num_examples, seed)))
        return transform(position, ex)

    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = max(1, d.num_threads)
    ds = global_positions(start_step, config.train.batch_size, host_batch, process_index)
    ds = ds.map(example_at, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(host_batch, drop_remainder=True).prefetch(2).with_options(options)
    return _Batches(ds)


class _Batches:
    """A ``tf.data`` numpy iterator released at interpreter exit.

    The records are read by a Python function inside ``tf.data``; an iterator still alive when
    the interpreter shuts down would leave TF's threads waiting for the GIL forever and the
    process would never exit. ``atexit`` hooks run first, so releasing the iterator there
    ends its threads cleanly.
    """

    _live: weakref.WeakSet[_Batches] = weakref.WeakSet()

    def __init__(self, ds: tf.data.Dataset):
        self._iterator = ds.as_numpy_iterator()
        _Batches._live.add(self)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            raise StopIteration
        return next(self._iterator)

    def close(self) -> None:
        """Releases the pipeline (its threads stop); later ``next`` calls end the iteration."""
        self._iterator = None

    @staticmethod
    @atexit.register
    def _close_all() -> None:
        for batches in list(_Batches._live):
            batches.close()


def semantic_train_transform(config: ml_collections.ConfigDict, info):
    """``(position, example) → augmented fields``: the semantic training augmentation of
    ``config.data`` with the per-example seed ``(config.seed, position)``, labels checked
    against ``info`` (the source's :class:`~segjax.data.base.DatasetInfo`)."""
    d, seed = config.data, int(config.seed)
    crop_size = tuple(d.crop_size)
    elastic = augment.elastic_from_config(d.elastic)
    # Per-pixel fields besides image and mask that training needs (the border weight map).
    extras = tuple(k for k in info.fields if k in TRAIN_FIELDS)

    def transform(position, ex):
        ex = _check_labels({k: ex[k] for k in ("image", "mask", "id", *extras)}, info.num_classes)
        return augment.train_transform_fields(
            {"image": ex["image"], "mask": ex["mask"], **{k: ex[k] for k in extras}},
            tf.stack([tf.constant(seed, tf.int64), position]),
            crop_size=crop_size,
            scale_range=tuple(d.scale_range),
            hflip=d.hflip,
            mean=tuple(d.mean),
            std=tuple(d.std),
            photometric=d.photometric,
            cat_max_ratio=d.cat_max_ratio,
            elastic=elastic,
        )

    return transform


def instance_train_transform(config: ml_collections.ConfigDict):
    """``(position, example) → fixed-shape instance fields`` (image, image_size, boxes, labels,
    masks, is_crowd, instance_valid, num_dropped): :mod:`segjax.input.augment_instances` with the
    options of ``config.data.instances`` and the per-example seed ``(config.seed, position)``."""
    options = augment_instances.train_options(config.data)
    seed = int(config.seed)

    def transform(position, ex):
        example_seed = tf.stack([tf.constant(seed, tf.int64), position])
        return augment_instances.train_transform_instances(ex, example_seed, **options)

    return transform


@dataclasses.dataclass
class EvalStream:
    """Evaluation batches of one process plus the bookkeeping to trust the count.

    Attributes:
      batches: iterable of ``{"image", "mask", "valid"}`` host batches (re-iterable).
      num_batches: batches per process (equal on all processes).
      num_examples: real examples in this process's part.
    """

    batches: tf.data.Dataset
    num_batches: int
    num_examples: int

    def __iter__(self):
        return self.batches.as_numpy_iterator()


def _eval_batches(source: Source, split: str, batch_size: int, process_count: int):
    """``(host batch, batches per process)`` to evaluate ``split``: every process runs as many
    batches as the largest part needs (the others pad), so collectives stay in step.

    Raises:
      ValueError: the dataset has no split ``split`` (the message lists its splits), or it is
        empty.
    """
    host_batch = _host_batch(batch_size, process_count)
    total = source.info.splits.get(split)
    if total is None:
        raise ConfigError(
            f"dataset {source.info.name!r} has no split {split!r}; "
            f"splits: {', '.join(sorted(source.info.splits))}"
        )
    if total == 0:
        raise DataError(f"split {split!r} of {source.info.name!r} is empty")
    return host_batch, math.ceil(math.ceil(total / process_count) / host_batch)


def eval_stream(
    source: Source,
    config: ml_collections.ConfigDict,
    split: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> EvalStream:
    """This process's evaluation batches of ``split`` (see module docstring): ``{"image",
    "mask", "valid"}`` plus ``"instances"`` (int32 instance ids, 0 on padding) when the source
    has instance ids."""
    d = config.data
    host_batch, num_batches = _eval_batches(source, split, config.eval.batch_size, process_count)
    base = source.as_dataset(split, process_index=process_index, process_count=process_count)
    num_classes = source.info.num_classes
    pad_size = tuple(d.eval_pad_size)

    # Instance ids travel to the evaluation loop for object-level metrics.
    extras = tuple(k for k in source.info.fields if k in EVAL_FIELDS)

    def transform(ex):
        ex = _check_labels(ex, num_classes)
        fields = {"image": ex["image"], "mask": ex["mask"], **{k: ex[k] for k in extras}}
        out = augment.eval_transform_fields(
            fields, pad_size=pad_size, mean=tuple(d.mean), std=tuple(d.std)
        )
        if extras:  # object-level metrics name the image of a bad instance mask
            out["id"] = ex["id"]
        return dict(out, valid=tf.constant(True))

    ds = base.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if d.cache:
        ds = ds.cache()
    n_local = _cardinality(ds, f"part {process_index} of split {split!r}")
    filler = {
        "image": tf.zeros(pad_size + (3,), tf.float32),
        "mask": tf.fill(pad_size, tf.constant(IGNORE_INDEX, tf.uint8)),
        "valid": tf.constant(False),
    }
    for k in extras:
        filler[k] = tf.zeros(pad_size, ds.element_spec[k].dtype)
    if extras:
        filler["id"] = tf.constant("")
    filler = tf.data.Dataset.from_tensors(filler).repeat()
    ds = ds.concatenate(filler).take(num_batches * host_batch)
    ds = ds.batch(host_batch, drop_remainder=True).prefetch(2)
    return EvalStream(ds, num_batches, n_local)


# Ground-truth fields of an instance example that COCO evaluation reads (at the original size).
INSTANCE_GT_FIELDS = ("boxes", "labels", "masks", "is_crowd", "areas")


@dataclasses.dataclass
class InstanceEvalStream:
    """Evaluation batches of an instance split for one process (re-iterable).

    Each batch holds the model's inputs, stacked: ``image`` float32 ``[b, H, W, 3]``
    (resized, normalised, zero-padded), ``image_size`` and ``original_size`` int32 ``[b, 2]``
    and ``valid`` bool ``[b]``; and per row, as lists, ``id`` and ``ground_truth``: the
    source's instances at the original resolution (:data:`INSTANCE_GT_FIELDS` plus the
    ``image`` uint8, for pictures), ``None`` on padding rows. The ground truth is not resized
    or padded, so COCO AP is computed on the original images, as pycocotools does.

    Attributes:
      info: the dataset's :class:`~segjax.data.base.DatasetInfo`.
      num_batches: batches per process (equal on all processes).
      num_examples: real examples in this process's part.
      coco_backend: what scores the detections (``config.eval.coco_backend``; see
        :mod:`segjax.evaluation.coco_eval`).
    """

    examples: tf.data.Dataset
    info: object
    host_batch: int
    pad_size: tuple[int, int]
    num_batches: int
    num_examples: int
    coco_backend: str = "pycocotools"

    def __iter__(self) -> Iterator[dict]:
        rows = self.examples.as_numpy_iterator()
        for _ in range(self.num_batches):
            batch = [next(rows, None) for _ in range(self.host_batch)]
            yield self._stack(batch)

    def _stack(self, rows: list) -> dict:
        real = [r for r in rows if r is not None]
        filler = {
            "image": np.zeros((*self.pad_size, 3), np.float32),
            "image_size": np.asarray(self.pad_size, np.int32),
            "original_size": np.asarray(self.pad_size, np.int32),
        }
        inputs = [r["inputs"] if r is not None else filler for r in rows]
        batch = {k: np.stack([x[k] for x in inputs]) for k in filler}
        batch["valid"] = np.asarray([r is not None for r in rows])
        batch["id"] = [r["inputs"]["id"].decode() for r in real] + [""] * (len(rows) - len(real))
        batch["ground_truth"] = [r["ground_truth"] if r is not None else None for r in rows]
        return batch


def instance_eval_stream(
    source: Source,
    config: ml_collections.ConfigDict,
    split: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> InstanceEvalStream:
    """This process's evaluation batches of an instance ``split`` (:class:`InstanceEvalStream`):
    images transformed by :func:`segjax.input.augment_instances.eval_transform_instances` with
    ``config.data.instances`` (torchvision's evaluation resize), ground truth as stored."""
    d = config.data
    host_batch, num_batches = _eval_batches(source, split, config.eval.batch_size, process_count)
    options = augment_instances.eval_options(d)
    pad_size = options["pad_size"] or augment_instances.default_pad_size(
        options["max_size"], options["size_divisible"]
    )
    options["pad_size"] = pad_size

    def transform(ex):
        # Only the image goes through the transform (the ground truth stays at the original
        # size), so no instance count limit applies to evaluation.
        image_only = {**ex, **{k: ex[k][:0] for k in INSTANCE_GT_FIELDS if k in ex}}
        inputs = augment_instances.eval_transform_instances(image_only, **options)
        inputs = {k: inputs[k] for k in ("image", "image_size", "original_size", "id")}
        gt = {k: ex[k] for k in (*INSTANCE_GT_FIELDS, "image") if k in ex}
        return {"inputs": inputs, "ground_truth": gt}

    base = source.as_dataset(split, process_index=process_index, process_count=process_count)
    ds = base.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(2 * host_batch)
    n_local = _cardinality(ds, f"part {process_index} of split {split!r}")
    return InstanceEvalStream(
        ds,
        source.info,
        host_batch,
        tuple(pad_size),
        num_batches,
        n_local,
        coco_backend=config.eval.coco_backend,
    )
