"""The single-process engines bench.predict sets beside the Beam pipeline, each predicting a list of files.

    python -m bench.predict_engines --engine serving --model_dir M --root ROOT --file_list FILES --out_dir OUT

  numpy+tensor  the pipeline's NumPy featurizer (`DatasetManifest.featurize`) and the tensor model
                (M/saved_model's `serve`) on batches of BATCH_SIZE stored tensors
  serving       the serving model on raw input (M/serving, `trainer.export`) on batches of BATCH_SIZE:
                audio through `padded_waveform`, each WAV decoded and resampled by the pipeline's reader;
                images through `serving_default` on the files' bytes as they are
  litert int8   M/litert/model_int8.tflite in LiteRT's interpreter, one file at a time on one thread, as on a
                device: audio as the waveform (the input resized when a clip's length is not the last one's),
                images as the pixels of the pipeline's featurizer
Each imports only its own runtime (LiteRT's without TensorFlow), as a program that predicts that way would,
so that its start-up and memory are its own. FILES lists the files, one path relative to ROOT a line. Writes
OUT/predictions.jsonl, one {"path", "label"} or {"path", "error"} a file in FILES' order, and prints
{"records": ..., "errors": ...} as its last line. A file the pipeline's reader rejects is an error line;
an image that the serving model's decoder rejects fails its batch, loudly.
"""
import argparse
import contextlib
import functools
import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.table.manifest import DatasetManifest
from trainer.model_dir import ModelDir

BATCH_SIZE = 64  # files per call of a batched model: the calls' overhead spread thin, a batch's memory small


class PredictionsFile:
    """OUT/predictions.jsonl, written line by line; counts the records and the errors."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True)
        self._file = open(out_dir / "predictions.jsonl", "w")
        self.records = 0
        self.errors = 0

    def label(self, path: str, label: str) -> None:
        self._file.write(json.dumps({"path": path, "label": label}) + "\n")
        self.records += 1

    def error(self, path: str, error: InvalidInputError) -> None:
        self._file.write(json.dumps({"path": path, "error": str(error)}) + "\n")
        self.errors += 1

    def close(self) -> None:
        self._file.close()


def load_manifest(model_dir: str) -> DatasetManifest:
    with open(ModelDir(model_dir).manifest) as manifest_file:
        return DatasetManifest.from_json(manifest_file.read())


def waveform(manifest: DatasetManifest, data: bytes) -> np.ndarray:
    """A WAV file's bytes -> float32 [n] at the model's rate, by the pipeline's reader, as
    `trainer.predict.raw_input` reads it, without importing TensorFlow. Raises InvalidInputError."""
    from beam_jobs.modalities import audio

    config = manifest.featurizer_config()
    samples, rate = audio.decode_wav(data, config=config)
    return audio.resample(samples, from_rate=rate, to_rate=config.sample_rate)


def prepared_batches(paths: list[str], *, root: Path, prepare: Callable[[bytes], object],
                     predictions: PredictionsFile) -> Iterator[tuple[list[str], list]]:
    """(paths, prepare(file bytes) of each) per BATCH_SIZE files of `paths`, less those prepare rejects,
    which become error lines."""
    for start in range(0, len(paths), BATCH_SIZE):
        kept, inputs = [], []
        for path in paths[start:start + BATCH_SIZE]:
            try:
                inputs.append(prepare((root / path).read_bytes()))
            except InvalidInputError as error:
                predictions.error(path, error)
                continue
            kept.append(path)
        if kept:
            yield kept, inputs


def numpy_and_tensor_model(model_dir: str, *, paths: list[str], root: Path, predictions: PredictionsFile) -> None:
    import tensorflow as tf

    manifest = load_manifest(model_dir)
    tensor_model = tf.saved_model.load(ModelDir(model_dir).saved_model)
    for kept, tensors in prepared_batches(paths, root=root, prepare=manifest.featurize, predictions=predictions):
        probabilities = tensor_model.serve(tf.constant(np.stack(tensors), dtype=manifest.tensor_dtype)).numpy()
        for path, label_id in zip(kept, probabilities.argmax(axis=1)):
            predictions.label(path, manifest.labels[label_id])


def serving_model(model_dir: str, *, paths: list[str], root: Path, predictions: PredictionsFile) -> None:
    import tensorflow as tf

    from trainer.predict import predict_raw

    manifest = load_manifest(model_dir)
    serving = tf.saved_model.load(ModelDir(model_dir).serving)
    # serving_default decodes an image file itself.
    prepare = functools.partial(waveform, manifest) if manifest.modality == "audio" else (lambda data: data)
    for kept, inputs in prepared_batches(paths, root=root, prepare=prepare, predictions=predictions):
        for path, label_id in zip(kept, predict_raw(serving, inputs).argmax(axis=1)):
            predictions.label(path, manifest.labels[label_id])


def litert_int8(model_dir: str, *, paths: list[str], root: Path, predictions: PredictionsFile) -> None:
    from ai_edge_litert.interpreter import Interpreter

    manifest = load_manifest(model_dir)
    layout = ModelDir(model_dir)
    labels = Path(layout.litert_labels).read_text().splitlines()
    interpreter = Interpreter(model_path=layout.litert_model("int8"), num_threads=1)
    (input_detail,), (output_detail,) = interpreter.get_input_details(), interpreter.get_output_details()
    prepare = functools.partial(waveform, manifest) if manifest.modality == "audio" else manifest.featurize
    shape = None
    for path in paths:
        try:
            example = prepare((root / path).read_bytes())[None]
        except InvalidInputError as error:
            predictions.error(path, error)
            continue
        if example.shape != shape:  # allocating is costly, and most clips are as long as the last
            interpreter.resize_tensor_input(input_detail["index"], example.shape)
            interpreter.allocate_tensors()
            shape = example.shape
        interpreter.set_tensor(input_detail["index"], example)
        interpreter.invoke()
        predictions.label(path, labels[interpreter.get_tensor(output_detail["index"])[0].argmax()])


ENGINES = {"numpy+tensor": numpy_and_tensor_model, "serving": serving_model, "litert int8": litert_int8}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", required=True, choices=ENGINES)
    parser.add_argument("--model_dir", required=True, help="a trained model folder that trainer.export has written")
    parser.add_argument("--root", required=True, help="the folder the listed paths are relative to")
    parser.add_argument("--file_list", required=True, help="the files to predict, one relative path a line")
    parser.add_argument("--out_dir", required=True, help="created; gets predictions.jsonl")
    args = parser.parse_args(argv)
    paths = Path(args.file_list).read_text().splitlines()
    predictions = PredictionsFile(Path(args.out_dir))
    with contextlib.closing(predictions):
        ENGINES[args.engine](args.model_dir, paths=paths, root=Path(args.root), predictions=predictions)
    print(json.dumps({"records": predictions.records, "errors": predictions.errors}))


if __name__ == "__main__":
    main()
