"""Random access to prepared TFDS splits (segjax.data.records)."""

import struct
import types

import numpy as np
import pytest
import tensorflow as tf

from segjax import data
from segjax.data.image_io import DataError
from segjax.data.records import RecordReader


def _write_tfrecord(path, records):
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)


def _instruction(path, skip=0, take=-1):
    return types.SimpleNamespace(filename=str(path), skip=skip, take=take)


def test_reader_follows_the_file_instructions_in_order(tmp_path):
    a = [f"a{i}".encode() for i in range(5)]
    b = [b"", b"b1\x00\x00", b"b2" * 1000]  # empty, trailing NULs, long
    _write_tfrecord(tmp_path / "a", a)
    _write_tfrecord(tmp_path / "b", b)
    reader = RecordReader([_instruction(tmp_path / "a", 1, 3), _instruction(tmp_path / "b")])
    expected = a[1:4] + b
    assert len(reader) == len(expected)
    assert [reader.read(i) for i in range(len(reader))] == expected
    got = tf.data.Dataset.range(len(reader)).map(reader.read_tf).as_numpy_iterator()
    assert list(got) == expected  # the bytes survive tf.numpy_function exactly
    with pytest.raises(IndexError, match="outside"):
        reader.read(len(reader))


def test_cache_serves_later_reads_without_the_file(tmp_path):
    _write_tfrecord(tmp_path / "a", [b"x", b"y"])
    reader = RecordReader([_instruction(tmp_path / "a")], cache=True)
    assert reader.read(1) == b"y"
    (tmp_path / "a").write_bytes(b"")  # what was read stays readable
    assert reader.read(1) == b"y"


def test_truncated_shard_is_one_line_error(tmp_path):
    _write_tfrecord(tmp_path / "a", [b"hello", b"world"])
    raw = (tmp_path / "a").read_bytes()
    (tmp_path / "a").write_bytes(raw[:-6])
    with pytest.raises(DataError, match=r"a: truncated TFRecord .*prepare the dataset again"):
        RecordReader([_instruction(tmp_path / "a")])
    (tmp_path / "a").write_bytes(raw + struct.pack("<I", 7))
    with pytest.raises(DataError, match="truncated TFRecord header"):
        RecordReader([_instruction(tmp_path / "a")])


def test_source_records_decode_to_as_dataset_examples(tiny_config):
    src = data.get_source(tiny_config.data)
    reader = src.record_reader("train")
    assert len(reader) == src.info.splits["train"]
    for i, ex in enumerate(src.as_dataset("train").take(4).as_numpy_iterator()):
        got = src.decode(tf.constant(reader.read(i)))
        for key in ("image", "mask", "id"):
            np.testing.assert_array_equal(got[key].numpy(), ex[key])
    with pytest.raises(ValueError, match="has no split 'nope'"):
        src.record_reader("nope")
