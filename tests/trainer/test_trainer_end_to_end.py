"""Raw files -> beam_jobs.preprocess -> trainer.train -> evaluate -> predict, on toy tones and shapes."""
import json
import os
import pathlib
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from beam_jobs.modalities.config import ConfigError
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.table.layout import snapshot_path
from toy_data import TOY_CONFIG, kill_training_after, run_python
from trainer import evaluate, predict
from trainer.tensorflow_notes import notes_dropped
from trainer.config import TrainConfig
from trainer.data import load_manifest
from trainer.train import main as train_main
from trainer.train import train


@pytest.mark.parametrize("modality", ["audio", "image"])
def test_training_writes_the_model_dir(model_dirs, data_dirs, modality):
    model_dir = model_dirs[modality]
    for name in ("model.keras", "saved_model/saved_model.pb", "dataset.json", "history.json", "train_config.json"):
        assert (model_dir / name).exists(), f"{name} missing from {model_dir}"
    assert not (model_dir / "backup").exists(), "the backup is removed once training has finished"
    assert list((model_dir / "logs").rglob("events.out.tfevents.*")), "no TensorBoard logs"
    trained_on = json.loads((model_dir / "train_config.json").read_text())["snapshot"]
    assert trained_on == load_manifest(str(data_dirs[modality])).snapshot_id == 1
    assert (model_dir / "dataset.json").read_text() == \
        pathlib.Path(snapshot_path(str(data_dirs[modality]), trained_on)).read_text(), "the snapshot's own manifest"
    history = json.loads((model_dir / "history.json").read_text())
    assert history["epoch"] == list(range(1, len(history["epoch"]) + 1))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds"):
        assert len(history[key]) == len(history["epoch"]), key
    assert history["best_val_accuracy"] == max(history["val_accuracy"])


@pytest.mark.parametrize("modality, dtype, shape", [("audio", tf.float32, [None, 98, 64]),
                                                    ("image", tf.uint8, [None, 28, 28, 1])])
def test_saved_model_serves_the_stored_tensor_like_the_keras_model(model_dirs, modality, dtype, shape):
    saved_model = tf.saved_model.load(str(model_dirs[modality] / "saved_model"))
    (spec,) = saved_model.signatures["serving_default"].structured_input_signature[1].values()
    assert spec.dtype == dtype and spec.shape.as_list() == shape
    batch = np.random.default_rng(0).uniform(0, 200, size=[3] + shape[1:]).astype(dtype.as_numpy_dtype)
    keras_model = keras.saving.load_model(model_dirs[modality] / "model.keras")
    np.testing.assert_allclose(saved_model.serve(batch).numpy(), keras_model.predict_on_batch(batch), atol=1e-5)


@pytest.mark.parametrize("modality", ["audio", "image"])
def test_evaluate_writes_metrics_and_pictures(model_dirs, data_dirs, modality):
    model_dir = model_dirs[modality]
    assert evaluate.main(["--model_dir", str(model_dir), "--data_dir", str(data_dirs[modality])]) == 0
    metrics = json.loads((model_dir / "metrics-test.json").read_text())
    manifest = load_manifest(str(data_dirs[modality]))
    assert metrics["num_examples"] == manifest.splits["test"].num_examples
    assert metrics["labels"] == manifest.labels
    assert (metrics["snapshot"], metrics["training_snapshot"]) == (manifest.snapshot_id, 1)
    assert np.array(metrics["confusion_matrix"]).shape == (3, 3)
    assert np.sum(metrics["confusion_matrix"]) == metrics["num_examples"]
    assert metrics["accuracy"] >= 0.8, f"a separable toy problem, chance is 0.33: {metrics['accuracy']}"
    assert {label: counts["support"] for label, counts in metrics["per_class"].items()} == \
        manifest.splits["test"].label_counts
    assert set(metrics["per_class"][manifest.labels[0]]) == {"precision", "recall", "f1", "support"}
    for picture in ("confusion-test.png", "training_curves.png"):
        with Image.open(model_dir / picture) as image:
            assert image.format == "PNG" and min(image.size) > 300, picture


def test_evaluate_on_another_dataset_with_the_same_labels_tags_its_files(model_dirs, gzip_audio_dir):
    metrics = evaluate.evaluate(model_dir=str(model_dirs["audio"]), data_dir=str(gzip_audio_dir), split="all")
    assert metrics["num_examples"] == sum(split.num_examples for split in load_manifest(str(gzip_audio_dir))
                                          .splits.values())
    assert (model_dirs["audio"] / "metrics-tones-all.json").exists()
    assert (model_dirs["audio"] / "confusion-tones-all.png").exists()


