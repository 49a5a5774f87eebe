"""Asks the worker zygote of `beam_jobs.runners.forked_workers` for one SDK worker, and exits with its status.

FnApiRunner runs this as the command of each SDK worker process, with the
worker's settings in its environment. It uses the standard library alone and
runs isolated (`command`), so that it starts in about 20 ms: the worker itself
is forked by the zygote, which has imported Beam already.

    python -I -S beam_jobs/runners/worker_client.py ZYGOTE_SOCKET
"""
import json
import os
import socket
import struct
import sys

PASSED_FDS = (0, 1, 2)  # the worker gets this process's stdin, stdout and stderr


def command(socket_path: str) -> list[str]:
    """The command that runs this client against the zygote listening on `socket_path`."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), socket_path]


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
        status = connection.recv(1)
    if not status:
        print(f"error: the SDK worker forked by the zygote at {socket_path} ended without an exit status "
              f"(killed?)", file=sys.stderr)
        return 1
    return status[0]


if __name__ == "__main__":
    sys.exit(request_worker(sys.argv[1]))
