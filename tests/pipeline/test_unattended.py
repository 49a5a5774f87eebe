"""Faults a scheduled run meets, injected for real: a worker killed by SIGKILL, leases of crashed runs on other
hosts, a paused run, the retention race, a deadline; and the vacuum.

Each run is `python -m beam_jobs.preprocess` in a process group of its own, held at a failpoint
(`beam_jobs.table.failpoints`) where a test needs it. Each test checks the exit status and the one line, that
the run ended in bounded time, that the current snapshot verifies, and that the next run succeeds and leaves
no debris.
"""
import contextlib
import datetime
import errno
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from beam_jobs import preprocess
from beam_jobs.runners import supervision
from beam_jobs.table import snapshots
from beam_jobs.table.runs import Lease, LeaseLostError, check_lease_held, write_lease
from dataset_checks import assert_no_debris, assert_verifies, current, record_paths, span_folders  # noqa: I100
from test_object_store import BUCKET, free_port, store  # noqa: F401 -- store: moto's S3 server, a fixture
from test_snapshots import (REPO, good_inputs, ingest, run_module, start_preprocess, wait_for_pause,
                            write_class)

BOUND_S = 45  # a faulty run must end well within this (the bound for a dead worker is 30 s)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def assert_one_line_and_no_traceback(output: str) -> str:
    assert "Traceback" not in output, output
    [line] = error_lines(output)
    return line


def seeded(tmp_path, write_wav, *, extra: int = 12, out: pathlib.Path | None = None):
    """An audio dataset at snapshot 1 (8 files) in `out` (tmp_path/out), then `extra` new files waiting in the
    root."""
    root, out = tmp_path / "in", out or tmp_path / "out"
    write_class(write_wav, root, "high", [f"h{i}" for i in range(4)], frequency=2000)
    write_class(write_wav, root, "low", [f"l{i}" for i in range(4)], frequency=300)
    ingest(root, out)
    write_class(write_wav, root, "mid", [f"m{i}" for i in range(extra)], frequency=900)
    return root, out


def assert_snapshot_intact_and_next_run_succeeds(root, out, write_wav, example_parser, *,
                                                 snapshot_id: int) -> None:
    """The current snapshot is `snapshot_id` and verifies; a run on two new files commits the next one, whole."""
    dataset = out / "audio"
    assert current(dataset).snapshot_id == snapshot_id
    assert_verifies(dataset)
    write_class(write_wav, root, "low", [f"after{snapshot_id}-{i}" for i in range(2)], frequency=450)
    after = ingest(root, out).manifests["audio"]
    assert after.snapshot_id == snapshot_id + 1
    assert_verifies(dataset)
    assert record_paths(dataset, after, example_parser) == good_inputs(root)
    assert_no_debris(out)


# --- a worker killed mid-run ------------------------------------------------------------------------------

@pytest.mark.parametrize("fork", ["1", "0"], ids=["forked", "spawned"])
def test_a_worker_killed_mid_run_fails_the_run_at_once_in_one_line(fork, tmp_path, write_wav, runner_flags,
                                                                   example_parser):
    root, out = seeded(tmp_path, write_wav)
    pause_file, log = tmp_path / "paused", tmp_path / "run.log"
    run = start_preprocess(root, out, log, *runner_flags["multi_processing"],
                           env={"SOUNDSIGHT_PAUSE_AT": "featurizing", "SOUNDSIGHT_PAUSE_FILE": str(pause_file),
                                "SOUNDSIGHT_FORK_WORKERS": fork})
    wait_for_pause(run, pause_file, log)
    worker = int(pause_file.read_text().split()[0])

    os.kill(worker, signal.SIGKILL)  # what the out-of-memory killer does
    killed_at = time.monotonic()
    status = run.wait(timeout=BOUND_S)

    assert time.monotonic() - killed_at < 30
    output = log.read_text()
    line = assert_one_line_and_no_traceback(output)
    assert status == 3, output
    assert f"SDK worker process {worker} was killed by SIGKILL" in line and "committed nothing" in line, line
    assert not (out / ".runs").exists() or not list((out / ".runs").iterdir()), "the run's lease outlived it"
    assert_snapshot_intact_and_next_run_succeeds(root, out, write_wav, example_parser, snapshot_id=1)


