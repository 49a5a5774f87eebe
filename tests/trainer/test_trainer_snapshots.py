"""Readers pin a snapshot: training, evaluation and tf.data read the snapshot they resolved at start.

Each test ingests its own small tone tree with the real pipeline (`python -m
beam_jobs.preprocess`, in a subprocess) and re-ingests it after adding and
removing files, so that a new snapshot is committed, and an old one removed by
retention, while or after a reader pinned one.
"""
import dataclasses
import json
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs.inputs.splits import SPLITS
from beam_jobs.table.layout import snapshot_path
from beam_jobs.table.manifest import DatasetManifest, SnapshotRemovedError
from toy_data import TONE_HZ, kill_training_after, run_python, tone_wav, write_tone_corpus
from trainer import evaluate
from trainer.config import TrainConfig
from trainer.data import load_manifest, make_dataset, make_parse, naming_bad_shards, shard_paths
from trainer.train import main as train_main
from trainer.train import train

PER_CLASS = 20
REMOVED = ["high/spk000_nohash_0.wav", "mid/spk001_nohash_0.wav"]


@pytest.fixture
def tones(tmp_path) -> pathlib.Path:
    write_tone_corpus(tmp_path / "tones", per_class=PER_CLASS)
    return tmp_path / "tones"


def ingest(tones: pathlib.Path, out: pathlib.Path, *flags: str) -> DatasetManifest:
    """Runs the pipeline on `tones` into `out`; returns the current snapshot's manifest afterwards."""
    run_python("-m", "beam_jobs.preprocess", "--audio_root", str(tones), "--output_dir", str(out), *flags)
    return load_manifest(str(out / "audio"))


def add_tones(tones: pathlib.Path, *, count: int) -> list[str]:
    """Writes `count` new low tones; returns their paths relative to `tones`."""
    added = [f"low/spk{100 + index:03d}_nohash_0.wav" for index in range(count)]
    for index, relative_path in enumerate(added):
        (tones / relative_path).write_bytes(tone_wav(frequency=TONE_HZ["low"], seed=5000 + index))
    return added


def remove_tones(tones: pathlib.Path) -> list[str]:
    for relative_path in REMOVED:
        (tones / relative_path).unlink()
    return REMOVED


def records_of(manifest: DatasetManifest, data_dir: str) -> list[tuple[int, bytes, str]]:
    """(label, stored tensor bytes, input path) of every record of every split the manifest lists, sorted."""
    records = tf.data.TFRecordDataset(shard_paths(manifest=manifest, data_dir=data_dir, splits=SPLITS))
    parsed = records.batch(64).map(make_parse(["label", "tensor", "path"]))
    return sorted((int(label), tensor, path.decode("utf-8")) for batch in parsed.as_numpy_iterator()
                  for label, tensor, path in zip(batch["label"], batch["tensor"], batch["path"]))


def read_batches(batches) -> list[tuple[int, bytes]]:
    """(label, tensor bytes) of each example of make_dataset's (tensor, one-hot label) batches."""
    return [(int(np.argmax(label)), tensor.tobytes()) for tensors, labels in batches
            for tensor, label in zip(tensors.numpy(), labels.numpy())]


def example_counts(manifest: DatasetManifest) -> str:
    """The split counts as trainer.train prints them."""
    return ", ".join(f"{split} {info.num_examples}" for split, info in manifest.splits.items())


def last_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_a_training_run_resumed_after_a_re_ingest_continues_on_its_snapshot(tones, tmp_path):
    out, model_dir = tmp_path / "out", tmp_path / "model"
    data_dir = str(out / "audio")
    first = ingest(tones, out)
    args = ["-m", "trainer.train", "--data_dir", data_dir, "--model_dir", str(model_dir), "--epochs", "8",
            "--batch_size", "2", "--patience", "8"]
    killed_after = kill_training_after(args, model_dir=model_dir, epochs=1)
    assert 1 <= killed_after < 8 and not (model_dir / "history.json").exists()
    add_tones(tones, count=6)
    second = ingest(tones, out)
    assert (first.snapshot_id, second.snapshot_id) == (1, 2)
    assert example_counts(second) != example_counts(first), "the re-ingest should change what training would read"

    output = run_python(*args).stdout

    assert f"Resuming {model_dir} after epoch {killed_after} " in output
    assert "on snapshot 1, the data it started on." in output
    assert f"network on {data_dir}, snapshot 1: audio, 3 labels, examples {example_counts(first)};" in output
    assert json.loads((model_dir / "train_config.json").read_text())["snapshot"] == 1
    assert (model_dir / "dataset.json").read_text() == pathlib.Path(snapshot_path(data_dir, 1)).read_text()
    assert json.loads((model_dir / "history.json").read_text())["epoch"] == list(range(1, 9))


