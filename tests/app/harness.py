"""Runs the app's pieces as a user does: `python -m app.serve` and `python -m trainer.predict`."""
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.trainer.toy_data import REPO, run_python

SERVER_START_SECONDS = 60


def predict_with_cli(model_dir: Path, path: Path) -> list[dict]:
    """The top 5 of `python -m trainer.predict --json` for one file: what the app must show."""
    result = run_python("-m", "trainer.predict", "--model_dir", str(model_dir), "--json", str(path))
    return json.loads(result.stdout.strip().splitlines()[-1])["top"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(*, models_dir: Path, data_dir: Path, log_path: Path, extra_args: Sequence[str] = ()):
    """`python -m app.serve` on a free port, with `extra_args` after its own; returns (process, url)
    once it answers HTTP."""
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.serve", "--models_dir", str(models_dir), "--data_dir", str(data_dir),
             "--port", str(port), *extra_args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.serve exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            # A static path: asking for the page itself would start a kernel each time.
            with urllib.request.urlopen(f"{url}voila/static/favicon.ico", timeout=2):
                return process, url
        except urllib.error.HTTPError:
            return process, url  # it answered
        except OSError:
            time.sleep(0.5)
    stop_server(process)
    pytest.fail(f"app.serve did not answer on {url} within {SERVER_START_SECONDS} s:\n{log_path.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
