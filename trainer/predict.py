"""Top-k predictions for raw .wav and image files, from the command line or as an API.

    python -m trainer.predict --model_dir models/audio clip.wav other.wav --top_k 3 [--json]

Files are featurized by `DatasetManifest.featurize`, the very functions the Beam
pipeline used, with the featurization stored beside the model: no training /
serving skew. TensorFlow's start-up notes stay hidden (see `trainer`). An unreadable file gets a one-line message (path: reason) on
stderr, or {"path", "error"} with --json; the other files are still predicted
and the exit status is 1.
"""
import argparse
import json
import sys

import numpy as np
import tensorflow as tf

from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.table.manifest import DatasetManifest
from trainer.model_dir import ModelDir


class Predictor:
    """A trained model with its label vocabulary and featurization, loaded once.

    Attributes:
      labels: the class names, in the model's output order.
      modality: the modality's name.
      manifest: the manifest of the snapshot the model was trained on (vocabulary and featurization).
    """

    def __init__(self, *, saved_model, manifest: DatasetManifest):
        self._saved_model = saved_model  # holds the variables `serve` reads
        self.manifest = manifest
        self.labels = list(manifest.labels)
        self.modality = manifest.modality

    @classmethod
    def from_model_dir(cls, model_dir: str) -> "Predictor":
        """Loads `model_dir/saved_model` (faster to load and call than model.keras) and `dataset.json`.

        That dataset.json is the model's own copy of its snapshot's manifest: a prediction never reads
        the dataset, so a re-ingest that changes the featurization cannot change what the model gets.
        """
        layout = ModelDir(model_dir)
        for path in (layout.manifest, layout.saved_model):
            if not tf.io.gfile.exists(path):
                raise FileNotFoundError(f"{path} not found: is {model_dir} the --model_dir of a finished "
                                        f"`python -m trainer.train` run?")
        with tf.io.gfile.GFile(layout.manifest) as manifest_file:
            manifest = DatasetManifest.from_json(manifest_file.read())
        return cls(saved_model=tf.saved_model.load(layout.saved_model), manifest=manifest)

    def featurize(self, data: bytes) -> np.ndarray:
        """Raw file bytes -> the stored tensor (the modality's tensor_dtype, manifest.tensor_shape).

        Raises InvalidInputError for a file that cannot be used.
        """
        return self.manifest.featurize(data)

    def preview(self, data: bytes) -> list:
        """Raw file bytes -> the modality's preview panels: pictures of what the model gets. Raises InvalidInputError."""
        return self.manifest.preview(data)

    def predict_tensors(self, tensors: np.ndarray) -> np.ndarray:
        """Stored tensors [batch, *tensor_shape] -> float32 probabilities [batch, len(labels)]."""
        return self._saved_model.serve(tf.constant(tensors, dtype=self.manifest.tensor_dtype)).numpy()

    def top(self, probabilities: np.ndarray, *, top_k: int = 5) -> list[dict]:
        """Probabilities [len(labels)] -> [{"label": str, "probability": float}, ...], best first."""
        best = np.argsort(-probabilities, kind="stable")[:top_k]
        return [{"label": self.labels[i], "probability": float(probabilities[i])} for i in best]

    def predict_bytes(self, data: bytes, *, top_k: int = 5) -> list[dict]:
        """Raw file bytes -> the top_k labels with probabilities, best first. Raises InvalidInputError."""
        probabilities = self.predict_tensors(self.featurize(data)[None])[0]
        return self.top(probabilities, top_k=top_k)


def _read(path: str) -> bytes:
    try:
        with tf.io.gfile.GFile(path, "rb") as file:
            return file.read()
    except (OSError, tf.errors.OpError) as error:
        raise InvalidInputError(f"cannot read file: {getattr(error, 'message', None) or error}") from error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="the --model_dir of a finished trainer.train run")
    parser.add_argument("--top_k", type=int, default=5, help="labels to print per file (default: 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    parser.add_argument("files", nargs="+", help=".wav or image files (local or gs://)")
    flags = parser.parse_args(argv)
    if flags.top_k < 1:
        parser.error(f"--top_k={flags.top_k} is invalid: it must be >= 1")
    predictor = Predictor.from_model_dir(flags.model_dir)
    failed = 0
    for path in flags.files:
        try:
            top = predictor.predict_bytes(_read(path), top_k=flags.top_k)
        except InvalidInputError as error:
            failed += 1
            if flags.json:
                print(json.dumps({"path": path, "error": str(error)}), flush=True)
            print(f"{path}: {error}", file=sys.stderr, flush=True)
            continue
        if flags.json:
            print(json.dumps({"path": path, "top": top}), flush=True)
        else:
            print(f"{path}: " + ", ".join(f"{item['label']} {item['probability']:.3f}" for item in top), flush=True)
    if failed:
        print(f"{failed} of {len(flags.files)} files could not be predicted", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