# --- leases: expiry, other hosts, paused runs --------------------------------------------------------------

def plant_crashed_run(out: pathlib.Path, *, host: str, renewed_seconds_ago: float, ttl_seconds: float = 60) -> str:
    """The lease, temporary folder and uncommitted span a run on `host` left when it crashed; its run id."""
    run_id = f"20260101T000000Z-{host[-8:]}"
    renewed = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=renewed_seconds_ago)
    write_lease(str(out), Lease(run_id=run_id, host=host, pid=1, pid_start=None, started=renewed.isoformat(),
                                renewed=renewed.isoformat(), ttl_seconds=ttl_seconds, bases={"audio": 1}))
    (out / f".tmp-{run_id}").mkdir()
    (out / f".tmp-{run_id}" / "work-audio.jsonl").write_text("{}\n")
    (out / "audio" / "spans" / run_id).mkdir()
    (out / "audio" / "spans" / run_id / "part.tfrecord").write_bytes(b"half a shard")
    return run_id


def test_a_crashed_run_of_another_host_is_cleaned_once_its_lease_expires_and_not_before(tmp_path, write_wav,
                                                                                       example_parser):
    root, out = seeded(tmp_path, write_wav)
    expired = plant_crashed_run(out, host="cronjob-pod-aaaaaaaa", renewed_seconds_ago=120)
    alive = plant_crashed_run(out, host="cronjob-pod-bbbbbbbb", renewed_seconds_ago=5)

    ingest(root, out)

    assert not (out / f".tmp-{expired}").exists() and expired not in span_folders(out / "audio")
    assert not (out / ".runs" / f"{expired}.json").exists()
    assert (out / f".tmp-{alive}").exists() and alive in span_folders(out / "audio"), \
        "a lease renewed 5 s ago (time to live 60 s) is a live run's, whatever its host"
    assert_verifies(out / "audio")


def test_retention_keeps_the_base_of_a_live_run_of_another_host_but_not_of_an_expired_one(tmp_path, write_wav):
    root, out = seeded(tmp_path, write_wav, extra=2)
    ingest(root, out)
    for host, ago, kept in (("pod-live-cccccccc", 5, True), ("pod-dead-dddddddd", 600, False)):
        run_id = plant_crashed_run(out, host=host, renewed_seconds_ago=ago)
        base = current(out / "audio").snapshot_id
        lease = json.loads((out / ".runs" / f"{run_id}.json").read_text())
        write_lease(str(out), Lease(**{**lease, "bases": {"audio": base}}))
        write_class(write_wav, root, "high", ["h0"], frequency=2100 + 10 * base)  # a file changes
        ingest(root, out, "--keep_snapshots=1", "--compact")  # a new span: the base's would be deleted
        _, removed = snapshots.snapshot_ids(str(out / "audio"))
        assert (base not in removed) == kept, (host, base, removed)


def test_a_run_paused_past_its_lease_commits_nothing_and_says_so(tmp_path, write_wav, runner_flags,
                                                                 example_parser):
    root, out = seeded(tmp_path, write_wav)
    pause_file, resume_file, log = tmp_path / "paused", tmp_path / "resume", tmp_path / "run.log"
    run = start_preprocess(root, out, log, *runner_flags["in_memory"], "--lease_seconds=2",
                           env={"SOUNDSIGHT_PAUSE_AT": "span_written", "SOUNDSIGHT_PAUSE_FILE": str(pause_file),
                                "SOUNDSIGHT_RESUME_FILE": str(resume_file)})
    wait_for_pause(run, pause_file, log)
    os.kill(run.pid, signal.SIGSTOP)  # a frozen VM, a stopped container: every thread stops, the lease ages
    time.sleep(3)
    other = ingest(root, out)  # takes the paused run for dead, removes its files, commits snapshot 2
    resume_file.touch()
    os.kill(run.pid, signal.SIGCONT)
    status = run.wait(timeout=BOUND_S)

    output = log.read_text()
    line = assert_one_line_and_no_traceback(output)
    assert status == 1 and "this run's lease" in line and "commits nothing" in line, output
    assert other.manifests["audio"].snapshot_id == 2
    assert_snapshot_intact_and_next_run_succeeds(root, out, write_wav, example_parser, snapshot_id=2)


