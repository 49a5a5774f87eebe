"""Session fixtures: toy raw corpora, their datasets from the real pipeline, models from the real trainer,
a running app server and a headless Chromium.

The pipeline, the trainer and `trainer.predict` run in subprocesses, as users
run them.
"""
import os
from pathlib import Path

import pytest

from harness import start_server, stop_server
from tests.trainer.toy_data import SHAPES, run_python, write_shape_corpus, write_tone_corpus

CHROMIUM = Path(os.environ.get("SOUNDSIGHT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TEST_PER_SHAPE = 5  # images per shape named in testing_list.txt
MAX_AUDIO_BYTES = 100_000  # a small featurizer limit, so a "too large" upload is cheap to make
SCREENSHOTS_KEY = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """DATA/raw/{speech,fashion} toy corpora and DATA/tfrecords from `python -m beam_jobs.preprocess`."""
    data = tmp_path_factory.mktemp("data")
    speech, fashion = data / "raw" / "speech", data / "raw" / "fashion"
    write_tone_corpus(speech, per_class=30)
    write_shape_corpus(fashion, per_class=30)
    testing = [f"{shape}/{index:03d}.png" for shape in SHAPES for index in range(TEST_PER_SHAPE)]
    (fashion / "testing_list.txt").write_text("".join(f"{path}\n" for path in testing))
    run_python("-m", "beam_jobs.preprocess", "--audio_root", str(speech), "--image_root", str(fashion),
               "--output_dir", str(data / "tfrecords"),
               "--max_audio_bytes", str(MAX_AUDIO_BYTES))
    return data


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, data_dir) -> Path:
    """MODELS/{audio,image} from `python -m trainer.train`, a few epochs each."""
    models = tmp_path_factory.mktemp("models")
    for modality in ("audio", "image"):
        run_python("-m", "trainer.train", "--data_dir", str(data_dir / "tfrecords" / modality),
                   "--model_dir", str(models / modality), "--epochs", "8", "--batch_size", "8")
    return models


@pytest.fixture(scope="session")
def app_url(models_dir, data_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    process, url = start_server(models_dir=models_dir, data_dir=data_dir, log_path=log_path)
    yield url
    stop_server(process)


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser test drives Debian's Chromium "
                    f"(apt-get install chromium, as scripts/bootstrap.sh does; or set SOUNDSIGHT_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory, pytestconfig) -> Path:
    """$SOUNDSIGHT_SCREENSHOTS, else a temporary folder; named in the summary at the end."""
    folder = Path(os.environ.get("SOUNDSIGHT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    pytestconfig.stash[SCREENSHOTS_KEY] = folder
    return folder


def pytest_terminal_summary(terminalreporter, config):
    if SCREENSHOTS_KEY in config.stash:
        terminalreporter.write_line(f"soundsight app screenshots: {config.stash[SCREENSHOTS_KEY]}")
