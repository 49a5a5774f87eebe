"""Streaming ingestion: files are committed into new snapshots as they land, by a pipeline that keeps running.

    python -m beam_jobs.preprocess --audio_root data/raw/speech --output_dir data/tfrecords --watch \\
        [--poll_seconds 5] [--commit_seconds 30] [--commit_files 1000]

A streaming pipeline (Prism by default; Dataflow or Flink with their --runner):

  Poll           PeriodicImpulse every --poll_seconds: one tick per modality
  IngestWhenDue  a stateful DoFn keyed by modality: at each tick it lists the roots, keeps the files that
                 are stable, plans against the current snapshot as a batch run does (`beam_jobs.pipeline.ingest`)
                 and, when a commit is due, writes the new and changed files into a new span and commits

The polling is Beam's MatchContinuously's own (PeriodicImpulse), without its
file-by-file matching: a match has no end of poll, and the rules below compare
whole polls, see a deleted file as a missing one, and need a tick when no file
changed (to see a stop).

The rules:
  stable  a file is taken once its size, modification time and split have held for --poll_seconds,
          across two polls at least; a file still being written grows and waits. A writer that pauses for
          longer than a poll in the middle of a file writes it under another name (another extension, or
          in a _ folder) and renames it into place, which is atomic.
  once    a file that the current snapshot holds with this size and modification time is never
          featurized again, however often it is listed: the snapshot is the deduplication state, so it
          also holds across restarts of the watch.
  due     a modality with work commits at its first stable tick, then at most once every
          --commit_seconds, or as soon as --commit_files files wait; a bad file becomes an error row of
          the snapshot that saw it, a deleted one leaves the next snapshot, as in a batch run.
  stop    SIGINT (Ctrl-C) or SIGTERM asks every modality to commit what is stable at its next tick; the
          launcher then cancels the pipeline and exits 0. A second signal cancels at once.

Each commit's span is spans/<run id>.<hex>/, which the run's lease covers (`beam_jobs.table.runs`).
"""
import collections
import dataclasses
import datetime
import logging
import signal
import sys
import threading
import time
import uuid

import apache_beam as beam
import grpc
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from beam_jobs.pipeline import ingest
from beam_jobs.pipeline.plan import ListedFile, ModalityPlan
from beam_jobs.pipeline.recipe import write_span_in_process
from beam_jobs.pipeline.settings import Settings
from beam_jobs.pipeline.summary import format_commit
from beam_jobs.runners.default import with_streaming_runner
from beam_jobs.runners.supervision import Supervisor
from beam_jobs.storage.files import delete_tree, write_atomically
from beam_jobs.table import snapshots
from beam_jobs.table.layout import run_temp_dir
from beam_jobs.table.manifest import DatasetManifest, SnapshotRemovedError
from beam_jobs.table.runs import LeaseKeeper, clean_debris, new_run_id, release_lease

STOP_NAME = "stop"  # in the run's temporary folder: the launcher asks the modalities to commit and stop
_CHECK_SECONDS = 0.5  # how often the launcher looks for new snapshots, a failed pipeline or a finished stop


_COMMIT_LOCKS = collections.defaultdict(threading.Lock)  # modality -> its lock, in this worker process


class WatchError(RuntimeError):
    """The watch's pipeline ended, or its runner stopped answering, before a stop was asked."""


def stopped_name(modality: str) -> str:
    return f"stopped-{modality}"


def stable_files(listed: list[ListedFile], *, seen: dict, now: float, settle_seconds: float,
                 base_index: dict | None) -> list[ListedFile]:
    """The listing a commit may act on: a file as listed when its version has not changed for `settle_seconds`
    (`seen`: {key: (version, when first seen)}), else as the base snapshot holds it, else (new and changing)
    left out."""
    stable = []
    for file in listed:
        version, since = seen.get(file.key, (None, now))
        if version == file_version(file) and now - since >= settle_seconds:
            stable.append(file)
        elif base_index is not None and file.key in base_index:
            row = base_index[file.key]
            stable.append(dataclasses.replace(file, size_bytes=row["size"], mtime=row["mtime"], split=row["split"]))
    return stable


