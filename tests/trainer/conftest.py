"""Session fixtures: toy raw corpora, their shards from the real Beam pipeline, and small trained models."""
import pathlib

import pytest

from toy_data import TOY_CONFIG, run_python, write_shape_corpus, write_tone_corpus
from trainer.train import train

@pytest.fixture(scope="session")
def raw_roots(tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("raw")
    write_tone_corpus(root / "tones", per_class=30)
    write_shape_corpus(root / "shapes", per_class=60)
    return {"audio": root / "tones", "image": root / "shapes"}


@pytest.fixture(scope="session")
def data_dirs(tmp_path_factory, raw_roots) -> dict[str, pathlib.Path]:
    """{"audio": OUT/audio, "image": OUT/image} written by `python -m beam_jobs.preprocess`, 2 shards per split."""
    out = tmp_path_factory.mktemp("shards")
    run_python("-m", "beam_jobs.preprocess", "--audio_root", str(raw_roots["audio"]),
               "--image_root", str(raw_roots["image"]), "--output_dir", str(out), "--num_shards", "2")
    return {"audio": out / "audio", "image": out / "image"}


@pytest.fixture(scope="session")
def gzip_audio_dir(tmp_path_factory, raw_roots) -> pathlib.Path:
    """The toy audio as GZIP-compressed shards."""
    out = tmp_path_factory.mktemp("gzip_shards")
    run_python("-m", "beam_jobs.preprocess", "--audio_root", str(raw_roots["audio"]), "--output_dir", str(out),
               "--num_shards", "3", "--compression", "gzip")
    return out / "audio"


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, data_dirs) -> dict[str, pathlib.Path]:
    """A seed network trained in-process for a few epochs on each toy dataset."""
    models = tmp_path_factory.mktemp("models")
    for modality, data_dir in data_dirs.items():
        train(data_dir=str(data_dir), model_dir=str(models / modality), config=TOY_CONFIG)
    return {modality: models / modality for modality in data_dirs}
