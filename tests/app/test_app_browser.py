"""The app as a person uses it: the real Voila server, driven by headless Chromium.

The models are trained in the session on toy corpora (conftest.py); what the
page shows is checked against `python -m trainer.predict` on the same file.
"""
import io

import numpy as np
import pytest
from playwright.sync_api import Page, expect
from scipy.io import wavfile

from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.table.layout import MANIFEST_NAME
from beam_jobs.table.manifest import DatasetManifest
from harness import predict_with_cli, start_server, stop_server
from tests.trainer.toy_data import SHAPES, TONE_HZ

WORD = list(TONE_HZ)[1]
PICKED_IMAGE = f"{SHAPES[-1]}/002.png"  # named in testing_list.txt (conftest.py)
PAGE_TIMEOUT_MS = 120_000  # the kernel imports TensorFlow and loads both models first
ACTION_TIMEOUT_MS = 30_000
expect.set_options(timeout=ACTION_TIMEOUT_MS)


@pytest.fixture
def page(browser, app_url):
    page = open_app(browser, app_url)
    yield page
    page.close()


def open_app(browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1100, "height": 1500})
    page.set_default_timeout(ACTION_TIMEOUT_MS)
    page.goto(url, timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector(".soundsight-tabs", timeout=PAGE_TIMEOUT_MS)
    # Nothing the kernel wrote to stderr (e.g. TensorFlow's start-up notes) may reach the page.
    assert page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').count() == 0
    return page


def selected_test_file(page: Page, modality: str, label: str) -> str:
    """The relative path shown in the test-file picker, once a file of class `label` is loaded.

    Waits for the file of the class asked for: the line already says "Loaded" for
    the file shown at start, before the kernel has applied the class filter.
    """
    expect(page.locator(f".soundsight-source-{modality}")).to_contain_text(f"Loaded {label}/")
    return page.locator(f".soundsight-sample-{modality} select").evaluate("s => s.selectedOptions[0].text")


def predict(page: Page, modality: str) -> tuple[list[dict], str]:
    """Clicks Predict; returns the rows shown ({label, probability}) and the verdict (right/wrong/unknown)."""
    page.click(f".soundsight-predict-{modality}")
    result = page.locator(f".soundsight-result-{modality}")
    expect(result.locator(".soundsight-prediction").first).to_be_visible()
    rows = result.locator(".soundsight-prediction").evaluate_all(
        "rows => rows.map(row => ({label: row.dataset.label, probability: Number(row.dataset.probability)}))")
    return rows, result.locator(".soundsight-verdict").get_attribute("data-outcome")


def upload(page: Page, modality: str, *, name: str, data: bytes, tmp_path) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with page.expect_file_chooser() as chooser:
        page.click(f".soundsight-upload-{modality}")
    chooser.value.set_files(str(path))


def expect_upload_rejected(page: Page, modality: str, *, reason: str) -> None:
    """The error line shows `reason`, and nothing is left to predict."""
    expect(page.locator(f".soundsight-error-{modality} .soundsight-error-message")).to_contain_text(reason)
    expect(page.locator(f".soundsight-predict-{modality}")).to_be_disabled()
    expect(page.locator(f".soundsight-result-{modality} .soundsight-prediction")).to_have_count(0)


def assert_predictions_match(shown: list[dict], expected: list[dict], *, num_labels: int) -> None:
    assert len(shown) == min(5, num_labels)
    assert [row["label"] for row in shown] == [row["label"] for row in expected]
    assert [row["probability"] for row in shown] == pytest.approx([row["probability"] for row in expected],
                                                                  abs=1e-6)
    probabilities = [row["probability"] for row in shown]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) <= 1 + 1e-6


def rejection_reason(manifest: DatasetManifest, data: bytes) -> str:
    """What the featurizer says about a bad file: the reason the page must show."""
    with pytest.raises(InvalidInputError) as error:
        manifest.featurize(data)
    return str(error.value)


def wav_bytes(*, seconds: float) -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).normal(0, 1000, int(16000 * seconds))
    wavfile.write(buffer, 16000, noise.astype(np.int16))
    return buffer.getvalue()


