"""python -m trainer.batch_predict end to end: toy models over raw trees and a dataset split, on real runners."""
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.io.wavfile
from PIL import Image

from beam_jobs.modalities import audio, image
from beam_jobs.modalities.config import SplitConfig
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.table.manifest import DatasetManifest
from beam_jobs.table.raw_files import list_split_samples
from toy_data import REPO, run_python, shape_png, tone_wav
from trainer.batch_predict import ServingModelHandler
from trainer.predict import Predictor

HANG_GUARD_S = 180


def reason_of(read, data: bytes, config) -> str:
    """What the pipeline's own reader says of a bad file."""
    with pytest.raises(InvalidInputError) as refused:
        read(data, config=config)
    return str(refused.value)


@pytest.fixture(scope="module")
def audio_tree(tmp_path_factory, raw_roots) -> pathlib.Path:
    """The toy tones, and: a truncated wav, an 8 kHz float wav, a wav in the root and one in _unknown_ (the model
    knows neither label), background noise (skipped) and a text file (not audio)."""
    root = tmp_path_factory.mktemp("audio_tree") / "tones"
    shutil.copytree(raw_roots["audio"], root)
    (root / "low" / "cut.wav").write_bytes(tone_wav(frequency=300, seed=1)[:16022])
    slow = io.BytesIO()
    scipy.io.wavfile.write(slow, 8000, (0.5 * np.sin(2 * np.pi * 900 * np.arange(8000) / 8000)).astype(np.float32))
    (root / "mid" / "slow.wav").write_bytes(slow.getvalue())
    (root / "loose.wav").write_bytes(tone_wav(frequency=900, seed=2))
    for folder in ("_unknown_", "_background_noise_"):
        (root / folder).mkdir()
        (root / folder / "other.wav").write_bytes(tone_wav(frequency=2700, seed=3))
    (root / "low" / "readme.txt").write_text("not audio")
    return root


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory, raw_roots) -> pathlib.Path:
    """The toy shapes, and: a text file named .png, a 16-bit PNG (re-encoded for the serving model), a JPEG."""
    root = tmp_path_factory.mktemp("image_tree") / "shapes"
    shutil.copytree(raw_roots["image"], root)
    (root / "disc" / "notes.png").write_text("not an image")
    bar = Image.open(io.BytesIO(shape_png(shape="horizontal", seed=7)))
    deep = io.BytesIO()
    Image.fromarray(np.asarray(bar, dtype=np.uint16) * 257).save(deep, format="PNG")
    (root / "horizontal" / "deep.png").write_bytes(deep.getvalue())
    bar.save(root / "vertical" / "photo.jpg", format="JPEG", quality=95)
    return root


def batch_predict(*args: str) -> None:
    """python -m trainer.batch_predict ARGS, which must succeed."""
    run_python("-m", "trainer.batch_predict", *args, timeout=HANG_GUARD_S)


