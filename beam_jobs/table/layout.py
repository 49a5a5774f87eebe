"""The on-disk layout of soundsight's data: what `beam_jobs.preprocess` writes, and the demo data folder.

A dataset (OUT/<modality>) is a table of immutable snapshots (`beam_jobs.table.snapshots`):

  OUT/<modality>/dataset.json               the current snapshot's manifest: the pointer readers resolve,
                                            replaced in one step (a rename; one object write on gs://)
  OUT/<modality>/snapshots/NNNNNNNN.json    every committed snapshot's manifest, never modified: the commit log
  OUT/<modality>/snapshots/NNNNNNNN.removed the files of that snapshot were deleted by retention
  OUT/<modality>/spans/<run id>/            a span: the records one run wrote, never modified afterwards
      soundsight_<modality>-<split>.tfrecord[.gz]-NNNNN-of-MMMMM   its shards
      dataset_info.json, features.json, label.labels.txt           TFDS metadata (uncompressed shards only)
      files.jsonl                           one row per record: the input file it came from and where it is
      errors.jsonl                          one row per input file that could not become a record
      span.json                             the span's own manifest, written last
  OUT/<modality>/noise/<hash>.npy           a background noise recording's spectrogram, listed by the manifests
  OUT/errors.jsonl                          the error rows of the current snapshots of the last run's modalities
  OUT/.runs/<run id>.json                   a running run's lease: who it is, so that others know it is alive
  OUT/.tmp-<run id>/                        that run's temporary files, gone when it finishes

A snapshot's manifest lists its shards relative to OUT/<modality>, so a reader
needs only the manifest it resolved. The shards are named as TensorFlow
Datasets names them ({DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}), so that
each span is also a TFDS dataset and a snapshot is
`tfds.builder_from_directories(its spans, newest first)` (TFDS takes the label
names from the first folder, and labels only grow).

The main job and the app keep their data in one folder, DATA:

  DATA/raw/<corpus>/                        folder-per-class raw trees (a modality's demo corpus folder)
  DATA/tfrecords/                           the preprocessing output OUT above

Paths are strings joined with "/", so every function here serves local paths
and URLs (gs://, s3://) alike, except DataFolder, which is local.
"""
import dataclasses
import uuid
from pathlib import Path

from beam_jobs.modalities import get as get_modality

MANIFEST_NAME = "dataset.json"  # the pointer: a copy of the current snapshot's manifest
ERRORS_NAME = "errors.jsonl"
TFDS_INFO_NAME = "dataset_info.json"
TFDS_FEATURES_NAME = "features.json"
TFDS_LABELS_NAME = "label.labels.txt"  # the names of the ClassLabel feature "label"
SPAN_MANIFEST_NAME = "span.json"
SPAN_FILES_NAME = "files.jsonl"
SPAN_ERRORS_NAME = "errors.jsonl"
SNAPSHOTS_FOLDER = "snapshots"
SPANS_FOLDER = "spans"
NOISE_FOLDER_NAME = "noise"  # the background noise side table, one .npy per recording, named by its hash
RUNS_FOLDER = ".runs"
TEMP_PREFIX = ".tmp-"
# What a dataset folder held before snapshots: shards and TFDS metadata beside dataset.json. The first
# snapshot committed into such a folder deletes them.
LEGACY_PATTERNS = ("soundsight_*.tfrecord*-of-*", "*-of-*.tfrecord*", TFDS_INFO_NAME, TFDS_FEATURES_NAME,
                   TFDS_LABELS_NAME, f"{TEMP_PREFIX}*")


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


def snapshot_path(dataset_dir_path: str, snapshot_id: int) -> str:
    return f"{dataset_dir_path.rstrip('/')}/{SNAPSHOTS_FOLDER}/{snapshot_id:08d}.json"


def tombstone_path(dataset_dir_path: str, snapshot_id: int) -> str:
    return f"{dataset_dir_path.rstrip('/')}/{SNAPSHOTS_FOLDER}/{snapshot_id:08d}.removed"


def span_dir(dataset_dir_path: str, span: str) -> str:
    return f"{dataset_dir_path.rstrip('/')}/{SPANS_FOLDER}/{span}"


def lease_path(output_dir: str, run_id: str) -> str:
    return f"{output_dir.rstrip('/')}/{RUNS_FOLDER}/{run_id}.json"


def run_temp_dir(output_dir: str, run_id: str) -> str:
    """The folder of all of one run's temporary files."""
    return f"{output_dir.rstrip('/')}/{TEMP_PREFIX}{run_id}"


def temp_part_path(temp_dir: str, *, split: str, index: int, part: int) -> str:
    """Where one attempt at one part of a shard is streamed (uncompressed); unique per attempt."""
    return f"{temp_dir}/part-{split}-{index:05d}-{part:05d}-{uuid.uuid4().hex}.tfrecord"


def temp_shard_path(temp_dir: str, *, split: str, index: int, compression: str | None) -> str:
    """Where one attempt at a whole shard is written before it is renamed into its span; unique per attempt."""
    return f"{temp_dir}/shard-{split}-{index:05d}-{uuid.uuid4().hex}{shard_suffix(compression)}"


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