def test_audio_tab_predicts_test_files_and_survives_bad_uploads(page, models_dir, data_dir, screenshot_dir,
                                                                 tmp_path):
    model_dir = models_dir / "audio"
    manifest = DatasetManifest.from_json((model_dir / MANIFEST_NAME).read_text())
    expect(page.locator(".soundsight-trained-on-audio")).to_contain_text(
        f"trained on snapshot 1 ({manifest.splits['train'].num_examples} training examples)")
    page.locator(".soundsight-filter-audio select").select_option(label=WORD)
    relative_path = selected_test_file(page, "audio", WORD)
    assert relative_path.startswith(f"{WORD}/")
    expect(page.locator(".soundsight-player-audio")).to_be_visible()
    figure = page.locator(".soundsight-figure-audio")
    expect(figure).to_be_visible()
    assert figure.evaluate("img => img.naturalWidth") > 300  # the waveform and spectrogram were drawn

    test_file = data_dir / "raw" / "speech" / relative_path
    shown, verdict = predict(page, "audio")
    expected = predict_with_cli(model_dir, test_file)
    assert_predictions_match(shown, expected, num_labels=len(manifest.labels))
    assert verdict == ("right" if expected[0]["label"] == WORD else "wrong")
    page.screenshot(path=str(screenshot_dir / "audio-tab.png"), full_page=True)

    clip = test_file.read_bytes()
    truncated = clip[:len(clip) // 2]
    upload(page, "audio", name="truncated.wav", data=truncated, tmp_path=tmp_path)
    expect_upload_rejected(page, "audio", reason=f"truncated.wav: {rejection_reason(manifest, truncated)}")
    page.screenshot(path=str(screenshot_dir / "audio-tab-bad-upload.png"), full_page=True)
    too_long = wav_bytes(seconds=4)
    upload(page, "audio", name="long.wav", data=too_long, tmp_path=tmp_path)
    expect_upload_rejected(page, "audio", reason=rejection_reason(manifest, too_long))
    assert "over the limit" in rejection_reason(manifest, too_long)

    upload(page, "audio", name="my-recording.wav", data=clip, tmp_path=tmp_path)
    expect(page.locator(".soundsight-source-audio")).to_contain_text("my-recording.wav")
    expect(page.locator(".soundsight-error-audio .soundsight-error-message")).to_have_count(0)
    shown, verdict = predict(page, "audio")
    assert_predictions_match(shown, expected, num_labels=len(manifest.labels))
    assert verdict == "unknown"


def test_image_tab_predicts_test_files_and_survives_bad_uploads(page, models_dir, data_dir, screenshot_dir,
                                                                 tmp_path):
    model_dir = models_dir / "image"
    manifest = DatasetManifest.from_json((model_dir / MANIFEST_NAME).read_text())
    page.get_by_role("tab", name="Images").click()
    page.locator(".soundsight-sample-image select").select_option(label=PICKED_IMAGE)
    expect(page.locator(".soundsight-source-image")).to_contain_text(PICKED_IMAGE)
    for role in ("original", "model-input"):
        picture = page.locator(f".soundsight-{role}-image")
        expect(picture).to_be_visible()
        assert picture.evaluate("img => img.naturalWidth") > 0

    shown, verdict = predict(page, "image")
    expected = predict_with_cli(model_dir, data_dir / "raw" / "fashion" / PICKED_IMAGE)
    assert_predictions_match(shown, expected, num_labels=len(manifest.labels))
    assert verdict == ("right" if expected[0]["label"] == SHAPES[-1] else "wrong")
    page.screenshot(path=str(screenshot_dir / "image-tab.png"), full_page=True)

    not_an_image = b"these are notes, not pixels\n"
    upload(page, "image", name="notes.png", data=not_an_image, tmp_path=tmp_path)
    expect_upload_rejected(page, "image", reason=f"notes.png: {rejection_reason(manifest, not_an_image)}")
    png = (data_dir / "raw" / "fashion" / SHAPES[0] / "007.png").read_bytes()
    truncated = png[:len(png) - 20]
    upload(page, "image", name="cut.png", data=truncated, tmp_path=tmp_path)
    expect_upload_rejected(page, "image", reason=f"cut.png: {rejection_reason(manifest, truncated)}")

    page.locator(".soundsight-filter-image select").select_option(label=SHAPES[0])
    relative_path = selected_test_file(page, "image", SHAPES[0])
    assert relative_path.startswith(f"{SHAPES[0]}/")
    shown, verdict = predict(page, "image")
    expected = predict_with_cli(model_dir, data_dir / "raw" / "fashion" / relative_path)
    assert_predictions_match(shown, expected, num_labels=len(manifest.labels))
    assert verdict in ("right", "wrong")


def test_page_says_what_is_missing_without_models(browser, tmp_path, screenshot_dir):
    process, url = start_server(models_dir=tmp_path / "models", data_dir=tmp_path / "data",
                                log_path=tmp_path / "serve.log")
    try:
        page = open_app(browser, url)
        for modality, tab in (("audio", "Spoken words"), ("image", "Images")):
            page.get_by_role("tab", name=tab).click()
            notice = page.locator(f".soundsight-missing-{modality}")
            expect(notice).to_contain_text(f"No {modality} model yet")
            expect(notice).to_contain_text(f"python -m trainer.train --data_dir {tmp_path / 'data'}")
            if modality == "audio":
                page.screenshot(path=str(screenshot_dir / "missing-models.png"), full_page=True)
        page.close()
    finally:
        stop_server(process)
    assert "missing trained audio model" in (tmp_path / "serve.log").read_text()