def test_a_lease_that_aged_past_half_its_time_to_live_stops_the_commit(tmp_path):
    renewed = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=40)
    write_lease(str(tmp_path), Lease(run_id="r", host=socket.gethostname(), pid=os.getpid(), pid_start=None,
                                     started=renewed.isoformat(), renewed=renewed.isoformat(), ttl_seconds=60))
    with pytest.raises(LeaseLostError, match="nearly expired"):
        check_lease_held(str(tmp_path), "r")
    with pytest.raises(LeaseLostError, match="is gone"):
        check_lease_held(str(tmp_path), "another run")


# --- the retention race --------------------------------------------------------------------------------------

def test_a_run_whose_base_retention_removed_while_it_planned_plans_again_and_commits(tmp_path, write_wav,
                                                                                    example_parser):
    root, out = seeded(tmp_path, write_wav)
    pause_file, resume_file, log = tmp_path / "paused", tmp_path / "resume", tmp_path / "run.log"
    run = start_preprocess(root, out, log, "--in_process_below=100000", "--keep_snapshots=1",
                           env={"SOUNDSIGHT_PAUSE_AT": "planned", "SOUNDSIGHT_PAUSE_FILE": str(pause_file),
                                "SOUNDSIGHT_RESUME_FILE": str(resume_file)})
    wait_for_pause(run, pause_file, log)  # planned on snapshot 1, not yet in its lease
    ingest(root, out, "--keep_snapshots=1", "--compact")  # commits 2, removes 1 and its span
    assert 1 in snapshots.snapshot_ids(str(out / "audio"))[1]
    write_class(write_wav, root, "low", ["late0", "late1"], frequency=420)
    resume_file.touch()
    status = run.wait(timeout=BOUND_S)

    output = log.read_text()
    assert status == 0 and "planning again" in output and error_lines(output) == [], output
    assert (current(out / "audio").snapshot_id, current(out / "audio").parent_snapshot) == (3, 2)
    assert_snapshot_intact_and_next_run_succeeds(root, out, write_wav, example_parser, snapshot_id=3)


# --- a deadline ------------------------------------------------------------------------------------------------

def test_a_run_past_its_deadline_stops_commits_nothing_and_exits_124(tmp_path, write_wav, runner_flags,
                                                                    example_parser):
    root, out = seeded(tmp_path, write_wav)
    pause_file, log = tmp_path / "paused", tmp_path / "run.log"
    run = start_preprocess(root, out, log, *runner_flags["multi_processing"], "--max_run_minutes=0.1",
                           env={"SOUNDSIGHT_PAUSE_AT": "featurizing", "SOUNDSIGHT_PAUSE_FILE": str(pause_file)})
    status = run.wait(timeout=BOUND_S)  # a worker holds at its failpoint for ever: only the deadline ends it

    output = log.read_text()
    line = assert_one_line_and_no_traceback(output)
    assert status == 124 and "--max_run_minutes=0.1" in line and "committed nothing" in line, output
    assert_no_debris(out)
    assert_snapshot_intact_and_next_run_succeeds(root, out, write_wav, example_parser, snapshot_id=1)


# --- a full disk, a read-only folder ---------------------------------------------------------------------------

