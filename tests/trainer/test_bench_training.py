"""Every module of bench/ imports and answers --help, and the training benchmarks run: each once, on the toy
datasets of conftest.py, at the fewest epochs and seeds it takes.

They assert that a benchmark ran to its end and printed its figures, never what the figures are: speed and
memory are measured in bench/, not tested. tests/pipeline/test_bench_pipeline.py runs the preprocessing ones.
"""
import importlib
import pathlib
import subprocess
import sys

import pytest

from bench import augmentation as augmentation_bench
from bench import input_pipeline as input_pipeline_bench

REPO = pathlib.Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
# A benchmark's sampling thread that dies (say, of a changed signature) leaves its figures at zero: fail on it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.mark.parametrize("name", sorted(path.stem for path in BENCH.glob("*.py") if path.stem != "__init__"))
def test_every_bench_module_imports_and_answers_help(name, capsys):
    module = importlib.import_module(f"bench.{name}")
    if not hasattr(module, "main"):
        return  # a library of the others (bench.engines)
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_the_input_pipeline_bench_runs(data_dirs, capsys):
    input_pipeline_bench.main([f"--data_dir={data_dirs['image']}", "--rounds=1"])

    printed = capsys.readouterr().out
    assert "input pipeline alone" in printed and "epoch from shards" in printed, printed


def test_the_augmentation_bench_runs(data_dirs, capsys):
    augmentation_bench.main([f"--data_dir={data_dirs['audio']}", "--rounds=1"])

    printed = capsys.readouterr().out
    assert "all on / defaults" in printed and "defaults / none" in printed, printed


@pytest.fixture(scope="module")
def benches_side_by_side(data_dirs, tmp_path_factory) -> dict[str, subprocess.Popen]:
    """bench.train_scale and bench.worker_accuracy, started together, each as `python -m` in its own process.

    Most of their time is TensorFlow starting in the processes they train and evaluate in, one core each:
    side by side on 2 cores they take about the time of the longer one rather than the sum.
    """
    work = tmp_path_factory.mktemp("benches")
    commands = {
        "train_scale": [f"--data_dir={data_dirs['audio']}", "--epochs=2", f"--work_dir={work / 'scale'}"],
        "worker_accuracy": [f"--data_dir={data_dirs['image']}", "--epochs=1", "--seeds=1",
                            f"--work_dir={work / 'accuracy'}"],
    }
    running = {name: subprocess.Popen([sys.executable, "-m", f"bench.{name}", *args], cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name, args in commands.items()}
    yield running
    for process in running.values():
        process.kill()
        process.communicate()


def finished(process: subprocess.Popen) -> str:
    """The process's standard output once it has exited 0."""
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return stdout


def test_the_train_scale_bench_runs(benches_side_by_side):
    printed = finished(benches_side_by_side["train_scale"])

    for figure in ("train, 1 worker", "train, 2 workers", "reader, gzip, 1 thread", "peak memory, 1 epoch, 4x"):
        assert figure in printed, printed


def test_the_worker_accuracy_bench_runs(benches_side_by_side):
    printed = finished(benches_side_by_side["worker_accuracy"])

    assert "1 worker(s): mean" in printed and "2 worker(s): mean" in printed, printed
