"""Does the exported model answer as the trained one does? Parity and LiteRT on a snapshot's test split.

    python -m bench.serving --model_dir models/audio [--data_dir out/audio] [--split test] [--latency_clips 500]

For every example of the split (of the snapshot the model was trained on, by default), its source file
is read back from the snapshot's input roots (checked against the record's id):
  parity     the serving model's in-graph featurizer (float64 spectrum, as the pipeline's) against the
             stored tensor: max absolute difference and max relative to the example's largest magnitude
             (audio: of the log-mel), and whether
             the serving model (on the file's bytes through serving_default, or its waveform for WAVs
             that signature does not take) predicts the same class as the model on the stored tensor;
  LiteRT     accuracy of litert/model_float32.tflite and model_int8.tflite in the LiteRT interpreter,
             one example at a time on one thread, against the Keras model's on the stored tensors;
             their sizes, and the p50/p99 latency of one invoke over --latency_clips examples.
Targets (issue 22): identical argmax on >= 99.9% of files and max |log-mel difference| <= 1e-3; LiteRT
float32 within 0.5 point of Keras, int8 within 1.5 points, int8 file <= 0.3x the float32 one, int8
p50 <= 2 ms per clip. Prints a table; asserts nothing.
"""
import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf

from trainer import featurize_graph
from trainer.data import load_manifest, make_parse, shard_paths
from trainer.export import read_source
from trainer.model_dir import ModelDir
from trainer.predict import Predictor, raw_input


def _split_examples(*, data_dir: str, snapshot, split: str):
    manifest = load_manifest(data_dir, snapshot)
    parse = make_parse(("tensor", "label_name", "path", "id"))
    rows = []
    for path in shard_paths(manifest=manifest, data_dir=data_dir, splits=[split]):
        for batch in tf.data.TFRecordDataset(path, compression_type=manifest.compression or "").batch(512).map(parse):
            rows += list(zip(batch["tensor"].numpy(), (v.decode() for v in batch["label_name"].numpy()),
                             (v.decode() for v in batch["path"].numpy()), (v.decode() for v in batch["id"].numpy())))
    return manifest, rows


def _litert(model_path: str, inputs: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=model_path, num_threads=1)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    predictions, seconds = [], []
    shape = None
    for example in inputs:
        if example.shape != shape:
            interpreter.resize_tensor_input(source["index"], example.shape)
            interpreter.allocate_tensors()
            shape = example.shape
        interpreter.set_tensor(source["index"], example)
        start = time.perf_counter()
        interpreter.invoke()
        seconds.append(time.perf_counter() - start)
        predictions.append(int(np.argmax(interpreter.get_tensor(target["index"])[0])))
    return np.array(predictions), seconds


def bench(*, model_dir: str, data_dir: str | None, split: str, latency_clips: int) -> dict:
    layout = ModelDir(model_dir)
    predictor = Predictor.from_model_dir(model_dir)
    with open(layout.train_config) as settings_file:
        settings = json.load(settings_file)
    manifest, rows = _split_examples(data_dir=data_dir or settings["data_dir"],
                                     snapshot=None if data_dir else settings.get("snapshot"), split=split)
    spec, config = manifest.spec, predictor.manifest.featurizer_config()
    shape = [-1, *manifest.tensor_shape]
    stored = np.stack([np.frombuffer(tensor, spec.tensor_dtype) for tensor, *_ in rows]).reshape(shape)
    truth = np.array([predictor.labels.index(label) for _, label, *_ in rows])
    keras_predicted = np.concatenate([predictor.predict_tensors(stored[i:i + 256]).argmax(axis=1)
                                      for i in range(0, len(stored), 256)])
    sources = [read_source(manifest, path, example_id) for _, _, path, example_id in rows]
    found = [i for i, data in enumerate(sources) if data is not None]
    raw = [raw_input(predictor.manifest, sources[i]) for i in found]
    result = {"examples": len(rows), "sources_found": len(found), "keras_accuracy": float(np.mean(keras_predicted
                                                                                                 == truth))}
    # Parity of the stored tensor and the serving graph's, and of the predictions.
    in_graph, served = [], []
    for start in range(0, len(found), 256):
        chunk = raw[start:start + 256]
        if spec.name == "audio":
            lengths = np.array([len(w) for w in chunk], np.int32)
            padded = np.zeros([len(chunk), lengths.max()], np.float32)
            for row, waveform in enumerate(chunk):
                padded[row, :len(waveform)] = waveform
            in_graph.append(featurize_graph.waveform_to_features(tf.constant(padded), config=config,
                                                                 lengths=tf.constant(lengths)).numpy())
        else:
            in_graph.append(featurize_graph.image_bytes_to_features(tf.constant(chunk), config=config).numpy())
        served.append(predictor.predict_raw(chunk).argmax(axis=1))
    in_graph, served = np.concatenate(in_graph), np.concatenate(served)
    difference = np.abs(in_graph.astype(np.float64) - stored[found].astype(np.float64))
    result.update(max_abs_difference=float(difference.max()),
                  # Relative to each example's largest magnitude: log-mel values cross zero, where an element's
                  # own relative difference means nothing.
                  max_relative_difference=float(np.max(difference.reshape(len(found), -1).max(axis=1) / np.maximum(
                      np.abs(stored[found].astype(np.float64)).reshape(len(found), -1).max(axis=1), 1e-12))),
                  same_argmax=float(np.mean(served == keras_predicted[found])))
    # LiteRT, one example at a time.
    inputs = ([waveform[None].astype(np.float32) for waveform in raw] if spec.name == "audio"
              else [stored[i][None] for i in found])
    for kind in ("float32", "int8"):
        path = layout.litert_model(kind)
        if not os.path.exists(path):
            continue
        predicted, seconds = _litert(path, inputs)
        timed = np.array(seconds[:latency_clips]) * 1000
        result[kind] = {"bytes": os.path.getsize(path), "accuracy": float(np.mean(predicted == truth[found])),
                        "p50_ms": float(np.percentile(timed, 50)), "p99_ms": float(np.percentile(timed, 99)),
                        "agreement_with_keras": float(np.mean(predicted == keras_predicted[found]))}
    result["keras_accuracy_on_found"] = float(np.mean(keras_predicted[found] == truth[found]))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--data_dir", help="another dataset to measure on (default: the snapshot trained on)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--latency_clips", type=int, default=500)
    flags = parser.parse_args(argv)
    result = bench(model_dir=flags.model_dir, data_dir=flags.data_dir, split=flags.split,
                   latency_clips=flags.latency_clips)
    print(f"{flags.model_dir}: {result['examples']} {flags.split} examples, {result['sources_found']} source files "
          f"found; Keras accuracy {result['keras_accuracy_on_found']:.4f} on those")
    print(f"  parity: same argmax {result['same_argmax']:.4%}, max |diff| {result['max_abs_difference']:.2e}, "
          f"max relative {result['max_relative_difference']:.2e}  (targets >= 99.9%, <= 1e-3)")
    float_bytes = result.get("float32", {}).get("bytes")
    for kind in ("float32", "int8"):
        if kind in result:
            row = result[kind]
            ratio = f", {row['bytes'] / float_bytes:.2f}x the float32 file" if kind == "int8" else ""
            print(f"  LiteRT {kind}: accuracy {row['accuracy']:.4f} "
                  f"({(row['accuracy'] - result['keras_accuracy_on_found']) * 100:+.2f} points vs Keras), "
                  f"agrees with Keras on {row['agreement_with_keras']:.2%}, {row['bytes'] / 1024:.0f} KiB{ratio}, "
                  f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms per example on one thread")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
