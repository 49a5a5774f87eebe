"""Folder-per-class inputs to a new snapshot of each modality's dataset, and an errors file.

    python -m beam_jobs.preprocess --audio_root data/raw/speech --image_root data/raw/fashion \\
        --output_dir data/tfrecords [--full | --compact] [--keep_snapshots 5]

A run lists the inputs, compares them with the current snapshot
(`beam_jobs.pipeline.plan`), featurizes only new and changed files into a new span (the
pipeline, `beam_jobs.pipeline.recipe`), and commits a new snapshot that lists the
untouched spans and the new one (`beam_jobs.table.snapshots`). Unchanged input and
config: nothing is committed, and the run costs about the listing. Readers of
the current snapshot are never affected: committed files are never modified.

Owns the command: flags to Settings (`beam_jobs.pipeline.settings`), the pipeline
(`beam_jobs.pipeline.recipe`) on the default runner (`beam_jobs.runners.default`) unless
--runner names another, a live progress line, and the summary
(`beam_jobs.pipeline.summary`). Writes the layout of `beam_jobs.table.layout`. Flags
this module does not know are Beam pipeline options: the same command runs on
Dataflow with --runner=DataflowRunner and gs:// roots and output.

Exit status: 0 when every modality committed or had nothing to do; 1 when a
modality got no example at all, another run committed first, or the run lost
its lease; 2 for bad flags; 3 when a process of the runner (a worker) was
killed mid-run; 124 when --max_run_minutes passed before the commit. Whatever
the status, the current snapshots are whole (see "Running unattended" in the README).
"""
import datetime
import sys
import traceback

from beam_jobs.console import logs

logs.quiet_beam_import()  # before the first import of Beam, below: see beam_jobs.console.logs

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions  # noqa: E402

from beam_jobs.console.progress import ProgressLine, write_matched_count  # noqa: E402
from beam_jobs.pipeline import ingest, watch  # noqa: E402
from beam_jobs.pipeline.plan import ModalityPlan  # noqa: E402
from beam_jobs.pipeline.recipe import SpanJob, build_pipeline, write_span_in_process  # noqa: E402
from beam_jobs.pipeline.settings import Settings, parse_settings  # noqa: E402
from beam_jobs.pipeline.summary import PreprocessSummary, format_summary  # noqa: E402
from beam_jobs.runners.default import runner_for, runs_in_process, with_default_runner  # noqa: E402
from beam_jobs.runners.supervision import EXIT_DEADLINE, DeadlineExceeded, Supervisor  # noqa: E402
from beam_jobs.storage.files import delete_tree  # noqa: E402
from beam_jobs.table import snapshots  # noqa: E402
from beam_jobs.table.failpoints import pause_if_asked  # noqa: E402
from beam_jobs.table.layout import errors_path, run_temp_dir, span_dir  # noqa: E402
from beam_jobs.table.runs import LeaseKeeper, LeaseLostError, clean_debris, new_run_id, release_lease  # noqa: E402