def file_version(file: ListedFile) -> tuple:
    return file.size_bytes, file.mtime, file.split


def versions_seen(listed: list[ListedFile], *, seen: dict, now: float) -> dict:
    """{key: (version, when first seen)} of this listing: a file's time carries over while its version holds."""
    updated = {}
    for file in listed:
        version, since = seen.get(file.key, (None, now))
        updated[file.key] = (file_version(file), since if version == file_version(file) else now)
    return updated


def worth_committing(plan: ModalityPlan) -> bool:
    """Whether the plan changes the snapshot; not when its only difference is files that are not stable yet."""
    return not plan.nothing_to_do and bool(plan.work or plan.counts["removed"])


def waiting_files(plan: ModalityPlan) -> int:
    """Files whose change the plan would commit: new, changed or removed."""
    return plan.counts["new"] + plan.counts["changed"] + plan.counts["removed"]


class IngestWhenDue(beam.DoFn):
    """(modality, tick time) -> nothing: commits a snapshot of the modality when one is due (module docstring).

    Its state, per modality: each listed file's version (size, modification time, split) and when it was
    first seen so, and the time of the last commit. Stability is timed, not counted in ticks: a runner that
    fell behind delivers several ticks at once, and two listings a millisecond apart would agree on a file
    still being written.
    """
    SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())
    LAST_COMMIT = ReadModifyWriteStateSpec("last_commit", PickleCoder())

    def __init__(self, *, settings: Settings, run_id: str):
        self._settings = settings
        self._run_id = run_id
        self._temp_dir = run_temp_dir(settings.output_dir, run_id)

    def setup(self):
        self._base_indexes = {}  # modality -> (snapshot id, its base index): read once per snapshot

    def process(self, tick, seen=beam.DoFn.StateParam(SEEN), last_commit=beam.DoFn.StateParam(LAST_COMMIT)):
        modality, _ = tick
        # Two ticks of one key can run at once (seen on Prism: the same files committed twice, the second
        # commit losing); in turn, the second plans on the snapshot the first committed, and has nothing to do.
        with _COMMIT_LOCKS[modality]:
            self._tick(modality, seen, last_commit)

    def _tick(self, modality: str, seen_state, last_commit) -> None:
        stopped_path = f"{self._temp_dir}/{stopped_name(modality)}"
        if FileSystems.exists(stopped_path):
            return
        stopping = FileSystems.exists(f"{self._temp_dir}/{STOP_NAME}")
        settings = self._settings
        now = time.time()
        listed, listing_counts = ingest.list_modality(settings, modality)
        seen = versions_seen(listed, seen=seen_state.read() or {}, now=now)
        seen_state.write(seen)
        base = snapshots.previous_manifest(settings.dataset_dir(modality))
        base_index = self._base_index(modality, base)
        stable = stable_files(listed, seen=seen, now=now, settle_seconds=settings.watch.poll_seconds,
                              base_index=base_index)
        plan = ingest.plan_listed(settings, modality, base=base, listed=stable, listing_counts=listing_counts,
                                  base_index=base_index)
        if worth_committing(plan):
            last = last_commit.read()
            if (stopping or last is None or now - last >= settings.watch.commit_seconds
                    or waiting_files(plan) >= settings.watch.commit_files):
                self._commit(plan)
                last_commit.write(now)
        if stopping:
            write_atomically(stopped_path, b"")

    def _base_index(self, modality: str, base: DatasetManifest | None) -> dict | None:
        snapshot_id = base.snapshot_id if base else None
        cached_id, index = self._base_indexes.get(modality, (None, None))
        if index is None or cached_id != snapshot_id:
            index = ingest.base_index_of(self._settings, modality, base)
            self._base_indexes[modality] = (snapshot_id, index)
        return index

    def _commit(self, plan: ModalityPlan) -> None:
        settings, modality = self._settings, plan.modality
        # Said before the span is written, so that another run's retention keeps what this one copies from.
        if not ingest.register_base(settings, plan, run_id=self._run_id):
            return  # the next tick plans on the newer snapshot
        span = f"{self._run_id}.{uuid.uuid4().hex[:8]}"
        temp_dir = f"{self._temp_dir}/{span}"
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        wrote_span = bool(plan.work)
        if wrote_span:
            job = ingest.write_work_list(plan, settings=settings, span=span, temp_dir=temp_dir)
            write_span_in_process(job, settings=settings, created=created, progress_dir=f"{temp_dir}/progress")
        outcome = ingest.commit_modality(plan, settings=settings, run_id=self._run_id,
                                         span=span if wrote_span else None, created=created)
        delete_tree(temp_dir)
        if outcome.conflict:
            # Another run, or another worker of this one, committed first: the next tick plans on its snapshot.
            logging.info("%s: %s", modality, outcome.conflict)


