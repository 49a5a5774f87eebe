"""app.widgets.ClassifierPanel's behaviour without a browser, around a stand-in for trainer.predict.Predictor."""
import datetime
import io

import numpy as np
from PIL import Image

from app.widgets import ClassifierPanel
from beam_jobs.modalities.image import IMAGE, ImageConfig, featurize_image
from beam_jobs.table.raw_files import Sample


class FakeImagePredictor:
    """Featurizes like the real one; predicts "bright" for a mostly white image."""
    labels = ["bright", "dark"]
    modality = "image"

    def featurize(self, data: bytes) -> np.ndarray:
        return featurize_image(data, config=ImageConfig())

    def preview(self, data: bytes) -> list:
        return IMAGE.preview(data, config=ImageConfig())

    def predict_bytes(self, data: bytes, *, top_k: int = 5) -> list[dict]:
        bright = float(self.featurize(data).mean() / 255)
        return sorted([{"label": "bright", "probability": bright}, {"label": "dark", "probability": 1 - bright}],
                      key=lambda row: -row["probability"])[:top_k]


def png(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), level).save(buffer, format="PNG")
    return buffer.getvalue()


def uploaded(name: str, data: bytes) -> tuple[dict]:
    """FileUpload's value as the browser sets it."""
    return ({"name": name, "type": "", "size": len(data), "content": memoryview(data),
             "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


def test_panel_loads_the_first_test_file_predicts_it_and_recovers_from_a_bad_upload(tmp_path):
    samples = []
    for label, level in (("bright", 250), ("dark", 5)):
        (tmp_path / label).mkdir()
        (tmp_path / label / "a.png").write_bytes(png(level))
        samples.append(Sample(path=tmp_path / label / "a.png", relative_path=f"{label}/a.png", label=label))
    panel = ClassifierPanel(predictor=FakeImagePredictor(), samples=samples)
    assert "bright/a.png" in panel.source.value and not panel.predict_button.disabled
    assert panel.label_filter.label == "every class" and panel.sample_picker.label == "bright/a.png"

    panel.label_filter.value = "dark"
    assert "dark/a.png" in panel.source.value
    panel.predict_button.click()
    assert 'data-outcome="right"' in panel.result.value

    panel.upload.value = uploaded("notes.png", b"not an image")
    assert "notes.png: not a PNG/JPEG/BMP/GIF/WEBP image" in panel.error.value
    assert panel.predict_button.disabled and panel.result.value == "" and panel.preview.children == ()
    assert panel.sample_picker.index is None and panel.upload.value == ()

    panel.upload.value = uploaded("mine.png", png(255))
    assert panel.error.value == ""
    panel.predict_button.click()
    assert 'data-outcome="unknown"' in panel.result.value and 'data-label="bright"' in panel.result.value

    panel.sample_picker.value = samples[1]  # the test file loaded before the uploads loads again
    assert "dark/a.png" in panel.source.value and panel.result.value == ""


def test_panel_without_test_files_still_takes_uploads():
    panel = ClassifierPanel(predictor=FakeImagePredictor(), samples=[])
    assert panel.sample_picker.disabled and panel.label_filter.disabled and panel.predict_button.disabled
    panel.upload.value = uploaded("mine.png", png(0))
    panel.predict_button.click()
    assert 'data-label="dark"' in panel.result.value
