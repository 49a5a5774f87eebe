"""Snapshots end to end: incremental re-ingests, compaction, concurrent runs, kill -9, retention, verify, TFDS.

Every run is the real pipeline: in this process (`preprocess.run`) or as
`python -m beam_jobs.preprocess` in a process group of its own, which the
crash tests hold at a failpoint (`beam_jobs.table.failpoints`) and kill -9 there.
"""
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from beam_jobs import preprocess, verify
from beam_jobs.table import snapshots
from beam_jobs.table.layout import SPAN_ERRORS_NAME, SPAN_FILES_NAME
from beam_jobs.table.manifest import DatasetManifest, SnapshotRemovedError
from dataset_checks import (assert_no_debris, assert_verifies, current, record_paths, records,  # noqa: I100
                            span_folders)

REPO = pathlib.Path(__file__).resolve().parents[2]
SIZE_FLAGS = ["--shard_size_mb=0.1"]  # about 4 spectrograms a shard: several shards per split
HANG_GUARD_S = 300  # only so that a run that hangs fails the test instead of stalling the suite


# --- inputs -------------------------------------------------------------------------------------------------

def write_class(write_wav, root: pathlib.Path, label: str, names, *, frequency: float) -> None:
    for offset, name in enumerate(names):
        write_wav(root / label / f"{name}.wav", frequency + 7 * offset)


def good_inputs(root: pathlib.Path) -> set[str]:
    """Relative paths of the wavs in class folders that are real tones (not the broken ones)."""
    return {str(path.relative_to(root)) for path in root.rglob("*.wav")
            if path.parent != root and not path.name.startswith("broken")}


# --- runs ---------------------------------------------------------------------------------------------------

def ingest(root, out, *flags, runner=("--runner=FnApiRunner", "--direct_running_mode=in_memory")):
    return preprocess.run([f"--audio_root={root}", f"--output_dir={out}", *SIZE_FLAGS, *runner, *flags],
                          save_main_session=False)


def start_preprocess(root, out, log: pathlib.Path, *flags, env=None) -> subprocess.Popen:
    """`python -m beam_jobs.preprocess` as the leader of a new process group; its output goes to `log`."""
    with open(log, "w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "beam_jobs.preprocess", f"--audio_root={root}", f"--output_dir={out}",
             *SIZE_FLAGS, *flags], cwd=REPO, env={**os.environ, **(env or {})}, stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True)


def run_module(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)


def wait_for_pause(process: subprocess.Popen, pause_file: pathlib.Path, log: pathlib.Path) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not pause_file.exists():
        if process.poll() is not None:
            pytest.fail(f"the run exited ({process.returncode}) without reaching its failpoint:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the run did not reach its failpoint:\n{log.read_text()}")
        time.sleep(0.1)


