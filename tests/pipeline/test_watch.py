"""Streaming ingestion end to end: `python -m beam_jobs.preprocess --watch` on Prism, as a user runs it.

Each test starts the watch as a process group of its own, drops files into its
roots, waits for the snapshots it must commit, and stops it with a signal.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from beam_jobs import preprocess
from beam_jobs.pipeline.plan import ListedFile
from beam_jobs.pipeline.watch import stable_files, versions_seen
from beam_jobs.table.manifest import DatasetManifest
from dataset_checks import assert_no_debris, assert_verifies, current, records  # noqa: I100

REPO = pathlib.Path(__file__).resolve().parents[2]
POLL = ["--poll_seconds=0.3"]
WAIT_S = 120  # only so that a watch that never commits fails the test instead of stalling the suite


def start_watch(root, out, log: pathlib.Path, *flags) -> subprocess.Popen:
    with open(log, "w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "beam_jobs.preprocess", f"--audio_root={root}", f"--output_dir={out}", "--watch",
             *POLL, *flags], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_snapshot(process: subprocess.Popen, dataset: pathlib.Path, snapshot_id: int,
                      log: pathlib.Path) -> DatasetManifest:
    deadline = time.monotonic() + WAIT_S
    while not (dataset / "dataset.json").exists() or current(dataset).snapshot_id < snapshot_id:
        if process.poll() is not None:
            pytest.fail(f"the watch exited ({process.returncode}) before snapshot {snapshot_id}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no snapshot {snapshot_id} within {WAIT_S} s:\n{log.read_text()}")
        time.sleep(0.1)
    manifest = current(dataset)
    assert manifest.snapshot_id == snapshot_id, f"expected snapshot {snapshot_id} next:\n{log.read_text()}"
    return manifest


def stop(process: subprocess.Popen, signal_number: int, *, group: bool, log: pathlib.Path) -> str:
    if group:
        os.killpg(process.pid, signal_number)  # as Ctrl-C in a terminal does
    else:
        process.send_signal(signal_number)
    try:
        returncode = process.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the watch did not stop on {signal.Signals(signal_number).name}:\n{log.read_text()}")
    output = log.read_text()
    assert returncode == 0, output
    return output


def polls(count: int) -> None:
    time.sleep(count * 0.3)


def error_paths(dataset: pathlib.Path, manifest: DatasetManifest) -> dict[str, str]:
    rows = [json.loads(line) for span in manifest.spans
            for line in (dataset / "spans" / span / "errors.jsonl").read_text().splitlines()]
    return {row["path"]: row["reason"] for row in rows}


def test_a_watch_commits_each_wave_of_files_and_a_reader_of_its_first_snapshot_is_undisturbed(
        tmp_path, write_wav, example_parser):
    root, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "watch.log"
    dataset = out / "audio"
    for index in range(3):
        write_wav(root / "high" / f"h{index}.wav", 2000 + 10 * index)
        write_wav(root / "low" / f"l{index}.wav", 300 + 10 * index)
    # A wave of two files is committed as one snapshot whichever polls first list its files.
    watch = start_watch(root, out, log, "--commit_seconds=3600", "--commit_files=2")
    try:
        first = wait_for_snapshot(watch, dataset, 1, log)
        assert first.labels == ["high", "low"] and first.num_errors == 0
        pinned = iter(records(dataset, first, example_parser))
        read_before = [next(pinned) for _ in range(3)]  # a reader half-way through snapshot 1

        write_wav(root / "low" / "l3.wav", 330)  # wave 1: good files
        write_wav(root / "high" / "h3.wav", 2030)
        second = wait_for_snapshot(watch, dataset, 2, log)
        (root / "low" / "cut.wav").write_bytes(write_wav(tmp_path / "whole.wav", 310).read_bytes()[:300])
        (root / "high" / "text.wav").write_bytes(b"not a wav")  # wave 2: bad files
        third = wait_for_snapshot(watch, dataset, 3, log)
        for index in range(2):  # wave 3: a new class
            write_wav(root / "mid" / f"m{index}.wav", 900 + 10 * index)
        fourth = wait_for_snapshot(watch, dataset, 4, log)
        polls(5)
        assert current(dataset).snapshot_id == 4, "a watch with nothing new committed a snapshot"
        output = stop(watch, signal.SIGTERM, group=False, log=log)
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGKILL)

    def paths(manifest):
        return sorted(row[4] for row in records(dataset, manifest, example_parser))
    assert paths(first) == sorted(f"{label}/{name}{index}.wav" for label, name in (("high", "h"), ("low", "l"))
                                  for index in range(3))
    assert paths(second) == sorted(paths(first) + ["high/h3.wav", "low/l3.wav"])
    assert second.changes == {"new": 2, "changed": 0, "removed": 0, "reused": 6}
    assert paths(third) == paths(second) and sorted(error_paths(dataset, third)) == ["high/text.wav", "low/cut.wav"]
    assert all(reason for reason in error_paths(dataset, third).values())
    assert paths(fourth) == sorted(paths(second) + ["mid/m0.wav", "mid/m1.wav"])
    assert fourth.labels == ["high", "low", "mid"] and fourth.num_errors == 2
    assert fourth.splits["train"].num_examples + fourth.splits["validation"].num_examples + fourth.splits[
        "test"].num_examples == 10
    # The reader of snapshot 1 finishes reading exactly what it started on.
    assert read_before + list(pinned) == records(dataset, first, example_parser)
    assert_verifies(dataset, 1)
    # What the watch committed is what a batch run writes from the same files.
    batch = preprocess.run([f"--audio_root={root}", f"--output_dir={tmp_path / 'batch'}"], save_main_session=False)
    assert [row[:4] for row in records(dataset, fourth, example_parser)] == [
        row[:4] for row in records(tmp_path / "batch" / "audio", batch.manifests["audio"], example_parser)]
    assert "audio: committed snapshot 4" in output and "stopped: committed audio 1, 2, 3, 4" in output
    assert_no_debris(out)


def test_a_file_still_being_written_is_ingested_once_whole(tmp_path, write_wav, example_parser):
    root, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "watch.log"
    dataset = out / "audio"
    write_wav(root / "low" / "l0.wav", 300)
    write_wav(root / "high" / "h0.wav", 2000)
    whole = write_wav(tmp_path / "slow.wav", 500, seconds=2.0).read_bytes()
    watch = start_watch(root, out, log, "--commit_seconds=0", "--poll_seconds=1")
    try:
        wait_for_snapshot(watch, dataset, 1, log)

        def write_slowly():  # a chunk every tenth of a poll, for about 4 polls
            chunk = len(whole) // 40 + 1
            with open(root / "low" / "slow.wav", "wb") as handle:
                for start in range(0, len(whole), chunk):
                    handle.write(whole[start:start + chunk])
                    handle.flush()
                    time.sleep(0.1)
        writer = threading.Thread(target=write_slowly)
        writer.start()
        writer.join()
        second = wait_for_snapshot(watch, dataset, 2, log)
        polls(10)
        stop(watch, signal.SIGTERM, group=False, log=log)
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGKILL)
    assert current(dataset).snapshot_id == 2, "the file was committed more than once"
    assert error_paths(dataset, second) == {}
    assert [row[4] for row in records(dataset, second, example_parser)].count("low/slow.wav") == 1
    assert second.changes == {"new": 1, "changed": 0, "removed": 0, "reused": 2}


def test_ctrl_c_commits_the_stable_files_that_were_waiting_for_the_cadence(tmp_path, write_wav, example_parser):
    root, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "watch.log"
    dataset = out / "audio"
    write_wav(root / "low" / "l0.wav", 300)
    write_wav(root / "high" / "h0.wav", 2000)
    watch = start_watch(root, out, log, "--commit_seconds=3600")
    try:
        wait_for_snapshot(watch, dataset, 1, log)
        write_wav(root / "low" / "l1.wav", 310)
        write_wav(root / "high" / "h1.wav", 2010)
        polls(6)  # stable, but the next commit is an hour away
        assert current(dataset).snapshot_id == 1
        output = stop(watch, signal.SIGINT, group=True, log=log)  # the runner gets it too, and outlives it
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGKILL)
    second = current(dataset)
    assert second.snapshot_id == 2, output
    assert sorted(row[4] for row in records(dataset, second, example_parser)) == [
        "high/h0.wav", "high/h1.wav", "low/l0.wav", "low/l1.wav"]
    assert "SIGINT: committing what is stable" in output
    assert_no_debris(out)


def test_a_file_is_stable_once_its_version_held_for_the_settle_time_and_a_changing_one_keeps_its_committed_one():
    def listed(path, size, mtime):
        return ListedFile(0, path, size, mtime, "train")
    now = [listed("a/new.wav", 10, 1.0), listed("a/growing.wav", 20, 2.0), listed("a/kept.wav", 30, 3.0),
           listed("a/rewritten.wav", 45, 9.0), listed("a/just_seen.wav", 5, 9.5)]
    earlier = {(0, "a/new.wav"): ((10, 1.0, "train"), 100.0), (0, "a/growing.wav"): ((12, 1.5, "train"), 100.0),
               (0, "a/kept.wav"): ((30, 3.0, "train"), 100.0), (0, "a/rewritten.wav"): ((40, 8.0, "train"), 100.0),
               (0, "a/just_seen.wav"): ((5, 9.5, "train"), 100.9)}
    base_index = {(0, "a/kept.wav"): {"size": 30, "mtime": 3.0, "split": "train"},
                  (0, "a/rewritten.wav"): {"size": 35, "mtime": 4.0, "split": "train"}}
    seen = versions_seen(now, seen=earlier, now=101.0)
    assert seen[(0, "a/new.wav")] == ((10, 1.0, "train"), 100.0) and seen[(0, "a/growing.wav")][1] == 101.0
    assert stable_files(now, seen=seen, now=101.0, settle_seconds=0.5, base_index=base_index) == [
        listed("a/new.wav", 10, 1.0), listed("a/kept.wav", 30, 3.0), listed("a/rewritten.wav", 35, 4.0)]
    # Two listings a moment apart, as ticks delivered together, agree on nothing yet.
    first = versions_seen(now, seen={}, now=200.0)
    assert stable_files(now, seen=versions_seen(now, seen=first, now=200.01), now=200.01, settle_seconds=0.5,
                        base_index=None) == []
