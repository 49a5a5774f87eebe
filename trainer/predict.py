"""Top-k predictions for raw .wav and image files, from the command line or as an API.

    python -m trainer.predict --model_dir models/audio clip.wav other.wav --top_k 3 [--json]

Predictions come from the model folder's serving model (`serving/`, written by
`trainer.export`), whose graph featurizes raw input as the Beam pipeline did,
with the featurization of the training snapshot: what this prints, the app and
the report show is what a deployed model answers. Files are read by the
pipeline's readers first (`raw_input`): a WAV in any encoding or rate becomes a
waveform at the model's rate, an image any format Pillow reads. TensorFlow's
start-up notes stay hidden (see `trainer`). An unreadable file gets a one-line message (path: reason) on
stderr, or {"path", "error"} with --json; the other files are still predicted
and the exit status is 1.
"""
import argparse
import io
import json
import sys

import numpy as np
import tensorflow as tf

from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.table.manifest import DatasetManifest
from trainer.model_dir import ModelDir


class Predictor:
    """A trained model's serving model with its label vocabulary and featurization, loaded once.

    Attributes:
      labels: the class names, in the model's output order.
      modality: the modality's name.
      manifest: the manifest of the snapshot the model was trained on (vocabulary and featurization).
    """

    def __init__(self, *, serving, manifest: DatasetManifest):
        self._serving = serving  # holds the variables its signatures read
        self.manifest = manifest
        self.labels = list(manifest.labels)
        self.modality = manifest.modality

    @classmethod
    def from_model_dir(cls, model_dir: str) -> "Predictor":
        """Loads `model_dir/serving` and `dataset.json`.

        That dataset.json is the model's own copy of its snapshot's manifest: a prediction never reads
        the dataset, so a re-ingest that changes the featurization cannot change what the model gets.
        """
        layout = ModelDir(model_dir)
        if not tf.io.gfile.exists(layout.manifest):
            raise FileNotFoundError(f"{layout.manifest} not found: is {model_dir} the --model_dir of a finished "
                                    f"`python -m trainer.train` run?")
        if not tf.io.gfile.exists(layout.serving):
            raise FileNotFoundError(f"{layout.serving} not found: the model was trained before serving models were "
                                    f"exported; write it with python -m trainer.export --model_dir {model_dir}")
        with tf.io.gfile.GFile(layout.manifest) as manifest_file:
            manifest = DatasetManifest.from_json(manifest_file.read())
        return cls(serving=tf.saved_model.load(layout.serving), manifest=manifest)

    def featurize(self, data: bytes) -> np.ndarray:
        """Raw file bytes -> the stored tensor by the pipeline's NumPy featurizer (the modality's tensor_dtype,
        manifest.tensor_shape). Raises InvalidInputError for a file that cannot be used."""
        return self.manifest.featurize(data)

    def preview(self, data: bytes) -> list:
        """Raw file bytes -> the modality's preview panels: pictures of what the model gets. Raises InvalidInputError."""
        return self.manifest.preview(data)

    def predict_tensors(self, tensors: np.ndarray) -> np.ndarray:
        """Stored tensors [batch, *tensor_shape] -> float32 probabilities [batch, len(labels)]."""
        tensors = tf.constant(tensors, dtype=self.manifest.tensor_dtype)
        return self._serving.signatures["features"](tensors)["probabilities"].numpy()

    def predict_raw(self, inputs: list) -> np.ndarray:
        """`raw_input`s of files -> float32 probabilities [len(inputs), len(labels)], by the serving model."""
        return predict_raw(self._serving, inputs)

    def top(self, probabilities: np.ndarray, *, top_k: int = 5) -> list[dict]:
        """Probabilities [len(labels)] -> [{"label": str, "probability": float}, ...], best first."""
        best = np.argsort(-probabilities, kind="stable")[:top_k]
        return [{"label": self.labels[i], "probability": float(probabilities[i])} for i in best]

    def predict_bytes(self, data: bytes, *, top_k: int = 5) -> list[dict]:
        """Raw file bytes -> the top_k labels with probabilities, best first. Raises InvalidInputError."""
        probabilities = self.predict_raw([raw_input(self.manifest, data)])[0]
        return self.top(probabilities, top_k=top_k)


def raw_input(manifest: DatasetManifest, data: bytes):
    """A file's bytes as the serving model takes them, read by the pipeline's readers.

    Audio: the waveform, float32 [n] at the model's rate (any WAV encoding and rate the pipeline
    reads, decoded and resampled by it). Images: bytes the serving model decodes (PNG, JPEG, GIF, BMP
    of 8-bit pixels as stored; anything else Pillow reads, re-encoded as PNG without loss).
    Raises InvalidInputError, with the pipeline's reasons, for a file the pipeline would not take.
    """
    config = manifest.featurizer_config()
    if manifest.modality == "audio":
        from beam_jobs.modalities import audio

        samples, rate = audio.decode_wav(data, config=config)
        return audio.resample(samples, from_rate=rate, to_rate=config.sample_rate)
    from beam_jobs.modalities import image as image_lib

    decoded = image_lib.decode_image(data, config=config)
    if decoded.mode in _SERVED_IMAGE_MODES.get(decoded.format, ()):
        return data
    converted = image_lib._to_8bit(decoded)
    if converted.mode not in _SERVED_IMAGE_MODES["PNG"]:
        converted = converted.convert("RGBA" if "A" in converted.mode else "RGB")
    output = io.BytesIO()
    converted.save(output, format="PNG")
    return output.getvalue()


# What tf.io.decode_image decodes as Pillow does, by format and Pillow mode. TensorFlow's BMP decoder reads a
# palette BMP's indices as gray levels and refuses 1-bit ones; 16-bit PNGs, CMYK JPEGs and WEBP are not its.
_SERVED_IMAGE_MODES = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA"), "JPEG": ("L", "RGB"),
                       "GIF": ("L", "P", "RGB", "RGBA"), "BMP": ("RGB", "RGBA")}


def predict_raw(serving, inputs: list) -> np.ndarray:
    """`raw_input`s -> float32 probabilities [len(inputs), classes] from a loaded serving model.

    Waveforms go through `padded_waveform` in one zero-padded batch, image bytes through `serving_default`.
    """
    if not inputs:
        raise ValueError("nothing to predict")
    if isinstance(inputs[0], np.ndarray):
        lengths = np.array([len(waveform) for waveform in inputs], dtype=np.int32)
        padded = np.zeros([len(inputs), max(int(lengths.max()), 1)], dtype=np.float32)
        for row, waveform in enumerate(inputs):
            padded[row, :len(waveform)] = waveform
        outputs = serving.signatures["padded_waveform"](waveform=tf.constant(padded), length=tf.constant(lengths))
    else:
        outputs = serving.signatures["serving_default"](bytes=tf.constant(inputs))
    return outputs["probabilities"].numpy()


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
    try:
        predictor = Predictor.from_model_dir(flags.model_dir)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
