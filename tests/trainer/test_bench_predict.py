"""The batch-prediction benchmark still runs: once, on the toy audio model, at two tiny sizes of generated files.

It asserts that the benchmark ran to its end and printed its figures, never what the figures are: speed and
memory are measured in bench/, not tested. trainer.batch_predict's engine runs when that module exists and
is reported "not available" when it does not.
"""
import pytest

from bench import predict as predict_bench

# A benchmark's sampling thread that dies (say, of a changed signature) leaves its figures at zero: fail on it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def test_the_predict_bench_runs_every_engine_at_two_sizes(model_dirs, tmp_path, capsys):
    predict_bench.main([f"--model_dirs={model_dirs['audio']}", "--audio_files=3", "--scale=2", "--repeats=1",
                        f"--corpora={tmp_path / 'none'}", f"--work_dir={tmp_path / 'work'}"])

    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.startswith("audio ")]
    engines = [predict_bench.PIPELINE, "numpy+tensor", "serving", "litert"]
    assert [(row[1], row[2]) for row in rows] == [(files, engine) for files in ("3", "6") for engine in engines], printed
    for target in ("target (1)", "target (2)", "target (3)"):
        assert f"\n{target}: " in printed, printed
    memory_verdicts = printed.split("target (3)")[1]
    for engine in ("numpy+tensor", "serving", "litert int8"):
        assert f"audio  {engine} " in memory_verdicts, printed
