"""Evaluates a trained model on a split of a dataset: a metrics JSON and PNGs a person can read.

    python -m trainer.evaluate --model_dir models/audio --data_dir out/audio [--split test] [--snapshot 3]

Reads one snapshot of --data_dir, resolved once, at start: the current one, or
--snapshot ID. Writes into --model_dir:
  metrics-<split>.json   accuracy, num_examples, per-class precision/recall/F1/support,
                         the confusion matrix (rows true, columns predicted) and its label order,
                         the snapshot evaluated and the one the model was trained on
  confusion-<split>.png  the confusion matrix
  training_curves.png    loss and accuracy per epoch, train vs validation (from history.json)
--data_dir may be a newer version of the model's dataset or another dataset
(e.g. other speakers, preprocessed separately) whose label vocabulary agrees
with the model's on their common part: a dataset's labels only grow, and
examples of labels the model does not know are left out and reported. Another
dataset's files are tagged with the name of its input folder, e.g.
metrics-festival-all.json, and another snapshot of the model's own dataset
with its id, e.g. metrics-snapshot3-test.json, so the model's own test
metrics are never overwritten. --split all evaluates every split together.
"""
import argparse
import json
import posixpath
import sys

import numpy as np
import tensorflow as tf

from beam_jobs.inputs.splits import SPLITS
from beam_jobs.modalities.config import SILENCE_LABEL, UNKNOWN_LABEL
from trainer import plots
from trainer.data import DatasetReadError, load_manifest, make_dataset, naming_bad_shards
from trainer.model_dir import ModelDir, describe_snapshots
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
        **keyword_scores(confusion=confusion, labels=labels),
    }


def keyword_scores(*, confusion: np.ndarray, labels: list[str]) -> dict:
    """With _silence_ or _unknown_ among `labels`: the accuracy on the other labels' (the words') examples,
    and how many examples of each are told apart, as keyword spotting reports them; else nothing."""
    extra = [label for label in (SILENCE_LABEL, UNKNOWN_LABEL) if label in labels]
    if not extra:
        return {}
    words = [index for index, label in enumerate(labels) if label not in extra]
    support = int(confusion[words].sum())
    return {"words_accuracy": float(np.trace(confusion[np.ix_(words, words)]) / support) if support else None,
            "words_support": support}


def evaluate(*, model_dir: str, data_dir: str, split: str = "test", tag: str | None = None,
             batch_size: int = 256, snapshot: int | None = None) -> dict:
    """Predicts every example of `split` ("all" for every split) and writes metrics and PNGs; returns the metrics.

    Reads snapshot `snapshot` of `data_dir`, or its current one when None.
    """
    predictor = Predictor.from_model_dir(model_dir)
    manifest = load_manifest(data_dir, snapshot)
    unknown_labels = _check_compatible(model_manifest=predictor.manifest, data_manifest=manifest, data_dir=data_dir)
    if tag is None:
        tag = _default_tag(data_manifest=manifest, model_manifest=predictor.manifest, data_dir=data_dir,
                           model_dir=model_dir)
    splits = [name for name in SPLITS if name in manifest.splits] if split == "all" else [split]
    dataset = make_dataset(manifest=manifest, data_dir=data_dir, splits=splits, batch_size=batch_size,
                           training=False)
    true, predicted = [], []
    with naming_bad_shards(manifest=manifest, data_dir=data_dir, splits=splits):
        for tensors, one_hot in dataset:
            true.append(np.argmax(one_hot.numpy(), axis=1))
            predicted.append(np.argmax(predictor.predict_tensors(tensors.numpy()), axis=1))
    true, predicted = np.concatenate(true), np.concatenate(predicted)
    # Examples of labels added to the dataset after the model was trained cannot be scored: left out, and said.
    known = true < len(predictor.labels)
    left_out = {label: int(np.sum(true == index)) for index, label in enumerate(manifest.labels)
                if index >= len(predictor.labels) and np.any(true == index)}
    metrics = classification_metrics(true=true[known], predicted=predicted[known], labels=predictor.labels)
    metrics.update(split=split, data_dir=data_dir, model_dir=model_dir, unknown_labels=left_out,
                   snapshot=manifest.snapshot_id, dataset_created=manifest.created,
                   training_snapshot=predictor.manifest.snapshot_id)
    if unknown_labels:
        print(f"note: the model does not know {len(unknown_labels)} of the dataset's labels "
              f"({', '.join(unknown_labels)}); left out {sum(left_out.values())} of their examples.",
              file=sys.stderr)

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
    print(f"{title}; macro F1 {metrics['macro_f1']:.4f}; {describe_snapshots(metrics)}. "
          f"Wrote {', '.join(written)}.")
    return metrics


def _default_tag(*, data_manifest, model_manifest, data_dir: str, model_dir: str) -> str:
    """"" for the snapshot the model was trained on, "snapshot3" for another snapshot of the folder it was
    trained on, else the data's input folder name.

    A snapshot is known by its run id: two runs within one second share their `created` time.
    """
    def identity(manifest):
        return manifest.run_id or (manifest.created, tuple(manifest.input_roots))

    if identity(data_manifest) == identity(model_manifest):
        return ""
    layout = ModelDir(model_dir)
    if data_manifest.snapshot_id is not None and tf.io.gfile.exists(layout.train_config):
        with tf.io.gfile.GFile(layout.train_config) as config_file:
            trained_on = json.load(config_file).get("data_dir")
        if trained_on is not None and trained_on.rstrip("/") == data_dir.rstrip("/"):
            return f"snapshot{data_manifest.snapshot_id}"
    return posixpath.basename(data_manifest.input_roots[0].rstrip("/"))


def _check_compatible(*, model_manifest, data_manifest, data_dir: str) -> list[str]:
    """The data's labels the model does not know; ValueError when the data cannot be fed to the model.

    A dataset's vocabulary only grows (beam_jobs.inputs.labels), so a model trained on it before reads
    every label it knows at the same index: the two vocabularies must agree on their common part.
    Warns when the featurization differs.
    """
    model_labels, data_labels = list(model_manifest.labels), list(data_manifest.labels)
    shared = min(len(model_labels), len(data_labels))
    if model_labels[:shared] != data_labels[:shared]:
        missing = sorted(set(model_labels) - set(data_labels))
        extra = sorted(set(data_labels) - set(model_labels))
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
    return data_labels[len(model_labels):]


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
                             "snapshot the model was trained on, snapshotID for another snapshot of its dataset, else the data's "
                             "input folder name)")
    parser.add_argument("--batch_size", type=int, default=256, help="examples per prediction batch (default: 256)")
    parser.add_argument("--snapshot", type=int, metavar="ID",
                        help="evaluate snapshot ID of --data_dir (default: the current one)")
    flags = parser.parse_args(argv)
    try:
        evaluate(model_dir=flags.model_dir, data_dir=flags.data_dir, split=flags.split, tag=flags.tag,
                 batch_size=flags.batch_size, snapshot=flags.snapshot)
    except (ValueError, FileNotFoundError, DatasetReadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
