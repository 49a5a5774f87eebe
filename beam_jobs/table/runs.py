"""Runs of `beam_jobs.preprocess` against one output folder: their ids, leases and leftovers.

Every run takes an id (UTC time and random hex, so ids sort by start) and,
before it writes anything else, a lease `OUT/.runs/<run id>.json` naming its
host, process id and that process's start time. All it writes before its
commit lies in `OUT/.tmp-<run id>/` and `OUT/<modality>/spans/<run id>/` (a watch, which
commits many times, writes `spans/<run id>.<hex>/`: `span_run_id` gives its run).

`clean_debris` removes what runs left behind, and only what is provably
theirs and provably dead: a temporary folder or an uncommitted span whose run
holds no live lease. A lease is dead when it names this host and its process
is gone (or the process id now belongs to a process that started later). A
lease from another host is never taken for dead: its files stay until its
run, or a person, removes them. A span that any snapshot lists is never debris.
"""
import dataclasses
import datetime
import json
import logging
import os
import socket
import threading
import uuid
from typing import Callable

from apache_beam.io.filesystems import FileSystems

from beam_jobs.inputs.reading import read_text
from beam_jobs.storage.files import delete_tree, list_names, write_atomically
from beam_jobs.table.layout import (RUNS_FOLDER, SPANS_FOLDER, TEMP_PREFIX, dataset_dir, lease_path,
                                    run_temp_dir, span_dir)


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


@dataclasses.dataclass(frozen=True)
class Lease:
    run_id: str
    host: str
    pid: int
    pid_start: str | None
    started: str
    bases: dict[str, int] = dataclasses.field(default_factory=dict)  # modality -> the snapshot it builds on

    def is_dead(self) -> bool:
        """Provably dead: on this host, and its process is gone. A lease of another host is never dead here."""
        return self.host == socket.gethostname() and not _process_alive(self.pid, self.pid_start)


def take_lease(output_dir: str, run_id: str) -> Lease:
    lease = Lease(run_id=run_id, host=socket.gethostname(), pid=os.getpid(),
                  pid_start=_process_start_time(os.getpid()),
                  started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    write_lease(output_dir, lease)
    return lease


def write_lease(output_dir: str, lease: Lease) -> None:
    write_atomically(lease_path(output_dir, lease.run_id), json.dumps(dataclasses.asdict(lease)).encode("utf-8"))


def snapshots_in_use(output_dir: str, modality: str, *, own_run_id: str) -> set[int]:
    """The snapshots other live runs build on: retention keeps their spans, which those runs may copy from."""
    return {lease.bases[modality] for run_id, lease in read_leases(output_dir).items()
            if run_id != own_run_id and modality in lease.bases and not lease.is_dead()}


_LEASE_LOCK = threading.Lock()  # a watch's modalities may commit on two threads of one worker


def set_lease_base(output_dir: str, run_id: str, *, modality: str, snapshot_id: int) -> None:
    """Records in a live run's lease that its next span of `modality` builds on `snapshot_id`."""
    with _LEASE_LOCK:
        lease = Lease(**json.loads(read_text(lease_path(output_dir, run_id))))
        write_lease(output_dir, dataclasses.replace(lease, bases={**lease.bases, modality: snapshot_id}))


def release_lease(output_dir: str, run_id: str) -> None:
    """Deletes the run's temporary folder, then its lease: a temporary folder without a lease is debris."""
    delete_tree(run_temp_dir(output_dir, run_id))
    path = lease_path(output_dir, run_id)
    if FileSystems.exists(path):
        FileSystems.delete([path])


def read_leases(output_dir: str) -> dict[str, Lease]:
    leases = {}
    for name in list_names(f"{output_dir}/{RUNS_FOLDER}", "*.json"):
        path = f"{output_dir}/{RUNS_FOLDER}/{name}"
        try:
            leases[name[:-len(".json")]] = Lease(**json.loads(read_text(path)))
        except FileNotFoundError:
            continue  # released between the listing and the read
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
        FileSystems.delete([lease_path(output_dir, run_id)])
        deleted.append(lease_path(output_dir, run_id))
    for path in deleted:
        logging.info("removed the leftovers of a run that died: %s", path)
    return deleted
