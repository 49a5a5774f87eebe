"""A dataset as a table of immutable snapshots: listing, committing, retention and rollback.

The commit protocol (layout in `beam_jobs.table.layout`):

1. A run builds on the latest committed snapshot N (its base) and writes new
   files only: its span folder `spans/<run id>/`, which nothing lists yet.
2. It commits by creating `snapshots/<N+1>.json` exclusively
   (`beam_jobs.storage.files.create_exclusive`: a hard link locally, an upload with
   `if_generation_match=0` on gs://). This is the commit point: of two runs on
   the same base, exactly one creates the file; the other gets
   SnapshotConflictError, deletes its span and commits nothing (optimistic
   concurrency, as in Iceberg and Delta Lake). Run it again to build on N+1.
3. It then replaces `dataset.json`, the pointer readers resolve, by a copy of
   the new manifest (one rename; one object write on gs://). A run that dies
   between 2 and 3 leaves the pointer on N: every snapshot is whole, and the
   next run moves the pointer to N+1 before it does anything else.
4. Retention (`expire`) marks snapshots older than the newest `keep` with
   `snapshots/<id>.removed` and deletes the spans no kept snapshot lists; the
   manifests stay, as history, and a reader that pins a removed snapshot is told so.

A rollback commits a new snapshot listing the spans of an older one, so the
history only grows and a rollback can itself be rolled back.
"""
import dataclasses
import datetime
import json
import logging
from typing import Callable

from beam_jobs.inputs.reading import read_text
from beam_jobs.inputs.splits import SPLITS
from beam_jobs.storage.files import AlreadyExistsError, create_exclusive, delete_tree, exists, list_names
from beam_jobs.storage.files import write_atomically
from beam_jobs.table.failpoints import fail_if_asked, pause_if_asked
from beam_jobs.table.layout import (SNAPSHOTS_FOLDER, SPAN_ERRORS_NAME, SPAN_MANIFEST_NAME,
                                    SPANS_FOLDER, manifest_path, snapshot_path, span_dir, tombstone_path)
from beam_jobs.table.manifest import DatasetManifest, SplitInfo, resolve_manifest

DEFAULT_KEEP_SNAPSHOTS = 5  # the --keep_snapshots of beam_jobs.preprocess


class SnapshotConflictError(RuntimeError):
    """Another run committed on the same base snapshot first."""


def snapshot_ids(dataset_dir: str) -> tuple[list[int], set[int]]:
    """(every committed snapshot's id, ascending; the ids of those removed by retention)."""
    names = list_names(f"{dataset_dir}/{SNAPSHOTS_FOLDER}", "*")
    committed = sorted(int(name[:-len(".json")]) for name in names if name.endswith(".json") and name[:-5].isdigit())
    removed = {int(name[:-len(".removed")]) for name in names if name.endswith(".removed")}
    return committed, removed


def load(dataset_dir: str, snapshot_id: int | None = None) -> DatasetManifest:
    """The manifest of a snapshot (the current one when None): see `beam_jobs.table.manifest.resolve_manifest`."""
    return resolve_manifest(dataset_dir, snapshot_id, read_text=read_text, exists=exists)


def latest(dataset_dir: str) -> DatasetManifest | None:
    """The newest committed snapshot, what a writer builds on; None for a dataset without snapshots.

    Moves the pointer forward first if a run died between its commit and the pointer.
    """
    committed, _ = snapshot_ids(dataset_dir)
    if not committed:
        return None
    manifest = DatasetManifest.from_json(read_text(snapshot_path(dataset_dir, committed[-1])))
    pointer = manifest_path(dataset_dir)
    current = DatasetManifest.from_json(read_text(pointer)) if exists(pointer) else None
    if current is None or current.snapshot_id != manifest.snapshot_id:
        logging.warning("%s: the pointer was left on %s by a run that died after committing snapshot %d; "
                        "moving it to snapshot %d", dataset_dir, current.describe() if current else "nothing",
                        manifest.snapshot_id, manifest.snapshot_id)
        write_atomically(pointer, manifest.to_json().encode("utf-8"))
    return manifest


