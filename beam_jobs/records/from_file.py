"""One input file to one record or one error: the per-file work of the pipeline, in one plain function.

`encode_input_file` checks the file's label and listed size, reads it,
featurizes it with its modality's featurizer, hashes it and encodes the
Example. The pipeline's `FeaturizePart` and the benchmark's plain loop both call
it; `trainer.predict`, the app and the report call the same featurizer through
`DatasetManifest.featurize`. No Beam, no TensorFlow.
"""
import hashlib
import json
from typing import Callable, Mapping, NamedTuple

from beam_jobs.inputs.tree import class_folder
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.modalities.spec import Modality
from beam_jobs.records.examples import encode_example


class ErrorRow(NamedTuple):
    """An input file that could not become an example, and why: one line of OUT/errors.jsonl."""
    path: str
    root: str
    modality: str
    reason: str

    def to_json(self) -> str:
        return json.dumps(self._asdict(), sort_keys=True)


def encode_input_file(*, spec: Modality, config, relative_path: str, size_bytes: int, split: str,
                      vocabulary: Mapping[str, int], read: Callable[[int], bytes],
                      label_name: str | None = None) -> tuple[str, bytes]:
    """(label name, serialized Example) for one listed input file; InvalidInputError says why it cannot be one.

    Args:
      spec, config: the file's modality and its featurization config.
      relative_path: the file's path relative to its root (forward slashes); its top folder is the label.
      size_bytes: the size the listing saw, checked against the limit before anything is read.
      split: the file's split, recorded in the example.
      vocabulary: {label name: index}.
      read: read(limit) returns the file's bytes, at most `limit` of them.
      label_name: the label when the plan gave one (_unknown_, _silence_); default: the top folder.
    """
    label_name = label_name or class_folder(relative_path)
    if label_name is None:
        raise InvalidInputError("file is directly in the input root; inputs must be in ROOT/<label>/")
    if label_name not in vocabulary:
        # Only a fixed vocabulary can miss a class folder.
        raise InvalidInputError(f"label {label_name!r} is not in the fixed {spec.name} labels")
    max_bytes = config.max_file_bytes
    if size_bytes > max_bytes:
        # Checked on the listing so that an oversized file is never read into memory.
        raise InvalidInputError(f"file is {size_bytes} bytes, over the limit of {max_bytes}")
    data = read(max_bytes + 1)
    tensor = spec.featurize(data, config=config)
    return label_name, encode_example(
        tensor=tensor, label=vocabulary[label_name], label_name=label_name, modality=spec.name,
        tensor_dtype=spec.tensor_dtype, example_id=hashlib.sha256(data).hexdigest(), path=relative_path, split=split)
