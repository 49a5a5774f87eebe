"""Ends a run that cannot finish well in bounded time, with one line: a worker process that died, or a deadline.

A scheduled run must either finish or exit non-zero soon, saying why. Two
faults would otherwise end in neither:

- A worker process killed by a signal (SIGKILL from the out-of-memory killer):
  FnApiRunner fails about 3 s later with some 200 lines of gRPC and queue
  tracebacks, and not one saying a worker died; killed before its first
  bundle, the launcher can wait for it forever. The command each SDK worker
  runs (`beam_jobs.runners.worker_client`) learns how its worker ended and,
  when a signal ended it, writes a line into this run's faults folder (named
  by `FAULTS_VARIABLE` in the environment the workers inherit). A direct child
  of the launcher killed by a signal (the worker zygote, a Prism binary) is
  seen from /proc: nobody else waits for it.
- A run that goes on for longer than its scheduler allows (`--max_run_minutes`):
  runs stack up, or the scheduler kills it without a word.

`Supervisor` checks for both every 0.2 s on a thread while the run plans and
runs its pipeline. A worker's death shows in the launcher first as errors of
its gRPC streams, logged the moment the worker's sockets close, before anyone
can know why they closed; so, unless --verbose, what the launcher logs and
what reaches its stderr while supervised is held for HOLD_SECONDS
(`_HeldOutput`) and dropped when the supervisor stops the run. On either it stops the run: it kills every process the
launcher started (the runner's workers with them), removes the run's own files
(`on_abort`: its temporary folder, its uncommitted spans, its lease), writes
one line and exits the process at once with EXIT_WORKER_DIED or
EXIT_DEADLINE, so that none of the runner's threads can go on printing or
waiting. Nothing is committed: once the run starts committing
(`start_commit`, which refuses a run past its deadline), the supervisor stops
watching, since the commit takes seconds and stopping in its midst would
leave a committed snapshot behind an exit that says otherwise.

On Prism (LOOPBACK, the Python SDK's default there) the SDK workers are
threads of the launcher, so a killed "worker" is the launcher itself: the run
is gone, and the next run removes its files (its lease names a dead process).
"""
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Callable

from beam_jobs.runners.worker_client import FAULTS_VARIABLE  # the folder where it says that a worker was killed

EXIT_WORKER_DIED = 3  # a process of the runner was killed (by a signal) mid-run
EXIT_DEADLINE = 124  # --max_run_minutes passed (the status coreutils' timeout gives)
_CHECK_SECONDS = 0.2
_REPORT_GRACE_SECONDS = 1.0  # how long a failed run waits for the report of a killed process
HOLD_SECONDS = 2.0  # how long the launcher's error output waits before it is shown, while supervised


