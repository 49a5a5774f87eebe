"""trainer.evaluate.classification_metrics, trainer.plots and what metrics say of their data, on small inputs."""
import io

import numpy as np
import pytest
from PIL import Image

from trainer import plots
from trainer.evaluate import classification_metrics
from trainer.model_dir import describe_snapshots


def test_metrics_of_a_known_confusion():
    # true a a a b b c ; predicted a a b b b a  (c is never predicted)
    metrics = classification_metrics(true=np.array([0, 0, 0, 1, 1, 2]), predicted=np.array([0, 0, 1, 1, 1, 0]),
                                     labels=["a", "b", "c"])
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert metrics["accuracy"] == pytest.approx(4 / 6) and metrics["num_examples"] == 6
    assert metrics["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert metrics["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert metrics["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert metrics["labels"] == ["a", "b", "c"]


def test_confusion_png_scales_with_thirty_labels():
    labels = [f"word{i:02d}" for i in range(30)]
    confusion = np.random.default_rng(0).integers(0, 5, size=(30, 30)) + np.eye(30, dtype=int) * 40
    with Image.open(io.BytesIO(plots.confusion_png(confusion=confusion, labels=labels, title="t"))) as image:
        assert image.format == "PNG" and min(image.size) >= 1200, "30 labels need a big enough figure to read"


def test_training_curves_png():
    history = {"epoch": [1, 2, 3], "loss": [2.0, 1.0, 0.5], "val_loss": [2.1, 1.2, 0.9], "accuracy": [0.3, 0.6, 0.8],
               "val_accuracy": [0.3, 0.55, 0.7], "best_epoch": 3, "best_val_accuracy": 0.7}
    with Image.open(io.BytesIO(plots.training_curves_png(history=history, title="t"))) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]


def test_metrics_name_the_snapshots_they_come_from():
    assert describe_snapshots({"snapshot": 3, "training_snapshot": 2, "data_dir": "out/audio"}) == \
        "trained on snapshot 2; evaluated on snapshot 3 of out/audio"
    assert describe_snapshots({"snapshot": None, "training_snapshot": None, "data_dir": "old/audio"}) == \
        "trained on data written before snapshots; evaluated on data written before snapshots of old/audio"
    assert describe_snapshots({"data_dir": "out/audio"}) == \
        "trained on an unrecorded snapshot; evaluated on an unrecorded snapshot of out/audio"