def run(argv=None, save_main_session=True, *, progress_stream=None) -> PreprocessSummary:
    """Plans, runs the pipeline where there is work, commits a snapshot per modality, prints the summary.

    With --watch, runs `beam_jobs.pipeline.watch` until a signal stops it, and returns its WatchSummary.

    With a `progress_stream` (a terminal or log), a progress line is shown on it while the pipeline runs.
    """
    settings, pipeline_args = parse_settings(argv)
    verbose = logs.wants_verbose(sys.argv[1:] if argv is None else argv)
    if settings.watch is not None:
        return watch.run_watch(settings, pipeline_args, save_main_session=save_main_session, verbose=verbose,
                               error_stream=progress_stream)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    run_id = new_run_id()
    output_dir = settings.output_dir
    temp_dir = run_temp_dir(output_dir, run_id)

    def remove_own_files():  # what a run stopped before its commit removes: its span, temporary folder, lease
        for modality in settings.roots:
            delete_tree(span_dir(settings.dataset_dir(modality), run_id))
        release_lease(output_dir, run_id)

    with LeaseKeeper(output_dir, run_id, ttl_seconds=settings.lease_seconds), Supervisor(
            max_run_seconds=settings.max_run_minutes and settings.max_run_minutes * 60, on_abort=remove_own_files,
            stream=progress_stream, hold_output=not verbose) as supervisor:
        try:
            clean_debris(output_dir, modalities=list(settings.roots), own_run_id=run_id,
                         committed_spans=lambda modality: snapshots.committed_spans(settings.dataset_dir(modality)))
            plans = {modality: plan_on_kept_base(settings, modality, run_id=run_id) for modality in settings.roots}
            jobs = [ingest.write_work_list(plan, settings=settings, span=run_id, temp_dir=temp_dir)
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
            supervisor.start_commit()
        except Exception as error:  # noqa: BLE001 -- whatever stopped the run before its commit, its files go
            left = _remove_quietly(remove_own_files)
            if isinstance(error, (DeadlineExceeded, snapshots.SnapshotConflictError, LeaseLostError)):
                raise
            raise RunFailed(f"{logs.one_line(error)}; this run committed nothing and the current snapshots are "
                            f"unchanged{left}") from error
        outcomes = {}
        for modality, plan in plans.items():
            try:
                outcomes[modality] = ingest.commit_modality(
                    plan, settings=settings, run_id=run_id, created=created,
                    span=run_id if any(job.plan is plan for job in jobs) else None)
            except LeaseLostError:
                raise
            except Exception as error:  # noqa: BLE001 -- a full disk, a read-only folder, an object store gone
                done = ", ".join(f"{name} snapshot {outcome.manifest.snapshot_id}"
                                 for name, outcome in outcomes.items() if outcome.committed) or "nothing"
                raise RunFailed(f"{logs.one_line(error)}; while committing {modality}; this run committed "
                                f"{done}; the next run completes or removes what it left") from error
        error_rows = ingest.write_errors_file(settings)
    summary = PreprocessSummary(output_dir=output_dir, outcomes=outcomes, errors_path=errors_path(output_dir),
                                error_rows=[row._asdict() for row in error_rows])
    print(format_summary(summary))
    return summary


_PLAN_ATTEMPTS = 3


class RunFailed(RuntimeError):
    """The run stopped on a fault (a full disk, an unreachable store, a pipeline error); its one line says so."""


def _remove_quietly(remove) -> str:
    """Calls `remove`; '' when it worked, else what a failed run's line adds: the next run removes them."""
    try:
        remove()
    except Exception as error:  # noqa: BLE001 -- an OSError, or an object store's client error
        return f"; its files could not be removed ({logs.one_line(error)}): the next run removes them"
    return ""


def plan_on_kept_base(settings: Settings, modality: str, *, run_id: str) -> ModalityPlan:
    """The plan of `modality`, its base recorded in the run's lease before retention could remove it (else
    planned again on the newer snapshot: `beam_jobs.pipeline.ingest.register_base`)."""
    for _ in range(_PLAN_ATTEMPTS):
        plan = ingest.plan_modality(settings, modality)
        pause_if_asked("planned")
        if ingest.register_base(settings, plan, run_id=run_id):
            return plan
    raise snapshots.SnapshotConflictError(
        f"{settings.dataset_dir(modality)}: other runs committed and removed this run's base snapshot "
        f"{_PLAN_ATTEMPTS} times while it planned; it committed nothing. Run it again.")


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
        with runner_for(options, preloaded_modules=(build_pipeline.__module__,)) as runner:
            pipeline = beam.Pipeline(runner=runner, options=options)
            build_pipeline(pipeline, settings, jobs=jobs, created=created, progress_dir=progress_dir)
            pipeline.run().wait_until_finish()


def main(argv=None) -> int:
    verbose = logs.wants_verbose(sys.argv[1:] if argv is None else argv)
    with logs.worker_output_filtered(verbose=verbose) as stderr:
        logs.configure_logging(verbose=verbose, stream=stderr)
        try:
            summary = run(argv, progress_stream=stderr)
        except (watch.WatchError, LeaseLostError, snapshots.SnapshotConflictError, RunFailed) as error:
            if verbose and isinstance(error, RunFailed):
                traceback.print_exception(error, file=stderr)
            print(f"error: {error}", file=stderr)
            return 1
        except DeadlineExceeded as error:
            print(f"error: {error}", file=stderr)
            return EXIT_DEADLINE
        except Exception as error:  # noqa: BLE001 -- a failed run says why in one line; --verbose shows where
            if verbose:
                raise
            print(f"error: {logs.one_line(error)} (--verbose shows the traceback)", file=stderr)
            return 1
    return summary.exit_code()


if __name__ == "__main__":
    sys.exit(main())