def previous_manifest(dataset_dir: str) -> DatasetManifest | None:
    """What a run builds on: the latest snapshot, or a manifest written before snapshots, or None."""
    manifest = latest(dataset_dir)
    if manifest is None and exists(manifest_path(dataset_dir)):
        manifest = DatasetManifest.from_json(read_text(manifest_path(dataset_dir)))
    return manifest


def read_span(dataset_dir: str, span: str) -> DatasetManifest:
    """A span's own manifest (span.json): its shards, relative to its folder, and its errors."""
    return DatasetManifest.from_json(read_text(f"{span_dir(dataset_dir, span)}/{SPAN_MANIFEST_NAME}"))


def span_error_rows(dataset_dir: str, span: str) -> list[dict]:
    """The span's error rows: root index, relative path, size, modification time, split and reason."""
    return [json.loads(line) for line in read_text(f"{span_dir(dataset_dir, span)}/{SPAN_ERRORS_NAME}").splitlines()]


def snapshot_of_spans(template: DatasetManifest, *, dataset_dir: str, spans: list[str], base: DatasetManifest | None,
                      run_id: str, changes: dict[str, int]) -> DatasetManifest:
    """The manifest of a new snapshot on `base` listing `spans` (oldest first); labels and fields from `template`."""
    splits = {name: SplitInfo(num_examples=0, label_counts=dict.fromkeys(template.labels, 0), shards=[])
              for name in SPLITS}
    num_errors = 0
    for span in spans:
        span_manifest = read_span(dataset_dir, span)
        num_errors += span_manifest.num_errors
        for name, split in span_manifest.splits.items():
            merged = splits[name]
            merged.num_examples += split.num_examples
            for label, count in split.label_counts.items():
                merged.label_counts[label] += count
            merged.shards += [dataclasses.replace(shard, path=f"{SPANS_FOLDER}/{span}/{shard.path}")
                              for shard in split.shards]
    parent = base.snapshot_id if base is not None else None
    return dataclasses.replace(template, splits=splits, num_errors=num_errors, spans=list(spans), run_id=run_id,
                               changes=dict(changes), parent_snapshot=parent, snapshot_id=(parent or 0) + 1)


def commit(dataset_dir: str, manifest: DatasetManifest) -> None:
    """Commits `manifest` (its snapshot_id one more than its base's) and points readers at it.

    Raises SnapshotConflictError when another run committed that id first.
    """
    path = snapshot_path(dataset_dir, manifest.snapshot_id)
    data = manifest.to_json().encode("utf-8")
    fail_if_asked("committing", path)
    try:
        create_exclusive(path, data)
    except AlreadyExistsError as error:
        winner = DatasetManifest.from_json(read_text(path))
        raise SnapshotConflictError(
            f"{dataset_dir}: another run ({winner.run_id}) committed snapshot {manifest.snapshot_id} on "
            f"{_base_words(manifest.parent_snapshot)} while this run was building it; this run committed "
            f"nothing. Run it again to build on snapshot {manifest.snapshot_id}.") from error
    pause_if_asked("committed")
    write_atomically(manifest_path(dataset_dir), data)


def _base_words(snapshot_id: int | None) -> str:
    return "an empty dataset" if snapshot_id is None else f"the same base, snapshot {snapshot_id}"


def committed_spans(dataset_dir: str) -> set[str]:
    """Every span any committed snapshot lists, removed ones included (their spans may be shared)."""
    committed, _ = snapshot_ids(dataset_dir)
    spans = set()
    for snapshot_id in committed:
        spans.update(DatasetManifest.from_json(read_text(snapshot_path(dataset_dir, snapshot_id))).spans)
    return spans


