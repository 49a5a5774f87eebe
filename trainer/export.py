"""Exports a trained model for use without our code: `serving/` on raw input and LiteRT models for devices.

    python -m trainer.export --model_dir M [--representative_examples 200] [--no-litert]

Reads M/model.keras and M/dataset.json (the training snapshot's manifest) and
(re)writes:

  serving/                  a SavedModel whose graph holds the pipeline's featurizer
                            (`trainer.featurize_graph`), configured from the manifest, and the
                            label vocabulary. Only TensorFlow is needed to run it. Signatures:
      serving_default       bytes: tf.string [batch], the files as stored (audio: 16-bit PCM WAV at
                            the model's rate, any number of channels; images: PNG, JPEG, GIF, BMP)
      waveform              (audio) waveform: float32 [batch, samples] at the model's rate, any length
      padded_waveform       (audio) waveform as above, zero-padded, and length: int32 [batch], the
                            samples of each row that are its recording (batches of unequal clips)
      features              the stored tensor, as the records hold it: [batch, *tensor_shape]
    each returning probabilities float32 [batch, classes], label tf.string [batch], label_id int64 [batch].
  litert/model_float32.tflite   the raw-input model for LiteRT (TFLite): audio takes
                            waveform float32 [1, samples] at the model's rate, any length (resize the
                            input); images take the pixels uint8 [1, height, width, channels], as the
                            records hold them (a camera pipeline resizes). Output: probabilities.
  litert/model_int8.tflite  the same with the network in int8 (post-training quantization calibrated on
                            the training snapshot's files); the audio featurizer stays float32, whose
                            power spectrum spans ~100 dB, more than int8's 48 dB can hold.
  litert/labels.txt         the class names, one per line, in output order.

`trainer.train` runs this when training ends. Builtin LiteRT ops only: no Flex delegate.
"""
import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import warnings
from typing import Iterator

import numpy as np
import tensorflow as tf

from beam_jobs.inputs.tree import excerpt_source, join_root
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.table.manifest import DatasetManifest
from trainer import featurize_graph
from trainer.data import load_manifest, make_parse, shard_paths
from trainer.model_dir import ModelDir

OUTPUTS = ("probabilities", "label", "label_id")
_FEATURIZER_SCOPE = "featurizer"  # LiteRT int8: the ops under this name scope stay float32


class ServingModule(tf.Module):
    """The trained Keras model behind the pipeline's featurizer, with the vocabulary, as tf.functions."""

    def __init__(self, model, manifest: DatasetManifest):
        super().__init__()
        self.model = model
        self.labels = tf.Variable(list(manifest.labels), trainable=False, dtype=tf.string, name="labels")
        self._manifest = manifest
        spec = manifest.spec
        config = manifest.featurizer_config()
        stored = tf.TensorSpec([None, *manifest.tensor_shape], tf.dtypes.as_dtype(spec.tensor_dtype),
                               name=spec.model_input.name)
        self.features = tf.function(self._predict, input_signature=[stored])
        if spec.name == "audio":
            self.serving_default = tf.function(
                lambda bytes: self._predict(featurize_graph.wav_bytes_to_features(bytes, config=config)),
                input_signature=[tf.TensorSpec([None], tf.string, name="bytes")])
            self.waveform = tf.function(
                lambda waveform: self._predict(featurize_graph.waveform_to_features(waveform, config=config)),
                input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
            self.padded_waveform = tf.function(
                lambda waveform, length: self._predict(
                    featurize_graph.waveform_to_features(waveform, config=config, lengths=length)),
                input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform"),
                                 tf.TensorSpec([None], tf.int32, name="length")])
        elif spec.name == "image":
            self.serving_default = tf.function(
                lambda bytes: self._predict(featurize_graph.image_bytes_to_features(bytes, config=config)),
                input_signature=[tf.TensorSpec([None], tf.string, name="bytes")])
        else:
            raise ValueError(f"no in-graph featurizer for the {spec.name} modality (trainer.featurize_graph)")

    def _predict(self, features):
        probabilities = tf.cast(self.model(features, training=False), tf.float32)
        label_id = tf.argmax(probabilities, axis=1, output_type=tf.int64)
        return {"probabilities": probabilities, "label": tf.gather(self.labels, label_id), "label_id": label_id}

    def signatures(self) -> dict:
        names = ["serving_default", "waveform", "padded_waveform", "features"]
        return {name: getattr(self, name).get_concrete_function() for name in names if hasattr(self, name)}