@contextlib.contextmanager
def small_disk(folder: pathlib.Path, *, size_kib: int):
    """A tmpfs of `size_kib` at `folder`; yields whether it is one. Mounting needs root (CI has it); elsewhere
    `folder` is a plain folder and the tests inject the file system's errors (`fail_if_asked`) instead."""
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def remount(folder: pathlib.Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True, capture_output=True)


def fill(folder: pathlib.Path) -> pathlib.Path:
    """Writes a file into `folder` until its file system is full; returns it."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_a_disk_that_fills_while_shards_are_written_fails_the_run_in_one_line(tmp_path, write_wav, runner_flags,
                                                                             example_parser):
    with small_disk(tmp_path / "disk", size_kib=1536) as mounted:
        root, out = seeded(tmp_path, write_wav, extra=0, out=tmp_path / "disk" / "out")
        write_class(write_wav, root, "mid", [f"m{i}" for i in range(120)], frequency=900)  # 3 MB of records
        log = tmp_path / "run.log"
        run = start_preprocess(root, out, log, *runner_flags["multi_processing"],
                               env={} if mounted else {"SOUNDSIGHT_FAIL_AT": "writing:ENOSPC"})
        status = run.wait(timeout=BOUND_S)

        output = log.read_text()
        line = assert_one_line_and_no_traceback(output)
        assert status == 1 and "No space left on device" in line and str(out) in line, output
        assert "committed nothing and the current snapshots are unchanged" in line, line
        assert_no_debris(out)  # its temporary files, its span and its lease removed
        if mounted:
            remount(tmp_path / "disk", "size=64m")
        assert_snapshot_intact_and_next_run_succeeds(root, out, write_wav, example_parser, snapshot_id=1)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_commit_on_a_full_or_read_only_disk_fails_in_one_line_and_the_next_run_recovers(
        fault, tmp_path, write_wav, runner_flags, example_parser):
    with small_disk(tmp_path / "disk", size_kib=4096) as mounted:
        root, out = seeded(tmp_path, write_wav, out=tmp_path / "disk" / "out")
        pause_file, resume_file, log = tmp_path / "paused", tmp_path / "resume", tmp_path / "run.log"
        injected = {"full": "committing:ENOSPC", "read-only": "committing:EROFS"}[fault]
        run = start_preprocess(root, out, log, *runner_flags["in_memory"],
                               env={"SOUNDSIGHT_PAUSE_AT": "span_written", "SOUNDSIGHT_PAUSE_FILE": str(pause_file),
                                    "SOUNDSIGHT_RESUME_FILE": str(resume_file),
                                    **({} if mounted else {"SOUNDSIGHT_FAIL_AT": injected})})
        wait_for_pause(run, pause_file, log)  # the span is written; the commit comes next
        filler = None
        if mounted and fault == "full":
            filler = fill(tmp_path / "disk")
        elif mounted:
            remount(tmp_path / "disk", "ro")
        resume_file.touch()
        status = run.wait(timeout=BOUND_S)

        output = log.read_text()
        line = assert_one_line_and_no_traceback(output)
        cause = {"full": "No space left on device", "read-only": "Read-only file system"}[fault]
        assert status == 1 and cause in line and str(out / "audio") in line, output
        assert "while committing audio; this run committed nothing" in line, line
        if filler:
            filler.unlink()
        elif mounted:
            remount(tmp_path / "disk", "rw")
        assert_snapshot_intact_and_next_run_succeeds(root, out, write_wav, example_parser, snapshot_id=1)


# --- vacuum ---------------------------------------------------------------------------------------------------

def test_vacuum_removes_only_old_unreferenced_files_and_a_dry_run_only_lists_them(tmp_path, write_wav):
    root, out = seeded(tmp_path, write_wav, extra=2)
    ingest(root, out)
    dataset = out / "audio"
    orphan = plant_crashed_run(out, host="pod-eeeeeeee", renewed_seconds_ago=10 ** 6)
    (out / ".runs" / f"{orphan}.json").unlink()  # a lease removed, its files not: a crash mid clean-up
    half_written = dataset / f"dataset.json.tmp-{'0' * 32}"
    half_written.write_text("{")
    referenced = {path: path.read_bytes() for path in dataset.rglob("*") if path.is_file()
                  and path.name != half_written.name and orphan not in str(path)}
    old = time.time() - 8 * 24 * 3600
    for path in out.rglob("*"):
        os.utime(path, (old, old))

    fresh = run_module("beam_jobs.snapshots", str(out), "--vacuum", "--older_than", "9d")
    dry = run_module("beam_jobs.snapshots", str(out), "--vacuum", "--dry_run")
    assert fresh.returncode == 0 and fresh.stdout.splitlines()[-1].startswith("removed 0 "), fresh.stdout
    assert dry.returncode == 0 and dry.stdout.count("would remove ") == 4, dry.stdout  # 3 and the total
    assert (out / f".tmp-{orphan}").exists() and half_written.exists()

    done = run_module("beam_jobs.snapshots", str(out), "--vacuum")

    assert done.returncode == 0, done.stderr
    assert not (out / f".tmp-{orphan}").exists() and orphan not in span_folders(dataset)
    assert not half_written.exists()
    assert {path: path.read_bytes() for path in referenced if path.exists()} == referenced
    assert_no_debris(out)
    assert_verifies(dataset)
    bad = run_module("beam_jobs.snapshots", str(dataset), "--vacuum")
    assert bad.returncode == 2 and "give the output folder" in bad.stderr


# --- an object store that goes away and comes back --------------------------------------------------------------

class StoreLink:
    """A TCP proxy in front of moto's S3 server, which a test takes down (connections refused, open ones cut)
    and brings back: the object store going away mid-run, as a run sees it, while moto keeps its objects."""

    def __init__(self, target_port: int):
        self.port = free_port()
        self._target_port = target_port
        self._listener = None
        self._connections = []
        self._lock = threading.Lock()
        self._to_refuse = 0
        self.refused = 0  # requests answered 503 Slow Down

    def slow_down(self, count: int) -> None:
        """Answers the next `count` requests with 503 Slow Down (S3's throttling), cutting open connections so
        that the client's next requests come on new ones."""
        with self._lock:
            self._to_refuse = count
        self._cut_connections()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        self._listener.close()
        self._cut_connections()

    def _cut_connections(self) -> None:
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # taken down
            with self._lock:
                refuse = self._to_refuse > 0
                self._to_refuse -= refuse
            if refuse:
                threading.Thread(target=self._slow_down, args=(client,), daemon=True).start()
                continue
            server = socket.create_connection(("127.0.0.1", self._target_port))
            with self._lock:
                self._connections += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _slow_down(self, client: socket.socket) -> None:
        body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>")
        with client, contextlib.suppress(OSError):
            request = b""
            while b"\r\n\r\n" not in request and (chunk := client.recv(65536)):
                request += chunk
            client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                           + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            self.refused += 1

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


@pytest.fixture
def link(store):
    link = StoreLink(int(store.endpoint.rsplit(":", 1)[1]))
    link.up()
    yield link
    with contextlib.suppress(OSError):
        link.down()


def start_paused_run_on_the_store(store, link, tmp_path, write_wav, *, prefix: str):
    """Snapshot 1 in the bucket through `link`, 6 new files, and a run of them held before its commit:
    (the run, its log, the file that resumes it, its flags, the output URL, the audio URL)."""
    flags = [flag.replace(store.endpoint, link.endpoint) for flag in store.flags]
    raw = tmp_path / "raw"
    write_class(write_wav, raw, "high", [f"h{i}" for i in range(4)], frequency=2000)
    write_class(write_wav, raw, "low", [f"l{i}" for i in range(4)], frequency=300)
    audio_url = store.upload_tree(raw, f"{prefix}/speech")
    out_url = f"s3://{BUCKET}/{prefix}/out"
    ingest_url(audio_url, out_url, flags)
    write_class(write_wav, raw, "mid", [f"m{i}" for i in range(6)], frequency=900)
    store.upload_tree(raw, f"{prefix}/speech")
    pause_file, resume_file, log = tmp_path / "paused", tmp_path / "resume", tmp_path / "run.log"
    with open(log, "w") as handle:
        run = subprocess.Popen(
            [sys.executable, "-m", "beam_jobs.preprocess", f"--audio_root={audio_url}", f"--output_dir={out_url}",
             "--runner=FnApiRunner", "--direct_running_mode=in_memory", *flags], cwd=REPO, stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "SOUNDSIGHT_PAUSE_AT": "span_written", "SOUNDSIGHT_PAUSE_FILE": str(pause_file),
                 "SOUNDSIGHT_RESUME_FILE": str(resume_file)})
    wait_for_pause(run, pause_file, log)
    return run, log, resume_file, flags, out_url, audio_url


