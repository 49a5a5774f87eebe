"""One incremental ingest of one modality, in steps the batch run and the watch share.

  plan_modality      lists the roots and compares them with the current snapshot (`beam_jobs.pipeline.plan`)
  write_work_list    the plan's work items, as JSON lines, where the span writer reads them
  commit_modality    the new snapshot (`beam_jobs.table.snapshots.commit`), then retention
  write_errors_file  OUT/errors.jsonl from the current snapshots

`beam_jobs.preprocess` runs them once, with the pipeline between the work list
and the commit; `beam_jobs.pipeline.watch` runs them in a streaming pipeline each time
files have landed.
"""
import dataclasses
import json
import logging
from typing import Callable

from apache_beam.io.filesystems import FileSystems

from beam_jobs.inputs.tree import join_root
from beam_jobs.pipeline.assign import group_by_part
from beam_jobs.pipeline.noise import store_background_noise
from beam_jobs.pipeline.plan import ListedFile, ModalityPlan, list_input_files, make_plan, read_base_index
from beam_jobs.pipeline.recipe import SpanJob, manifest_template
from beam_jobs.pipeline.settings import Settings, keyword_fields
from beam_jobs.pipeline.sharding import record_bytes
from beam_jobs.pipeline.summary import ModalityOutcome
from beam_jobs.records.error_rows import write_error_rows
from beam_jobs.records.from_file import ErrorRow
from beam_jobs.storage.files import delete_tree, write_atomically
from beam_jobs.table import snapshots
from beam_jobs.table.failpoints import pause_if_asked
from beam_jobs.table.layout import LEGACY_PATTERNS, errors_path, span_dir
from beam_jobs.table.manifest import DatasetManifest
from beam_jobs.table.runs import LeaseLostError, check_lease_held, set_lease_base, snapshots_in_use


def list_modality(settings: Settings, modality: str) -> tuple[list[ListedFile], dict[str, int]]:
    return list_input_files(settings.roots[modality], extensions=settings.specs[modality].extensions,
                            split_config=settings.split_config, noise=settings.takes_background_noise(modality))


def plan_modality(settings: Settings, modality: str) -> ModalityPlan:
    """The plan of a batch run: every listed file as it is now, against the current snapshot."""
    dataset_dir = settings.dataset_dir(modality)
    base = snapshots.previous_manifest(dataset_dir)
    logging.info("%s: listing %s; building on %s", modality, ", ".join(settings.roots[modality]),
                 base.describe() if base else "nothing")
    listed, listing_counts = list_modality(settings, modality)
    return plan_listed(settings, modality, base=base, listed=listed, listing_counts=listing_counts,
                       base_index=base_index_of(settings, modality, base))


def base_index_of(settings: Settings, modality: str, base: DatasetManifest | None) -> dict | None:
    """The rows of `base` a run may reuse (`beam_jobs.pipeline.plan.read_base_index`), or None when it reuses
    nothing."""
    if base is None or base.snapshot_id is None or settings.full:
        return None
    return read_base_index(settings.dataset_dir(modality), base)


def plan_listed(settings: Settings, modality: str, *, base: DatasetManifest | None, listed: list[ListedFile],
                listing_counts: dict[str, int], base_index: dict | None) -> ModalityPlan:
    return make_plan(modality=modality, settings=settings, base=base, listed=listed, listing_counts=listing_counts,
                     base_index=base_index, full=settings.full, compact=settings.compact,
                     max_spans=settings.max_spans)


def register_base(settings: Settings, plan: ModalityPlan, *, run_id: str) -> bool:
    """Records the plan's base in this run's lease, so that other runs' retention keeps the spans this one copies
    from; False when retention removed that base before (`beam_jobs.table.snapshots.expire`): plan again."""
    if plan.base is None or plan.base.snapshot_id is None:
        return True
    set_lease_base(settings.output_dir, run_id, modality=plan.modality, snapshot_id=plan.base.snapshot_id)
    if snapshots.is_removed(settings.dataset_dir(plan.modality), plan.base.snapshot_id):
        logging.info("%s: another run committed a newer snapshot and retention removed %s while this run planned "
                     "on it; planning again", plan.modality, plan.base.describe())
        return False
    return True


