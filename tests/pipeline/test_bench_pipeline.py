"""The preprocessing benchmarks still run: each once, at a tiny size, on generated files.

They assert that a benchmark ran to its end and printed its figures, never what the figures are: speed
and memory are measured in bench/, not tested. tests/trainer/test_bench_training.py does the same for
the training benchmarks, and imports every module of bench/.
"""
import pytest

from bench import preprocess as preprocess_bench
from bench import reingest as reingest_bench
from bench import watch as watch_bench

# A benchmark's sampling thread that dies (say, of a changed signature) leaves its figures at zero: fail on it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def test_the_engines_bench_runs_the_pool_a_runner_and_hf_datasets_at_two_sizes(tmp_path, capsys):
    preprocess_bench.main(["--modalities=audio", "--audio_files=6", "--startup_files=3", "--repeats=1",
                           "--engines=pool 2,beam 2 workers,hf datasets", f"--corpora={tmp_path / 'none'}",
                           f"--work_dir={tmp_path / 'work'}"])

    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.startswith("audio ")]
    assert [(row[1], " ".join(row[2:4])) for row in rows] == [
        ("3", "pool 2"), ("3", "beam 2"), ("3", "hf datasets"),
        ("6", "pool 2"), ("6", "beam 2"), ("6", "hf datasets")], printed
    assert "target (1)" in printed and "target (3)" in printed, printed


def test_the_reingest_bench_runs_its_three_phases(tmp_path, make_tone_tree, capsys):
    tree = make_tone_tree(tmp_path / "tones", per_class=6)

    reingest_bench.main([f"--audio_root={tree}", "--modalities=audio", "--repeats=1",
                         f"--work_dir={tmp_path / 'work'}"])

    printed = capsys.readouterr().out
    assert "audio: 12 files, 1 added for the 5% run" in printed, printed
    for phase in ("full", "no change", "5% new"):
        assert f"\n  {phase:10} " in printed, printed


def test_the_watch_bench_times_a_dropped_file(tmp_path, make_tone_tree, capsys):
    tree = make_tone_tree(tmp_path / "tones", per_class=3)

    watch_bench.main([f"--audio_root={tree}", "--drops=1", "--poll_seconds=0.5", "--commit_seconds=1"])

    printed = capsys.readouterr().out
    assert "batch ingest of 6 files" in printed and "drop 0: in snapshot 2 after" in printed, printed
    assert "latency: median" in printed, printed
