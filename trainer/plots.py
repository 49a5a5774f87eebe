"""PNG figures for people: an example as the model gets it, the confusion matrix, the training curves.

matplotlib with the Agg backend, no TensorFlow: the app and the report draw
examples with `preview_png` too.
"""
import io

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in threads and on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def preview_png(panels: list, *, title: str | None = None, width: float = 7.5, colorbar: bool = True) -> bytes:
    """PNG of a modality's preview panels (`beam_jobs.modalities.spec.PreviewPanel`), stacked, sharing the time axis.

    A waveform is drawn as a line over its seconds, a heatmap as an image with
    time across and bins up, pixels as a grayscale or colour image.
    """
    heights = [2 if panel.kind == "heatmap" else 1 for panel in panels]
    figure = plt.figure(figsize=(width, 1.4 * sum(heights) + (0.5 if title else 0.2)))
    # A narrow column for the heatmaps' colour bars, so every panel spans the same time axis width.
    grid = figure.add_gridspec(len(panels), 2, height_ratios=heights, width_ratios=(40, 1 if colorbar else 0.01))
    for row, panel in enumerate(panels):
        axes = figure.add_subplot(grid[row, 0])
        axes.set_title(panel.title, fontsize=9)
        axes.tick_params(labelsize=7)
        if panel.kind == "waveform":
            axes.plot(np.arange(panel.values.size) / panel.rate, panel.values, linewidth=0.6, color="#37474f")
            axes.set_xlim(0, max(panel.seconds, 1e-3))
            axes.set_ylim(-1.05, 1.05)
            axes.set_xlabel("seconds", fontsize=8)
        elif panel.kind == "heatmap":
            image = axes.imshow(panel.values.T, origin="lower", aspect="auto", cmap="magma",
                                extent=(0, panel.seconds, 0, panel.values.shape[1]))
            axes.set_xlabel("seconds", fontsize=8)
            axes.set_ylabel(panel.ylabel, fontsize=8)
            if colorbar:
                figure.colorbar(image, cax=figure.add_subplot(grid[row, 1])).ax.tick_params(labelsize=7)
        else:
            axes.imshow(panel.values.squeeze(), cmap="gray" if panel.values.shape[-1] == 1 else None)
            axes.set_xticks([])
            axes.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return _to_png(figure)


def confusion_png(*, confusion: np.ndarray, labels: list[str], title: str) -> bytes:
    """PNG of an int [n, n] confusion matrix (rows true, columns predicted), readable up to ~40 labels.

    Colour is the row-normalised rate, so rare and common classes read alike;
    the cells show counts.
    """
    count = len(labels)
    size = max(5.0, 0.34 * count + 2.5)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(size + 1.2, size))
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    axes.set_xticks(range(count), labels, rotation=90, fontsize=8)
    axes.set_yticks(range(count), labels, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=10)
    for true, predicted in zip(*np.nonzero(confusion)):
        axes.text(predicted, true, str(confusion[true, predicted]), ha="center", va="center",
                  fontsize=7 if count > 15 else 9, color="white" if rates[true, predicted] > 0.5 else "black")
    figure.tight_layout()
    return _to_png(figure)


def training_curves_png(*, history: dict, title: str) -> bytes:
    """PNG of loss and accuracy per epoch, train vs validation, from a history.json dict."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(history["epoch"], history[metric], label="train", marker=".")
        axes.plot(history["epoch"], history[f"val_{metric}"], label="validation", marker=".")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    accuracy_axes.axvline(history["best_epoch"], color="gray", linestyle="--", linewidth=1)
    accuracy_axes.set_title(f"best validation accuracy {history['best_val_accuracy']:.4f} "
                            f"(epoch {history['best_epoch']})", fontsize=10)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return _to_png(figure)


def _to_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
