"""Tiny, separable folder-per-class raw corpora for the trainer tests (tones and shapes), and subprocesses.

The tests turn the corpora into shards with the real pipeline, `python -m
beam_jobs.preprocess`, in a subprocess: beam_jobs pulls in the `tfrecord`
package, whose protobufs cannot share a process with TensorFlow.
"""
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.io.wavfile
from PIL import Image, ImageDraw

from trainer.config import TrainConfig

REPO = pathlib.Path(__file__).resolve().parents[2]

TONE_HZ = {"low": 300.0, "mid": 900.0, "high": 2700.0}
SHAPES = ("disc", "horizontal", "vertical")
SAMPLE_RATE = 16000
TOY_CONFIG = TrainConfig(epochs=6, batch_size=8, patience=6)  # a few seconds per model on 2 cores


def tone_wav(*, frequency: float, seed: int) -> bytes:
    """A 16-bit 16 kHz wav: a 0.3-0.6 s tone at a random place in 1 s, over a little noise."""
    rng = np.random.default_rng(seed)
    samples = rng.normal(0, 0.003, SAMPLE_RATE)
    length = int(rng.uniform(0.3, 0.6) * SAMPLE_RATE)
    start = int(rng.integers(0, SAMPLE_RATE - length))
    t = np.arange(length) / SAMPLE_RATE
    samples[start:start + length] += rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * frequency * rng.uniform(0.97, 1.03) * t)
    buffer = io.BytesIO()
    scipy.io.wavfile.write(buffer, SAMPLE_RATE, np.round(samples * 32767).astype(np.int16))
    return buffer.getvalue()


def shape_png(*, shape: str, seed: int) -> bytes:
    """A 28x28 grayscale PNG of a white disc, horizontal bar or vertical bar of random size and place."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(image)
    size, thickness = int(rng.integers(10, 18)), int(rng.integers(3, 6))
    x, y = (int(v) for v in rng.integers(1, 27 - size, 2))
    box = {"disc": [x, y, x + size, y + size], "horizontal": [x, y, x + size, y + thickness],
           "vertical": [x, y, x + thickness, y + size]}[shape]
    (draw.ellipse if shape == "disc" else draw.rectangle)(box, fill=int(rng.integers(150, 256)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_tone_corpus(root: pathlib.Path, *, per_class: int) -> None:
    """root/<low|mid|high>/spk<i>_nohash_0.wav, so speakers are split like Speech Commands."""
    for label_index, (label, frequency) in enumerate(TONE_HZ.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            data = tone_wav(frequency=frequency, seed=label_index * 1000 + index)
            (root / label / f"spk{index:03d}_nohash_0.wav").write_bytes(data)


def write_shape_corpus(root: pathlib.Path, *, per_class: int) -> None:
    """root/<disc|horizontal|vertical>/<i>.png."""
    for label_index, label in enumerate(SHAPES):
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            (root / label / f"{index:03d}.png").write_bytes(shape_png(shape=label, seed=label_index * 1000 + index))


def run_python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `python ARGS` in the repository root; fails the test with its output if it exits non-zero."""
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"python {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}")
    return result


def kill_training_after(args: list[str], *, model_dir: pathlib.Path, epochs: int) -> int:
    """Runs `python ARGS` (a trainer.train command) and SIGKILLs it once `epochs` epochs are backed up.

    Returns the epochs BackupAndRestore had recorded when it was killed: where a resume starts.
    """
    metadata = model_dir / "backup" / "training_metadata.json"
    process = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (metadata.exists() and _backed_up_epochs(metadata) >= epochs):
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return _backed_up_epochs(metadata)


def _backed_up_epochs(metadata_path: pathlib.Path) -> int:
    try:
        return json.loads(metadata_path.read_text())["epoch"]
    except (json.JSONDecodeError, FileNotFoundError):
        return 0  # caught mid-write; the next poll reads it whole