def export_serving(model, manifest: DatasetManifest, path: str) -> str:
    """Writes the raw-input SavedModel of `model` (trained on `manifest`'s snapshot) to `path`; returns it."""
    module = ServingModule(model, manifest)
    _replace_dir(path, lambda partial: tf.saved_model.save(module, partial, signatures=module.signatures()))
    return path


def _replace_dir(path: str, write) -> None:
    """`write(partial)` into a sibling folder, then swaps it in for `path`: a kill leaves the old one or none."""
    partial = path.rstrip("/") + ".partial"
    for stale in (partial,):
        if tf.io.gfile.exists(stale):
            tf.io.gfile.rmtree(stale)
    write(partial)
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
    tf.io.gfile.rename(partial, path)


def litert_function(model, manifest: DatasetManifest):
    """The frozen concrete function LiteRT converts: raw input of one example -> probabilities."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = manifest.spec
    config = manifest.featurizer_config()
    if spec.name == "audio":
        @tf.function(input_signature=[tf.TensorSpec([1, None], tf.float32, name="waveform")])
        def predict(waveform):
            with tf.name_scope(_FEATURIZER_SCOPE):
                features = featurize_graph.waveform_to_features(waveform, config=config, precision="float32")
            return {"probabilities": tf.cast(model(features, training=False), tf.float32)}
    else:
        @tf.function(input_signature=[tf.TensorSpec([1, *manifest.tensor_shape], tf.uint8, name="pixels")])
        def predict(pixels):
            return {"probabilities": tf.cast(model(pixels, training=False), tf.float32)}
    # Keras' variables become constants: LiteRT's calibration cannot read resource variables.
    return convert_variables_to_constants_v2(predict.get_concrete_function())


def _is_converter_chatter(line: str) -> bool:
    return any(note in line for note in _CONVERTER_CHATTER)


_CONVERTER_CHATTER = ("fully_quantize:", "Statistics for quantized inputs", "warnings.warn(", "tf.lite.Interpreter is",
                      "TF 2.20. Please use the LiteRT", "See the [migration guide]", "for details.",
                      "trackable_obj argument", "W0000 ", "I0000 ", "WARNING: All log messages before absl")


def convert_litert(model, manifest: DatasetManifest, *, representative: list[np.ndarray] | None = None) -> bytes:
    """As `_convert_litert`, with the converter's notes and deprecation warnings kept off the terminal."""
    from beam_jobs.console import logs

    real_stderr = None
    absl_level = logging.getLogger("absl").level
    try:
        with warnings.catch_warnings(), logs.stderr_filtered(_is_converter_chatter) as real_stderr:
            warnings.simplefilter("ignore")
            logging.getLogger("absl").setLevel(logging.ERROR)
            return _convert_litert(model, manifest, representative=representative)
    finally:
        logging.getLogger("absl").setLevel(absl_level)
        if real_stderr is not None:
            real_stderr.close()  # the filter's own duplicate of stderr, which no logging handler holds


def _convert_litert(model, manifest: DatasetManifest, *, representative: list[np.ndarray] | None = None) -> bytes:
    """The LiteRT flatbuffer: float32 when `representative` is None, else with the network in int8.

    `representative` are raw inputs of single examples (waveforms float32 [1, n], pixels uint8 [1, h, w, c])
    that calibrate the int8 ranges.
    """
    function = litert_function(model, manifest)

    def converter():
        made = tf.lite.TFLiteConverter.from_concrete_functions([function])
        made.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return made

    if representative is None:
        return converter().convert()
    quantizing = converter()
    quantizing.optimizations = [tf.lite.Optimize.DEFAULT]
    quantizing.representative_dataset = lambda: ([example] for example in representative)
    quantizing.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    if manifest.spec.name != "audio":
        return quantizing.convert()
    # The featurizer's tensors are denylisted (selective quantization, the documented use of the
    # quantization debugger): quantized, the power spectrum and its log lose what the network needs
    # (measured: 14% agreement with the float model instead of 99.7%).
    featurizer = [detail["name"] for detail in _tensor_details(converter().convert())
                  if detail["name"].startswith(_FEATURIZER_SCOPE + "/")]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=quantizing, debug_dataset=quantizing.representative_dataset,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=featurizer))
    return debugger.get_nondebug_quantized_model()