def test_an_object_store_that_goes_away_mid_run_fails_it_in_one_line_and_the_next_run_succeeds(
        store, link, tmp_path, write_wav):
    run, log, resume_file, flags, out_url, audio_url = start_paused_run_on_the_store(store, link, tmp_path,
                                                                                    write_wav, prefix="down")
    link.down()  # the store goes away between the span and the commit
    resume_file.touch()
    status = run.wait(timeout=BOUND_S)

    output = log.read_text()
    line = assert_one_line_and_no_traceback(output)
    # The line names the object by its URL on the endpoint, after the bounded retries of the launcher's client.
    assert status == 1 and f"/{BUCKET}/down/out/" in line and "Could not connect" in line, output
    assert "while committing audio" in line, line
    link.up()
    after = ingest_url(audio_url, out_url, flags).manifests["audio"]
    assert (after.snapshot_id, after.parent_snapshot) == (2, 1)
    leftovers = [name for name in store.files(out_url) if ".tmp-" in name or name.startswith(".runs/")]
    assert leftovers == [], "the next run removes what the failed one left"
    assert sum(split.num_examples for split in after.splits.values()) == 14


def test_an_object_store_that_throttles_the_commit_is_retried_and_the_run_commits(store, link, tmp_path,
                                                                                  write_wav):
    run, log, resume_file, _, out_url, _ = start_paused_run_on_the_store(store, link, tmp_path, write_wav,
                                                                         prefix="slow")
    link.slow_down(3)
    resume_file.touch()
    status = run.wait(timeout=BOUND_S)

    output = log.read_text()
    assert status == 0 and error_lines(output) == [] and link.refused == 3, output
    assert "audio: committed snapshot 2" in output
    assert [name for name in store.files(out_url) if ".tmp-" in name or name.startswith(".runs/")] == []


