"""What a dataset folder holds, read back for the tests: snapshots, their records, leftovers, integrity."""
import pathlib

import tensorflow as tf

from beam_jobs import verify
from beam_jobs.table import snapshots
from beam_jobs.table.manifest import DatasetManifest


def current(dataset: pathlib.Path) -> DatasetManifest:
    return DatasetManifest.from_json((dataset / "dataset.json").read_text())


def records(dataset: pathlib.Path, manifest: DatasetManifest, parse) -> list[tuple]:
    """Sorted (id, serialized Example, label, split, path) of every record of the snapshot, read by tf.data."""
    rows = []
    for split, info in manifest.splits.items():
        for shard in info.shards:
            read = list(tf.data.TFRecordDataset(str(dataset / shard.path),
                                                compression_type=manifest.compression or "").as_numpy_iterator())
            assert len(read) == shard.num_examples, shard.path
            for serialized in read:
                example = parse(serialized)
                assert example["split"].decode() == split, shard.path
                rows.append((example["id"].decode(), serialized, example["label"][0], split,
                             example["path"].decode()))
    return sorted(rows)


def record_paths(dataset: pathlib.Path, manifest: DatasetManifest, parse) -> set[str]:
    return {row[4] for row in records(dataset, manifest, parse)}


def span_folders(dataset: pathlib.Path) -> set[str]:
    spans = dataset / "spans"
    return {path.name for path in spans.iterdir()} if spans.exists() else set()


def assert_no_debris(out: pathlib.Path, modalities=("audio",)) -> None:
    """No temporary file or folder, no lease, and every span folder listed by a snapshot not removed."""
    assert [str(path) for path in out.rglob("*") if ".tmp-" in path.name] == []
    assert not (out / ".runs").exists() or list((out / ".runs").iterdir()) == []
    for modality in modalities:
        dataset = out / modality
        committed, removed = snapshots.snapshot_ids(str(dataset))
        listed = {span for snapshot_id in committed if snapshot_id not in removed
                  for span in DatasetManifest.from_json(
                      (dataset / "snapshots" / f"{snapshot_id:08d}.json").read_text()).spans}
        assert span_folders(dataset) == listed, "span folders and the spans the kept snapshots list differ"


def assert_verifies(dataset: pathlib.Path, snapshot_id: int | None = None) -> None:
    """Every shard of the snapshot (the current one by default) is as its manifest says."""
    bad, num_shards, _ = verify.verify(str(dataset), snapshots.load(str(dataset), snapshot_id))
    assert bad == [] and num_shards > 0, bad
