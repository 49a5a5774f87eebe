"""Starts the soundsight app: Voila serving app/soundsight.ipynb.

    python -m app.serve --models_dir models --data_dir data [--port 8866]

It first prints what is missing (models, raw test files) with the command that
makes each, as the page itself does, then runs Voila in this process. The
paths reach the notebook's kernel through environment variables
(`app.artifacts.AppPaths.to_environment`). Only the kernel imports TensorFlow.
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
from beam_jobs.manifest import DatasetManifest
from beam_jobs.modalities import MODALITIES
from trainer.model_dir import ModelDir

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = Path(__file__).resolve().parent / "soundsight.ipynb"
# Tornado drops the websocket, and with it the page's kernel, on a bigger message than this; it is
# well above the featurizers' own 64 MiB limit so that a too-large upload gets their message instead.
MAX_WEBSOCKET_MESSAGE_BYTES = 256 * 1024 * 1024


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


def voila_config(*, port: int) -> Config:
    config = Config()
    config.Voila.port = port
    config.Voila.ip = "127.0.0.1"
    config.Voila.open_browser = False
    # A taken port is an error, not a silent move to another one the caller does not know.
    config.Voila.port_retries = 0
    config.Voila.tornado_settings = {"websocket_max_message_size": MAX_WEBSOCKET_MESSAGE_BYTES}
    config.VoilaConfiguration.show_tracebacks = True
    return config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--models_dir", type=Path, default=Path("models"), help="holds a model folder per modality")
    parser.add_argument("--data_dir", type=Path, default=Path("data"), help="holds raw/ and tfrecords/")
    parser.add_argument("--port", type=int, default=8866)
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
        Voila.launch_instance(argv=[str(NOTEBOOK)], config=voila_config(port=args.port))


if __name__ == "__main__":
    main()
