"""Folder-per-class inputs to a new snapshot of each modality's dataset, and an errors file.

    python -m beam_jobs.preprocess --audio_root data/raw/speech --image_root data/raw/fashion \\
        --output_dir data/tfrecords [--full | --compact] [--keep_snapshots 5]

A run lists the inputs, compares them with the current snapshot
(`beam_jobs.plan`), featurizes only new and changed files into a new span (the
pipeline, `beam_jobs.pipeline`), and commits a new snapshot that lists the
untouched spans and the new one (`beam_jobs.snapshots`). Unchanged input and
config: nothing is committed, and the run costs about the listing. Readers of
the current snapshot are never affected: committed files are never modified.

Owns the command: flags to Settings (`beam_jobs.settings`), the pipeline
(`beam_jobs.pipeline`) on the default runner (`beam_jobs.runners`) unless
--runner names another, a live progress line, and the summary
(`beam_jobs.summary`). Writes the layout of `beam_jobs.dataset_layout`. Flags
this module does not know are Beam pipeline options: the same command runs on
Dataflow with --runner=DataflowRunner and gs:// roots and output. Exits 1 when a
modality got no example at all, or when another run committed first.
"""
import dataclasses
import datetime
import json
import logging
import sys

from beam_jobs import console

console.quiet_beam_import()  # before the first import of Beam, below: see beam_jobs.console

import apache_beam as beam  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions  # noqa: E402

from beam_jobs import snapshots  # noqa: E402
from beam_jobs.dataset_layout import LEGACY_PATTERNS, errors_path, run_temp_dir, span_dir  # noqa: E402
from beam_jobs.error_rows import write_error_rows  # noqa: E402
from beam_jobs.failpoints import pause_if_asked  # noqa: E402
from beam_jobs.input_tree import join_root  # noqa: E402
from beam_jobs.pipeline import SpanJob, build_pipeline, manifest_template, write_span_in_process  # noqa: E402
from beam_jobs.plan import ModalityPlan, list_input_files, make_plan, read_base_index  # noqa: E402
from beam_jobs.progress import ProgressLine, write_matched_count  # noqa: E402
from beam_jobs.records import ErrorRow  # noqa: E402
from beam_jobs.runners import runs_in_process, with_default_runner  # noqa: E402
from beam_jobs.runs import (clean_debris, new_run_id, release_lease, snapshots_in_use, take_lease,  # noqa: E402
                            write_lease)
from beam_jobs.settings import Settings, parse_settings  # noqa: E402
from beam_jobs.storage import delete_tree, write_atomically  # noqa: E402
from beam_jobs.summary import ModalityOutcome, PreprocessSummary, format_summary  # noqa: E402


def run(argv=None, save_main_session=True, *, progress_stream=None) -> PreprocessSummary:
    """Plans, runs the pipeline where there is work, commits a snapshot per modality, prints the summary.

    With a `progress_stream` (a terminal or log), a progress line is shown on it while the pipeline runs.
    """
    settings, pipeline_args = parse_settings(argv)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    run_id = new_run_id()
    output_dir = settings.output_dir
    lease = take_lease(output_dir, run_id)
    try:
        clean_debris(output_dir, modalities=list(settings.roots), own_run_id=run_id,
                     committed_spans=lambda modality: snapshots.committed_spans(settings.dataset_dir(modality)))
        plans = {modality: plan_modality(settings, modality) for modality in settings.roots}
        # Said before the pipeline starts, so that another run's retention keeps what this one copies from.
        write_lease(output_dir, dataclasses.replace(lease, bases={
            modality: plan.base.snapshot_id for modality, plan in plans.items()
            if plan.base is not None and plan.base.snapshot_id is not None}))
        temp_dir = run_temp_dir(output_dir, run_id)
        jobs = [write_work_list(plan, settings=settings, run_id=run_id, temp_dir=temp_dir)
                for plan in plans.values() if plan.work]
        if jobs:
            options = None  # a small work list runs in this process, without a runner
            if not runs_in_process(pipeline_args, num_files=sum(len(job.plan.work) for job in jobs),
                                   in_process_below=settings.in_process_below):
                options = PipelineOptions(with_default_runner(pipeline_args))
                options.view_as(SetupOptions).save_main_session = save_main_session
            run_pipeline(jobs, settings=settings, options=options, created=created,
                         progress_dir=f"{temp_dir}/progress", progress_stream=progress_stream)
            pause_if_asked("span_written")
        outcomes = {modality: commit_modality(plan, settings=settings, run_id=run_id, created=created,
                                              wrote_span=any(job.plan is plan for job in jobs))
                    for modality, plan in plans.items()}
        error_rows = write_errors_file(settings)
    finally:
        release_lease(output_dir, run_id)
    summary = PreprocessSummary(output_dir=output_dir, outcomes=outcomes, errors_path=errors_path(output_dir),
                                error_rows=[row._asdict() for row in error_rows])
    print(format_summary(summary))
    return summary


