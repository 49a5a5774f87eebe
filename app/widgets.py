"""The soundsight page: per modality, pick a held-out test file or upload one, see it, predict it.

Plain Python around ipywidgets, so the notebook only calls `build_app`. One
tab per modality of `beam_jobs.modalities`, its texts and pictures from the
modality's spec. Every prediction and every featurization goes through
`trainer.predict.Predictor`, the same code and exported model as
`python -m trainer.predict`, and the preview shows what the model gets. Widgets a
browser test needs carry stable CSS classes `soundsight-<role>-<modality>`.
"""
import dataclasses
import io

import ipywidgets as widgets
import PIL.Image

from app import render
from app.artifacts import AppPaths, find_missing_model, find_missing_test_files
from beam_jobs.modalities import MODALITIES
from beam_jobs.modalities import get as get_modality
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.modalities.spec import Modality
from beam_jobs.table.raw_files import Sample, list_test_samples
from trainer import plots
from trainer.predict import Predictor

TOP_K = 5
IMAGE_DISPLAY_PIXELS = 168  # images are shown this wide: a 28x28 one enlarged 6 times
_PAGE_STYLE = """<style>
.soundsight-pixelated { image-rendering: pixelated; }
.soundsight-panel { padding: 6px 4px; }
</style>"""


@dataclasses.dataclass(frozen=True)
class LoadedFile:
    name: str
    data: bytes
    true_label: str | None  # the class folder of a test file; None for an upload


def _original(spec: Modality, data: bytes) -> list[widgets.Widget]:
    """The file as the browser shows it: an audio player or the image itself; nothing for other media."""
    if spec.media == "audio":
        player = widgets.Audio(value=data, format="wav", autoplay=False, loop=False)
        player.add_class(f"soundsight-player-{spec.name}")
        return [player]
    if spec.media == "image":
        original = widgets.Image(value=data, layout=widgets.Layout(width=f"{IMAGE_DISPLAY_PIXELS}px"))
        original.add_class(f"soundsight-original-{spec.name}")
        if PIL.Image.open(io.BytesIO(data)).width < IMAGE_DISPLAY_PIXELS:
            original.add_class("soundsight-pixelated")  # enlarged: show its pixels, not a blur
        return [original]
    return []


def preview(predictor: Predictor, data: bytes) -> list[widgets.Widget]:
    """The file beside what the model gets of it (the modality's preview panels). Raises InvalidInputError."""
    spec = get_modality(predictor.modality)
    panels = predictor.preview(data)
    original = _original(spec, data)  # after preview: the file has just proved to be valid
    charts = [panel for panel in panels if panel.kind != "pixels"]
    shown = []
    if charts:
        figure = widgets.Image(value=plots.preview_png(charts), format="png")
        figure.add_class(f"soundsight-figure-{spec.name}")
        shown.append(figure)
    for panel in panels:
        if panel.kind == "pixels":
            # Drawn pixel for pixel and enlarged in the browser: exactly the model's input.
            pixels = widgets.Image(value=render.pixels_png(panel.values), format="png",
                                   layout=widgets.Layout(width=f"{IMAGE_DISPLAY_PIXELS}px"))
            pixels.add_class(f"soundsight-model-input-{spec.name}")
            pixels.add_class("soundsight-pixelated")
            shown.append(widgets.VBox([widgets.HTML(f"<b>{panel.title}</b>"), pixels]))
    if len(charts) == len(panels):
        return original + shown
    return [widgets.HBox([
        widgets.VBox([widgets.HTML("<b>the file</b>"), *original], layout=widgets.Layout(margin="0 24px 0 0")),
        *shown])]


