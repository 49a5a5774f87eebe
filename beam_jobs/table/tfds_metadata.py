"""TensorFlow Datasets' metadata for a dataset folder, as JSON, so the folder is also a TFDS dataset.

`tfds.builder_from_directory(OUT/audio)` then reads the shards (named as TFDS
names them, `beam_jobs.table.layout.shard_name`) with two features: `tensor`,
a `tfds.features.Tensor` stored as raw bytes (our encoding exactly), and
`label`, a `ClassLabel` with the vocabulary's names; the other features of the
Examples are ignored. Written as JSON in the formats of TFDS 4.9
(core/dataset_info.py, features/*.py) without importing it: beam_jobs imports
no TensorFlow. TFDS reads uncompressed TFRecord only, so a gzip dataset gets none.
"""
import json

from beam_jobs.table.layout import TFDS_FEATURES_NAME, TFDS_INFO_NAME, TFDS_LABELS_NAME, tfds_name
from beam_jobs.table.manifest import DatasetManifest

_FEATURES_DICT = "tensorflow_datasets.core.features.features_dict.FeaturesDict"
_TENSOR = "tensorflow_datasets.core.features.tensor_feature.Tensor"
_CLASS_LABEL = "tensorflow_datasets.core.features.class_label_feature.ClassLabel"


def tfds_files(manifest: DatasetManifest) -> dict[str, bytes]:
    """{file name: contents} of the TFDS metadata of `manifest`'s folder; empty for compressed shards."""
    if manifest.compression is not None:
        return {}
    # Int64 fields are strings in protobuf's JSON; a split without shards is left out (TFDS has no such split).
    splits = [{"name": name, "shardLengths": [str(shard.num_examples) for shard in split.shards],
               "numBytes": str(sum(shard.num_bytes or 0 for shard in split.shards))}
              for name, split in manifest.splits.items() if split.shards]
    info = {
        "name": tfds_name(manifest.modality),
        "version": manifest.pipeline_version,
        "description": f"soundsight {manifest.modality} dataset, written by beam_jobs.preprocess; "
                       f"dataset.json beside this file is its full manifest.",
        "fileFormat": "tfrecord",
        "splits": splits,
        "supervisedKeys": {"tuple": {"items": [{"featureKey": "tensor"}, {"featureKey": "label"}]}},
    }
    features = {"pythonClassName": _FEATURES_DICT, "featuresDict": {"features": {
        "tensor": {"pythonClassName": _TENSOR, "tensor": {
            "shape": {"dimensions": [str(size) for size in manifest.tensor_shape]},
            "dtype": manifest.tensor_dtype, "encoding": "bytes"}},
        "label": {"pythonClassName": _CLASS_LABEL, "classLabel": {"numClasses": str(len(manifest.labels))}},
    }}}
    return {
        TFDS_INFO_NAME: (json.dumps(info, indent=2) + "\n").encode("utf-8"),
        TFDS_FEATURES_NAME: (json.dumps(features, indent=2) + "\n").encode("utf-8"),
        TFDS_LABELS_NAME: "".join(f"{label}\n" for label in manifest.labels).encode("utf-8"),
    }
