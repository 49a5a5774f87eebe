"""Starts the soundsight app: Voila serving app/soundsight.ipynb.

    python -m app.serve --models_dir models --data_dir data [--port 8866] [--max_kernels 4]

It first prints what is missing (models, raw test files) with the command that
makes each, as the page itself does, then runs Voila in this process. The
paths reach the notebook's kernel through environment variables
(`app.artifacts.AppPaths.to_environment`). Only the kernel imports TensorFlow.

Each page load starts a kernel of about 580 MB, so two limits keep a few
reloads from exhausting memory:
- a kernel whose page is gone (no websocket connected) and that has been idle
  for `--cull_idle_seconds` is shut down, checked every `--cull_interval_seconds`
  (jupyter_server's culler; a page that is open keeps its kernel however idle);
- at most `--max_kernels` kernels run at once: past that, a page load gets an
  HTTP 503 page saying the app is busy (`app.kernel_manager`), and no kernel
  is shut down to make room, so an open page never loses its kernel.
Leaving or reloading a page whose scripts have loaded shuts its kernel down at
once (Voila's `beforeunload` beacon, which needs `set_xsrf_cookie`); the
culler catches the rest: pages left mid-render, browsers killed.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from traitlets.config import Config
from voila.app import Voila

from app.artifacts import AppPaths, find_missing_model, find_missing_test_files
from app.kernel_manager import DEFAULT_MAX_KERNELS, CappedKernelManager
from beam_jobs.modalities import MODALITIES
from beam_jobs.table.manifest import DatasetManifest
from trainer.model_dir import ModelDir

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = Path(__file__).resolve().parent / "soundsight.ipynb"
# Tornado drops the websocket, and with it the page's kernel, on a bigger message than this; it is
# well above the featurizers' own 64 MiB limit so that a too-large upload gets their message instead.
MAX_WEBSOCKET_MESSAGE_BYTES = 256 * 1024 * 1024
# Long enough for a page between the end of its render and the connection of its websocket (a time
# its kernel has no page), short enough that an abandoned kernel's memory comes back within minutes.
DEFAULT_CULL_IDLE_SECONDS = 180
DEFAULT_CULL_INTERVAL_SECONDS = 30


def report_missing(paths: AppPaths) -> list[str]:
    """Lines that say what each tab lacks and the command that makes it; empty when nothing is missing."""
    lines = []
    for modality in MODALITIES:
        missing = find_missing_model(paths, modality=modality)
        if not missing:
            manifest_text = Path(ModelDir(str(paths.model_dir(modality))).manifest).read_text()
            missing = find_missing_test_files(DatasetManifest.from_json(manifest_text))
        for item in missing:
            lines += [f"[{modality}] missing {item.what}: {item.path}", f"    make it with: {item.command}"]
    return lines


def write_kernel_spec(jupyter_dir: Path) -> None:
    """Writes `jupyter_dir`/kernels/python3: this Python's kernel, with native stderr left in the terminal.

    TensorFlow's C++ start-up notes are written straight to file descriptor 2;
    captured there, as ipykernel does by default, Voila would show them on the page.
    """
    spec_dir = jupyter_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "--IPKernelApp.capture_fd_output=False",
                     "-f", "{connection_file}"],
            "display_name": "Python 3 (soundsight)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))


def set_xsrf_cookie(handler, notebook, cwd) -> None:
    """Voila's prelaunch hook: sets the page's `_xsrf` cookie; returns None, so the notebook is unchanged.

    On `beforeunload` the page posts its kernel's shutdown with the `_xsrf` it reads from
    document.cookie, and Voila never sets that cookie, so the post is refused (403) and the kernel
    is left running (https://github.com/voila-dashboards/voila/issues/1458). Tornado sets the
    cookie when a handler's `xsrf_token` is first read.
    """
    handler.xsrf_token


def voila_config(*, port: int, cull_idle_seconds: int, cull_interval_seconds: int, max_kernels: int) -> Config:
    """Voila's configuration: where it listens, and how many kernels it keeps and for how long."""
    config = Config()
    config.Voila.port = port
    config.Voila.ip = "127.0.0.1"
    config.Voila.open_browser = False
    # A taken port is an error, not a silent move to another one the caller does not know.
    config.Voila.port_retries = 0
    config.Voila.tornado_settings = {"websocket_max_message_size": MAX_WEBSOCKET_MESSAGE_BYTES}
    config.VoilaConfiguration.show_tracebacks = True
    config.VoilaConfiguration.prelaunch_hook = set_xsrf_cookie
    # Voila wraps this class (voila_kernel_manager_factory) and builds it with the Voila app as its
    # parent, so the sections of its base classes below apply to it.
    config.VoilaConfiguration.multi_kernel_manager_class = CappedKernelManager
    config.CappedKernelManager.max_kernels = max_kernels
    config.MappingKernelManager.cull_idle_timeout = cull_idle_seconds
    config.MappingKernelManager.cull_interval = cull_interval_seconds
    # An open page keeps its kernel however long it sits idle, and a kernel running a cell (a render,
    # a prediction) is left to finish: jupyter_server's defaults, stated because the app relies on them.
    config.MappingKernelManager.cull_connected = False
    config.MappingKernelManager.cull_busy = False
    return config


def positive_int(text: str) -> int:
    """`text` as an int of at least 1; argparse names the flag and the value otherwise."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--models_dir", type=Path, default=Path("models"), help="holds a model folder per modality")
    parser.add_argument("--data_dir", type=Path, default=Path("data"), help="holds raw/ and tfrecords/")
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument("--cull_idle_seconds", type=positive_int, default=DEFAULT_CULL_IDLE_SECONDS,
                        help="shut down a kernel whose page is gone after this long idle")
    parser.add_argument("--cull_interval_seconds", type=positive_int, default=DEFAULT_CULL_INTERVAL_SECONDS,
                        help="how often to look for such kernels")
    parser.add_argument("--max_kernels", type=positive_int, default=DEFAULT_MAX_KERNELS,
                        help="kernels (open pages) at once; past it a page load gets HTTP 503")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths = AppPaths(models_dir=args.models_dir.resolve(), data_dir=args.data_dir.resolve())
    for line in report_missing(paths):
        print(line, flush=True)
    print(f"soundsight: serving on http://127.0.0.1:{args.port}/", flush=True)
    # The kernel inherits this environment. It runs in app/, so the repository must be on its path
    # to import app, beam_jobs and trainer.
    os.environ.update(paths.to_environment())
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="soundsight-jupyter-") as jupyter_dir:
        write_kernel_spec(Path(jupyter_dir))
        # Searched before the installed kernel specs, so the notebook's "python3" kernel is this one.
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [jupyter_dir, os.environ.get("JUPYTER_PATH")]))
        Voila.launch_instance(argv=[str(NOTEBOOK)], config=voila_config(
            port=args.port, cull_idle_seconds=args.cull_idle_seconds,
            cull_interval_seconds=args.cull_interval_seconds, max_kernels=args.max_kernels))


if __name__ == "__main__":
    main()