def ingest_url(audio_url: str, out_url: str, flags: list[str]):
    return preprocess.run([f"--audio_root={audio_url}", f"--output_dir={out_url}", "--runner=FnApiRunner",
                           "--direct_running_mode=in_memory", *flags], save_main_session=False)


# --- a watch whose runner dies ------------------------------------------------------------------------------------

def test_a_watch_whose_runner_is_killed_exits_3_in_one_line_for_its_supervisor_to_restart(tmp_path, write_wav,
                                                                                         example_parser):
    from test_watch import start_watch, wait_for_snapshot
    root, out = seeded(tmp_path, write_wav)
    log = tmp_path / "watch.log"
    watch = start_watch(root, out, log)
    try:
        wait_for_snapshot(watch, out / "audio", 2, log)
        [prism] = [child for child in supervision._children(watch.pid) if "prism" in pathlib.Path(
            f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")]
        os.kill(prism, signal.SIGKILL)
        status = watch.wait(timeout=BOUND_S)
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGKILL)

    output = log.read_text()
    line = assert_one_line_and_no_traceback(output)
    assert status == 3 and f"process {prism} (prism)" in line and "killed by SIGKILL" in line, output
    assert "its commits stay" in line, line
    assert_snapshot_intact_and_next_run_succeeds(root, out, write_wav, example_parser, snapshot_id=2)
