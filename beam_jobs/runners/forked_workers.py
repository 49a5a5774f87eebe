"""FnApiRunner's SDK worker processes, forked from a zygote that has already imported Beam and the featurizers.

FnApiRunner's multi_processing mode starts each SDK worker as a new Python
(`python -m apache_beam.runners.worker.sdk_worker_main`), which imports Beam,
NumPy, SciPy and Pillow, about 2 CPU s, before its first record: on 2 cores the
workers' imports were most of a run's fixed start-up. Here the launcher starts
one zygote process when it makes the runner (`WorkerZygote`); the zygote
imports all of that once, while the launcher builds the pipeline, then forks a
worker for each request. FnApiRunner runs, as each worker's command, a small
client (`beam_jobs.runners.worker_client`, standard library only, about 20 ms) that
hands the zygote its environment (the control and logging endpoints, the
pipeline options) and its stdin, stdout and stderr, and exits with the
worker's status. The worker is then Beam's own SDK harness, `sdk_worker_main`,
exactly as in a new process.

A separate zygote rather than a fork of the launcher: the zygote has never
used gRPC, started a thread or opened a connection when it forks (gRPC is not
fork-safe once used, and the launcher's S3 clients hold sockets). It exits
when the launcher closes its stdin, or dies. Linux only
(`forked_workers_available`); elsewhere FnApiRunner starts its workers itself.

    python -m beam_jobs.runners.forked_workers LISTENING_SOCKET_FD MODULE...   # the zygote; WorkerZygote starts it
"""
import importlib
import json
import os
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback

from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.worker import sdk_worker_main
from apache_beam.transforms import environments

from beam_jobs.modalities import MODALITIES
from beam_jobs.runners import worker_client

_READY = b"ready\n"  # the zygote's one line on stdout once it has imported what it preloads
# The environment variable that turns forking off (0), so that FnApiRunner starts each worker as a new Python.
FORK_WORKERS_VARIABLE = "SOUNDSIGHT_FORK_WORKERS"
_STOP_TIMEOUT_SECONDS = 10
_REAP_EVERY_SECONDS = 1.0


def forked_workers_available() -> bool:
    return sys.platform == "linux" and os.environ.get(FORK_WORKERS_VARIABLE, "1") != "0"


class WorkerZygote:
    """`with WorkerZygote() as zygote:` a zygote process, and `zygote.worker_command`, the shell command that
    forks one SDK worker from it (the command of a SubprocessSDKEnvironment). Stops the zygote on exit;
    workers already forked run on until their runner lets them go."""

    def __init__(self, *, preloaded_modules: tuple[str, ...] = ()):
        self.worker_command = None
        self._preloaded_modules = preloaded_modules
        self._folder = None
        self._process = None
        self._ready = False

    def __enter__(self):
        self._folder = tempfile.mkdtemp(prefix="soundsight-workers-")
        socket_path = os.path.join(self._folder, "zygote.sock")
        # Bound here, listened on at once: a worker asked for before the zygote's imports are done waits in
        # the backlog rather than finding no socket.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(socket_path)
            listener.listen(64)
            package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            python_path = os.pathsep.join(filter(None, (package_parent, os.environ.get("PYTHONPATH"))))
            self._process = subprocess.Popen(
                [sys.executable, "-m", "beam_jobs.runners.forked_workers", str(listener.fileno()),
                 *self._preloaded_modules],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=[listener.fileno()],
                env={**os.environ, "PYTHONPATH": python_path})
        self.worker_command = " ".join(shlex.quote(part) for part in worker_client.command(socket_path))
        return self

    def wait_until_ready(self) -> None:
        """Returns once the zygote has imported its modules; RuntimeError if it died first (its error is on
        stderr), so that a run fails at once rather than waiting for workers that will never start."""
        if self._ready:
            return  # it says so once
        if self._process.stdout.readline() != _READY:
            raise RuntimeError(f"the worker zygote (pid {self._process.pid}) exited with status "
                               f"{self._process.wait()} before it could start any worker; its error is above")
        self._ready = True

    def __exit__(self, *exc_info):
        self._process.stdin.close()  # the zygote's signal to exit
        try:
            self._process.wait(timeout=_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self._folder, ignore_errors=True)


