"""The TFRecord schema, written once for both directions.

`beam_jobs.records.examples` encodes `tf.train.Example`s with it and the trainer builds
its `tf.io.parse_example` spec from it, so writer and reader cannot drift
apart. Pure Python and numpy.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # "bytes" or "int64": the tf.train.Feature list it is stored in
    length: int | None  # values per example; None means variable length
    description: str


FEATURES = (
    Feature("tensor", "bytes", 1, "the featurized input, raw little-endian bytes of `dtype` and `shape`"),
    Feature("dtype", "bytes", 1, "numpy dtype name of `tensor`: float32 for audio, uint8 for images"),
    Feature("shape", "int64", None, "dimensions of `tensor`: [frames, bins] or [height, width, channels]"),
    Feature("label", "int64", 1, "index of the class in the manifest's label vocabulary"),
    Feature("label_name", "bytes", 1, "the class name: the folder the file was found in"),
    Feature("modality", "bytes", 1, "audio or image"),
    Feature("id", "bytes", 1, "hex SHA-256 of the file's bytes: the same file always gets the same id"),
    Feature("path", "bytes", 1, "source path relative to its input root, with forward slashes"),
    Feature("split", "bytes", 1, "train, validation or test"),
)


def tensor_to_bytes(array: np.ndarray) -> bytes:
    """Little-endian raw bytes of an array, as stored in the `tensor` feature."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def describe() -> list[dict]:
    """The schema as JSON-ready dicts, for the manifest."""
    return [dataclasses.asdict(feature) for feature in FEATURES]