class WatchInputs(beam.PTransform):
    """PBegin -> nothing: the streaming pipeline of the module docstring."""

    def __init__(self, *, settings: Settings, run_id: str):
        super().__init__()
        self._settings = settings
        self._run_id = run_id

    def expand(self, pipeline):
        modalities = list(self._settings.roots)
        return (pipeline
                | "Poll" >> PeriodicImpulse(fire_interval=self._settings.watch.poll_seconds)
                | "TickEachModality" >> beam.FlatMap(
                    lambda tick: [(modality, float(tick)) for modality in modalities]).with_output_types(
                        tuple[str, float])  # a deterministic key coder, which state needs
                | "IngestWhenDue" >> beam.ParDo(IngestWhenDue(settings=self._settings, run_id=self._run_id)))


class StopRequests:
    """Counts SIGINT and SIGTERM; the first one writes the stop file that the pipeline's ticks look for."""

    def __init__(self, stop_path: str):
        self._stop_path = stop_path
        self.count = 0

    def __enter__(self):
        self._previous = {number: signal.signal(number, self._handle) for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, number, _frame):
        self.count += 1
        if self.count == 1:
            write_atomically(self._stop_path, signal.Signals(number).name.encode("ascii"))
            print(f"{signal.Signals(number).name}: committing what is stable, then stopping "
                  "(a second signal stops at once)", flush=True)

    def __exit__(self, *_):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclasses.dataclass
class WatchSummary:
    output_dir: str
    commits: dict[str, list[int]]  # modality -> the snapshots committed while watching
    stopped_at_once: bool  # a second signal cancelled the pipeline before every modality had committed

    def exit_code(self) -> int:
        return 0


def start_pipeline(settings: Settings, pipeline_args: list[str], *, run_id: str, save_main_session: bool):
    options = PipelineOptions(with_streaming_runner(pipeline_args))
    options.view_as(SetupOptions).save_main_session = save_main_session
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "WatchInputs" >> WatchInputs(settings=settings, run_id=run_id)
    # A runner started now inherits SIGINT ignored (Prism, a Go program, keeps it so): Ctrl-C in a
    # terminal signals the whole process group, and the runner must outlive it to run the last commits.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return pipeline.run()
    finally:
        signal.signal(signal.SIGINT, previous)