def write_work_list(plan: ModalityPlan, *, settings: Settings, span: str, temp_dir: str) -> SpanJob:
    """Writes the plan's work items into `temp_dir`, grouped by part (`beam_jobs.pipeline.recipe.read_parts` reads
    them); the job writes spans/<span>/."""
    spec, config = settings.specs[plan.modality], settings.configs[plan.modality]
    parts = group_by_part(plan.work, record_bytes=record_bytes(spec, feature_shape=config.feature_shape),
                          shard_bytes=settings.shard_bytes, fixed_num_shards=settings.num_shards)
    work_path = f"{temp_dir}/work-{plan.modality}.jsonl"
    write_atomically(work_path, "".join(json.dumps({"part": part, "items": items}) + "\n"
                                        for part, items in parts).encode("utf-8"))
    return SpanJob(plan=plan, work_path=work_path, span_dir=span_dir(settings.dataset_dir(plan.modality), span),
                   temp_dir=f"{temp_dir}/{plan.modality}")


def commit_modality(plan: ModalityPlan, *, settings: Settings, run_id: str, span: str | None,
                    created: str) -> ModalityOutcome:
    """Commits the new snapshot of one modality (listing `span`, the one this run wrote, if any), then applies
    retention; or says why it committed nothing."""
    dataset_dir = settings.dataset_dir(plan.modality)
    try:
        check_lease_held(settings.output_dir, run_id)
    except LeaseLostError:
        if span:
            delete_tree(span_dir(dataset_dir, span))
        raise
    if plan.nothing_to_do:
        # Retention still runs: a run killed after its commit may not have applied it.
        expired = snapshots.expire(dataset_dir, keep=settings.keep_snapshots, current_id=plan.base.snapshot_id,
                                   in_use=_in_use(settings, plan.modality, run_id))
        return ModalityOutcome(plan=plan, manifest=plan.base, expired=expired)
    spans = plan.kept_spans + ([span] if span else [])
    template = manifest_template(plan.modality, settings, labels=plan.labels, created=created)
    if settings.takes_background_noise(plan.modality):
        template = dataclasses.replace(template, keywords=keyword_fields(settings.keywords_of(plan.modality)),
                                       background_noise=store_background_noise(
                                           plan, spec=settings.specs[plan.modality],
                                           config=settings.configs[plan.modality],
                                           roots=settings.roots[plan.modality], dataset_dir=dataset_dir))
    manifest = snapshots.snapshot_of_spans(template, dataset_dir=dataset_dir, spans=spans, base=plan.base,
                                           run_id=run_id, changes=plan.counts)
    try:
        snapshots.commit(dataset_dir, manifest)
    except snapshots.SnapshotConflictError as error:
        if span:
            delete_tree(span_dir(dataset_dir, span))
        return ModalityOutcome(plan=plan, manifest=plan.base, conflict=str(error))
    pause_if_asked("pointer_moved")
    if plan.base is not None and plan.base.snapshot_id is None:
        delete_legacy_files(dataset_dir)
    expired = snapshots.expire(dataset_dir, keep=settings.keep_snapshots, current_id=manifest.snapshot_id,
                               in_use=_in_use(settings, plan.modality, run_id))
    return ModalityOutcome(plan=plan, manifest=manifest, committed=True, expired=expired)


def _in_use(settings: Settings, modality: str, run_id: str) -> Callable[[], set[int]]:
    return lambda: snapshots_in_use(settings.output_dir, modality, own_run_id=run_id)


def delete_legacy_files(dataset_dir: str) -> None:
    """Deletes what a dataset folder held before snapshots, once its first snapshot is committed."""
    paths = sorted({metadata.path for match in FileSystems.match([f"{dataset_dir}/{pattern}"
                                                                  for pattern in LEGACY_PATTERNS])
                    for metadata in match.metadata_list})
    if paths:
        logging.info("%s: deleting %d files of the dataset as it was before snapshots", dataset_dir, len(paths))
        FileSystems.delete(paths)


def write_errors_file(settings: Settings) -> list[ErrorRow]:
    """OUT/errors.jsonl: the error rows of the current snapshot of each modality of the run.

    Read at the end, not taken from this run's outcome: after a lost commit, the current snapshot is the winner's.
    """
    error_rows = []
    for modality in settings.roots:
        dataset_dir = settings.dataset_dir(modality)
        manifest = snapshots.latest(dataset_dir)
        for span in manifest.spans if manifest else ():
            for row in snapshots.span_error_rows(dataset_dir, span):
                root = manifest.input_roots[row["root"]]
                error_rows.append(ErrorRow(join_root(root, row["path"]), root, modality, row["reason"]))
    error_rows.sort(key=lambda row: (row.modality, row.path))
    write_error_rows(error_rows, path=errors_path(settings.output_dir))
    return error_rows
