"""Encodes one featurized file as a serialized `tf.train.Example`.

Uses the `tfrecord` package's compiled protobuf, never TensorFlow, and checks
every value against `beam_jobs.features.FEATURES`.
"""
import numpy as np
from tfrecord import example_pb2

from beam_jobs.features import FEATURES, TENSOR_DTYPES, tensor_to_bytes


def encode_example(*, tensor: np.ndarray, label: int, label_name: str, modality: str,
                   example_id: str, path: str, split: str) -> bytes:
    """Serialized `tf.train.Example` bytes holding the features of `FEATURES`."""
    expected_dtype = TENSOR_DTYPES[modality]
    if tensor.dtype != np.dtype(expected_dtype):
        raise TypeError(f"{modality} tensor must be {expected_dtype}, got {tensor.dtype} for {path}")
    values = {
        "tensor": tensor_to_bytes(tensor),
        "dtype": tensor.dtype.name,
        "shape": list(tensor.shape),
        "label": label,
        "label_name": label_name,
        "modality": modality,
        "id": example_id,
        "path": path,
        "split": split,
    }
    example = example_pb2.Example()
    for feature in FEATURES:
        value = values[feature.name]
        values_list = value if isinstance(value, list) else [value]
        if feature.kind == "bytes":
            example.features.feature[feature.name].bytes_list.value.extend(
                v if isinstance(v, bytes) else v.encode("utf-8") for v in values_list)
        else:
            example.features.feature[feature.name].int64_list.value.extend(int(v) for v in values_list)
    # Features is a protobuf map, whose default order differs between processes; the
    # deterministic order makes the same file give the same bytes on every worker.
    return example.SerializeToString(deterministic=True)


def decode_example(data: bytes) -> dict:
    """Parses serialized Example bytes into {name: bytes | str | int | list[int]} following FEATURES."""
    example = example_pb2.Example.FromString(data)
    decoded = {}
    for feature in FEATURES:
        stored = example.features.feature[feature.name]
        values = list(stored.bytes_list.value if feature.kind == "bytes" else stored.int64_list.value)
        if feature.length is None:
            decoded[feature.name] = values
        elif feature.name == "tensor":
            decoded[feature.name] = values[0]
        else:
            decoded[feature.name] = values[0].decode("utf-8") if feature.kind == "bytes" else values[0]
    return decoded
