"""The HTML report of a main-job run: pictures first, opened from disk, no server.

    python -m workflow.report --data_dir data --models_dir models --out report

Reads the current snapshot of each dataset, resolved once, at start, raw files,
error rows and what `trainer.evaluate` wrote, and predicts held-out files with
`trainer.predict.Predictor`, as the app does. Each evaluation says which
snapshot the model was trained on and which one it was evaluated on.
Pictures of examples are the modality's preview (`trainer.plots.preview_png`):
what the model gets.
"""
import argparse
import html
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from beam_jobs.modalities import MODALITIES  # noqa: E402
from beam_jobs.modalities.config import UNKNOWN_LABEL  # noqa: E402
from beam_jobs.table.layout import ERRORS_NAME, DataFolder  # noqa: E402
from beam_jobs.table.manifest import DatasetManifest  # noqa: E402
from beam_jobs.table.raw_files import held_out_by_label  # noqa: E402
from trainer import plots  # noqa: E402
from trainer.model_dir import ModelDir, describe_snapshots  # noqa: E402
from trainer.predict import Predictor, raw_input  # noqa: E402
from workflow.main import keyword_line, read_manifest  # noqa: E402

_SPLIT_COLORS = {"train": "#4c72b0", "validation": "#dd8452", "test": "#55a868"}
GRID_PER_CLASS = 8  # held-out images per class in a grid of pixel previews
_BATCH = 256  # files per call of the serving model: its padded batch of waveforms stays a few MB


def plot_label_examples(manifest: DatasetManifest, files: dict[str, list[Path]], *, out: Path) -> list[str]:
    """One PNG per label: its first held-out file as the model gets it. Returns the file names."""
    noun = manifest.spec.nouns[0]
    names = []
    for label in manifest.labels:
        if not files.get(label):
            continue
        name = f"{noun}-{label}.png"
        panels = manifest.preview(files[label][0].read_bytes())
        (out / name).write_bytes(plots.preview_png(panels, title=f'"{label}"', width=3.4, colorbar=False))
        names.append(name)
    return names