class DeadlineExceeded(RuntimeError):
    """The run passed its --max_run_minutes before its commit."""


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_death(signal_number: int) -> str:
    """'killed by SIGKILL (what the out-of-memory killer sends)', and the like."""
    why = " (what the out-of-memory killer sends)" if signal_number == signal.SIGKILL else ""
    return f"killed by {signal_name(signal_number)}{why}"


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc; none elsewhere)."""
    children = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                children += [int(child) for child in handle.read().split()]
    except OSError:
        pass  # the process, or one of its threads, has just ended
    return children


def _descendants(pid: int) -> list[int]:
    found, frontier = [], _children(pid)
    while frontier:
        child = frontier.pop()
        found.append(child)
        frontier += _children(child)
    return found


def _killed_child(pid: int) -> tuple[int, str, int] | None:
    """(pid, command name, signal) of a child of `pid` that a signal ended and nobody has waited for yet."""
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] is the state (Z: ended, not yet waited for); fields[49] the exit code as waitpid gives it.
        if fields[0] == "Z" and len(fields) > 49 and int(fields[49]) & 0x7F:
            return child, name, int(fields[49]) & 0x7F
    return None


class _HeldOutput:
    """While entered, log records and lines written to file descriptor 2 reach their destination HOLD_SECONDS
    late, unless `drop()` discards them first: a logging filter on the root logger's handlers, and a pipe in
    place of descriptor 2 (child processes started meanwhile inherit it), copied on a thread."""

    def __init__(self):
        self._held = []  # (time, function that shows it)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._dropped = False
        self._previous_fd = None
        self._threads = []
        self._filters = []

    def hold(self, show) -> None:
        """Calls `show` HOLD_SECONDS from now, unless dropped first."""
        with self._lock:
            if not self._dropped:
                self._held.append((time.monotonic(), show))

    def original_fd(self) -> int:
        """A descriptor of what descriptor 2 was before the block."""
        return self._previous_fd

    def passes_through(self) -> bool:
        """Once the block ends, output is shown as it comes."""
        return self._closing.is_set()

    def drop(self) -> None:
        with self._lock:
            self._dropped = True
            self._held.clear()

    def _release(self, *, everything: bool) -> None:
        now = time.monotonic()
        with self._lock:
            due = [show for at, show in self._held if everything or now - at >= HOLD_SECONDS]
            self._held = [] if everything else [(at, show) for at, show in self._held if now - at < HOLD_SECONDS]
        for show in due:
            show()

    def __enter__(self) -> "_HeldOutput":
        self._filters = [(handler, _HoldRecords(self, handler)) for handler in logging.getLogger().handlers]
        for handler, held in self._filters:
            handler.addFilter(held)  # the last filter: reached only by what the others let pass
        sys.stderr.flush()
        self._previous_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        previous_fd = self._previous_fd
        self._threads = [threading.Thread(target=self._copy, args=(read_fd, previous_fd), daemon=True),
                         threading.Thread(target=self._release_when_due, daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def _copy(self, read_fd: int, target_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                if self._closing.is_set():
                    os.write(2, line)  # descriptor 2 is the real stderr again
                else:
                    self.hold(lambda line=line: os.write(target_fd, line))

    def _release_when_due(self) -> None:
        while not self._closing.wait(0.1):
            self._release(everything=False)

    def __exit__(self, *exc_info):
        sys.stderr.flush()
        os.dup2(self._previous_fd, 2)  # the pipe closes once no process holds it any more
        self._closing.set()
        self._threads[1].join()
        self._threads[0].join(timeout=0.5)  # a child process started meanwhile may hold the pipe longer
        self._release(everything=True)
        os.close(self._previous_fd)
        for handler, held in self._filters:
            handler.removeFilter(held)


class _HoldRecords(logging.Filter):
    def __init__(self, output: _HeldOutput, handler: logging.Handler):
        super().__init__()
        self._output, self._handler = output, handler

    def filter(self, record: logging.LogRecord) -> bool:
        if self._output.passes_through():
            return True
        self._output.hold(lambda: self._handler.emit(record))
        return False


class Supervisor:
    """`with Supervisor(max_run_seconds=..., on_abort=..., stream=...) as supervisor:` watches the run (see the
    module docstring) until `supervisor.start_commit()`, or the end of the block."""

    def __init__(self, *, max_run_seconds: float | None, on_abort: Callable[[], None], stream=None,
                 what: str = "this run", hold_output: bool = True,
                 stopped: str = "the run stopped and committed nothing; the current snapshot is unchanged"):
        self._deadline = None if max_run_seconds is None else time.monotonic() + max_run_seconds
        self._max_run_seconds = max_run_seconds
        self._on_abort = on_abort
        self._stream = stream
        self._what = what
        self._stopped = stopped  # what the line says after the fault
        self._lock = threading.Lock()
        self._watching = True
        self._stop = threading.Event()
        self._faults_dir = None
        self._previous_variable = None
        self._thread = None
        self._held = _HeldOutput() if hold_output else None

    def __enter__(self) -> "Supervisor":
        if self._held:
            self._held.__enter__()
        self._faults_dir = tempfile.mkdtemp(prefix="soundsight-faults-")
        self._previous_variable = os.environ.get(FAULTS_VARIABLE)
        os.environ[FAULTS_VARIABLE] = self._faults_dir  # every worker started from now inherits it
        self._thread = threading.Thread(target=self._watch, name="run-supervisor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self._stop.set()
        self._thread.join()
        if exc_type is not None and self._watching:
            # The runner may fail before the fault that made it fail is reported: wait for the report a moment.
            give_up = time.monotonic() + _REPORT_GRACE_SECONDS
            while time.monotonic() < give_up:
                fault = self._find_fault(deadline_too=False)
                if fault is not None:
                    self._abort(*fault)
                time.sleep(_CHECK_SECONDS / 4)
        if exc_type is not None and self._held:
            self._held.drop()  # the run fails with the exception's one line; --verbose shows it all
        if self._previous_variable is None:
            os.environ.pop(FAULTS_VARIABLE, None)
        else:
            os.environ[FAULTS_VARIABLE] = self._previous_variable
        shutil.rmtree(self._faults_dir, ignore_errors=True)
        if self._held:
            self._held.__exit__(exc_type, exc_value, traceback)

    def start_commit(self) -> None:
        """Called before the run's first commit: from here on the run finishes its commits. Raises
        DeadlineExceeded instead when the deadline has passed (the run then commits nothing)."""
        with self._lock:
            self._watching = False
            if self._deadline is not None and time.monotonic() > self._deadline:
                raise DeadlineExceeded(self._deadline_line())

    def _deadline_line(self) -> str:
        return (f"{self._what} passed --max_run_minutes={self._max_run_seconds / 60:g} before its commit and "
                f"was stopped; it committed nothing and the current snapshot is unchanged")

    def _watch(self) -> None:
        while not self._stop.wait(_CHECK_SECONDS):
            fault = self._find_fault()
            if fault is None:
                continue
            with self._lock:
                if self._watching:
                    self._abort(*fault)

    def _find_fault(self, *, deadline_too: bool = True) -> tuple[str, int] | None:
        for name in sorted(os.listdir(self._faults_dir)):
            if name.endswith(".json"):  # renamed into place whole by worker_client.report_killed
                with open(os.path.join(self._faults_dir, name)) as handle:
                    fault = json.load(handle)
                return f"{fault['what']} process {fault['pid']} was {describe_death(fault['signal'])}", \
                    EXIT_WORKER_DIED
        killed = _killed_child(os.getpid())
        if killed is not None:
            pid, name, signal_number = killed
            return f"process {pid} ({name}), started by this run, was {describe_death(signal_number)}", \
                EXIT_WORKER_DIED
        if deadline_too and self._deadline is not None and time.monotonic() > self._deadline:
            return self._deadline_line(), EXIT_DEADLINE
        return None

    def _abort(self, reason: str, status: int) -> None:
        """Kills the run's processes, removes its files, says why in one line and exits with `status`."""
        if self._held:
            self._held.drop()  # the runner's errors about what follows from this fault
        for pid in _descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # ended meanwhile
        try:
            self._on_abort()
        except Exception as error:  # noqa: BLE001 -- an OSError, or an object store's client error: say it, exit
            reason += f" (its files could not be removed, {type(error).__name__}: the next run removes them)"
        shutil.rmtree(self._faults_dir, ignore_errors=True)
        if status == EXIT_WORKER_DIED:
            reason += f"; {self._stopped}"
        line = f"\nerror: {reason}\n"
        if self._stream is not None:
            self._stream.write(line)
            self._stream.flush()
        else:  # the real stderr: descriptor 2 may be the held output's pipe
            os.write(self._held.original_fd() if self._held else 2, line.encode("utf-8", "replace"))
        os._exit(status)