def test_evaluate_refuses_a_different_vocabulary(model_dirs, data_dirs, capsys):
    assert evaluate.main(["--model_dir", str(model_dirs["audio"]), "--data_dir", str(data_dirs["image"])]) == 2
    assert "label vocabulary" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"missing \['high', 'low', 'mid'\]"):
        evaluate.evaluate(model_dir=str(model_dirs["audio"]), data_dir=str(data_dirs["image"]))


def test_predictor_api(model_dirs, raw_roots):
    predictor = predict.Predictor.from_model_dir(str(model_dirs["audio"]))
    assert predictor.labels == ["high", "low", "mid"] and predictor.modality == "audio"
    assert predictor.manifest.tensor_shape == [98, 64]
    data = (raw_roots["audio"] / "low" / "spk000_nohash_0.wav").read_bytes()
    tensor = predictor.featurize(data)
    assert tensor.shape == (98, 64) and tensor.dtype == np.float32
    top = predictor.predict_bytes(data, top_k=2)
    assert [sorted(item) for item in top] == [["label", "probability"]] * 2
    assert top[0]["label"] == "low" and top[0]["probability"] >= top[1]["probability"]
    assert all(isinstance(item["probability"], float) for item in top)
    everything = predictor.predict_bytes(data)
    assert len(everything) == 3 and sum(item["probability"] for item in everything) == pytest.approx(1, abs=1e-5)
    keras_model = keras.saving.load_model(model_dirs["audio"] / "model.keras")
    np.testing.assert_allclose([item["probability"] for item in predictor.predict_bytes(data, top_k=3)],
                               np.sort(keras_model.predict_on_batch(tensor[None])[0])[::-1], atol=1e-5)
    with pytest.raises(InvalidInputError):
        predictor.predict_bytes(b"RIFF not really a wav")


def test_predict_cli_reports_bad_files_and_predicts_the_rest(model_dirs, raw_roots, tmp_path, capsys):
    good = [raw_roots["image"] / shape / "001.png" for shape in ("disc", "horizontal", "vertical")]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    argv = ["--model_dir", str(model_dirs["image"]), "--top_k", "2", str(good[0]), str(bad), str(good[1]),
            str(good[2]), str(tmp_path / "missing.png")]
    assert predict.main(argv) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"{good[0]}: disc ")
    assert f"{bad}: " in err and f"{tmp_path / 'missing.png'}: " in err and "Traceback" not in err
    assert predict.main(["--json", *argv]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["path"] for row in rows] == argv[4:]
    assert [len(row["top"]) for row in rows if "top" in row] == [2, 2, 2]
    assert [row["top"][0]["label"] for row in rows if "top" in row] == ["disc", "horizontal", "vertical"]
    assert {row["path"] for row in rows if "error" in row} == {str(bad), str(tmp_path / "missing.png")}


def test_tensorflows_start_up_notes_are_dropped_and_everything_else_written_to_fd_2_is_kept(capfd):
    # What absl writes on CPUs where TensorFlow turns oneDNN on by default (AMX, AVX512-VNNI).
    notes = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
             b"I0000 00:00:1796410296.139045   26613 port.cc:153] oneDNN custom operations are on. You may see "
             b"slightly different numerical results due to floating-point round-off errors.\n")
    with notes_dropped():
        os.write(2, notes + b"a real error\n" + notes)
    assert capfd.readouterr().err == "a real error\n"


def test_predict_prints_its_answer_and_nothing_of_tensorflows_start_up(model_dirs, raw_roots):
    clip = raw_roots["audio"] / "high" / "spk001_nohash_0.wav"
    completed = run_python("-m", "trainer.predict", "--model_dir", str(model_dirs["audio"]), "--top_k", "1",
                           str(clip))
    [line] = completed.stdout.splitlines()
    assert line.startswith(f"{clip}: ") and line.rsplit(" ", 2)[1] in ("low", "mid", "high"), line
    assert completed.stderr == "", completed.stderr


