"""The command of each of FnApiRunner's SDK worker processes: runs one worker and exits with its status.

    python -I -S beam_jobs/runners/worker_client.py --zygote ZYGOTE_SOCKET   # forked by the worker zygote
    python -I -S beam_jobs/runners/worker_client.py --spawn                  # a new Python, as Beam starts one

FnApiRunner runs it with the worker's settings in its environment. With
--zygote it asks the zygote of `beam_jobs.runners.forked_workers` to fork the
worker; with --spawn it starts `python -m apache_beam.runners.worker.sdk_worker_main`
itself. Either way it learns how the worker ended, and when a signal ended it
(SIGKILL from the out-of-memory killer) it writes that, as a JSON line, into
the folder $SOUNDSIGHT_WORKER_FAULTS names: the launcher's
`beam_jobs.runners.supervision.Supervisor` reads it and stops the run with one
line, rather than leaving FnApiRunner to fail in tracebacks or to wait. It uses
the standard library alone and runs isolated (`command`), so that it starts in
about 20 ms.
"""
import json
import os
import socket
import struct
import subprocess
import sys

PASSED_FDS = (0, 1, 2)  # the worker gets this process's stdin, stdout and stderr
FAULTS_VARIABLE = "SOUNDSIGHT_WORKER_FAULTS"  # set by beam_jobs.runners.supervision.Supervisor
# What the zygote sends back: b"E" and the worker's exit status (sent by the worker itself), or b"S", the
# signal that ended it and its process id (sent by the zygote, which waited for it).
EXITED, SIGNALLED = b"E", b"S"
SIGNAL_MESSAGE = struct.Struct("!BI")


def command(socket_path: str | None = None) -> list[str]:
    """The command that runs this client: against the zygote listening on `socket_path`, or spawning."""
    how = ["--zygote", socket_path] if socket_path else ["--spawn"]
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), *how]


def report_killed(pid: int, signal_number: int) -> int:
    """Tells the launcher that worker `pid` was killed by `signal_number`; the exit status a shell would give."""
    folder = os.environ.get(FAULTS_VARIABLE)
    if folder:
        temp = os.path.join(folder, f".{os.getpid()}")
        with open(temp, "w") as handle:
            json.dump({"what": "SDK worker", "pid": pid, "signal": signal_number}, handle)
        os.rename(temp, os.path.join(folder, f"{os.getpid()}.json"))  # whole or not at all
    return 128 + signal_number


def request_worker(socket_path: str) -> int:
    """Has the zygote fork a worker with this process's environment, working folder and stdio; its exit status."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(socket_path)
        except OSError as error:
            print(f"error: no worker zygote listens at {socket_path} ({error.strerror}); its run has ended",
                  file=sys.stderr)
            return 1
        body = json.dumps({"environ": dict(os.environ), "cwd": os.getcwd()}).encode("utf-8")
        socket.send_fds(connection, [struct.pack("!I", len(body))], list(PASSED_FDS))
        connection.sendall(body)
        kind = connection.recv(1)
        rest = b""
        want = 1 if kind == EXITED else SIGNAL_MESSAGE.size if kind == SIGNALLED else 0
        while len(rest) < want:
            chunk = connection.recv(want - len(rest))
            if not chunk:
                break
            rest += chunk
    if kind == EXITED and len(rest) == 1:
        return rest[0]
    if kind == SIGNALLED and len(rest) == SIGNAL_MESSAGE.size:
        signal_number, pid = SIGNAL_MESSAGE.unpack(rest)
        return report_killed(pid, signal_number)
    print(f"error: the SDK worker forked by the zygote at {socket_path} ended without an exit status "
          f"(the zygote was killed?)", file=sys.stderr)
    return 1


def spawn_worker() -> int:
    """Runs Beam's SDK worker as a new Python with this environment; its exit status."""
    worker = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"])
    status = worker.wait()
    return report_killed(worker.pid, -status) if status < 0 else status


if __name__ == "__main__":
    if sys.argv[1:2] == ["--spawn"]:
        sys.exit(spawn_worker())
    sys.exit(request_worker(sys.argv[2]))