def expire(dataset_dir: str, *, keep: int, current_id: int,
           in_use: Callable[[], set[int]] = frozenset) -> list[int]:
    """Removes the snapshots older than the newest `keep` (never the current one); returns their ids.

    `in_use()` gives the bases of other live runs (`beam_jobs.table.runs.snapshots_in_use`), which are kept
    for now. It is asked before the tombstones are written, so that no base in use is marked removed, and
    again after, before any span is deleted: a run that registers its base and then finds no tombstone on it
    (`is_removed`) is sure to be seen here, and one that finds a tombstone plans again on a newer snapshot.
    """
    committed, removed = snapshot_ids(dataset_dir)
    newest = set(committed[-max(keep, 1):]) | {current_id}
    expired = [snapshot_id for snapshot_id in committed
               if snapshot_id not in newest | set(in_use()) and snapshot_id not in removed]
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for snapshot_id in expired:
        write_atomically(tombstone_path(dataset_dir, snapshot_id), json.dumps(
            {"snapshot_id": snapshot_id, "keep_snapshots": keep, "removed_when": current_id,
             "removed_at": now}).encode("utf-8"))
    kept = newest | (set(in_use()) & set(committed))
    listed_by_kept = set()
    for snapshot_id in kept:
        listed_by_kept.update(DatasetManifest.from_json(read_text(snapshot_path(dataset_dir, snapshot_id))).spans)
    for snapshot_id in sorted(set(committed) - kept):
        for span in DatasetManifest.from_json(read_text(snapshot_path(dataset_dir, snapshot_id))).spans:
            if span not in listed_by_kept:
                delete_tree(span_dir(dataset_dir, span))
    return expired


def is_removed(dataset_dir: str, snapshot_id: int) -> bool:
    """Whether retention marked snapshot `snapshot_id` removed (its spans may be deleted)."""
    return exists(tombstone_path(dataset_dir, snapshot_id))


def rollback(dataset_dir: str, snapshot_id: int, *, run_id: str) -> DatasetManifest:
    """Commits a new snapshot with the records of snapshot `snapshot_id`; returns it.

    It keeps the latest vocabulary when that extends the old one (labels only
    grow): a label added after snapshot `snapshot_id` keeps its index, with zero
    examples, so that no index is ever given to two labels.
    """
    target = load(dataset_dir, snapshot_id)
    base = latest(dataset_dir)
    labels = base.labels if base.labels[:len(target.labels)] == target.labels else target.labels
    splits = {name: dataclasses.replace(split, label_counts={label: split.label_counts.get(label, 0)
                                                             for label in labels})
              for name, split in target.splits.items()}
    manifest = dataclasses.replace(
        target, labels=list(labels), splits=splits, snapshot_id=base.snapshot_id + 1,
        parent_snapshot=base.snapshot_id, run_id=run_id, changes={"rolled_back_to": snapshot_id},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    commit(dataset_dir, manifest)
    return manifest


def snapshot_listing(dataset_dir: str) -> list[str]:
    """One line per committed snapshot: what `python -m beam_jobs.snapshots OUT/audio` prints."""
    committed, removed = snapshot_ids(dataset_dir)
    current = load(dataset_dir).snapshot_id if exists(manifest_path(dataset_dir)) else None
    lines = []
    for snapshot_id in committed:
        manifest = DatasetManifest.from_json(read_text(snapshot_path(dataset_dir, snapshot_id)))
        examples = sum(split.num_examples for split in manifest.splits.values())
        changes = ", ".join(f"{name} {count}" for name, count in manifest.changes.items())
        state = "removed by retention" if snapshot_id in removed else f"{len(manifest.spans)} spans"
        lines.append(f"{'*' if snapshot_id == current else ' '} {snapshot_id:>4}  {manifest.created}  "
                     f"{examples} examples, {manifest.num_errors} errors, {len(manifest.labels)} labels; "
                     f"{state}; files: {changes or 'none'}")
    return lines
