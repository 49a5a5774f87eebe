"""The on-disk layout of soundsight's data: what `beam_jobs.preprocess` writes, and the demo data folder.

  OUT/errors.jsonl                          one row per input file that could not become an example
  OUT/<modality>/dataset.json               the manifest, written last (`beam_jobs.manifest`)
  OUT/<modality>/soundsight_<modality>-<split>.tfrecord[.gz]-NNNNN-of-MMMMM   the shards
  OUT/<modality>/dataset_info.json, features.json, label.labels.txt
                                            TensorFlow Datasets' metadata (uncompressed shards only)
  OUT/<modality>/.tmp-*                     a run's temporary files, gone when it finishes

The shards are named as TensorFlow Datasets names them
({DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}), so that with its metadata a
dataset folder is also a TFDS dataset (`tfds.builder_from_directory`).

The main job and the app keep their data in one folder, DATA:

  DATA/raw/<corpus>/                        folder-per-class raw trees (a modality's demo corpus folder)
  DATA/tfrecords/                           the preprocessing output OUT above

Paths are strings joined with "/", so every function here serves local paths
and URLs (gs://, s3://) alike, except DataFolder, which is local.
"""
import dataclasses
from pathlib import Path

from beam_jobs.modalities import get as get_modality

MANIFEST_NAME = "dataset.json"
ERRORS_NAME = "errors.jsonl"
TFDS_INFO_NAME = "dataset_info.json"
TFDS_FEATURES_NAME = "features.json"
TFDS_LABELS_NAME = "label.labels.txt"  # the names of the ClassLabel feature "label"
# Shards as named now, and as named before TFDS naming (a re-ingest removes those too).
SHARD_PATTERNS = ("soundsight_*.tfrecord*-of-*", "*-of-*.tfrecord*")
TEMP_PREFIX = ".tmp-"


def dataset_dir(output_dir: str, modality: str) -> str:
    return f"{output_dir.rstrip('/')}/{modality}"


def manifest_path(dataset_dir_path: str) -> str:
    return f"{dataset_dir_path.rstrip('/')}/{MANIFEST_NAME}"


def errors_path(output_dir: str) -> str:
    return f"{output_dir.rstrip('/')}/{ERRORS_NAME}"


def shard_suffix(compression: str | None) -> str:
    return ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"


def tfds_name(modality: str) -> str:
    """The dataset's name for TensorFlow Datasets, which wants [a-zA-Z]\\w*."""
    return f"soundsight_{modality}"


def shard_name(modality: str, split: str, rank: int, count: int, compression: str | None) -> str:
    return f"{tfds_name(modality)}-{split}{shard_suffix(compression)}-{rank:05d}-of-{count:05d}"


def temp_part_path(dataset_dir_path: str, *, split: str, index: int, part: int) -> str:
    """Where a worker streams one part of a shard (uncompressed) before the parts are concatenated."""
    return f"{dataset_dir_path}/{TEMP_PREFIX}{split}-{index:05d}-part-{part:05d}.tfrecord"


def temp_shard_path(dataset_dir_path: str, *, split: str, index: int, compression: str | None) -> str:
    """Where a shard is written, whole, before it is renamed to its published name."""
    return f"{dataset_dir_path}/{TEMP_PREFIX}{split}-{index:05d}{shard_suffix(compression)}"


@dataclasses.dataclass(frozen=True)
class DataFolder:
    """DATA: the raw trees and the preprocessing output of the main job and the app."""
    root: Path

    def raw(self, corpus: str) -> Path:
        """DATA/raw/<corpus>, e.g. corpus "festival"."""
        return self.root / "raw" / corpus

    def demo_raw(self, modality: str) -> Path:
        """The raw tree of `modality`'s demo corpus."""
        return self.raw(get_modality(modality).demo_corpus.folder)

    @property
    def records(self) -> Path:
        """DATA/tfrecords: the --output_dir of beam_jobs.preprocess."""
        return self.root / "tfrecords"

    def dataset(self, modality: str) -> Path:
        """DATA/tfrecords/<modality>: a --data_dir for the trainer."""
        return Path(dataset_dir(str(self.records), modality))