def test_a_reader_of_a_pinned_snapshot_reads_exactly_its_records_while_a_re_ingest_commits(tones, tmp_path):
    out = tmp_path / "out"
    data_dir = str(out / "audio")
    pinned = ingest(tones, out)
    expected = records_of(pinned, data_dir)
    reading = make_dataset(manifest=pinned, data_dir=data_dir, splits=SPLITS, batch_size=4, training=False)
    batches = iter(reading)
    read = read_batches(next(batches) for _ in range(3))

    removed, added = remove_tones(tones), add_tones(tones, count=3)
    current = ingest(tones, out, "--keep_snapshots", "10")
    with naming_bad_shards(manifest=pinned, data_dir=data_dir, splits=SPLITS):
        read += read_batches(batches)
        read_afresh = read_batches(reading)

    assert current.snapshot_id == 2 and current.changes["new"] == 3 and current.changes["removed"] == 2
    snapshot_records = sorted((label, tensor) for label, tensor, _ in expected)
    assert sorted(read) == snapshot_records, "the read that spanned the commit"
    assert sorted(read_afresh) == snapshot_records, "a read of the pinned snapshot started after the commit"
    paths = {path for _, _, path in expected}
    assert set(removed) <= paths and not set(added) & paths
    assert {path for _, _, path in records_of(current, data_dir)} == paths - set(removed) | set(added)


def test_an_older_snapshot_is_trained_and_evaluated_when_named(tones, tmp_path, capsys):
    out, model_dir = tmp_path / "out", tmp_path / "model"
    data_dir = str(out / "audio")
    first = ingest(tones, out)
    add_tones(tones, count=6)
    second = ingest(tones, out)

    assert train_main(["--data_dir", data_dir, "--model_dir", str(model_dir), "--snapshot", "1", "--epochs", "1",
                       "--batch_size", "8"]) == 0

    assert f"network on {data_dir}, snapshot 1: audio" in capsys.readouterr().out
    assert json.loads((model_dir / "train_config.json").read_text())["snapshot"] == 1
    assert (model_dir / "dataset.json").read_text() == pathlib.Path(snapshot_path(data_dir, 1)).read_text()
    older = evaluate.evaluate(model_dir=str(model_dir), data_dir=data_dir, split="all", snapshot=1)
    current = evaluate.evaluate(model_dir=str(model_dir), data_dir=data_dir, split="all")
    assert (older["snapshot"], older["training_snapshot"], older["num_examples"]) == (
        1, 1, sum(split.num_examples for split in first.splits.values()))
    assert (current["snapshot"], current["training_snapshot"], current["num_examples"]) == (
        2, 1, sum(split.num_examples for split in second.splits.values()))
    assert json.loads((model_dir / "metrics-all.json").read_text())["snapshot"] == 1
    assert json.loads((model_dir / "metrics-snapshot2-all.json").read_text())["snapshot"] == 2
    assert "trained on snapshot 1; evaluated on snapshot 2 of" in capsys.readouterr().out
    # Two runs within one second share their `created` time: the run id still tells them apart.
    same_second = dataclasses.replace(second, created=first.created)
    places = dict(data_dir=data_dir, model_dir=str(model_dir))
    assert evaluate._default_tag(data_manifest=same_second, model_manifest=first, **places) == "snapshot2"
    assert evaluate._default_tag(data_manifest=first, model_manifest=first, **places) == ""


def test_a_snapshot_removed_by_retention_is_named_to_every_reader_that_pinned_it(tones, tmp_path, capsys):
    out = tmp_path / "out"
    data_dir = str(out / "audio")
    pinned = ingest(tones, out)
    pinned_reading = make_dataset(manifest=pinned, data_dir=data_dir, splits=["train"], batch_size=4,
                                  training=False)
    remove_tones(tones)  # so that the span of snapshot 1 is rewritten, and its files deleted with it
    assert ingest(tones, out, "--keep_snapshots", "1").snapshot_id == 2
    removed = f"snapshot 1 of {data_dir} was removed by retention (--keep_snapshots 1, when snapshot 2 was committed"

    with pytest.raises(SnapshotRemovedError, match="^" + re.escape(removed)):
        with naming_bad_shards(manifest=pinned, data_dir=data_dir, splits=["train"]):
            read_batches(pinned_reading)

    model_dir = tmp_path / "model"
    assert train_main(["--data_dir", data_dir, "--model_dir", str(model_dir), "--snapshot", "1"]) == 2
    assert last_error_line(capsys).startswith(f"error: {removed}")
    train(data_dir=data_dir, model_dir=str(model_dir), config=TrainConfig(epochs=1, batch_size=8))
    assert evaluate.main(["--model_dir", str(model_dir), "--data_dir", data_dir, "--snapshot", "1"]) == 2
    assert last_error_line(capsys).startswith(f"error: {removed}")

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "train_config.json").write_text(json.dumps(
        {"data_dir": data_dir, "dataset_created": pinned.created, "snapshot": 1, "config": {}}))
    assert train_main(["--data_dir", data_dir, "--model_dir", str(unfinished)]) == 2
    assert last_error_line(capsys).startswith(f"error: {removed}"), "a resumed run stays on its snapshot"
    assert train_main(["--data_dir", data_dir, "--model_dir", str(unfinished), "--snapshot", "2"]) == 2
    assert last_error_line(capsys) == (
        f"error: {unfinished}/train_config.json holds an unfinished run on snapshot 1, not 2: rerun with "
        f"--snapshot 1 or none to resume it, or pass --overwrite to start over")
