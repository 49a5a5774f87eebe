"""The serving model on raw input (`serving/`) and the LiteRT models (`litert/`) that `trainer.export` writes.

Parity with the pipeline's NumPy featurizer, every WAV encoding through the waveform signatures, the bytes
signature's errors, a fresh process that cannot import our packages, and the real LiteRT interpreter.
"""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.io.wavfile
import tensorflow as tf
from PIL import Image

from beam_jobs.modalities.errors import InvalidInputError
from trainer import export as export_lib
from trainer import featurize_graph
from trainer.model_dir import ModelDir
from trainer.predict import Predictor, raw_input

SIGNATURE_OUTPUTS = {"probabilities", "label", "label_id"}


@pytest.fixture(scope="module")
def predictors(model_dirs) -> dict[str, Predictor]:
    return {modality: Predictor.from_model_dir(str(path)) for modality, path in model_dirs.items()}


def _files(root, pattern: str) -> list:
    return sorted(root.glob(pattern))


def test_training_writes_the_serving_model_and_both_litert_models(model_dirs):
    for path in model_dirs.values():
        layout = ModelDir(path)
        assert (path / "serving" / "saved_model.pb").is_file()
        float_size = (path / "litert" / "model_float32.tflite").stat().st_size
        int8_size = (path / "litert" / "model_int8.tflite").stat().st_size
        assert int8_size < 0.5 * float_size
        labels = json.loads((path / "dataset.json").read_text())["labels"]
        assert (path / "litert" / "labels.txt").read_text().splitlines() == labels
        assert not list(path.glob("*.partial")), layout


def test_in_graph_log_mel_matches_the_stored_tensor(predictors, raw_roots):
    manifest = predictors["audio"].manifest
    config = manifest.featurizer_config()
    datas = [path.read_bytes() for path in _files(raw_roots["audio"], "*/*.wav")]
    stored = np.stack([manifest.featurize(data) for data in datas])
    in_graph = featurize_graph.wav_bytes_to_features(tf.constant(datas), config=config).numpy()
    assert np.abs(in_graph - stored).max() <= 1e-5
    # LiteRT's float32 featurizer: the target the serving model meets with room to spare.
    single = featurize_graph.waveform_to_features(
        tf.constant(np.stack([raw_input(manifest, data) for data in datas[:8]])), config=config, precision="float32")
    assert np.abs(single.numpy() - stored[:8]).max() <= 1e-3


def test_serving_predicts_what_the_tensor_model_predicts(predictors, raw_roots):
    predictor = predictors["audio"]
    datas = [path.read_bytes() for path in _files(raw_roots["audio"], "*/*.wav")]
    from_tensors = predictor.predict_tensors(np.stack([predictor.featurize(data) for data in datas]))
    outputs = predictor._serving.signatures["serving_default"](bytes=tf.constant(datas))
    assert set(outputs) == SIGNATURE_OUTPUTS
    np.testing.assert_allclose(outputs["probabilities"].numpy(), from_tensors, atol=1e-5)
    np.testing.assert_array_equal(outputs["label_id"].numpy(), from_tensors.argmax(axis=1))
    assert [label.decode() for label in outputs["label"].numpy()] == [
        predictor.labels[i] for i in from_tensors.argmax(axis=1)]


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    scipy.io.wavfile.write(buffer, rate, samples)
    return buffer.getvalue()