def _tensor_details(flatbuffer: bytes) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=flatbuffer).get_tensor_details()


def representative_inputs(*, manifest: DatasetManifest, data_dir: str, count: int) -> list[np.ndarray]:
    """Raw inputs of up to `count` training examples of the snapshot, spread over its shards.

    Audio: each example's source file, read from the snapshot's input roots and checked against the
    record's id (a changed or missing file is passed over), decoded and resampled by the pipeline's
    reader: float32 [1, n]. Images: the stored pixels, uint8 [1, h, w, c]. ValueError if none is readable.
    """
    examples = list(_training_examples(manifest=manifest, data_dir=data_dir, count=count))
    if manifest.spec.name != "audio":
        return [np.frombuffer(tensor, np.uint8).reshape([1, *manifest.tensor_shape]) for tensor, _, _ in examples]
    from beam_jobs.modalities import audio

    config = manifest.featurizer_config()
    inputs, missing = [], []
    for _, path, example_id in examples:
        data = read_source(manifest, path, example_id)
        if data is None:
            missing.append(path)
            continue
        try:
            samples, rate = audio.decode_wav(data, config=config)
        except InvalidInputError as error:
            missing.append(f"{path} ({error})")
            continue
        inputs.append(audio.resample(samples, from_rate=rate, to_rate=config.sample_rate)[None])
    if not inputs:
        raise ValueError(f"none of the {len(examples)} training files sampled for int8 calibration is readable "
                         f"as it was ingested under {', '.join(manifest.input_roots)} (e.g. {missing[:3]}); "
                         f"export with --no-int8, or restore the input files")
    return inputs


