"""What the app shows, as plain HTML strings and PNG bytes: no widgets, no TensorFlow.

Every function is pure, so the page's content is tested without a browser and
the widgets in `app.widgets` only place it. Pictures of an example come from
`trainer.plots.preview_png`, which the report uses too.
"""
import html
import io

import numpy as np
from PIL import Image

from app.artifacts import Missing
from beam_jobs.table.manifest import DatasetManifest

_BAR_COLORS = {"right": "#2e7d32", "wrong": "#c62828", "unknown": "#1565c0"}


def predictions_html(predictions: list[dict], *, true_label: str | None) -> str:
    """The top-k table, best first, with a bar per probability and the verdict against `true_label`.

    Each row carries its exact label and probability in data attributes, so a
    test reads the numbers the page got rather than their rounded text.
    """
    if true_label is None:
        verdict, outcome = "True label unknown (uploaded file).", "unknown"
    elif predictions[0]["label"] == true_label:
        verdict, outcome = f"Right: the true label is <b>{html.escape(true_label)}</b>.", "right"
    else:
        verdict, outcome = f"Wrong: the true label is <b>{html.escape(true_label)}</b>.", "wrong"
    rows = []
    for rank, prediction in enumerate(predictions, start=1):
        label, probability = prediction["label"], float(prediction["probability"])
        color, weight = (_BAR_COLORS[outcome], "bold") if rank == 1 else ("#90a4ae", "normal")
        rows.append(
            f'<tr class="soundsight-prediction" data-label="{html.escape(label)}" data-probability="{probability!r}">'
            f'<td style="padding:2px 10px 2px 0">{rank}</td>'
            f'<td style="padding:2px 10px 2px 0;font-weight:{weight}">{html.escape(label)}</td>'
            f'<td style="padding:2px 10px 2px 0;width:220px"><div style="background:#eceff1;width:200px;height:14px">'
            f'<div style="background:{color};width:{probability * 100:.1f}%;height:14px"></div></div></td>'
            f'<td style="text-align:right">{probability * 100:.1f}%</td></tr>')
    return (f'<div class="soundsight-verdict soundsight-verdict-{outcome}" data-outcome="{outcome}" '
            f'style="color:{_BAR_COLORS[outcome]};font-size:1.1em;margin:4px 0">{verdict}</div>'
            f'<table style="border-collapse:collapse">{"".join(rows)}</table>')


def trained_on_html(manifest: DatasetManifest) -> str:
    """Which data the model learnt from: the snapshot whose manifest its folder holds, and its size."""
    examples = manifest.splits["train"].num_examples if "train" in manifest.splits else 0
    return (f'<div class="soundsight-trained-on-{html.escape(manifest.modality)}" style="color:#546e7a">'
            f"The model was trained on {html.escape(manifest.describe())} "
            f"({examples} training examples).</div>")


def error_html(message: str) -> str:
    """A visible error line with the reason."""
    return (f'<div class="soundsight-error-message" style="color:#b71c1c;background:#ffebee;'
            f'border-left:4px solid #b71c1c;padding:6px 10px;margin:4px 0">{html.escape(message)}</div>')


def source_html(*, name: str, true_label: str | None) -> str:
    """Which file is loaded and what it really is, when that is known."""
    truth = html.escape(true_label) if true_label is not None else "unknown"
    return f"<div>Loaded <code>{html.escape(name)}</code>; true label: <b>{truth}</b></div>"


def missing_html(missing: list[Missing], *, heading: str) -> str:
    """What is missing and the command that produces each piece, upstream first."""
    items = "".join(f"<li>{html.escape(item.what)}: <code>{html.escape(item.path)}</code><br>"
                    f"make it with <code>{html.escape(item.command)}</code></li>" for item in missing)
    return (f'<div class="soundsight-missing" style="background:#fff8e1;border-left:4px solid #f9a825;'
            f'padding:6px 10px;margin:4px 0"><b>{html.escape(heading)}</b><ul>{items}</ul>'
            f"<div>Or run <code>scripts/main.sh</code>, which makes all of them.</div></div>")


def pixels_png(pixels: np.ndarray) -> bytes:
    """uint8 [h, w, 1 or 3] as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()