def _encodings(source: bytes) -> dict[str, bytes]:
    """The toy clip in every encoding the pipeline reads."""
    rate, samples = scipy.io.wavfile.read(io.BytesIO(source))
    unit = samples.astype(np.float64) / 32768.0
    from scipy import signal

    return {
        "int16": source,
        "uint8": _wav(np.clip(np.round(unit * 128 + 128), 0, 255).astype(np.uint8), rate),
        "int24 in int32": _wav((np.round(unit * 2 ** 23).astype(np.int32) << 8), rate),
        "int32": _wav(np.round(unit * (2 ** 31 - 1)).astype(np.int32), rate),
        "float32": _wav(unit.astype(np.float32), rate),
        "float64": _wav(unit, rate),
        "stereo": _wav(np.stack([samples, samples // 2], axis=1), rate),
        "8 kHz": _wav(np.round(signal.resample_poly(unit, 1, 2) * 32767).astype(np.int16), rate // 2),
        "44.1 kHz": _wav(np.round(signal.resample_poly(unit, 441, 160) * 32767).astype(np.int16), 44100),
    }


def test_every_encoding_through_the_waveform_signature_matches_the_pipeline(predictors, raw_roots):
    predictor = predictors["audio"]
    source = _files(raw_roots["audio"], "*/*.wav")[0].read_bytes()
    encodings = _encodings(source)
    expected = predictor.predict_tensors(np.stack([predictor.featurize(data) for data in encodings.values()]))
    # One padded batch of recordings of unequal lengths (the 8 kHz and 44.1 kHz files resample to others).
    served = predictor.predict_raw([raw_input(predictor.manifest, data) for data in encodings.values()])
    for name, want, got in zip(encodings, expected, served):
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)
    # The waveform signature on one recording of any length, as a client that decodes itself calls it.
    waveform = raw_input(predictor.manifest, encodings["44.1 kHz"])
    single = predictor._serving.signatures["waveform"](waveform=tf.constant(waveform[None]))
    np.testing.assert_allclose(single["probabilities"].numpy()[0], expected[-1], atol=1e-5)


@pytest.mark.parametrize("name, message", [
    ("uint8", "accepts 16-bit PCM WAV at 16000 Hz, not format] [1] [with bits per sample] [8]"),
    ("float32", "accepts 16-bit PCM WAV at 16000 Hz, not format] [3]"),
    ("8 kHz", "wrong sample rate: the bytes signature accepts 16-bit PCM WAV at 16000 Hz, not] [8000]"),
])
def test_the_bytes_signature_says_what_it_accepts(predictors, raw_roots, name, message):
    source = _files(raw_roots["audio"], "*/*.wav")[0].read_bytes()
    signature = predictors["audio"]._serving.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        signature(bytes=tf.constant([_encodings(source)[name]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a WAV file"):
        signature(bytes=tf.constant([b"RIFF but not quite a WAV file at all, far too short"]))


def _image_variants(png: bytes) -> dict[str, bytes]:
    gray = Image.open(io.BytesIO(png)).convert("L")
    rgb = Image.merge("RGB", [gray, gray.point(lambda v: v // 2), gray.point(lambda v: 255 - v)])
    rgba = rgb.copy()
    rgba.putalpha(gray.point(lambda v: min(255, 40 + v)))
    variants = {}
    for name, image, fmt, options in [
            ("gray png", gray, "PNG", {}), ("rgb png", rgb, "PNG", {}), ("rgba png", rgba, "PNG", {}),
            ("palette png", rgb.convert("P"), "PNG", {}), ("la png", rgba.convert("LA"), "PNG", {}),
            ("bmp", rgb, "BMP", {}), ("palette bmp", rgb.convert("P"), "BMP", {}), ("1-bit bmp", gray.convert("1"),
                                                                                 "BMP", {}),
            ("gif", gray, "GIF", {}), ("jpeg", rgb, "JPEG", {"quality": 95}),
            ("16-bit png", gray.convert("I;16"), "PNG", {}), ("webp", rgb, "WEBP", {"lossless": True}),
            ("larger png", rgb.resize((56, 84)), "PNG", {})]:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        variants[name] = buffer.getvalue()
    return variants


def test_images_in_every_format_are_featurized_in_the_graph_as_the_pipeline_does(predictors, raw_roots):
    predictor = predictors["image"]
    config = predictor.manifest.featurizer_config()
    variants = _image_variants(_files(raw_roots["image"], "*/*.png")[0].read_bytes())
    for name, data in variants.items():
        stored = predictor.featurize(data).astype(np.int32)
        in_graph = featurize_graph.image_bytes_to_features(
            tf.constant([raw_input(predictor.manifest, data)]), config=config).numpy()[0].astype(np.int32)
        # Decoding, alpha compositing and the luma are Pillow's integer formulas, exactly; JPEG's decoder and
        # the antialiased bilinear resize round a few pixels the other way.
        tolerance = 0 if name not in ("jpeg", "larger png") else 2
        assert np.abs(in_graph - stored).max() <= tolerance, name
    expected = predictor.predict_tensors(np.stack([predictor.featurize(data) for data in variants.values()]))
    served = predictor.predict_raw([raw_input(predictor.manifest, data) for data in variants.values()])
    np.testing.assert_array_equal(served.argmax(axis=1), expected.argmax(axis=1))


def test_a_file_the_pipeline_rejects_is_rejected_with_its_reason(predictors):
    with pytest.raises(InvalidInputError, match="not a readable PCM WAV file"):
        predictors["audio"].predict_bytes(b"not audio")
    with pytest.raises(InvalidInputError, match="not a PNG/JPEG/BMP/GIF/WEBP image"):
        predictors["image"].predict_bytes(b"not an image")


_FRESH_PROCESS = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("beam_jobs", "trainer", "apache_beam", "scipy", "PIL"):
            raise ImportError("the serving model must not need " + name)
sys.meta_path.insert(0, Blocked())
import tensorflow as tf
serving = tf.saved_model.load(sys.argv[1])
outputs = serving.signatures["serving_default"](bytes=tf.constant([open(sys.argv[2], "rb").read()]))
print(outputs["label"].numpy()[0].decode(), float(outputs["probabilities"].numpy().max()))
"""


def test_the_serving_model_loads_in_a_process_without_our_packages(model_dirs, raw_roots, predictors, tmp_path):
    for modality, pattern in (("audio", "*/*.wav"), ("image", "*/*.png")):
        path = _files(raw_roots[modality], pattern)[0]
        # -I: no PYTHONPATH, no user site, and not the repository as the working folder.
        result = subprocess.run([sys.executable, "-I", "-c", _FRESH_PROCESS, str(model_dirs[modality] / "serving"),
                                 str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        label, probability = result.stdout.split()
        assert label == predictors[modality].predict_bytes(path.read_bytes())[0]["label"]
    show = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir",
                           str(model_dirs["audio"] / "serving"), "--all"], capture_output=True, text=True,
                          timeout=120)
    assert show.returncode == 0, show.stderr[-3000:]
    for name in ("serving_default", "waveform", "padded_waveform", "features", "probabilities", "label_id"):
        assert f"'{name}'" in show.stdout or f"[{name!r}]" in show.stdout


def _litert_predictions(model_path, inputs: list[np.ndarray]) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path), num_threads=1)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    predictions = []
    for example in inputs:
        interpreter.resize_tensor_input(source["index"], example.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], example)
        interpreter.invoke()
        predictions.append(interpreter.get_tensor(target["index"])[0])
    return np.stack(predictions)


def test_litert_models_run_in_the_litert_interpreter_as_accurately_as_keras(model_dirs, predictors, raw_roots):
    for modality, pattern in (("audio", "*/*.wav"), ("image", "*/*.png")):
        predictor = predictors[modality]
        paths = _files(raw_roots[modality], pattern)
        truth = np.array([predictor.labels.index(path.parent.name) for path in paths])
        datas = [path.read_bytes() for path in paths]
        keras_probabilities = predictor.predict_tensors(np.stack([predictor.featurize(data) for data in datas]))
        if modality == "audio":
            inputs = [raw_input(predictor.manifest, data)[None].astype(np.float32) for data in datas]
        else:
            inputs = [predictor.featurize(data)[None] for data in datas]
        float32 = _litert_predictions(model_dirs[modality] / "litert" / "model_float32.tflite", inputs)
        int8 = _litert_predictions(model_dirs[modality] / "litert" / "model_int8.tflite", inputs)
        np.testing.assert_allclose(float32, keras_probabilities, atol=2e-3, err_msg=modality)
        keras_accuracy = np.mean(keras_probabilities.argmax(axis=1) == truth)
        assert np.mean(int8.argmax(axis=1) == truth) >= keras_accuracy - 0.05, modality


def test_export_rewrites_the_folder_and_says_why_int8_is_missing(model_dirs, tmp_path):
    import shutil

    copy = tmp_path / "audio"
    shutil.copytree(model_dirs["audio"], copy)
    (copy / "litert" / "model_int8.tflite").write_bytes(b"stale")
    settings = json.loads((copy / "train_config.json").read_text())
    settings["data_dir"] = str(tmp_path / "gone")  # calibration data that cannot be read
    (copy / "train_config.json").write_text(json.dumps(settings))
    with pytest.raises(Exception, match="gone"):
        export_lib.export(str(copy))
    exported = export_lib.export(str(copy), require_int8=False)
    assert "no int8 model" in exported.note
    assert sorted(p.name for p in (copy / "litert").iterdir()) == ["labels.txt", "model_float32.tflite"]


def test_the_serving_bench_runs(model_dirs, capsys):
    from bench import serving as serving_bench

    for path in model_dirs.values():
        serving_bench.main([f"--model_dir={path}", "--latency_clips=5"])
        printed = capsys.readouterr().out
        assert "parity: same argmax" in printed and "LiteRT int8: accuracy" in printed, printed


def test_commands_say_in_one_line_that_a_folder_holds_no_trained_model(tmp_path, capsys):
    from trainer import predict as predict_lib

    assert export_lib.main(["--model_dir", str(tmp_path)]) == 1
    assert predict_lib.main(["--model_dir", str(tmp_path), "clip.wav"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") and "trainer.train" in line for line in errors), errors