def serve(listener: socket.socket, *, preloaded_modules: list[str]) -> None:
    """The zygote: imports `preloaded_modules` (the modules of the pipeline's DoFns) and what each modality's
    featurizer imports on its first file (Modality.worker_imports), which every worker needs before its first
    bundle beside Beam's SDK harness; says it is ready, then forks a worker per connection until its stdin ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the launcher, which stops us
    for name in preloaded_modules:
        importlib.import_module(name)
    for spec in MODALITIES.values():
        for name in spec.worker_imports:
            importlib.import_module(name)
    os.write(sys.stdout.fileno(), _READY)
    stdin = sys.stdin.fileno()
    # SIGCHLD wakes the loop at once, so that a client hears of its worker's end without delay.
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wakeup_write)
    workers = {}  # pid -> our end of its client's connection, kept to tell the client how the worker ended
    while True:
        ready, _, _ = select.select([listener, stdin, wakeup_read], [], [], _REAP_EVERY_SECONDS)
        if wakeup_read in ready:
            os.read(wakeup_read, 512)
        _reap_workers(workers, block=False)
        if stdin in ready:
            break  # end of input: the launcher is done, or gone
        if listener not in ready:
            continue
        connection, _ = listener.accept()
        try:
            environ, cwd, fds = _receive_request(connection)
        except (OSError, ValueError) as error:
            print(f"soundsight worker zygote: a bad request ({error}); no worker started", file=sys.stderr)
            connection.close()
            continue
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (wakeup_read, wakeup_write):
                os.close(fd)
            for other in workers.values():
                other.close()  # else a client would not see its zygote's end while this worker lives
            listener.close()
            os.close(stdin)
            _run_worker(connection, environ=environ, cwd=cwd, fds=fds)  # never returns
        workers[pid] = connection
        for fd in fds:
            os.close(fd)
    # Waited for, not left to the kernel: so their CPU time counts as this process's children's, and ours as
    # the launcher's (the benchmarks read it). The runner has let every worker go by now.
    _reap_workers(workers, block=True)


def _reap_workers(workers: dict[int, socket.socket], *, block: bool) -> None:
    """Waits for the workers that have ended; tells the client of one that a signal ended (a worker that exits
    sends its status itself) and lets go of its connection."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            return  # none has ended
        connection = workers.pop(pid, None)
        if connection is None:
            continue
        if os.WIFSIGNALED(status):
            try:
                connection.sendall(worker_client.SIGNALLED
                                   + worker_client.SIGNAL_MESSAGE.pack(os.WTERMSIG(status), pid))
            except OSError:
                pass  # the client is gone too: its runner let it go
        connection.close()


def _receive_request(connection: socket.socket) -> tuple[dict, str, list[int]]:
    """(the client's environment, its working folder, its stdin/stdout/stderr descriptors)."""
    header, fds, _, _ = socket.recv_fds(connection, 4, len(worker_client.PASSED_FDS))
    if len(header) != 4 or len(fds) != len(worker_client.PASSED_FDS):
        for fd in fds:
            os.close(fd)
        raise ValueError(f"{len(header)}-byte header with {len(fds)} descriptors")
    (length,) = struct.unpack("!I", header)
    body = b""
    while len(body) < length:
        chunk = connection.recv(length - len(body))
        if not chunk:
            raise ValueError("the client hung up mid-request")
        body += chunk
    request = json.loads(body)
    return request["environ"], request["cwd"], fds


def _run_worker(connection: socket.socket, *, environ: dict, cwd: str, fds: list[int]) -> None:
    """In the forked child: Beam's SDK harness with the client's environment and stdio; sends its exit status."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in zip(worker_client.PASSED_FDS, fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    # The client gone (killed by its runner) means the worker must go too, as a worker process would.
    threading.Thread(target=_exit_when_closed, args=(connection,), daemon=True).start()
    status = 0
    try:
        sdk_worker_main.main([])
    except SystemExit as exit_request:
        status = exit_request.code if isinstance(exit_request.code, int) else int(exit_request.code is not None)
    except BaseException:  # noqa: B036 -- a worker's every failure becomes its exit status, as in a process of its own
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        connection.sendall(worker_client.EXITED + bytes([status & 0xFF]))
    finally:
        os._exit(status)


def _exit_when_closed(connection: socket.socket) -> None:
    while True:
        try:
            if not connection.recv(1):
                break
        except OSError:
            break
    os._exit(1)


class WorkerClientFnApiRunner(fn_runner.FnApiRunner):
    """FnApiRunner (direct_running_mode multi_processing, direct_num_workers workers) whose SDK worker processes
    run `beam_jobs.runners.worker_client`, which tells the launcher of a worker killed by a signal: spawned as
    new Pythons, as FnApiRunner starts them itself."""

    def worker_command(self) -> str:
        return " ".join(shlex.quote(part) for part in worker_client.command())

    def run_pipeline(self, pipeline, options):
        direct = options.view_as(DirectOptions)
        self._default_environment = environments.SubprocessSDKEnvironment.from_command_string(
            self.worker_command())
        # FnApiRunner replaces the default environment in the running modes it knows; in another it keeps it.
        direct.direct_running_mode = "multi_processing_supervised"
        try:
            return super().run_pipeline(pipeline, options)
        finally:
            direct.direct_running_mode = "multi_processing"


class ForkedWorkersFnApiRunner(WorkerClientFnApiRunner):
    """WorkerClientFnApiRunner whose workers are forked by `zygote` (`zygote.worker_command`)."""

    def __init__(self, *, zygote: WorkerZygote, **kwargs):
        super().__init__(**kwargs)
        self._zygote = zygote

    def worker_command(self) -> str:
        return self._zygote.worker_command

    def run_stages(self, stage_context, stages):
        # Here, once the stages are planned and before any worker is asked for, not before: the planning
        # overlaps the zygote's imports.
        self._zygote.wait_until_ready()
        return super().run_stages(stage_context, stages)


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])), preloaded_modules=sys.argv[2:])
    os._exit(0)  # nothing to flush or clean up; an orderly exit of an interpreter holding Beam takes 0.5 s