def plot_pixel_grid(manifest: DatasetManifest, files: dict[str, list[Path]], *, out: Path) -> str:
    """A grid of held-out files' pixels, one row per class, as the model sees them."""
    figure, axes = plt.subplots(len(manifest.labels), GRID_PER_CLASS,
                                      figsize=(GRID_PER_CLASS * 0.9, len(manifest.labels) * 0.95), squeeze=False)
    for row, label in enumerate(manifest.labels):
        for column, axis in enumerate(axes[row]):
            axis.set_xticks([])
            axis.set_yticks([])
            if column < len(files.get(label, [])):
                pixels = manifest.featurize(files[label][column].read_bytes())
                axis.imshow(pixels.squeeze(), cmap="gray" if pixels.shape[-1] == 1 else None)
        axes[row][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    figure.tight_layout()
    name = f"{manifest.modality}-examples.png"
    figure.savefig(out / name, dpi=90)
    plt.close(figure)
    return name


def examples_section(manifest: DatasetManifest, files: dict[str, list[Path]], *, out: Path) -> str:
    """Held-out examples as the model gets them: a grid when the model sees pixels, else a picture per label."""
    spec = manifest.spec
    example = next((paths[0] for paths in files.values() if paths), None)
    if example is not None and all(panel.kind == "pixels" for panel in manifest.preview(example.read_bytes())):
        pictures = [plot_pixel_grid(manifest, files, out=out)]
        text = f"Held-out files per {spec.nouns[0]}, as the model sees them."
    else:
        pictures = plot_label_examples(manifest, files, out=out)
        text = f"A held-out file per {spec.nouns[0]} as the model gets it."
    return (f"<h2>{html.escape(spec.title)}: held-out examples</h2><p>{text}</p><div class=pictures>"
            + "".join(f'<img src="{name}" alt="{name}">' for name in pictures) + "</div>")


def plot_class_balance(manifest: DatasetManifest, *, out: Path) -> str:
    """Stacked bars: examples per label, split by train/validation/test."""
    figure, axis = plt.subplots(figsize=(max(6.0, 0.32 * len(manifest.labels) + 2), 3.4))
    bottom = np.zeros(len(manifest.labels))
    for split_name, split in sorted(manifest.splits.items(), key=lambda item: list(_SPLIT_COLORS).index(item[0])):
        counts = np.array([split.label_counts.get(label, 0) for label in manifest.labels])
        axis.bar(manifest.labels, counts, bottom=bottom, label=f"{split_name} ({split.num_examples})",
                 color=_SPLIT_COLORS.get(split_name))
        bottom += counts
    axis.set_ylabel("examples")
    axis.set_title(f"{manifest.modality}, {manifest.describe()}: class balance per split")
    axis.tick_params(axis="x", labelrotation=60, labelsize=8)
    axis.legend(fontsize=8)
    figure.tight_layout()
    name = f"balance-{manifest.modality}.png"
    figure.savefig(out / name, dpi=90)
    plt.close(figure)
    return name


def predict(model_dir: Path, paths: list[Path]) -> list[dict]:
    """{"path", "top"} of the top-5 predictions for each raw file, as `trainer.predict --json` prints them."""
    predictor = Predictor.from_model_dir(str(model_dir))
    return [{"path": str(path), "top": predictor.predict_bytes(path.read_bytes())} for path in paths]


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics_section(title: str, metrics: dict, pictures: list[str]) -> str:
    per_class = metrics["per_class"]
    rows = [[label, f"{values['precision']:.3f}", f"{values['recall']:.3f}", f"{values['f1']:.3f}",
             values["support"]] for label, values in per_class.items()]
    images = "".join(f'<img src="{name}" alt="{name}">' for name in pictures)
    keywords = keyword_line(metrics)
    return (f"<h3>{html.escape(title)}: accuracy {metrics['accuracy']:.4f} "
            f"on {metrics['num_examples']} examples</h3><p>The model was {html.escape(describe_snapshots(metrics))}."
            f"{' Keyword spotting: ' + html.escape(keywords) + '.' if keywords else ''}</p><div class=pictures>{images}</div>"
            f"<details><summary>per-class precision, recall, F1</summary>"
            f"{_table(['class', 'precision', 'recall', 'F1', 'support'], rows)}</details>")


def per_voice_section(*, model_dir: Path, raw_dir: Path) -> str:
    """A table of the model's accuracy on each voice of a spoken corpus (the words; and _unknown_'s recall),
    from the voices its corpus.json names; empty when it names none (a corpus built before they were kept)."""
    record_path = raw_dir / "corpus.json"
    voices = json.loads(record_path.read_text()).get("voices") if record_path.exists() else None
    if not voices:
        return ""
    predictor = Predictor.from_model_dir(str(model_dir))
    paths, truths = [], []
    for path in sorted(raw_dir.glob("*/*.wav")):
        folder = path.parent.name
        truth = folder if folder in predictor.labels else UNKNOWN_LABEL
        if truth in predictor.labels and path.name.split("_nohash_")[0] in voices:
            paths.append(path)
            truths.append(truth)
    predicted = np.concatenate([
        np.argmax(predictor.predict_raw([raw_input(predictor.manifest, path.read_bytes())
                                         for path in paths[start:start + _BATCH]]), axis=1)
        for start in range(0, len(paths), _BATCH)])
    scores = {}  # voice -> [words right, words, unknown right, unknown]
    for path, truth, index in zip(paths, truths, predicted):
        score = scores.setdefault(voices[path.name.split("_nohash_")[0]], [0, 0, 0, 0])
        offset = 2 if truth == UNKNOWN_LABEL else 0
        score[offset] += predictor.labels[index] == truth
        score[offset + 1] += 1
    rows = [[voice, f"{right / total:.3f} ({total})" if total else "-",
             f"{unknown_right / unknown:.3f} ({unknown})" if unknown else "-"]
            for voice, (right, total, unknown_right, unknown) in sorted(scores.items())]
    return "<p>Per voice:</p>" + _table(["voice", "the words: accuracy (clips)", f"{UNKNOWN_LABEL}: recall (clips)"],
                                        rows)


def _predictions_section(rows: list[dict], truths: list[str]) -> str:
    table_rows = []
    for row, truth in zip(rows, truths):
        top = row["top"][0]
        verdict = "right" if top["label"] == truth else "wrong"
        others = ", ".join(f"{item['label']} {item['probability']:.2f}" for item in row["top"][1:])
        predicted = f"{top['label']} ({top['probability']:.2f})"
        table_rows.append([Path(row["path"]).name, truth, predicted, verdict, others])
    return _table(["file", "true label", "predicted", "", "next guesses"], table_rows)


def write_report(*, data_dir: Path, models_dir: Path, out: Path, predict_samples: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = DataFolder(data_dir)
    # Resolved once: a re-ingest committing meanwhile changes nothing this report reads of the datasets.
    manifests = {modality: read_manifest(data.dataset(modality)) for modality in MODALITIES}
    held_out = {modality: held_out_by_label(manifest) for modality, manifest in manifests.items()}
    sections = [examples_section(manifest, held_out[modality], out=out) for modality, manifest in manifests.items()]
    sections.append("<h2>Class balance per split</h2><p>"
                    + "; ".join(f"{modality}: {manifest.describe()} of {html.escape(str(data.dataset(modality)))}"
                                for modality, manifest in manifests.items())
                    + ".</p><div class=pictures>"
                    + "".join(f'<img src="{plot_class_balance(m, out=out)}" alt="balance">' for m in manifests.values())
                    + "</div>")

    sections.append("<h2>Models</h2>")
    evaluations = [("audio", "test", "Speech commands, test split (speakers unseen in training)"),
                   ("audio", "festival-test", "Speech commands, festival voices (a synthesizer never trained on)"),
                   ("audio", "noise-test", "Speech commands, noise types never mixed in (all should be _silence_)"),
                   ("image", "test", "Fashion-MNIST, official test split")]
    for modality, stem, title in evaluations:
        model_dir = ModelDir(str(models_dir / modality))
        if not Path(model_dir.metrics(stem)).exists():
            continue  # a test set this job does not make (noise clips come with the keyword classes)
        pictures = []
        for picture in (model_dir.confusion(stem), model_dir.training_curves if stem == "test" else None):
            if picture and Path(picture).exists():
                name = f"{modality}-{Path(picture).name}"
                shutil.copyfile(picture, out / name)
                pictures.append(name)
        metrics = json.loads(Path(model_dir.metrics(stem)).read_text())
        sections.append(_metrics_section(title, metrics, pictures))
        if stem == "festival-test":
            sections.append(per_voice_section(model_dir=models_dir / modality, raw_dir=data.raw("festival")))

    sections.append("<h2>Predictions on held-out files</h2>")
    for modality in manifests:
        picks = [(label, paths[0]) for label, paths in held_out[modality].items() if paths][:predict_samples]
        rows = predict(models_dir / modality, [path for _, path in picks])
        sections.append(f"<h3>{modality}</h3>" + _predictions_section(rows, [label for label, _ in picks]))

    error_rows = [json.loads(line) for line in (data.records / ERRORS_NAME).read_text().splitlines() if line.strip()]
    sections.append(f"<h2>Pipeline errors ({len(error_rows)})</h2>"
                    + (_table(["modality", "file", "reason"],
                              [[row.get("modality", ""), row["path"], row["reason"]] for row in error_rows])
                       if error_rows else "<p>Every input file became an example.</p>"))

    page = out / "index.html"
    page.write_text(_PAGE.format(body="\n".join(sections)))
    return page


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>soundsight report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }}
h2 {{ border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }}
.words, .pictures {{ display: flex; flex-wrap: wrap; gap: 8px; }}
img {{ max-width: 100%; }}
table {{ border-collapse: collapse; font-size: 14px; margin: .5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
</style></head>
<body><h1>soundsight: one pipeline, two problems</h1>
<p>Spoken commands become images once they are spectrograms, so one small CNN serves both.</p>
{body}
</body></html>
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, required=True, help="holds raw/ and tfrecords/")
    parser.add_argument("--models_dir", type=Path, required=True, help="holds audio/ and image/ model folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for index.html and its pictures")
    parser.add_argument("--predict_samples", type=int, default=8, help="held-out files predicted per modality")
    args = parser.parse_args(argv)
    page = write_report(data_dir=args.data_dir, models_dir=args.models_dir, out=args.out,
                        predict_samples=args.predict_samples)
    print(f"report written to {page.resolve()}")


if __name__ == "__main__":
    main()
