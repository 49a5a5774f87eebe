"""The dataset manifest: everything a reader needs of one snapshot, in one file.

A snapshot's manifest (`snapshots/NNNNNNNN.json`, copied to `dataset.json`
while current) is written after every file it lists, so a reader that finds it
finds a complete dataset; `resolve_manifest` is how every reader finds it.
Pure Python: the trainer, `predict`, the app and the report read it too, and
featurize a raw file exactly as the pipeline did through `featurize`.
"""
import dataclasses
import json
from typing import Any, Callable

import numpy as np

from beam_jobs.modalities import get as get_modality
from beam_jobs.modalities.spec import Modality, PreviewPanel
from beam_jobs.table.layout import manifest_path, snapshot_path, span_dir, tombstone_path


class SnapshotNotFoundError(FileNotFoundError):
    """No such dataset, or no such snapshot of it."""


class SnapshotRemovedError(FileNotFoundError):
    """The pinned snapshot's files were deleted by retention."""


@dataclasses.dataclass
class ShardInfo:
    path: str  # relative to the dataset folder (OUT/<modality>): spans/<span>/<shard name>
    num_examples: int
    num_bytes: int | None = None  # as stored; None in manifests written before it was recorded
    sha256: str | None = None  # hex SHA-256 of the stored bytes; likewise


@dataclasses.dataclass
class SplitInfo:
    num_examples: int
    label_counts: dict[str, int]
    shards: list[ShardInfo]


@dataclasses.dataclass
class DatasetManifest:
    modality: str  # a name in beam_jobs.modalities.MODALITIES
    labels: list[str]  # the label vocabulary; a record's `label` indexes it
    tensor_dtype: str  # numpy name of the stored tensor's dtype
    tensor_shape: list[int]
    featurization: dict[str, Any]  # the modality's config fields
    splits: dict[str, SplitInfo]
    features: list[dict]  # beam_jobs.records.features.describe()
    compression: str | None  # None or "GZIP"
    input_roots: list[str]
    split_config: dict[str, float]
    num_errors: int
    pipeline_version: str
    created: str  # ISO 8601 UTC time of the run
    # The fields below are None or empty in manifests written before snapshots.
    snapshot_id: int | None = None  # 1, 2, ...: one more than its parent's
    parent_snapshot: int | None = None  # the snapshot it was built on, None for the first
    spans: list[str] = dataclasses.field(default_factory=list)  # its span folders under spans/, oldest first
    changes: dict[str, int] = dataclasses.field(default_factory=dict)  # input files new, changed, removed, reused
    run_id: str | None = None  # the run that committed it
    # beam_jobs.modalities.config.KeywordConfig's fields when _silence_ or _unknown_ are made, else empty.
    keywords: dict[str, Any] = dataclasses.field(default_factory=dict)
    # ROOT/_background_noise_ recordings, each featurized whole once ({"path", "root", "size", "mtime", "file":
    # noise/<hash>.npy under the dataset folder, "frames"}, or {"path", ..., "error": why it is left out}).
    background_noise: list[dict] = dataclasses.field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetManifest":
        fields = json.loads(text)
        fields["splits"] = {
            name: SplitInfo(num_examples=split["num_examples"], label_counts=split["label_counts"],
                            shards=[ShardInfo(**shard) for shard in split["shards"]])
            for name, split in fields["splits"].items()}
        return cls(**fields)

    def describe(self) -> str:
        """"snapshot 3" or, before snapshots, "the dataset of <created>"."""
        return f"snapshot {self.snapshot_id}" if self.snapshot_id is not None else f"the dataset of {self.created}"

    def span_dirs(self, dataset_dir: str) -> list[str]:
        """The snapshot's span folders, newest first: `tfds.builder_from_directories` takes its features
        (the label names) from the first, and labels only grow."""
        return [span_dir(dataset_dir, span) for span in reversed(self.spans)]

    @property
    def spec(self) -> Modality:
        return get_modality(self.modality)

    def featurizer_config(self):
        """The modality's featurization config the dataset was built with."""
        return self.spec.config_class(**self.featurization)

    def featurize(self, data: bytes) -> np.ndarray:
        """Raw file bytes to the stored tensor, exactly as the pipeline computed it.

        Raises beam_jobs.modalities.errors.InvalidInputError for a file it cannot use.
        """
        return self.spec.featurize(data, config=self.featurizer_config())

    def preview(self, data: bytes) -> list[PreviewPanel]:
        """What a person is shown of a raw file: pictures of what the model gets. Raises InvalidInputError."""
        return self.spec.preview(data, config=self.featurizer_config())


def removed_message(dataset_dir: str, snapshot_id: int, tombstone: dict) -> str:
    return (f"snapshot {snapshot_id} of {dataset_dir} was removed by retention (--keep_snapshots "
            f"{tombstone.get('keep_snapshots')}, when snapshot {tombstone.get('removed_when')} was committed, "
            f"{tombstone.get('removed_at')}); its files are gone. List the snapshots kept with "
            f"python -m beam_jobs.snapshots {dataset_dir}")


def resolve_manifest(dataset_dir: str, snapshot_id: int | None = None, *, read_text: Callable[[str], str],
                     exists: Callable[[str], bool]) -> DatasetManifest:
    """The manifest of snapshot `snapshot_id` of `dataset_dir`, or of the current snapshot when None.

    A reader calls this once, at start, and reads only what the manifest lists:
    committed files never change, so later commits cannot affect it. Raises
    SnapshotNotFoundError (no dataset, or no such snapshot) or SnapshotRemovedError
    (deleted by retention), each with one line that says which. `read_text` and
    `exists` are the caller's file system (tf.io.gfile or Beam's FileSystems).
    """
    dataset_dir = dataset_dir.rstrip("/")
    if snapshot_id is None:
        path = manifest_path(dataset_dir)
        if not exists(path):
            raise SnapshotNotFoundError(f"{path} not found: give a folder written by beam_jobs.preprocess, "
                                        f"e.g. OUT/audio or OUT/image")
        return DatasetManifest.from_json(read_text(path))
    tombstone = tombstone_path(dataset_dir, snapshot_id)
    if exists(tombstone):
        raise SnapshotRemovedError(removed_message(dataset_dir, snapshot_id, json.loads(read_text(tombstone))))
    path = snapshot_path(dataset_dir, snapshot_id)
    if not exists(path):
        raise SnapshotNotFoundError(f"{dataset_dir} has no snapshot {snapshot_id}: list its snapshots with "
                                    f"python -m beam_jobs.snapshots {dataset_dir}")
    return DatasetManifest.from_json(read_text(path))
