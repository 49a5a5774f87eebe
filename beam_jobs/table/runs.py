"""Runs of `beam_jobs.preprocess` against one output folder: their ids, leases and leftovers.

Every run takes an id (UTC time and random hex, so ids sort by start) and,
before it writes anything else, a lease `OUT/.runs/<run id>.json` naming its
host, process id and that process's start time. All it writes before its
commit lies in `OUT/.tmp-<run id>/` and `OUT/<modality>/spans/<run id>/` (a watch, which
commits many times, writes `spans/<run id>.<hex>/`: `span_run_id` gives its run).

A live run renews its lease (`LeaseKeeper`, a thread) every tenth of its
time to live, `ttl_seconds` (--lease_seconds, default 10 minutes), and the
lease records when it was last renewed. A lease is dead when it was not
renewed for its time to live, whatever host wrote it (a crashed pod of a
Kubernetes CronJob never comes back to clean up), or sooner when it names
this host and its process is gone (or the process id now belongs to a process
that started later). Hosts' clocks must agree to well within the time to live.

A run commits only while its lease holds (`check_lease_held`): a run that was
paused (SIGSTOP, a frozen VM) for longer than its time to live may have been
taken for dead, and its files removed, by another run meanwhile; it then stops
with `LeaseLostError` and commits nothing. (A pause between that check and the
commit itself, which follow each other within milliseconds, is not guarded:
a file system offers no fencing token.)

`clean_debris` removes what runs left behind, and only what is provably
theirs and provably dead: a temporary folder or an uncommitted span whose run
holds no live lease. A span that any snapshot lists is never debris.
"""
import dataclasses
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable

from beam_jobs.inputs.reading import read_text
from beam_jobs.storage.files import delete_files, delete_tree, exists, list_names, write_atomically
from beam_jobs.table.layout import (RUNS_FOLDER, SPANS_FOLDER, TEMP_PREFIX, dataset_dir, lease_path,
                                    run_temp_dir, span_dir)


DEFAULT_LEASE_SECONDS = 600.0  # --lease_seconds: a lease not renewed for this long is dead
_RENEWALS_PER_LEASE = 10  # a live run renews its lease this many times per time to live


class LeaseLostError(RuntimeError):
    """This run's lease expired or was removed: another run may have taken it for dead, so it must not commit."""


def new_run_id() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def span_run_id(span: str) -> str:
    """The run that wrote a span: its name, up to a watch's per-commit suffix."""
    return span.partition(".")[0]


def _process_start_time(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), or None where /proc has none."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return start_time is None or _process_start_time(pid) in (None, start_time)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _timestamp(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


@dataclasses.dataclass(frozen=True)
class Lease:
    run_id: str
    host: str
    pid: int
    pid_start: str | None
    started: str
    bases: dict[str, int] = dataclasses.field(default_factory=dict)  # modality -> the snapshot it builds on
    renewed: str | None = None  # when the run last said it is alive; None: when it started (older leases)
    ttl_seconds: float = DEFAULT_LEASE_SECONDS  # dead when not renewed for this long

    def expires(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.renewed or self.started) + datetime.timedelta(
            seconds=self.ttl_seconds)

    def is_dead(self, now: datetime.datetime | None = None) -> bool:
        """Not renewed for its time to live, whatever its host; or on this host, and its process is gone."""
        return ((now or _now()) >= self.expires()
                or (self.host == socket.gethostname() and not _process_alive(self.pid, self.pid_start)))


def take_lease(output_dir: str, run_id: str, *, ttl_seconds: float = DEFAULT_LEASE_SECONDS) -> Lease:
    """Writes a new lease for `run_id`. A run that lasts longer than `ttl_seconds` keeps it with LeaseKeeper."""
    now = _timestamp(_now())
    lease = Lease(run_id=run_id, host=socket.gethostname(), pid=os.getpid(),
                  pid_start=_process_start_time(os.getpid()), started=now, renewed=now, ttl_seconds=ttl_seconds)
    write_lease(output_dir, lease)
    return lease


def write_lease(output_dir: str, lease: Lease) -> None:
    write_atomically(lease_path(output_dir, lease.run_id), json.dumps(dataclasses.asdict(lease)).encode("utf-8"))


def read_lease(output_dir: str, run_id: str) -> Lease | None:
    """The lease of `run_id`, or None when it has none (released, or removed as a dead run's)."""
    try:
        return Lease(**json.loads(read_text(lease_path(output_dir, run_id))))
    except FileNotFoundError:
        return None


def snapshots_in_use(output_dir: str, modality: str, *, own_run_id: str) -> set[int]:
    """The snapshots other live runs build on: retention keeps their spans, which those runs may copy from."""
    return {lease.bases[modality] for run_id, lease in read_leases(output_dir).items()
            if run_id != own_run_id and modality in lease.bases and not lease.is_dead()}


_LEASE_LOCK = threading.Lock()  # a watch's modalities may commit on two threads of one worker, beside the keeper


def _lease_gone(output_dir: str, run_id: str) -> LeaseLostError:
    return LeaseLostError(f"this run's lease {lease_path(output_dir, run_id)} is gone: another run took it for dead "
                          f"and removed its files; this run commits nothing")


def _update_lease(output_dir: str, run_id: str, **changes) -> Lease:
    """Rewrites this run's lease with `changes`; LeaseLostError when it has none any more."""
    with _LEASE_LOCK:
        lease = read_lease(output_dir, run_id)
        if lease is None:
            raise _lease_gone(output_dir, run_id)
        if "bases" in changes:
            changes["bases"] = {**lease.bases, **changes["bases"]}
        lease = dataclasses.replace(lease, **changes)
        write_lease(output_dir, lease)
        return lease


