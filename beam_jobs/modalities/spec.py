"""What makes a modality: the `Modality` spec, one per kind of input (the registry is `beam_jobs.modalities`).

A spec is everything the rest of soundsight asks about a modality: its name
(the flags --<name>_root and --<name>_labels, the folder OUT/<name>), its file
extensions, its featurization config class (whose fields declare their flags),
the stored tensor's dtype and shape, the featurizer, what the model puts in
front of its convolutions, and how a person sees an example. The pipeline, the
trainer, the app, the report and the benchmarks iterate over `MODALITIES` or
ask a spec; none of them compares modality names. Pure Python: no Beam, no
TensorFlow.

Adding a modality means writing its featurizer and config in a module of its
own, one `Modality(...)` there, and one line in `beam_jobs/modalities/__init__.py`.
"""
import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """What the model does with the stored tensor before its convolutions (see `trainer.model`).

    normalization: "standardize" (zero mean, unit variance per example: removes loudness) or
      "unit_range" (divides by 255: uint8 pixels to [0, 1]).
    add_channel_axis: True for a [h, w] tensor, which the convolutions need as [h, w, 1].
    augmentation: the training-only augmentation family of `trainer.augment` ("spectrogram"), or None.
    """
    name: str
    normalization: str
    add_channel_axis: bool
    augmentation: str | None = None


@dataclasses.dataclass(frozen=True)
class PreviewPanel:
    """One picture of an example, as a person is shown it.

    kind: "waveform" (values float [n] at `rate` samples per second), "heatmap" (values [time, bins],
      drawn with time across), or "pixels" (values uint8 [h, w, 1 or 3]).
    """
    kind: str
    title: str
    values: np.ndarray
    rate: float = 0.0
    seconds: float = 0.0  # the time the panel spans; 0 for pixels
    ylabel: str = ""


@dataclasses.dataclass(frozen=True)
class DemoCorpus:
    """The demo corpus of a modality: its folder under DATA/raw and its `beam_jobs.datasets` command."""
    folder: str
    command: str


@dataclasses.dataclass(frozen=True)
class Modality:
    name: str
    extensions: tuple[str, ...]  # lower-case, with the dot
    config_class: type  # a frozen dataclass with validate() and feature_shape; fields declared with option()
    tensor_dtype: str  # numpy name of the stored tensor's dtype
    featurize: Callable[..., np.ndarray]  # (bytes, *, config) -> tensor; raises InvalidInputError
    preview: Callable[..., list[PreviewPanel]]  # (bytes, *, config) -> panels built from the featurized tensor
    model_input: ModelInput
    media: str | None  # how a browser shows the raw file: "audio" (a player), "image", or None (it cannot)
    title: str  # the app's tab title
    nouns: tuple[str, str]  # what a class is called, singular and plural ("word", "words")
    upload: tuple[str, str]  # the app's upload button: its text and the browser's file-picker filter
    demo_corpus: DemoCorpus | None = None
    # Modules the featurizer imports on its first file, not at import time (so that commands that featurize
    # nothing do not pay for them); the pipeline's worker zygote imports them ahead (beam_jobs.runners.forked_workers).
    worker_imports: tuple[str, ...] = ()
    # Background noise (ROOT/_background_noise_/*), for modalities that have it: the whole recording featurized
    # as the stored tensors are, but of any length ((bytes, *, config) -> tensor), and a clip-long excerpt of it
    # as raw file bytes ((bytes, *, config, key) -> bytes), from which `featurize` makes a silence
    # example; `key` seeds where the excerpt starts and how loud it is.
    featurize_noise: Callable[..., np.ndarray] | None = None
    noise_excerpt: Callable[..., bytes] | None = None
