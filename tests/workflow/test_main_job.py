"""End to end: the main job in quick mode on tiny corpora, down to the report's pictures."""
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from workflow.main import QUICK, build_model_stages

REPO = Path(__file__).resolve().parents[2]
WORDS = ["dog", "yes", "zero"]


def run_main_job(work_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workflow.main", "--quick", "--work_dir", str(work_dir),
         "--words", ",".join(WORDS), "--speakers_per_word", "30", "--festival_per_voice", "1", "--fashion_per_class", "12",
         "--audio_epochs", "2", "--image_epochs", "2", "--predict_samples", "3"],
        cwd=REPO, capture_output=True, text=True, check=False)


def test_quick_main_job_writes_a_complete_report(tmp_path):
    first = run_main_job(tmp_path)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    report = tmp_path / "report"
    page = (report / "index.html").read_text()
    pictures = re.findall(r'<img src="([^"]+)"', page)
    for word in WORDS:
        assert f"word-{word}.png" in pictures, f"no waveform+spectrogram picture for {word!r}"
    for expected in ("image-examples.png", "balance-audio.png", "balance-image.png",
                     "audio-confusion-test.png", "audio-confusion-festival-test.png", "image-confusion-test.png",
                     "audio-training_curves.png", "image-training_curves.png"):
        assert expected in pictures, f"{expected} missing from the report"
    for name in pictures:
        with Image.open(report / name) as picture:
            assert picture.width > 100 and picture.height > 100, f"{name} is {picture.size}"
            assert len(set(np.asarray(picture.convert("L")).ravel().tolist())) > 2, f"{name} is blank"
    assert "Pipeline errors (0)" in page
    assert "<p>Per voice:</p>" in page and "kal_diphone" in page, "the festival voices' accuracy, voice by voice"
    assert "Keyword spotting: the words " in page and "_silence_ recall" in page
    noise = json.loads((tmp_path / "models" / "audio" / "metrics-noise-test.json").read_text())
    assert noise["per_class"]["_silence_"]["support"] == noise["num_examples"] > 0, "every noise clip is silence"
    assert "noise types never trained on, classified _silence_" in first.stdout
    assert page.count("<h3>") >= 5, "expected three evaluations and two prediction tables"

    metrics = json.loads((tmp_path / "models" / "image" / "metrics-test.json").read_text())
    assert metrics["num_examples"] == 10 * 12, "Fashion-MNIST's official test images, 12 per class"
    assert (metrics["snapshot"], metrics["training_snapshot"]) == (1, 1)
    assert "accuracy, Fashion-MNIST, official test split" in first.stdout
    assert f"--data_dir {tmp_path}/data/tfrecords/image --snapshot 1 --model_dir" in first.stdout, \
        "training pins the snapshot that preprocessing committed"
    assert page.count("The model was trained on snapshot 1; evaluated on snapshot 1 of ") == 4, \
        "the speech test split, festival voices, noise clips and Fashion-MNIST"

    second = run_main_job(tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout.count("up to date: skipped") == first.stdout.count("$ "), \
        "a second run with nothing changed should skip every stage"


def test_training_and_evaluation_stages_name_the_pinned_snapshots(tmp_path):
    job = dataclasses.replace(QUICK, work_dir=tmp_path)
    audio, image = job.data.dataset("audio"), job.data.dataset("image")
    stages = {stage.name: stage.command
              for stage in build_model_stages(job, snapshots={audio: 4, image: None, job.festival_dataset: 2})}

    def snapshot_flag(command: list[str]) -> list[str]:
        return command[command.index("--snapshot"):command.index("--snapshot") + 2] if "--snapshot" in command else []

    assert snapshot_flag(stages["train-audio"]) == snapshot_flag(stages["evaluate-audio"]) == ["--snapshot", "4"]
    assert snapshot_flag(stages["evaluate-festival"]) == ["--snapshot", "2"]
    assert snapshot_flag(stages["train-image"]) == [], "a dataset written before snapshots has none to name"