def set_lease_base(output_dir: str, run_id: str, *, modality: str, snapshot_id: int) -> None:
    """Records in a live run's lease that its next span of `modality` builds on `snapshot_id`."""
    _update_lease(output_dir, run_id, bases={modality: snapshot_id})


def check_lease_held(output_dir: str, run_id: str) -> None:
    """Returns if this run's lease is there and has at least half its time to live left (a live run renews it
    every tenth); else LeaseLostError: the run was paused, or its renewals failed, for that long."""
    lease = read_lease(output_dir, run_id)
    if lease is None:
        raise _lease_gone(output_dir, run_id)
    left = (lease.expires() - _now()).total_seconds()
    if left < lease.ttl_seconds / 2:
        raise LeaseLostError(f"this run's lease was last renewed at {lease.renewed} and "
                             f"{'expired' if left <= 0 else 'nearly expired'} (time to live "
                             f"{lease.ttl_seconds:g} s): the run was paused or could not write "
                             f"{lease_path(output_dir, run_id)}; another run may take it for dead, so it commits "
                             f"nothing")


class LeaseKeeper:
    """`with LeaseKeeper(output_dir, run_id, ttl_seconds=...) as keeper:` holds a run's lease for the block.

    Takes the lease, renews it on a thread every tenth of `ttl_seconds`, and at
    the end deletes the run's temporary folder, then the lease (`release_lease`).
    A renewal that fails (the store unreachable) is retried at the next tick; one
    that comes later than the time to live after the last (the process was
    paused) is not made: the lease may be taken for dead already, and
    `check_lease_held` then stops the commit.
    """

    def __init__(self, output_dir: str, run_id: str, *, ttl_seconds: float = DEFAULT_LEASE_SECONDS):
        self.output_dir, self.run_id, self.ttl_seconds = output_dir, run_id, ttl_seconds
        self._stop = threading.Event()
        self._thread = None
        self.lease = None

    def __enter__(self) -> "LeaseKeeper":
        self.lease = take_lease(self.output_dir, self.run_id, ttl_seconds=self.ttl_seconds)
        self._thread = threading.Thread(target=self._renew_until_stopped, name="lease-keeper", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self._stop.set()
        self._thread.join()
        try:
            release_lease(self.output_dir, self.run_id)
        except Exception as error:  # noqa: BLE001 -- an OSError, or an object store's client error
            if exc_type is None:
                raise
            # The fault that ended the run may keep its files too (a read-only folder, a store gone): its one line
            # says that the next run removes them.
            logging.debug("could not remove this run's lease and temporary folder (%s)", error)

    def _renew_until_stopped(self) -> None:
        last_renewed = time.monotonic()
        while not self._stop.wait(self.ttl_seconds / _RENEWALS_PER_LEASE):
            if time.monotonic() - last_renewed >= self.ttl_seconds:
                logging.warning("this run's lease was not renewed for %.0f s, more than its time to live; it is "
                                "not renewed any more and the run will not commit", time.monotonic() - last_renewed)
                return
            try:
                _update_lease(self.output_dir, self.run_id, renewed=_timestamp(_now()))
            except LeaseLostError:
                return  # check_lease_held says so before the commit
            except Exception as error:  # noqa: BLE001 -- an OSError, or an object store's client error
                logging.warning("could not renew this run's lease (%s: %s); trying again", type(error).__name__,
                                error)
                continue
            last_renewed = time.monotonic()


def release_lease(output_dir: str, run_id: str) -> None:
    """Deletes the run's temporary folder, then its lease: a temporary folder without a lease is debris."""
    delete_tree(run_temp_dir(output_dir, run_id))
    path = lease_path(output_dir, run_id)
    if exists(path):
        delete_files([path])


def read_leases(output_dir: str) -> dict[str, Lease]:
    leases = {}
    for name in list_names(f"{output_dir}/{RUNS_FOLDER}", "*.json"):
        lease = read_lease(output_dir, name[:-len(".json")])
        if lease is not None:  # else released between the listing and the read
            leases[lease.run_id] = lease
    return leases


def clean_debris(output_dir: str, *, modalities, committed_spans: Callable[[str], set[str]],
                 own_run_id: str) -> list[str]:
    """Deletes the leftovers of dead runs under `output_dir`; returns what it deleted.

    `committed_spans(modality)` gives every span any snapshot lists. The folders
    are listed first, the leases read next and the snapshots last: a run takes its
    lease before it creates a folder and gives it up only after its commit, so a
    listed folder either has a live lease or, if committed, is in a snapshot by then.
    """
    candidates = [(name[len(TEMP_PREFIX):], f"{output_dir}/{name}", None, None)
                  for name in list_names(output_dir, f"{TEMP_PREFIX}*")]
    for modality in modalities:
        folder = dataset_dir(output_dir, modality)
        candidates += [(span_run_id(span), span_dir(folder, span), modality, span)
                       for span in list_names(f"{folder}/{SPANS_FOLDER}")]
    leases = read_leases(output_dir)
    live = {run_id for run_id, lease in leases.items() if not lease.is_dead()} | {own_run_id}
    committed = {modality: committed_spans(modality) for modality in modalities}
    deleted = []
    for run_id, path, modality, span in candidates:
        if run_id not in live and not (span and span in committed[modality]):
            delete_tree(path)
            deleted.append(path)
    for run_id in sorted(set(leases) - live):
        delete_files([lease_path(output_dir, run_id)])
        deleted.append(lease_path(output_dir, run_id))
    for path in deleted:
        logging.info("removed the leftovers of a run that died: %s", path)
    return deleted
