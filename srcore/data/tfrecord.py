"""The TFRecord codec of ingest's train shards, written without TensorFlow.

Each record is a `tf.train.Example{"image": bytes_list[png], "name": bytes_list[name]}`;
srcore.data.dataset reads them back with tf.data. The framing's crc32c comes from
google-crc32c (which kfp already depends on); without it, tf.io.TFRecordWriter is used.
This module must stay free of a top-level TensorFlow import: ingest imports it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the feature keys of every record (dataset.py parses exactly these)
IMAGE_KEY, NAME_KEY = "image", "name"


def serialize_example(name: str, png: bytes) -> bytes:
    """tf.train.Example{"image": bytes_list[png], "name": bytes_list[name]} encoded by hand.

    Byte-identical to `tf.train.Example(...).SerializeToString(deterministic=True)`
    (map keys in sorted order), without importing TensorFlow; tests check that.
    """

    def feature(value: bytes) -> bytes:
        return _proto_field(1, _proto_field(1, value))  # Feature.bytes_list.value

    def map_entry(key: str, value: bytes) -> bytes:
        return _proto_field(1, _proto_field(1, key.encode()) + _proto_field(2, feature(value)))

    features = map_entry(IMAGE_KEY, png) + map_entry(NAME_KEY, name.encode())
    return _proto_field(1, features)  # Example.features


def _proto_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


class _RecordFile:
    """TFRecord framing: len (u64) | masked crc32c(len) | data | masked crc32c(data)."""

    def __init__(self, path: Path, crc32c: Callable[[bytes], int]):
        self._file = open(path, "wb")
        self._crc32c = crc32c

    def _masked_crc(self, data: bytes) -> bytes:
        crc = self._crc32c(data)
        return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)

    def write(self, record: bytes) -> None:
        length = struct.pack("<Q", len(record))
        self._file.write(length + self._masked_crc(length) + record + self._masked_crc(record))

    def close(self) -> None:
        self._file.close()


def open_record_file(path: Path) -> Any:
    """A TFRecord writer (write(bytes), close()) without TensorFlow when possible."""
    try:
        import google_crc32c
    except ImportError:
        import tensorflow as tf  # slow import, but correct

        return tf.io.TFRecordWriter(str(path))
    return _RecordFile(path, google_crc32c.value)


class ShardWriter:
    """Writes train examples into shards of `shard_size`; names them
    train-00000-of-0000N.tfrecord once N is known (in finish())."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder = folder
        self.shard_size = shard_size
        self.count = 0
        self._paths: list[Path] = []
        self._writer: Any = None

    def write(self, name: str, png: bytes) -> None:
        if self.count % self.shard_size == 0:
            self._close_current()
            self.folder.mkdir(parents=True, exist_ok=True)
            self._paths.append(self.folder / f"train-{len(self._paths):05d}.partial")
            self._writer = open_record_file(self._paths[-1])
        self._writer.write(serialize_example(name, png))
        self.count += 1

    def finish(self) -> list[str]:
        self._close_current()
        total = len(self._paths)
        names = []
        for index, path in enumerate(self._paths):
            final = path.with_name(f"train-{index:05d}-of-{total:05d}.tfrecord")
            path.rename(final)
            names.append(final.name)
        return names

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