def _training_examples(*, manifest: DatasetManifest, data_dir: str, count: int) -> Iterator[tuple]:
    """(tensor bytes, path, id) of up to `count` training records, an even share from every shard."""
    paths = shard_paths(manifest=manifest, data_dir=data_dir, splits=["train"])
    share = -(-count // max(len(paths), 1))
    parse = make_parse(("tensor", "path", "id"))
    taken = 0
    for path in paths:
        records = tf.data.TFRecordDataset(path, compression_type=manifest.compression or "").take(share)
        for batch in records.batch(share).map(parse):
            for tensor, source, example_id in zip(batch["tensor"].numpy(), batch["path"].numpy(),
                                                  batch["id"].numpy()):
                if taken == count:
                    return
                taken += 1
                yield tensor, source.decode(), example_id.decode()


def read_source(manifest: DatasetManifest, relative_path: str, example_id: str) -> bytes | None:
    """The bytes the record was made from, or None when no input root holds them unchanged."""
    from beam_jobs.console import logs

    logs.quiet_beam_import()  # Beam's file systems, for any input root's scheme, without Beam's import notices
    from beam_jobs.storage.files import open_for_reading

    source = excerpt_source(relative_path)
    for root in manifest.input_roots:
        try:
            with open_for_reading(join_root(root, source or relative_path)) as handle:
                data = handle.read(manifest.featurizer_config().max_file_bytes + 1)
        except (OSError, ValueError):  # Beam's file systems raise BeamIOError (an OSError) or ValueError
            continue
        if source:
            data = manifest.spec.noise_excerpt(data, config=manifest.featurizer_config(), key=relative_path)
        if hashlib.sha256(data).hexdigest() == example_id:
            return data
    return None


@dataclasses.dataclass(frozen=True)
class Exported:
    serving: str
    litert: dict  # {"float32": path, "int8": path} of what was written
    note: str = ""  # why something was not written

    def describe(self) -> str:
        """What was written, in words, e.g. "serving/, litert/model_float32.tflite (2770 KiB), ..."."""
        parts = [f"{self.serving}"] + [f"{path} ({tf.io.gfile.stat(path).length / 1024:.0f} KiB)"
                                       for path in self.litert.values()]
        return ", ".join(parts) + (f" ({self.note})" if self.note else "")


def export(model_dir: str, *, representative_examples: int = 200, litert: bool = True, int8: bool = True,
           require_int8: bool = True, model=None) -> Exported:
    """(Re)writes `model_dir`'s serving/ and litert/ from its model.keras and dataset.json.

    `model` skips loading model.keras when the caller holds the trained model. The int8 model is
    calibrated on `representative_examples` training examples of the snapshot the model was trained on
    (train_config.json says which); when none of their files is readable any more, ValueError, or with
    `require_int8=False` no int8 model and a note that says why.
    """
    import keras

    layout = ModelDir(model_dir)
    for path in (layout.model, layout.manifest):
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{path} not found: is {model_dir} the --model_dir of a finished "
                                    f"`python -m trainer.train` run?")
    with tf.io.gfile.GFile(layout.manifest) as manifest_file:
        manifest = DatasetManifest.from_json(manifest_file.read())
    model = _in_float32(model or keras.saving.load_model(layout.model))
    export_serving(model, manifest, layout.serving)
    files, note = {}, ""
    if litert:
        files["float32"] = convert_litert(model, manifest)
        if int8:
            with tf.io.gfile.GFile(layout.train_config) as settings_file:
                settings = json.load(settings_file)
            try:
                snapshot = load_manifest(settings["data_dir"], settings.get("snapshot"))
                inputs = representative_inputs(manifest=snapshot, data_dir=settings["data_dir"],
                                               count=representative_examples)
            except (ValueError, OSError, tf.errors.OpError) as error:  # unreadable, removed or gone
                if require_int8:
                    raise
                note = f"no int8 model: {error}"
                inputs = None
            if inputs is not None:
                files["int8"] = convert_litert(model, manifest, representative=inputs)
        # One folder swapped in whole: an int8 model of an earlier export never sits beside a new float one.
        _replace_dir(layout.litert, lambda partial: _write_litert(partial, files, manifest.labels))
    return Exported(serving=layout.serving, litert={kind: layout.litert_model(kind) for kind in files}, note=note)


def _in_float32(model):
    """`model`, or for one trained under mixed precision a float32 copy with its weights (kept in float32 by
    Keras anyway): servers and devices without fast float16 get float32, and LiteRT converts it."""
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    copy = keras.models.clone_model(
        model, clone_function=lambda layer: layer.__class__.from_config({**layer.get_config(), "dtype": "float32"}))
    copy.set_weights(model.get_weights())
    return copy


def _write_litert(folder: str, models: dict[str, bytes], labels: list[str]) -> None:
    layout = ModelDir(os.path.dirname(folder.rstrip("/")))
    tf.io.gfile.makedirs(folder)
    for kind, flatbuffer in models.items():
        with tf.io.gfile.GFile(f"{folder}/{os.path.basename(layout.litert_model(kind))}", "wb") as output:
            output.write(flatbuffer)
    with tf.io.gfile.GFile(f"{folder}/{os.path.basename(layout.litert_labels)}", "w") as output:
        output.write("".join(f"{label}\n" for label in labels))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="the --model_dir of a finished trainer.train run")
    parser.add_argument("--representative_examples", type=int, default=200,
                        help="training examples that calibrate the int8 model (default: 200)")
    parser.add_argument("--litert", action=argparse.BooleanOptionalAction, default=True,
                        help="also write litert/ (default: yes)")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="also write litert/model_int8.tflite (default: yes)")
    flags = parser.parse_args(argv)
    if flags.representative_examples < 1:
        parser.error(f"--representative_examples={flags.representative_examples} is invalid: it must be >= 1")
    try:
        exported = export(flags.model_dir, representative_examples=flags.representative_examples,
                          litert=flags.litert, int8=flags.int8)
    except (OSError, ValueError) as error:  # no trained model there; no calibration data (FileNotFoundError too)
        print(f"error: {error}", file=sys.stderr)
        return 1
    except tf.errors.OpError as error:  # the snapshot's shards, unreadable
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    print(f"Wrote {exported.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
