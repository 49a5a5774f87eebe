"""Encodes one featurized file as a serialized `tf.train.Example`, by hand.

A `tf.train.Example` is a small protobuf: Example{features: Features{feature:
map<string, Feature>}}, a Feature holding a BytesList or a packed Int64List.
Writing its wire format directly keeps `beam_jobs` free of every compiled
`tensorflow.Example` protobuf: TensorFlow's and the `tfrecord` package's both
register the same names in protobuf's default pool and cannot share a process,
so with neither imported here the pipeline, the trainer and the app can. The
bytes are those of protobuf's deterministic serialization (map keys sorted the
way its Python runtime sorts them), as tests check against TensorFlow's own `tf.train.Example`.
"""
import functools

import numpy as np

from beam_jobs.records.features import FEATURES, tensor_to_bytes

# Every field written here is length-delimited (wire type 2), so its tag byte is (number << 3 | 2):
# b"\n" for field 1, b"\x12" for field 2, b"\x1a" for field 3.


def _upb_key_order(first: bytes, second: bytes) -> int:
    """Protobuf's Python runtime (upb) sorts map keys bytewise, but a key after its own extensions."""
    common = min(len(first), len(second))
    if first[:common] != second[:common]:
        return -1 if first[:common] < second[:common] else 1
    return len(second) - len(first)


# Deterministic serialization writes the map in this order: "label_name" before "label".
_FEATURE_ORDER = sorted(FEATURES, key=lambda feature: functools.cmp_to_key(_upb_key_order)(
    feature.name.encode("utf-8")))


def encode_example(*, tensor: np.ndarray, label: int, label_name: str, modality: str, tensor_dtype: str,
                   example_id: str, path: str, split: str) -> bytes:
    """Serialized `tf.train.Example` bytes holding the features of `FEATURES`.

    `tensor` must be of `tensor_dtype` (the modality's numpy dtype name): a
    featurizer that returns another dtype is a bug, reported with the file's path.
    """
    if tensor.dtype.name != tensor_dtype:
        raise TypeError(f"{modality} tensor must be {tensor_dtype}, got {tensor.dtype} for {path}")
    values = {
        "tensor": tensor_to_bytes(tensor),
        "dtype": tensor_dtype.encode("utf-8"),
        "shape": tensor.shape,
        "label": (label,),
        "label_name": label_name.encode("utf-8"),
        "modality": modality.encode("utf-8"),
        "id": example_id.encode("utf-8"),
        "path": path.encode("utf-8"),
        "split": split.encode("utf-8"),
    }
    parts = []
    for name, key_field, kind in _ENTRY_PARTS:
        if kind == "bytes":
            # Feature.bytes_list = 1 holding BytesList{repeated bytes value = 1}: one value
            value = values[name]
            value_length = _varint(len(value))
            list_length = 1 + len(value_length) + len(value)
            feature = (b"\n", _varint(list_length), b"\n", value_length, value)
            feature_length = 1 + len(feature[1]) + list_length
        else:
            # Feature.int64_list = 3 holding Int64List{repeated int64 value = 1 [packed = true]}
            packed = b"".join(_varint(int(value) & _UINT64) for value in values[name])
            packed_field = b"\n" + _varint(len(packed)) + packed if packed else b""
            feature = (b"\x1a", _varint(len(packed_field)), packed_field)
            feature_length = 1 + len(feature[1]) + len(packed_field)
        # A map entry is a message {key = 1; value = 2}, in Features.feature = 1.
        feature_length_varint = _varint(feature_length)
        entry_length = len(key_field) + 1 + len(feature_length_varint) + feature_length
        parts += (b"\n", _varint(entry_length), key_field, b"\x12", feature_length_varint, *feature)
    features = b"".join(parts)
    return b"\n" + _varint(len(features)) + features  # Example.features = 1


def _encode_varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Encoding is on every record's path: varints below 16 Ki are looked up, not computed.
_SMALL_VARINTS = tuple(_encode_varint(value) for value in range(1 << 14))


def _varint(value: int) -> bytes:
    return _SMALL_VARINTS[value] if value < len(_SMALL_VARINTS) else _encode_varint(value)


_UINT64 = 0xFFFFFFFFFFFFFFFF  # a negative int64 is written as its two's complement, in ten bytes
# (name, the map entry's key field, kind) in serialization order; key = field 1, length-delimited.
_ENTRY_PARTS = tuple((feature.name, b"\n" + _varint(len(feature.name)) + feature.name.encode("utf-8"), feature.kind)
                     for feature in _FEATURE_ORDER)