def output_files(out: pathlib.Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def rows(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("predictions-*.jsonl"))
            for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def audio_predictions(tmp_path_factory, model_dirs, audio_tree) -> pathlib.Path:
    """OUT of the audio tree on the default runner: FnApiRunner's worker processes (2 on 2 cores)."""
    out = tmp_path_factory.mktemp("audio_predictions") / "out"
    batch_predict(f"--model_dir={model_dirs['audio']}", f"--input_root={audio_tree}", f"--output_dir={out}",
                  "--batch_size=16", "--top_k=2")
    return out


@pytest.fixture(scope="module")
def image_predictions(tmp_path_factory, model_dirs, image_tree) -> pathlib.Path:
    out = tmp_path_factory.mktemp("image_predictions") / "out"
    batch_predict(f"--model_dir={model_dirs['image']}", f"--input_root={image_tree}", f"--output_dir={out}")
    return out


def test_every_wav_is_predicted_or_an_error_with_the_pipelines_reason(audio_predictions, audio_tree, model_dirs):
    assert sorted(output_files(audio_predictions)) == ["errors.jsonl", "predictions-00000-of-00001.jsonl",
                                                       "summary.json"]
    config = DatasetManifest.from_json((model_dirs["audio"] / "dataset.json").read_text()).featurizer_config()
    errors = [json.loads(line) for line in (audio_predictions / "errors.jsonl").read_text().splitlines()]
    assert errors == [{"path": "low/cut.wav", "reason": reason_of(
        audio.decode_wav, (audio_tree / "low" / "cut.wav").read_bytes(), config)}]
    predicted = rows(audio_predictions)
    wavs = sorted(path.relative_to(audio_tree).as_posix() for path in audio_tree.rglob("*.wav")
                  if "_background_noise_" not in path.parts)
    assert [row["path"] for row in predicted] == sorted(set(wavs) - {"low/cut.wav"}), "sorted, each file once"
    by_path = {row["path"]: row for row in predicted}
    for path in ("loose.wav", "_unknown_/other.wav"):
        assert "true_label" not in by_path[path], f"{path}: no label of the model's"
    assert by_path["mid/slow.wav"]["true_label"] == "mid"
    for row in predicted:
        assert len(row["top_k"]) == 2 and row["top_k"][0] == {"label": row["label"], "probability": row["probability"]}
        assert row["top_k"][0]["probability"] >= row["top_k"][1]["probability"]
    summary = json.loads((audio_predictions / "summary.json").read_text())
    labelled = [row for row in predicted if "true_label" in row]
    assert (summary["files"], summary["predicted"], summary["errors"], summary["labelled"]) == (
        len(wavs), len(wavs) - 1, 1, len(labelled))
    assert summary["accuracy"] == sum(row["label"] == row["true_label"] for row in labelled) / len(labelled) > 0.8
    assert sorted(summary["per_class"]) == ["high", "low", "mid"]


def test_prism_writes_the_same_bytes_as_fnapirunner(audio_predictions, audio_tree, model_dirs, tmp_path):
    out = tmp_path / "out"
    batch_predict(f"--model_dir={model_dirs['audio']}", f"--input_root={audio_tree}", f"--output_dir={out}",
                  "--batch_size=16", "--top_k=2", "--runner=PrismRunner")
    assert output_files(out) == output_files(audio_predictions)


def test_a_data_dir_split_gets_the_labels_of_that_splits_files(audio_predictions, model_dirs, data_dirs, raw_roots,
                                                               tmp_path):
    out = tmp_path / "out"
    batch_predict(f"--model_dir={model_dirs['audio']}", f"--data_dir={data_dirs['audio']}", "--split=test",
                  f"--output_dir={out}", "--top_k=2")
    manifest = DatasetManifest.from_json((data_dirs["audio"] / "dataset.json").read_text())
    test_files = list_split_samples(raw_roots["audio"], split="test", labels=manifest.labels,
                                    split_config=SplitConfig(**manifest.split_config), extensions=(".wav",))
    from_records = {row["path"]: row for row in rows(out)}
    assert sorted(from_records) == sorted(sample.relative_path for sample in test_files)
    assert (out / "errors.jsonl").read_text() == ""
    from_files = {row["path"]: row for row in rows(audio_predictions)}
    for path, row in from_records.items():
        assert row["true_label"] == path.split("/")[0]
        assert row["label"] == from_files[path]["label"], path
        assert row["probability"] == pytest.approx(from_files[path]["probability"], abs=1e-5), path


def test_images_are_predicted_as_trainer_predict_predicts_them(image_predictions, image_tree, model_dirs):
    config = DatasetManifest.from_json((model_dirs["image"] / "dataset.json").read_text()).featurizer_config()
    errors = [json.loads(line) for line in (image_predictions / "errors.jsonl").read_text().splitlines()]
    assert errors == [{"path": "disc/notes.png", "reason": reason_of(
        image.decode_image, (image_tree / "disc" / "notes.png").read_bytes(), config)}]
    predictor = Predictor.from_model_dir(str(model_dirs["image"]))
    predicted = rows(image_predictions)
    images = sorted(path.relative_to(image_tree).as_posix() for path in image_tree.rglob("*.*"))
    assert [row["path"] for row in predicted] == sorted(set(images) - {"disc/notes.png"})
    for row in predicted:
        top = predictor.predict_bytes((image_tree / row["path"]).read_bytes(), top_k=3)
        assert [item["label"] for item in row["top_k"]] == [item["label"] for item in top], row["path"]
        assert [item["probability"] for item in row["top_k"]] == pytest.approx(
            [item["probability"] for item in top], abs=1e-5), row["path"]


def test_a_killed_run_leaves_the_output_as_it_was_and_the_next_run_replaces_it(image_predictions, image_tree,
                                                                              model_dirs, tmp_path):
    out, pause_file, log = tmp_path / "out", tmp_path / "paused", tmp_path / "killed.log"
    shutil.copytree(image_predictions, out)
    before = output_files(out)
    args = [f"--model_dir={model_dirs['image']}", f"--input_root={image_tree}", f"--output_dir={out}", "--top_k=1"]
    with open(log, "w") as handle:
        killed = subprocess.Popen(
            [sys.executable, "-m", "trainer.batch_predict", *args, "--overwrite"], cwd=REPO, stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "SOUNDSIGHT_PAUSE_AT": "predictions_written", "SOUNDSIGHT_PAUSE_FILE": str(pause_file)})
    deadline = time.monotonic() + HANG_GUARD_S
    while not pause_file.exists():
        assert killed.poll() is None, f"the run ended before its failpoint:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"the run did not reach its failpoint:\n{log.read_text()}"
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()

    assert output_files(out) == before, "a killed run changes nothing a reader sees"
    (leftover,) = tmp_path.glob("out.tmp-*")
    assert (leftover / "out" / "summary.json").exists(), "killed with its whole output written, uncommitted"

    refused = subprocess.run([sys.executable, "-m", "trainer.batch_predict", *args], cwd=REPO, capture_output=True,
                             text=True, timeout=HANG_GUARD_S)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (f"error: {out} already holds the predictions of an earlier run: give --overwrite to "
                              f"replace it, or another --output_dir\n")

    batch_predict(*args, "--overwrite")
    assert not list(tmp_path.glob("out.tmp-*")), "the dead run's leftovers are gone"
    replaced = rows(out)
    assert [(row["path"], row["label"]) for row in replaced] == [(row["path"], row["label"])
                                                                 for row in rows(image_predictions)]
    assert all(len(row["top_k"]) == 1 for row in replaced)
    assert output_files(out)["summary.json"] == before["summary.json"]


def test_an_input_the_serving_model_refuses_is_an_error_and_its_batch_is_predicted(model_dirs):
    handler = ServingModelHandler(model_dir=str(model_dirs["image"]), top_k=2, stored_tensors=False)
    model = handler.load_model()
    good, bad = shape_png(shape="disc", seed=5), b"not an image"
    results = handler.run_inference([good, bad, good], model)
    assert [result.example for result in results] == [good, bad, good]
    assert results[0].inference == results[2].inference == {"top_k": model.predict_bytes(good, top_k=2)}
    assert results[1].inference["error"].startswith("the serving model cannot read it: ")