class ClassifierPanel:
    """One tab: choose a test file (filtered by class) or upload one, preview it, and predict it."""

    def __init__(self, *, predictor: Predictor, samples: list[Sample]):
        spec = get_modality(predictor.modality)
        modality = spec.name
        self._predictor, self._samples, self._loaded = predictor, samples, None
        noun, nouns = spec.nouns
        labels_with_samples = [label for label in predictor.labels if any(s.label == label for s in samples)]
        # "" stands for every class: a value of None would show as no choice at all.
        self.label_filter = widgets.Dropdown(description=f"{noun}:", disabled=not samples, options=[
            (f"every {noun}", "")] + [(label, label) for label in labels_with_samples])
        self.sample_picker = widgets.Dropdown(description="test file:", disabled=not samples,
                                              layout=widgets.Layout(width="420px"))
        upload_text, accept = spec.upload
        self.upload = widgets.FileUpload(accept=accept, multiple=False, description=upload_text,
                                         tooltip="a file of your own; its true label is unknown",
                                         layout=widgets.Layout(width="auto"))
        self.source = widgets.HTML()
        self.preview = widgets.VBox()
        self.predict_button = widgets.Button(description="Predict", button_style="primary", icon="play",
                                             disabled=True, tooltip=f"the top {TOP_K} {nouns} for the loaded file")
        self.error = widgets.HTML()
        self.result = widgets.HTML()
        for widget, role in ((self.label_filter, "filter"), (self.sample_picker, "sample"), (self.upload, "upload"),
                             (self.source, "source"), (self.preview, "preview"), (self.predict_button, "predict"),
                             (self.error, "error"), (self.result, "result")):
            widget.add_class(f"soundsight-{role}-{modality}")
        self.label_filter.observe(self._on_filter, names="value")
        self.sample_picker.observe(self._on_sample, names="value")
        self.upload.observe(self._on_upload, names="value")
        self.predict_button.on_click(self._on_predict)
        self._show_samples(label="")
        if samples:
            intro = f"{len(predictor.labels)} {nouns}; {len(samples)} held-out test files. Pick one or upload your own"
        else:
            intro = f"{len(predictor.labels)} {nouns}; no held-out test files are here, so upload your own"
        self.widget = widgets.VBox([
            widgets.HTML(f"{intro}, then press Predict."),
            widgets.HBox([self.label_filter, self.sample_picker, widgets.HTML("&nbsp;or&nbsp;"), self.upload],
                         layout=widgets.Layout(flex_flow="row wrap", align_items="center")),
            self.source, self.preview, self.predict_button, self.error, self.result,
        ])
        self.widget.add_class("soundsight-panel")

    def _show_samples(self, *, label: str) -> None:
        """Offers the test files of `label` ("" for every label) and loads the first."""
        shown = [sample for sample in self._samples if not label or sample.label == label]
        self.sample_picker.options = [(sample.relative_path, sample) for sample in shown]
        # Load the first match at once, so choosing a class shows one of its files.
        self.sample_picker.index = 0 if shown else None

    def _on_filter(self, change) -> None:
        self._show_samples(label=change["new"])

    def _on_sample(self, change) -> None:
        sample = change["new"]
        if sample is None:
            return
        try:
            data = sample.path.read_bytes()
        except OSError as error:
            self._show_error(f"{sample.relative_path}: cannot read the file: {error.strerror}")
            return
        self.load(LoadedFile(name=sample.relative_path, data=data, true_label=sample.label))

    def _on_upload(self, change) -> None:
        if not change["new"]:
            return  # the reset below
        uploaded = change["new"][0]
        self.upload.value = ()  # so the same file can be uploaded again
        self.sample_picker.index = None  # so picking the previous test file loads it again
        self.load(LoadedFile(name=uploaded["name"], data=bytes(uploaded["content"]), true_label=None))

    def load(self, loaded: LoadedFile) -> None:
        """Shows `loaded` and makes it the file to predict, or shows why it cannot be used."""
        self.result.value = ""
        try:
            self.preview.children = preview(self._predictor, loaded.data)
        except InvalidInputError as error:
            self._show_error(f"{loaded.name}: {error}")
            return
        self._loaded = loaded
        self.error.value = ""
        self.source.value = render.source_html(name=loaded.name, true_label=loaded.true_label)
        self.predict_button.disabled = False

    def _show_error(self, message: str) -> None:
        self._loaded = None
        self.preview.children = ()
        self.source.value = ""
        self.result.value = ""
        self.error.value = render.error_html(message)
        self.predict_button.disabled = True

    def _on_predict(self, _button) -> None:
        loaded = self._loaded
        if loaded is None:
            return
        self.predict_button.disabled, self.predict_button.description = True, "Predicting..."
        try:
            predictions = self._predictor.predict_bytes(loaded.data, top_k=TOP_K)
        except InvalidInputError as error:
            self._show_error(f"{loaded.name}: {error}")
            return
        finally:
            self.predict_button.description = "Predict"
        self.predict_button.disabled = False
        self.result.value = render.predictions_html(predictions, true_label=loaded.true_label)


def build_tab(paths: AppPaths, *, modality: str) -> widgets.Widget:
    """The panel of `modality`, or what is missing for it and how to make it."""
    missing = find_missing_model(paths, modality=modality)
    if missing:
        notice = widgets.HTML(render.missing_html(missing, heading=f"No {modality} model yet, so this tab is off."))
        notice.add_class(f"soundsight-missing-{modality}")
        return notice
    predictor = Predictor.from_model_dir(paths.model_dir(modality))
    panel = ClassifierPanel(predictor=predictor,
                            samples=list_test_samples(predictor.manifest))
    shown = [widgets.HTML(render.trained_on_html(predictor.manifest)), panel.widget]
    missing_files = find_missing_test_files(predictor.manifest)
    if missing_files:
        notice = widgets.HTML(render.missing_html(missing_files, heading="Some held-out test files are not here."))
        notice.add_class(f"soundsight-missing-{modality}")
        shown.insert(0, notice)
    return widgets.VBox(shown)


def build_app(paths: AppPaths) -> widgets.Widget:
    """The whole page: a title and one tab per modality."""
    title = widgets.HTML(f"{_PAGE_STYLE}<h2 style='margin:4px 0'>soundsight</h2>"
                         "<div>Hear a spoken word or see an image, and what the model makes of it.</div>")
    tabs = widgets.Tab(children=[build_tab(paths, modality=modality) for modality in MODALITIES],
                       titles=[spec.title for spec in MODALITIES.values()])
    tabs.add_class("soundsight-tabs")
    return widgets.VBox([title, tabs])
