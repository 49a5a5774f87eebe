"""The HTML report of a main-job run: pictures first, opened from disk, no server.

    python -m workflow.report --data_dir data --models_dir models --out report

Reads only manifests, raw files, error rows and what `trainer.evaluate` wrote;
predictions come from `trainer.predict` in a subprocess, so this process never
imports TensorFlow.
"""
import argparse
import html
import json
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from beam_jobs import audio  # noqa: E402
from beam_jobs.config import AudioConfig  # noqa: E402
from beam_jobs.manifest import MANIFEST_NAME, DatasetManifest  # noqa: E402
from app.samples import list_test_samples  # noqa: E402

_SPLIT_COLORS = {"train": "#4c72b0", "validation": "#dd8452", "test": "#55a868"}


def held_out_by_label(manifest: DatasetManifest) -> dict[str, list[Path]]:
    """{label: the raw files of its test split}, found as the app finds them."""
    by_label = {label: [] for label in manifest.labels}
    for sample in list_test_samples(manifest):
        by_label[sample.label].append(sample.path)
    return by_label


def plot_word_examples(manifest: DatasetManifest, files: dict[str, list[Path]], *, out: Path) -> list[str]:
    """One PNG per word: the clip the model gets, as waveform above log-mel spectrogram. Returns the file names."""
    config = manifest.featurizer_config()
    names = []
    for label in manifest.labels:
        if not files.get(label):
            continue
        path = files[label][0]
        data = path.read_bytes()
        samples, rate = audio.decode_wav(data, config=config)
        # The clip the model gets (resampled, cut or padded around the word), so that it lines up with the
        # spectrogram; the file itself may hold the word anywhere.
        clip = audio.fit_to_clip(audio.resample(samples, from_rate=rate, to_rate=config.sample_rate), config=config)
        spectrogram = manifest.featurize(data)
        figure, (top, bottom) = plt.subplots(2, 1, figsize=(3.2, 3.4), height_ratios=(1, 2))
        top.plot(np.arange(clip.size) / config.sample_rate, clip, linewidth=0.5, color="#333")
        top.set_title(f'"{label}"', fontsize=11)
        top.set_xlim(0, config.clip_seconds)
        top.set_yticks([])
        top.tick_params(labelsize=7)
        bottom.imshow(spectrogram.T, origin="lower", aspect="auto", cmap="magma",
                      extent=(0, config.clip_seconds, 0, spectrogram.shape[1]))
        bottom.set_xlabel("seconds", fontsize=8)
        bottom.set_ylabel("mel bin" if config.num_mel_bins else "frequency bin", fontsize=8)
        bottom.tick_params(labelsize=7)
        figure.tight_layout()
        name = f"word-{label}.png"
        figure.savefig(out / name, dpi=90)
        plt.close(figure)
        names.append(name)
    return names


def plot_image_examples(manifest: DatasetManifest, files: dict[str, list[Path]], *, out: Path,
                        per_class: int = 8) -> str:
    """A grid of held-out images, one row per class, as the model sees them."""
    figure, axes = plt.subplots(len(manifest.labels), per_class,
                                figsize=(per_class * 0.9, len(manifest.labels) * 0.95), squeeze=False)
    for row, label in enumerate(manifest.labels):
        for column, axis in enumerate(axes[row]):
            axis.set_xticks([])
            axis.set_yticks([])
            if column < len(files.get(label, [])):
                pixels = manifest.featurize(files[label][column].read_bytes())
                axis.imshow(pixels.squeeze(), cmap="gray" if pixels.shape[-1] == 1 else None)
        axes[row][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "image-examples.png", dpi=90)
    plt.close(figure)
    return "image-examples.png"


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
    axis.set_title(f"{manifest.modality}: class balance per split")
    axis.tick_params(axis="x", labelrotation=60, labelsize=8)
    axis.legend(fontsize=8)
    figure.tight_layout()
    name = f"balance-{manifest.modality}.png"
    figure.savefig(out / name, dpi=90)
    plt.close(figure)
    return name


def predict(model_dir: Path, paths: list[Path]) -> list[dict]:
    """Top-5 predictions for raw files from `trainer.predict --json`, run in its own process."""
    completed = subprocess.run(
        [sys.executable, "-m", "trainer.predict", "--model_dir", str(model_dir), "--json", *map(str, paths)],
        capture_output=True, text=True, check=False)
    rows = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    if len(rows) != len(paths):
        raise RuntimeError(f"trainer.predict answered {len(rows)} of {len(paths)} files:\n{completed.stderr}")
    return rows


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics_section(title: str, metrics: dict, pictures: list[str]) -> str:
    per_class = metrics["per_class"]
    rows = [[label, f"{values['precision']:.3f}", f"{values['recall']:.3f}", f"{values['f1']:.3f}",
             values["support"]] for label, values in per_class.items()]
    images = "".join(f'<img src="{name}" alt="{name}">' for name in pictures)
    return (f"<h3>{html.escape(title)}: accuracy {metrics['accuracy']:.4f} "
            f"on {metrics['num_examples']} examples</h3><div class=pictures>{images}</div>"
            f"<details><summary>per-class precision, recall, F1</summary>"
            f"{_table(['class', 'precision', 'recall', 'F1', 'support'], rows)}</details>")


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
    records = data_dir / "tfrecords"
    manifests = {modality: DatasetManifest.from_json((records / modality / MANIFEST_NAME).read_text())
                 for modality in ("audio", "image")}
    held_out = {modality: held_out_by_label(manifest) for modality, manifest in manifests.items()}
    sections = []

    words = plot_word_examples(manifests["audio"], held_out["audio"], out=out)
    sections.append("<h2>Speech commands: each word as waveform and spectrogram</h2>"
                    "<p>A held-out clip per word as the model gets it: resampled, and cut or padded to one clip "
                    "length around the word.</p><div class=words>"
                    + "".join(f'<img src="{name}" alt="{name}">' for name in words) + "</div>")
    sections.append("<h2>Fashion-MNIST: held-out images per class</h2>"
                    f'<img src="{plot_image_examples(manifests["image"], held_out["image"], out=out)}" alt="images">')
    sections.append("<h2>Class balance per split</h2><div class=pictures>"
                    + "".join(f'<img src="{plot_class_balance(m, out=out)}" alt="balance">' for m in manifests.values())
                    + "</div>")

    sections.append("<h2>Models</h2>")
    evaluations = [("audio", "test", "Speech commands, test split (speakers unseen in training)"),
                   ("audio", "festival-test", "Speech commands, festival voices (a synthesizer never trained on)"),
                   ("image", "test", "Fashion-MNIST, official test split")]
    for modality, name, title in evaluations:
        model_dir = models_dir / modality
        pictures = []
        for picture in (f"confusion-{name}.png", "training_curves.png" if name == "test" else None):
            if picture and (model_dir / picture).exists():
                shutil.copyfile(model_dir / picture, out / f"{modality}-{picture}")
                pictures.append(f"{modality}-{picture}")
        metrics = json.loads((model_dir / f"metrics-{name}.json").read_text())
        sections.append(_metrics_section(title, metrics, pictures))

    sections.append("<h2>Predictions on held-out files</h2>")
    for modality, manifest in manifests.items():
        picks = [(label, paths[0]) for label, paths in held_out[modality].items() if paths][:predict_samples]
        rows = predict(models_dir / modality, [path for _, path in picks])
        sections.append(f"<h3>{modality}</h3>" + _predictions_section(rows, [label for label, _ in picks]))

    error_rows = [json.loads(line) for line in (records / "errors.jsonl").read_text().splitlines() if line.strip()]
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
