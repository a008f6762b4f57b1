"""tf.data pipelines: per-process training stream and exactly-counted evaluation batches.

Training: each process reads only its part of the split. The order of examples is a pure
function of ``(seed, epoch)`` (a fixed-seed shuffle per epoch) and the augmentation of each
example a pure function of ``(seed, its position in the stream)``, so a run resumed at step
``s`` sees exactly the batches an uninterrupted run would have seen.

Evaluation: full-resolution images padded to ``config.data.eval_pad_size`` (image → mean, mask
→ 255), the stream padded with all-ignore examples so that every process runs the same number of
batches; every real pixel is counted exactly once and padding never.
"""

import dataclasses
import math
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from segjax import augment
from segjax.data.base import Source
from segjax.metrics import IGNORE_INDEX

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
        raise ValueError(
            f"batch size {global_batch} is not divisible by the {process_count} processes"
        )
    return global_batch // process_count


def _cardinality(ds: tf.data.Dataset, what: str) -> int:
    n = int(ds.cardinality())
    if n < 0:  # unknown: count once
        n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    if n == 0:
        raise ValueError(f"{what} is empty: no examples to read")
    return n


def train_iterator(
    source: Source,
    config: ml_collections.ConfigDict,
    *,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless iterator of this process's training batches, starting at ``start_step``.

    Args:
      source: the dataset.
      config: the full run config (reads ``seed``, ``data.*``, ``train.batch_size``).
      start_step: first step to produce (for resuming).
      process_index, process_count: this process and how many read the split.

    Returns:
      Iterator of ``{"image": float32 [b, h, w, 3], "mask": uint8 [b, h, w]}`` (plus
      ``"weights"`` float32 ``[b, h, w]`` when the source has the U-Net weight map) with
      ``b = train.batch_size / process_count``.
    """
    d = config.data
    host_batch = _host_batch(config.train.batch_size, process_count)
    base = source.as_dataset(
        d.train_split, process_index=process_index, process_count=process_count
    )
    num_classes = source.info.num_classes
    # Per-pixel fields besides image and mask that training needs (the border weight map);
    # the rest (instance ids) is dropped before the cache.
    extras = tuple(k for k in source.info.fields if k in TRAIN_FIELDS)
    keep = ("image", "mask", "id", *extras)
    base = base.map(lambda ex: _check_labels({k: ex[k] for k in keep}, num_classes))
    if d.cache:
        base = base.cache()
    n_host = _cardinality(base, f"split {d.train_split!r} of {source.info.name!r}")
    consumed = start_step * host_batch
    start_epoch, offset = divmod(consumed, n_host)
    buffer = min(n_host, d.shuffle_buffer)
    seed = int(config.seed)

    def epoch(e):
        return base.shuffle(buffer, seed=seed * 1_000_003 + e, reshuffle_each_iteration=False)

    ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch)
    ds = ds.skip(offset).enumerate(start=consumed)

    crop_size = tuple(d.crop_size)
    elastic = augment.elastic_from_config(d.elastic)

    def transform(counter, ex):
        example_seed = tf.stack(
            [tf.constant(seed, tf.int64), counter * process_count + process_index]
        )
        return augment.train_transform_fields(
            {"image": ex["image"], "mask": ex["mask"], **{k: ex[k] for k in extras}},
            example_seed,
            crop_size=crop_size,
            scale_range=tuple(d.scale_range),
            hflip=d.hflip,
            mean=tuple(d.mean),
            std=tuple(d.std),
            photometric=d.photometric,
            cat_max_ratio=d.cat_max_ratio,
            elastic=elastic,
        )

    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = max(1, d.num_threads)
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(host_batch, drop_remainder=True).prefetch(2).with_options(options)
    return ds.as_numpy_iterator()


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
    host_batch = _host_batch(config.eval.batch_size, process_count)
    total = source.info.splits.get(split)
    if total is None:
        raise ValueError(
            f"dataset {source.info.name!r} has no split {split!r}; "
            f"splits: {', '.join(sorted(source.info.splits))}"
        )
    if total == 0:
        raise ValueError(f"split {split!r} of {source.info.name!r} is empty")
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
    per_process_max = math.ceil(total / process_count)
    num_batches = math.ceil(per_process_max / host_batch)
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