def run_watch(settings: Settings, pipeline_args: list[str], *, save_main_session: bool = True,
              out=sys.stdout, verbose: bool = False, error_stream=None) -> WatchSummary:
    """Runs the watch until a signal stops it; prints a line per committed snapshot."""
    output_dir = settings.output_dir
    run_id = new_run_id()
    temp_dir = run_temp_dir(output_dir, run_id)
    commits = {modality: [] for modality in settings.roots}
    with LeaseKeeper(output_dir, run_id, ttl_seconds=settings.lease_seconds):
        clean_debris(output_dir, modalities=list(settings.roots), own_run_id=run_id,
                     committed_spans=lambda modality: snapshots.committed_spans(settings.dataset_dir(modality)))
        seen = {modality: _current_id(settings, modality) for modality in settings.roots}
        # A runner process killed by a signal (Prism; the SDK workers are threads here) ends the watch in one
        # line with EXIT_WORKER_DIED, for a supervisor to restart it; what it committed stays.
        with StopRequests(f"{temp_dir}/{STOP_NAME}") as stops, Supervisor(
                max_run_seconds=None, on_abort=lambda: release_lease(output_dir, run_id), stream=error_stream,
                what="the watch", hold_output=not verbose,
                stopped="the watch stopped; its commits stay, and a restarted watch goes on from them"):
            result = start_pipeline(settings, pipeline_args, run_id=run_id, save_main_session=save_main_session)
            print(f"watching {', '.join(root for roots in settings.roots.values() for root in roots)}: a poll every "
                  f"{settings.watch.poll_seconds:g} s, a commit at most every {settings.watch.commit_seconds:g} s "
                  f"or {settings.watch.commit_files} files; Ctrl-C or SIGTERM commits what is stable and stops",
                  file=out, flush=True)
            while True:
                time.sleep(_CHECK_SECONDS)
                _report_commits(settings, seen, commits, out=out)
                check_running(result)
                if stops.count >= 2 or (stops.count and all(
                        FileSystems.exists(f"{temp_dir}/{stopped_name(modality)}") for modality in settings.roots)):
                    break
            stopped_at_once = stops.count >= 2
            result.cancel()
        _report_commits(settings, seen, commits, out=out)
    ingest.write_errors_file(settings)
    print(f"stopped{' at once' if stopped_at_once else ''}: committed " + "; ".join(
        f"{modality} {', '.join(map(str, ids)) or 'nothing'}" for modality, ids in commits.items()), file=out,
        flush=True)
    return WatchSummary(output_dir=output_dir, commits=commits, stopped_at_once=stopped_at_once)


def check_running(result) -> None:
    """Raises WatchError, with the pipeline's own error where it has one, unless the pipeline runs."""
    try:
        state = result.state
    except grpc.RpcError as error:
        raise WatchError(f"the runner stopped answering ({error.code().name}): was it killed? A SIGTERM meant "
                         f"for the watch goes to its launcher process alone (systemd: KillMode=mixed)") from None
    if PipelineState.is_terminal(state):
        try:
            result.wait_until_finish()
        except Exception as error:  # noqa: BLE001 -- any failure of the pipeline ends the watch with its message
            raise WatchError(f"the watch pipeline failed: {error}") from error
        raise WatchError(f"the watch pipeline ended ({state}) before a stop was asked")


def _current_id(settings: Settings, modality: str) -> int:
    manifest = snapshots.latest(settings.dataset_dir(modality))
    return (manifest.snapshot_id or 0) if manifest else 0


def _report_commits(settings: Settings, seen: dict[str, int], commits: dict[str, list[int]], *, out) -> None:
    """Prints every snapshot committed since the last call, and rewrites OUT/errors.jsonl after any."""
    committed = False
    for modality in settings.roots:
        dataset_dir = settings.dataset_dir(modality)
        for snapshot_id in range(seen[modality] + 1, _current_id(settings, modality) + 1):
            try:
                line = format_commit(modality, snapshots.load(dataset_dir, snapshot_id))
            except SnapshotRemovedError:
                line = f"{modality}: committed snapshot {snapshot_id}, since removed by retention"
            print(line, file=out, flush=True)
            commits[modality].append(snapshot_id)
            seen[modality] = snapshot_id
            committed = True
    if committed:
        ingest.write_errors_file(settings)