def test_a_finished_run_is_not_retrained_unless_overwritten(model_dirs, data_dirs, capsys):
    model_dir = model_dirs["image"]
    before = (model_dir / "model.keras").stat().st_mtime_ns
    train(data_dir=str(data_dirs["image"]), model_dir=str(model_dir), config=TOY_CONFIG)
    assert "already trained" in capsys.readouterr().out
    assert (model_dir / "model.keras").stat().st_mtime_ns == before


def test_overwrite_retrains_and_clears_old_outputs(data_dirs, tmp_path):
    model_dir = tmp_path / "model"
    one_epoch = TrainConfig(epochs=1, batch_size=16)
    train(data_dir=str(data_dirs["image"]), model_dir=str(model_dir), config=one_epoch)
    (model_dir / "metrics-test.json").write_text("{}")
    history = train(data_dir=str(data_dirs["image"]), model_dir=str(model_dir),
                    config=TrainConfig(epochs=2, batch_size=16), overwrite=True)
    assert history["epoch"] == [1, 2]
    assert not (model_dir / "metrics-test.json").exists()


def test_an_unfinished_run_resumes_only_with_the_same_settings(data_dirs, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    settings = {"data_dir": str(data_dirs["image"]), "dataset_created": "then", "config": {}}
    (model_dir / "train_config.json").write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match="same flags to resume"):
        train(data_dir=str(data_dirs["image"]), model_dir=str(model_dir), config=TOY_CONFIG)


def test_killed_training_resumes_from_its_last_epoch(data_dirs, tmp_path):
    model_dir = tmp_path / "model"
    args = ["-m", "trainer.train", "--data_dir", str(data_dirs["audio"]), "--model_dir", str(model_dir),
            "--epochs", "10", "--batch_size", "2", "--patience", "10"]
    killed_after = kill_training_after(args, model_dir=model_dir, epochs=2)
    assert 2 <= killed_after < 10 and not (model_dir / "history.json").exists()

    output = run_python(*args).stdout
    assert f"Resuming {model_dir} after epoch {killed_after} " in output
    assert "Epoch 1/10" not in output and f"Epoch {killed_after + 1}/10" in output
    history = json.loads((model_dir / "history.json").read_text())
    assert history["epoch"] == list(range(1, 11)), "every epoch exactly once across both runs"


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "deleted"])
def test_a_broken_shard_is_named_with_the_command_that_checks_the_dataset(data_dirs, tmp_path, capsys, damage):
    data_dir = tmp_path / "audio"
    shutil.copytree(data_dirs["audio"], data_dir)
    shard = data_dir / load_manifest(str(data_dir)).splits["train"].shards[0].path
    data = bytearray(shard.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncated":
        del data[len(data) // 2:]
    if damage == "deleted":  # and no tombstone says that retention deleted it
        shard.unlink()
    else:
        shard.write_bytes(bytes(data))

    status = train_main(["--data_dir", str(data_dir), "--model_dir", str(tmp_path / "model"), "--epochs", "1",
                         "--batch_size", "8"])

    assert status == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"error: reading {data_dir} failed (") and f"{shard}: " in message, message
    assert message.endswith(f"Check the dataset with: python -m beam_jobs.verify {data_dir}"), message


def test_a_model_evaluates_a_dataset_that_grew_a_label_and_leaves_its_examples_out(model_dirs, raw_roots, tmp_path,
                                                                                   capsys):
    tones = tmp_path / "tones"
    shutil.copytree(raw_roots["audio"], tones)
    out = tmp_path / "out"
    for _ in range(2):  # the first ingest has the model's labels; the second adds one
        run_python("-m", "beam_jobs.preprocess", "--audio_root", str(tones), "--output_dir", str(out))
        if not (tones / "whistle").exists():
            shutil.copytree(tones / "high", tones / "whistle")
    manifest = load_manifest(str(out / "audio"))
    assert manifest.labels == ["high", "low", "mid", "whistle"]

    metrics = evaluate.evaluate(model_dir=str(model_dirs["audio"]), data_dir=str(out / "audio"), split="all")

    whistles = sum(split.label_counts["whistle"] for split in manifest.splits.values())
    assert metrics["unknown_labels"] == {"whistle": whistles} and whistles > 0
    assert metrics["num_examples"] == sum(split.num_examples for split in manifest.splits.values()) - whistles
    assert metrics["labels"] == ["high", "low", "mid"]
    assert "the model does not know 1 of the dataset's labels (whistle)" in capsys.readouterr().err
