"""Evaluates a trained model on a split of a dataset: a metrics JSON and PNGs a person can read.

    python -m trainer.evaluate --model_dir models/audio --data_dir out/audio [--split test]

Writes into --model_dir:
  metrics-<split>.json   accuracy, num_examples, per-class precision/recall/F1/support,
                         the confusion matrix (rows true, columns predicted) and its label order
  confusion-<split>.png  the confusion matrix
  training_curves.png    loss and accuracy per epoch, train vs validation (from history.json)
--data_dir may be another dataset with the same label vocabulary (e.g. other
speakers, preprocessed separately); its files are then tagged with the name of
its input folder, e.g. metrics-festival-all.json, so the model's own test
metrics are never overwritten. --split all evaluates every split together.
"""
import argparse
import json
import posixpath
import sys

import numpy as np
import tensorflow as tf

from beam_jobs.splits import SPLITS
from trainer import plots
from trainer.data import DatasetReadError, load_manifest, make_dataset, naming_bad_shards
from trainer.model_dir import ModelDir
from trainer.predict import Predictor


def classification_metrics(*, true: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix of int [n] label indices."""
    count = len(labels)
    confusion = np.bincount(true * count + predicted, minlength=count * count).reshape(count, count)
    hits = np.diag(confusion).astype(float)
    support, predicted_count = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(hits, predicted_count, out=np.zeros(count), where=predicted_count > 0)
    recall = np.divide(hits, support, out=np.zeros(count), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(count), where=precision + recall > 0)
    return {
        "accuracy": float(hits.sum() / max(len(true), 1)),
        "num_examples": int(len(true)),
        "macro_f1": float(f1[support > 0].mean()) if (support > 0).any() else 0.0,
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(support[i])} for i, label in enumerate(labels)},
        "labels": list(labels),
        "confusion_matrix": confusion.tolist(),
    }


def evaluate(*, model_dir: str, data_dir: str, split: str = "test", tag: str | None = None,
             batch_size: int = 256) -> dict:
    """Predicts every example of `split` ("all" for every split) and writes metrics and PNGs; returns the metrics."""
    predictor = Predictor.from_model_dir(model_dir)
    manifest = load_manifest(data_dir)
    _check_compatible(model_manifest=predictor.manifest, data_manifest=manifest, data_dir=data_dir)
    if tag is None:
        same_dataset = (manifest.created, manifest.input_roots) == (predictor.manifest.created,
                                                                    predictor.manifest.input_roots)
        tag = "" if same_dataset else posixpath.basename(manifest.input_roots[0].rstrip("/"))
    splits = [name for name in SPLITS if name in manifest.splits] if split == "all" else [split]
    dataset = make_dataset(manifest=manifest, data_dir=data_dir, splits=splits, batch_size=batch_size,
                           training=False)
    true, predicted = [], []
    with naming_bad_shards(manifest=manifest, data_dir=data_dir, splits=splits):
        for tensors, one_hot in dataset:
            true.append(np.argmax(one_hot.numpy(), axis=1))
            predicted.append(np.argmax(predictor.predict_tensors(tensors.numpy()), axis=1))
    metrics = classification_metrics(true=np.concatenate(true), predicted=np.concatenate(predicted),
                                      labels=predictor.labels)
    metrics.update(split=split, data_dir=data_dir, model_dir=model_dir)

    stem = f"{tag}-{split}" if tag else split
    title = f"{posixpath.basename(model_dir.rstrip('/'))} on {stem}: accuracy {metrics['accuracy']:.4f} " \
            f"({metrics['num_examples']} examples)"
    layout = ModelDir(model_dir)
    _write(layout.metrics(stem), (json.dumps(metrics, indent=2) + "\n").encode("utf-8"))
    _write(layout.confusion(stem), plots.confusion_png(
        confusion=np.array(metrics["confusion_matrix"]), labels=predictor.labels, title=title))
    written = [layout.metrics(stem), layout.confusion(stem)]
    if tf.io.gfile.exists(layout.history):
        with tf.io.gfile.GFile(layout.history) as history_file:
            history = json.load(history_file)
        _write(layout.training_curves, plots.training_curves_png(history=history, title=model_dir))
        written.append(layout.training_curves)
    print(f"{title}; macro F1 {metrics['macro_f1']:.4f}. Wrote {', '.join(written)}.")
    return metrics


def _check_compatible(*, model_manifest, data_manifest, data_dir: str) -> None:
    """Raises ValueError when the data cannot be fed to the model; warns when featurization differs."""
    if list(data_manifest.labels) != list(model_manifest.labels):
        missing = sorted(set(model_manifest.labels) - set(data_manifest.labels))
        extra = sorted(set(data_manifest.labels) - set(model_manifest.labels))
        raise ValueError(f"the label vocabulary of {data_dir} differs from the model's: "
                         f"missing {missing}, extra {extra}" + ("" if missing or extra else ", order differs"))
    data_input = (data_manifest.modality, data_manifest.tensor_dtype, list(data_manifest.tensor_shape))
    model_input = (model_manifest.modality, model_manifest.tensor_dtype, list(model_manifest.tensor_shape))
    if data_input != model_input:
        raise ValueError(f"{data_dir} holds {data_input} tensors (modality, dtype, shape); the model takes "
                         f"{model_input}")
    if data_manifest.featurization != model_manifest.featurization:
        differing = {key: (model_manifest.featurization.get(key), value)
                     for key, value in data_manifest.featurization.items()
                     if model_manifest.featurization.get(key) != value}
        print(f"warning: {data_dir} was featurized differently from the training data "
              f"(model, data): {differing}", file=sys.stderr)


def _write(file_path: str, data: bytes) -> None:
    with tf.io.gfile.GFile(file_path, "wb") as output:
        output.write(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="the --model_dir of a finished trainer.train run")
    parser.add_argument("--data_dir", required=True, help="a beam_jobs.preprocess output folder (same labels)")
    parser.add_argument("--split", default="test", choices=(*SPLITS, "all"), help="split to evaluate (default: test)")
    parser.add_argument("--tag", default=None,
                        help="names the output files metrics-TAG-SPLIT.json etc. (default: none for the "
                             "model's own dataset, else the data's input folder name)")
    parser.add_argument("--batch_size", type=int, default=256, help="examples per prediction batch (default: 256)")
    flags = parser.parse_args(argv)
    try:
        evaluate(model_dir=flags.model_dir, data_dir=flags.data_dir, split=flags.split, tag=flags.tag,
                 batch_size=flags.batch_size)
    except (ValueError, FileNotFoundError, DatasetReadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
