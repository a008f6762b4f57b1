"""Random access to the examples of a prepared TFDS split, by their index in the split.

TFDS stores a split as TFRecord shards, which ``tf.data`` reads front to back. The training
stream needs example ``i`` of the split directly (the global batch at step ``s`` is a pure
function of ``(seed, s)``, and each process reads only its own rows of it), so
:class:`RecordReader` indexes the shards once: a TFRecord is a sequence of ``length (uint64 LE),
crc32c(length), data, crc32c(data)``, so walking the 8-byte length headers gives every record's
offset without reading the data. Reading a record is then one ``pread``. The crc words are not
checked here: TFDS checked them when it wrote the shard, and a damaged record still fails to
parse in :meth:`segjax.data.base.Source.decode`.

The order is TFDS's own (the ``file_instructions`` of the split, in order, each record in file
order): example ``i`` here is the ``i``-th example ``Source.as_dataset(split)`` yields.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence

import numpy as np

from segjax.data.image_io import DataError
from segjax.runtime.lazy_imports import tf

_HEADER = 12  # uint64 length + uint32 masked crc of the length
_FOOTER = 4  # uint32 masked crc of the data


class _Shard:
    """One TFRecord file: its record offsets/lengths and a thread-safe positional read."""

    def __init__(self, path: str):
        self.path = path
        self._local = "://" not in path
        self._lock = threading.Lock()
        if self._local:
            self._fd = os.open(path, os.O_RDONLY)
            size = os.fstat(self._fd).st_size
        else:  # remote storage (gs://…): tf.io.gfile, one reader at a time
            self._file = tf.io.gfile.GFile(path, "rb")
            size = tf.io.gfile.stat(path).length
        self.offsets, self.lengths = self._index(size)

    def _pread(self, n: int, offset: int) -> bytes:
        if self._local:
            return os.pread(self._fd, n, offset)
        with self._lock:
            self._file.seek(offset)
            return self._file.read(n)

    def _index(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        offsets, lengths, pos = [], [], 0
        while pos < size:
            header = self._pread(8, pos)
            if len(header) < 8:
                raise DataError(f"{self.path}: truncated TFRecord header at byte {pos}")
            (length,) = struct.unpack("<Q", header)
            offsets.append(pos + _HEADER)
            lengths.append(length)
            pos += _HEADER + length + _FOOTER
        if pos != size:
            raise DataError(
                f"{self.path}: truncated TFRecord (last record ends at byte {pos}, file has "
                f"{size}); prepare the dataset again"
            )
        return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)

    def read(self, record: int) -> bytes:
        """The serialized record number ``record`` of this file."""
        n = int(self.lengths[record])
        data = self._pread(n, int(self.offsets[record]))
        if len(data) != n:
            raise DataError(f"{self.path}: record {record} is truncated ({len(data)} of {n} bytes)")
        return data


class RecordReader:
    """The serialized examples of one split, by index (see the module docstring).

    Args:
      file_instructions: the split's ``tfds`` ``FileInstruction`` s (``filename``, ``skip``,
        ``take``), e.g. ``builder.info.splits[split].file_instructions``.
      cache: keep every record read in memory (encoded bytes), for datasets small enough to
        hold; later reads of the same index cost no I/O.
    """

    def __init__(self, file_instructions: Sequence, *, cache: bool = False):
        shards: dict[str, _Shard] = {}
        where_file, where_record = [], []
        for fi in file_instructions:
            if fi.filename not in shards:  # a shard is indexed once, however often it appears
                shards[fi.filename] = _Shard(fi.filename)
            shard = shards[fi.filename]
            available = len(shard.offsets) - fi.skip
            take = available if fi.take is None or fi.take < 0 else min(fi.take, available)
            where_file.extend([fi.filename] * take)
            where_record.extend(range(fi.skip, fi.skip + take))
        self._shards = shards
        self._file = where_file
        self._record = np.asarray(where_record, np.int64)
        self._cache: dict[int, bytes] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self._record)

    def read(self, index: int) -> bytes:
        """The serialized example number ``index`` of the split."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} outside [0, {len(self)})")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        data = self._shards[self._file[index]].read(int(self._record[index]))
        if self._cache is not None:
            self._cache[index] = data
        return data

    def read_tf(self, index: tf.Tensor) -> tf.Tensor:
        """:meth:`read` inside ``tf.data``: an int64 scalar index → a string scalar."""
        # An object array keeps the bytes exact (a fixed-width bytes array would drop a
        # serialized example's trailing NUL bytes).
        data = tf.numpy_function(
            lambda i: np.array(self.read(i), dtype=object), [index], tf.string, stateful=False
        )
        return tf.ensure_shape(data, [])
