"""FnApiRunner's SDK workers forked from the zygote of beam_jobs.runners.forked_workers: real runs, real processes.

The dataset they write is compared with the other runners' in test_preprocess.py.
"""
import json
import os
import subprocess

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.runners.default import runner_for
from beam_jobs.runners.forked_workers import ForkedWorkersFnApiRunner, WorkerZygote

TWO_WORKERS = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def record_process(folder: str):
    """A function that writes, for each element, the command lines of the process that handled it and of its
    parent into `folder`.

    Made here, not defined at module level: the workers cannot import this test module, and cloudpickle
    sends a nested function by value.
    """
    def command_line(pid: int) -> str:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().decode().replace("\0", " ").strip()

    def record(element):
        parent = os.getppid()
        with open(f"{folder}/parent-of-{os.getpid()}", "w") as handle:
            json.dump({"parent": parent, "parent_command": command_line(parent),
                       "command": command_line(os.getpid())}, handle)
        return element

    return record


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_are_forked_by_one_zygote_which_stops_with_the_run(tmp_path):
    options = PipelineOptions(TWO_WORKERS)

    with runner_for(options) as runner:
        assert isinstance(runner, ForkedWorkersFnApiRunner)
        for _ in range(2):  # one runner, two pipelines: the zygote serves both
            pipeline = beam.Pipeline(runner=runner, options=options)
            _ = (pipeline | beam.Create(range(40)) | beam.Reshuffle()
                 | beam.Map(record_process(str(tmp_path))))
            pipeline.run().wait_until_finish()

    workers = {int(path.name.removeprefix("parent-of-")): json.loads(path.read_text())
               for path in tmp_path.glob("parent-of-*")}
    assert workers and os.getpid() not in workers
    [zygote] = {worker["parent"] for worker in workers.values()}
    for worker in workers.values():  # a forked process keeps its parent's command line
        assert worker["parent_command"] == worker["command"]
        assert " -m beam_jobs.runners.forked_workers " in worker["command"]
    assert not any(alive(pid) for pid in [zygote, *workers]), "the zygote and its workers outlived the run"


def test_without_forking_the_workers_are_new_processes_of_the_runner(tmp_path, monkeypatch):
    monkeypatch.setenv("SOUNDSIGHT_FORK_WORKERS", "0")
    options = PipelineOptions(TWO_WORKERS)

    with runner_for(options) as runner:
        assert not isinstance(runner, ForkedWorkersFnApiRunner)
        pipeline = beam.Pipeline(runner=runner, options=options)
        _ = pipeline | beam.Create(range(10)) | beam.Reshuffle() | beam.Map(record_process(str(tmp_path)))
        pipeline.run().wait_until_finish()

    workers = [json.loads(path.read_text()) for path in tmp_path.glob("parent-of-*")]
    assert workers
    for worker in workers:
        assert worker["command"].endswith(" -m apache_beam.runners.worker.sdk_worker_main"), worker


def test_a_worker_that_fails_to_start_exits_non_zero_with_its_traceback():
    with WorkerZygote() as zygote:
        # No CONTROL_API_SERVICE_DESCRIPTOR: Beam's harness cannot start.
        result = subprocess.run(zygote.worker_command, shell=True, capture_output=True, text=True, timeout=120,
                                env={"PATH": os.environ["PATH"]})

    assert result.returncode == 1
    assert "Traceback" in result.stderr and "CONTROL_API_SERVICE_DESCRIPTOR" in result.stderr


def test_a_worker_asked_of_a_stopped_zygote_is_refused_in_one_line():
    with WorkerZygote() as zygote:
        command = zygote.worker_command

    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert result.stderr.startswith("error: no worker zygote listens at ") and result.stderr.count("\n") == 1


def test_a_zygote_that_cannot_import_its_modules_fails_the_run_at_once_not_later(capfd):
    with WorkerZygote(preloaded_modules=("beam_jobs.no_such_module",)) as zygote:
        with pytest.raises(RuntimeError, match=r"the worker zygote \(pid \d+\) exited with status 1 before it "
                                               r"could start any worker; its error is above"):
            zygote.wait_until_ready()

    assert "No module named 'beam_jobs.no_such_module'" in capfd.readouterr().err


def test_the_variable_named_in_the_docs_turns_forking_off(monkeypatch):
    from beam_jobs.runners import forked_workers
    monkeypatch.setenv("SOUNDSIGHT_FORK_WORKERS", "0")
    assert not forked_workers.forked_workers_available()
    monkeypatch.setenv("SOUNDSIGHT_FORK_WORKERS", "1")
    assert forked_workers.forked_workers_available()