def kill_group(process: subprocess.Popen) -> None:
    """kill -9 the launcher and its Beam workers together, and wait until every one of them is gone."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"processes of group {process.pid} outlived kill -9")
        time.sleep(0.1)


# --- what a dataset holds -----------------------------------------------------------------------------------

def folder_bytes(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_verify_command_says_ok(dataset: pathlib.Path) -> None:
    completed = run_module("beam_jobs.verify", str(dataset))
    assert completed.returncode == 0 and completed.stdout.startswith("OK: "), completed.stdout + completed.stderr


# --- a dataset grown by three ingests ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Grown:
    root: pathlib.Path
    out: pathlib.Path

    @property
    def dataset(self) -> pathlib.Path:
        return self.out / "audio"


@pytest.fixture(scope="module")
def grown(tmp_path_factory, write_wav) -> Grown:
    """Snapshot 3 of an audio dataset: the first ingest's span kept, and a span rewritten by the third.

    1: high/, low/ and two broken files. 2: a new class mid/ and more low/ files. 3: a file of the second
    ingest rewritten with other (and more) samples, one deleted, new high/ files and a broken one in mid/.
    """
    base = tmp_path_factory.mktemp("grown")
    root, out = base / "in", base / "out"
    write_class(write_wav, root, "high", [f"h{i}" for i in range(5)], frequency=2000)
    write_class(write_wav, root, "low", [f"l{i}" for i in range(5)], frequency=300)
    (root / "low" / "broken_empty.wav").write_bytes(b"")
    write_wav(root / "stray.wav", 440)
    ingest(root, out)
    write_class(write_wav, root, "mid", [f"m{i}" for i in range(4)], frequency=900)
    write_class(write_wav, root, "low", [f"extra{i}" for i in range(3)], frequency=350)
    ingest(root, out)
    write_wav(root / "mid" / "m0.wav", 1100, seconds=0.7)
    (root / "low" / "extra0.wav").unlink()
    write_class(write_wav, root, "high", [f"late{i}" for i in range(3)], frequency=2500)
    (root / "mid" / "broken_text.wav").write_bytes(b"not a wav at all")
    ingest(root, out)
    return Grown(root, out)


def copy_output(grown: Grown, tmp_path: pathlib.Path) -> pathlib.Path:
    out = tmp_path / "out"
    shutil.copytree(grown.out, out)
    return out


# --- 1. no-op re-ingest -------------------------------------------------------------------------------------

def test_a_reingest_of_unchanged_input_commits_nothing_and_says_so_per_modality(tmp_path, write_wav, make_image,
                                                                                capsys):
    root = tmp_path / "in"
    write_class(write_wav, root / "speech", "yes", ["a", "b", "c"], frequency=500)
    write_class(write_wav, root / "speech", "no", ["a", "b", "c"], frequency=1500)
    for label, shade in (("cat", 40), ("dog", 200)):
        for index in range(3):
            (root / "pictures" / label).mkdir(parents=True, exist_ok=True)
            (root / "pictures" / label / f"{index}.png").write_bytes(
                make_image(Image.new("L", (12, 10 + index), shade), "PNG"))
    flags = [f"--audio_root={root / 'speech'}", f"--image_root={root / 'pictures'}", f"--output_dir={tmp_path / 'out'}",
             "--runner=FnApiRunner", "--direct_running_mode=in_memory"]
    preprocess.run(flags, save_main_session=False)
    before = {modality: folder_bytes(tmp_path / "out" / modality) for modality in ("audio", "image")}
    capsys.readouterr()

    summary = preprocess.run(flags, save_main_session=False)

    printed = capsys.readouterr().out.splitlines()
    nothing = [line for line in printed if "nothing to do" in line]
    assert [line.split(":")[0] for line in nothing] == ["audio", "image"], printed
    assert all("committed nothing" in line for line in nothing), nothing
    for modality in ("audio", "image"):
        assert folder_bytes(tmp_path / "out" / modality) == before[modality], modality
        assert summary.manifests[modality].snapshot_id == 1
    assert not any(outcome.committed for outcome in summary.outcomes.values())
    assert_no_debris(tmp_path / "out", modalities=("audio", "image"))


# --- 2. incremental equals full -----------------------------------------------------------------------------

def test_an_incremental_snapshot_holds_the_records_a_full_ingest_writes(grown, tmp_path, example_parser):
    third = current(grown.dataset)
    first = DatasetManifest.from_json((grown.dataset / "snapshots" / "00000001.json").read_text())
    assert third.snapshot_id == 3 and third.parent_snapshot == 2
    assert len(third.spans) == 2 and third.spans[0] == first.spans[0], "the first ingest's span should be kept"
    assert third.changes == {"new": 4, "changed": 1, "removed": 1, "reused": 17}
    assert third.labels == ["high", "low", "mid"]
    incremental = records(grown.dataset, third, example_parser)
    assert {row[4] for row in incremental} == good_inputs(grown.root)
    assert third.num_errors == 3

    out = copy_output(grown, tmp_path)
    full = ingest(grown.root, out, "--full").manifests["audio"]
    assert (full.snapshot_id, len(full.spans), full.labels) == (4, 1, third.labels)
    assert records(out / "audio", full, example_parser) == incremental

    fresh = ingest(grown.root, tmp_path / "fresh", "--audio_labels=high,low,mid").manifests["audio"]
    assert records(tmp_path / "fresh" / "audio", fresh, example_parser) == incremental


# --- 3. compacted equals full -------------------------------------------------------------------------------

def test_a_compacted_span_is_byte_identical_to_a_full_ingests_span(grown, tmp_path, example_parser):
    out = copy_output(grown, tmp_path)
    dataset = out / "audio"
    compacted = ingest(grown.root, out, "--compact").manifests["audio"]
    assert (compacted.snapshot_id, len(compacted.spans)) == (4, 1)
    assert compacted.changes == {"new": 0, "changed": 0, "removed": 0, "reused": 22}
    assert records(dataset, compacted, example_parser) == records(dataset, current(grown.dataset), example_parser)

    full = ingest(grown.root, out, "--full").manifests["audio"]

    assert (full.snapshot_id, len(full.spans), full.labels) == (5, 1, compacted.labels)
    compacted_span, full_span = dataset / "spans" / compacted.spans[0], dataset / "spans" / full.spans[0]
    shard_names = sorted(path.name for path in compacted_span.glob("soundsight_audio-*"))
    assert len(shard_names) > 3
    assert sorted(path.name for path in full_span.glob("soundsight_audio-*")) == shard_names
    for name in shard_names + [SPAN_FILES_NAME, SPAN_ERRORS_NAME]:
        assert (compacted_span / name).read_bytes() == (full_span / name).read_bytes(), name
    assert len((full_span / SPAN_ERRORS_NAME).read_text().splitlines()) == 3


# --- 4. two concurrent runs on one base ---------------------------------------------------------------------

def test_two_concurrent_runs_on_one_base_commit_one_after_the_other_or_one_loses_cleanly(tmp_path, write_wav,
                                                                                        example_parser):
    root, out = tmp_path / "in", tmp_path / "out"
    write_class(write_wav, root, "high", [f"h{i}" for i in range(3)], frequency=2000)
    write_class(write_wav, root, "low", [f"l{i}" for i in range(3)], frequency=300)
    ingest(root, out)
    write_class(write_wav, root, "mid", [f"m{i}" for i in range(40)], frequency=700)
    (root / "mid" / "broken_empty.wav").write_bytes(b"")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]

    runs = [start_preprocess(root, out, log) for log in logs]  # the default runner: worker processes
    codes = [run.wait(timeout=HANG_GUARD_S) for run in runs]

    dataset = out / "audio"
    committed, _ = snapshots.snapshot_ids(str(dataset))
    outputs = [log.read_text() for log in logs]
    if committed == [1, 2]:
        assert sorted(codes) == [0, 1], outputs
        winner = DatasetManifest.from_json((dataset / "snapshots" / "00000002.json").read_text())
        loser_output = outputs[codes.index(1)]
        conflict = [line for line in loser_output.splitlines() if "another run" in line]
        assert len(conflict) == 1, loser_output
        assert f"another run ({winner.run_id}) committed snapshot 2 on the same base, snapshot 1" in conflict[0]
    else:
        assert committed == [1, 2, 3] and codes == [0, 0], outputs
        assert current(dataset).parent_snapshot == 2
    manifest = current(dataset)
    assert manifest.snapshot_id == committed[-1]
    assert_verify_command_says_ok(dataset)
    assert record_paths(dataset, manifest, example_parser) == good_inputs(root)
    assert_no_debris(out)
    assert [json.loads(line)["path"] for line in (out / "errors.jsonl").read_text().splitlines()] == [
        str(root / "mid" / "broken_empty.wav")], "OUT/errors.jsonl should hold the current snapshot's errors"


# --- 5. kill -9 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["featurizing", "span_written", "committed", "pointer_moved"])
def test_a_run_killed_at_any_point_leaves_a_readable_snapshot_and_the_next_run_cleans_up(
        point, tmp_path, write_wav, runner_flags, example_parser):
    root, out = tmp_path / "in", tmp_path / "out"
    dataset = out / "audio"
    write_class(write_wav, root, "high", [f"h{i}" for i in range(4)], frequency=2000)
    write_class(write_wav, root, "low", [f"l{i}" for i in range(4)], frequency=300)
    ingest(root, out)
    first_files = good_inputs(root)
    write_class(write_wav, root, "mid", [f"m{i}" for i in range(12)], frequency=900)
    pause_file, log = tmp_path / "paused", tmp_path / "killed.log"
    # The worker failpoint needs worker processes; the launcher's points run on either runner.
    runner = runner_flags["multi_processing"] if point == "featurizing" else runner_flags["in_memory"]

    killed = start_preprocess(root, out, log, *runner, env={"SOUNDSIGHT_PAUSE_AT": point,
                                                            "SOUNDSIGHT_PAUSE_FILE": str(pause_file)})
    wait_for_pause(killed, pause_file, log)
    kill_group(killed)

    leases = list((out / ".runs").iterdir())
    assert len(leases) == 1, "the killed run's lease should be left behind"
    killed_run = leases[0].stem
    committed, _ = snapshots.snapshot_ids(str(dataset))
    reader_sees = current(dataset)
    if point in ("featurizing", "span_written"):
        assert committed == [1] and (out / f".tmp-{killed_run}").exists()
        assert (killed_run in span_folders(dataset)) == (point == "span_written")
    else:
        assert committed == [1, 2]
        assert killed_run in DatasetManifest.from_json((dataset / "snapshots" / "00000002.json").read_text()).spans
    expected_current = 2 if point == "pointer_moved" else 1
    assert reader_sees.snapshot_id == expected_current
    assert snapshots.load(str(dataset)).snapshot_id == expected_current
    assert_verify_command_says_ok(dataset)
    assert record_paths(dataset, reader_sees, example_parser) == (
        good_inputs(root) if point == "pointer_moved" else first_files)

    write_class(write_wav, root, "low", ["after0", "after1"], frequency=450)
    after = ingest(root, out).manifests["audio"]

    base = 1 if point in ("featurizing", "span_written") else 2
    assert (after.snapshot_id, after.parent_snapshot) == (base + 1, base)
    assert current(dataset).snapshot_id == base + 1
    if base == 2:
        assert killed_run in after.spans, "the killed run's committed span should be built on, not redone"
    assert_verifies(dataset)
    assert record_paths(dataset, after, example_parser) == good_inputs(root)
    assert_no_debris(out)


# --- 6. retention and rollback ------------------------------------------------------------------------------

def test_retention_removes_old_snapshots_and_their_unshared_spans_and_rollback_restores_one(tmp_path, write_wav,
                                                                                            example_parser):
    root, out = tmp_path / "in", tmp_path / "out"
    dataset = out / "audio"
    keep = "--keep_snapshots=2"
    write_class(write_wav, root, "high", ["h0", "h1", "h2"], frequency=2000)
    write_class(write_wav, root, "low", ["l0", "l1", "l2"], frequency=300)
    span_a = ingest(root, out, keep).manifests["audio"].spans[0]
    write_class(write_wav, root, "high", ["n1", "n2"], frequency=2200)
    second = ingest(root, out, keep).manifests["audio"]
    span_b = second.spans[1]
    write_wav(root / "high" / "n1.wav", 2600, seconds=0.8)  # rewrites span b into span c
    write_wav(root / "low" / "n3.wav", 350)
    third = ingest(root, out, keep).manifests["audio"]
    assert third.spans[0] == span_a and span_b not in third.spans
    third_records = records(dataset, third, example_parser)
    fourth = ingest(root, out, keep, "--compact").manifests["audio"]

    assert fourth.snapshot_id == 4
    assert sorted(path.name for path in (dataset / "snapshots").glob("*.removed")) == [
        "00000001.removed", "00000002.removed"]
    assert span_folders(dataset) == {*third.spans, *fourth.spans}, "span b, listed by removed snapshots only"
    assert span_b not in span_folders(dataset)
    assert_verifies(dataset)
    assert_verifies(dataset, 3)
    assert_no_debris(out)

    with pytest.raises(SnapshotRemovedError) as removed:
        snapshots.load(str(dataset), 1)
    assert "removed by retention" in str(removed.value) and f"snapshot 1 of {dataset}" in str(removed.value)
    refused = run_module("beam_jobs.verify", str(dataset), "--snapshot", "1")
    assert refused.returncode != 0 and str(removed.value) in refused.stderr, refused.stderr

    listing = run_module("beam_jobs.snapshots", str(dataset))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert [int(line[1:].split()[0]) for line in lines] == [1, 2, 3, 4]
    assert [line[0] for line in lines] == [" ", " ", " ", "*"]
    assert ["removed by retention" in line for line in lines] == [True, True, False, False]
    assert "2 spans" in lines[2] and "1 spans" in lines[3]

    rolled_back = run_module("beam_jobs.snapshots", str(dataset), "--rollback", "3")

    assert rolled_back.returncode == 0, rolled_back.stderr
    assert rolled_back.stdout.strip() == "committed snapshot 5: the records of snapshot 3"
    fifth = current(dataset)
    assert (fifth.snapshot_id, fifth.parent_snapshot, fifth.spans) == (5, 4, third.spans)
    assert records(dataset, fifth, example_parser) == third_records
    assert_verifies(dataset)
    refused = run_module("beam_jobs.snapshots", str(dataset), "--rollback", "1")
    assert refused.returncode == 1 and "removed by retention" in refused.stderr, refused.stderr
    assert snapshots.snapshot_ids(str(dataset))[0] == [1, 2, 3, 4, 5]


def test_a_rollback_past_a_new_class_keeps_its_index_so_no_index_names_two_labels(tmp_path, write_wav):
    root, out = tmp_path / "in", tmp_path / "out"
    dataset = out / "audio"
    write_class(write_wav, root, "high", ["h0", "h1"], frequency=2000)
    write_class(write_wav, root, "low", ["l0", "l1"], frequency=300)
    ingest(root, out)
    write_class(write_wav, root, "mid", ["m0", "m1"], frequency=900)
    assert ingest(root, out).manifests["audio"].labels == ["high", "low", "mid"]

    assert run_module("beam_jobs.snapshots", str(dataset), "--rollback", "1").returncode == 0

    rolled_back = current(dataset)
    assert (rolled_back.snapshot_id, rolled_back.labels) == (3, ["high", "low", "mid"])
    assert sum(split.label_counts["mid"] for split in rolled_back.splits.values()) == 0
    shutil.rmtree(root / "mid")
    write_class(write_wav, root, "zed", ["z0", "z1"], frequency=1500)
    assert ingest(root, out).manifests["audio"].labels == ["high", "low", "mid", "zed"]


# --- 7. verify --snapshot -----------------------------------------------------------------------------------

def test_every_snapshot_of_an_intact_dataset_verifies(grown, capsys):
    for snapshot_id in (1, 2, 3):
        assert verify.main([str(grown.dataset), "--snapshot", str(snapshot_id)]) == 0
        output = capsys.readouterr().out
        assert output.startswith("OK: ") and f"snapshot {snapshot_id} of" in output, output


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_verify_of_an_older_snapshot_names_its_damaged_shard(grown, tmp_path, capsys, damage):
    dataset = copy_output(grown, tmp_path) / "audio"
    second = DatasetManifest.from_json((dataset / "snapshots" / "00000002.json").read_text())
    rewritten_span = second.spans[1]
    assert rewritten_span not in current(dataset).spans
    shard = dataset / next(shard.path for split in second.splits.values() for shard in split.shards
                           if shard.path.startswith(f"spans/{rewritten_span}/"))
    data = bytearray(shard.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) * 2 // 3:]
    shard.write_bytes(bytes(data))

    assert verify.main([str(dataset), "--snapshot", "2"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{shard}: "), lines
    assert ("SHA-256 differs" if damage == "flipped byte" else "bytes, the manifest says") in lines[0]
    assert lines[1].startswith("BAD: 1 of ") and "snapshot 2 of" in lines[1]
    for others in ([], ["--snapshot", "3"], ["--snapshot", "1"]):
        assert verify.main([str(dataset), *others]) == 0, others
    capsys.readouterr()


# --- 8. TFDS ------------------------------------------------------------------------------------------------

def test_tfds_reads_a_snapshot_of_two_spans_as_one_dataset(grown, example_parser):
    import tensorflow_datasets as tfds

    manifest = current(grown.dataset)
    assert len(manifest.spans) == 2 and manifest.compression is None
    # TFDS takes the features, and so the label names, from the first folder; labels only grow, so the
    # newest span's are the snapshot's.
    builder = tfds.builder_from_directories([str(grown.dataset / "spans" / span) for span in reversed(manifest.spans)])

    assert builder.info.features["label"].names == manifest.labels
    assert builder.info.features["tensor"].shape == tuple(manifest.tensor_shape)
    ours = records(grown.dataset, manifest, example_parser)
    for split, info in manifest.splits.items():
        if not info.num_examples:
            continue
        by_tfds = sorted((int(example["label"]), example["tensor"].tobytes())
                         for example in tfds.as_numpy(builder.as_dataset(split=split)))
        expected = sorted((label, example_parser(serialized)["tensor"])
                          for _, serialized, label, row_split, _ in ours if row_split == split)
        assert len(by_tfds) == info.num_examples and by_tfds == expected, split