def plan_modality(settings: Settings, modality: str) -> ModalityPlan:
    dataset_dir = settings.dataset_dir(modality)
    base = snapshots.previous_manifest(dataset_dir)
    logging.info("%s: listing %s; building on %s", modality, ", ".join(settings.roots[modality]),
                 base.describe() if base else "nothing")
    listed, listing_counts = list_input_files(settings.roots[modality], extensions=settings.specs[modality].extensions,
                                              split_config=settings.split_config)
    reusable = base is not None and base.snapshot_id is not None and not settings.full
    return make_plan(modality=modality, settings=settings, base=base, listed=listed, listing_counts=listing_counts,
                     base_index=read_base_index(dataset_dir, base) if reusable else None, full=settings.full,
                     compact=settings.compact, max_spans=settings.max_spans)


def write_work_list(plan: ModalityPlan, *, settings: Settings, run_id: str, temp_dir: str) -> SpanJob:
    """Writes the plan's work items, one JSON line each, into the run's temporary folder."""
    work_path = f"{temp_dir}/work-{plan.modality}.jsonl"
    write_atomically(work_path, "".join(json.dumps(item) + "\n" for item in plan.work).encode("utf-8"))
    return SpanJob(plan=plan, work_path=work_path, span_dir=span_dir(settings.dataset_dir(plan.modality), run_id),
                   temp_dir=f"{temp_dir}/{plan.modality}")


def run_pipeline(jobs: list[SpanJob], *, settings: Settings, options: PipelineOptions | None, created: str,
                 progress_dir: str, progress_stream) -> None:
    """Writes every job's span: on the runner of `options`, or, with None, in this process."""
    for job in jobs:
        write_matched_count(len(job.plan.work), progress_dir=progress_dir, modality=job.plan.modality)
    with ProgressLine(progress_dir, modalities=[job.plan.modality for job in jobs], stream=progress_stream):
        if options is None:
            for job in jobs:
                write_span_in_process(job, settings=settings, created=created, progress_dir=progress_dir)
            return
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, settings, jobs=jobs, created=created, progress_dir=progress_dir)
        pipeline.run().wait_until_finish()


def commit_modality(plan: ModalityPlan, *, settings: Settings, run_id: str, created: str,
                    wrote_span: bool) -> ModalityOutcome:
    """Commits the new snapshot of one modality, then applies retention; or says why it committed nothing."""
    dataset_dir = settings.dataset_dir(plan.modality)
    if plan.nothing_to_do:
        # Retention still runs: a run killed after its commit may not have applied it.
        expired = snapshots.expire(dataset_dir, keep=settings.keep_snapshots, current_id=plan.base.snapshot_id,
                                   in_use=snapshots_in_use(settings.output_dir, plan.modality, own_run_id=run_id))
        return ModalityOutcome(plan=plan, manifest=plan.base, expired=expired)
    spans = plan.kept_spans + ([run_id] if wrote_span else [])
    template = manifest_template(plan.modality, settings, labels=plan.labels, created=created)
    manifest = snapshots.snapshot_of_spans(template, dataset_dir=dataset_dir, spans=spans, base=plan.base,
                                           run_id=run_id, changes=plan.counts)
    try:
        snapshots.commit(dataset_dir, manifest)
    except snapshots.SnapshotConflictError as error:
        if wrote_span:
            delete_tree(span_dir(dataset_dir, run_id))
        return ModalityOutcome(plan=plan, manifest=plan.base, conflict=str(error))
    pause_if_asked("pointer_moved")
    if plan.base is not None and plan.base.snapshot_id is None:
        delete_legacy_files(dataset_dir)
    expired = snapshots.expire(dataset_dir, keep=settings.keep_snapshots, current_id=manifest.snapshot_id,
                               in_use=snapshots_in_use(settings.output_dir, plan.modality, own_run_id=run_id))
    return ModalityOutcome(plan=plan, manifest=manifest, committed=True, expired=expired)


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


def main(argv=None) -> int:
    verbose = console.wants_verbose(sys.argv[1:] if argv is None else argv)
    with console.worker_output_filtered(verbose=verbose) as stderr:
        console.configure_logging(verbose=verbose, stream=stderr)
        summary = run(argv, progress_stream=stderr)
    return 1 if summary.empty_modalities() or summary.conflicts() else 0


if __name__ == "__main__":
    sys.exit(main())
