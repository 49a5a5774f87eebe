"""What the app shows, without a browser: app.render's HTML and figures, app.artifacts' missing pieces."""
import dataclasses
import json

import numpy as np

from app import render
from app.artifacts import AppPaths, find_missing_model, find_missing_test_files
from beam_jobs.modalities.audio import AUDIO, AudioConfig
from beam_jobs.modalities.config import SplitConfig
from beam_jobs.table.manifest import DatasetManifest, SplitInfo
from tests.trainer.toy_data import tone_wav
from trainer import plots

PREDICTIONS = [{"label": "yes", "probability": 0.75}, {"label": "<no>", "probability": 0.25}]


def test_predictions_say_right_wrong_or_unknown_and_keep_exact_numbers():
    right = render.predictions_html(PREDICTIONS, true_label="yes")
    assert 'data-outcome="right"' in right
    assert 'data-label="yes" data-probability="0.75"' in right
    assert "75.0%" in right
    assert "&lt;no&gt;" in right and "<no>" not in right
    assert 'data-outcome="wrong"' in render.predictions_html(PREDICTIONS, true_label="<no>")
    assert 'data-outcome="unknown"' in render.predictions_html(PREDICTIONS, true_label=None)


def test_error_line_escapes_the_reason():
    line = render.error_html("a.wav: not a <RIFF> file")
    assert "soundsight-error-message" in line and "not a &lt;RIFF&gt; file" in line


def test_audio_figure_is_a_png():
    panels = AUDIO.preview(tone_wav(frequency=440.0, seed=0), config=AudioConfig())
    assert [panel.kind for panel in panels] == ["waveform", "heatmap"]
    png = plots.preview_png(panels)
    assert png.startswith(b"\x89PNG")
    assert render.pixels_png(np.zeros((28, 28, 1), np.uint8)).startswith(b"\x89PNG")


def test_missing_model_lists_each_missing_step_upstream_first(tmp_path):
    paths = AppPaths(models_dir=tmp_path / "models", data_dir=tmp_path / "data")
    missing = find_missing_model(paths, modality="image")
    assert [item.what for item in missing] == ["raw image files", "preprocessed image dataset", "trained image model"]
    assert missing[0].command == f"python -m beam_jobs.datasets fashion-mnist --out {tmp_path}/data/raw/fashion"
    assert missing[2].command == (f"python -m trainer.train --data_dir {tmp_path}/data/tfrecords/image "
                                  f"--model_dir {tmp_path}/models/image")
    (tmp_path / "data" / "raw" / "fashion").mkdir(parents=True)
    assert [item.what for item in find_missing_model(paths, modality="image")] == [
        "preprocessed image dataset", "trained image model"]
    (tmp_path / "models" / "image" / "saved_model").mkdir(parents=True)
    (tmp_path / "models" / "image" / "dataset.json").write_text("{}")
    assert find_missing_model(paths, modality="image") == []


def a_manifest(**fields) -> DatasetManifest:
    """A small audio manifest; `fields` replace its defaults."""
    return dataclasses.replace(DatasetManifest(
        modality="audio", labels=["yes"], tensor_dtype="float32", tensor_shape=[98, 64], featurization={},
        splits={}, features=[], compression=None, input_roots=[], split_config=dataclasses.asdict(SplitConfig()),
        num_errors=0, pipeline_version="test", created=""), **fields)


def test_missing_test_files_name_the_roots_that_are_not_here(tmp_path):
    manifest = a_manifest(input_roots=[str(tmp_path), "gs://bucket/speech"])
    missing = find_missing_test_files(manifest)
    assert [(item.path, item.command) for item in missing] == [
        ("gs://bucket/speech", "python -m beam_jobs.datasets speech-commands --out gs://bucket/speech")]


def test_the_tab_says_which_snapshot_the_model_was_trained_on():
    train = SplitInfo(num_examples=120, label_counts={"yes": 120}, shards=[])
    line = render.trained_on_html(a_manifest(snapshot_id=3, splits={"train": train}))
    assert 'class="soundsight-trained-on-audio"' in line
    assert "trained on snapshot 3 (120 training examples)" in line
    before_snapshots = render.trained_on_html(a_manifest(created="2025-01-02T03:04:05+00:00"))
    assert "trained on the dataset of 2025-01-02T03:04:05+00:00 (0 training examples)" in before_snapshots


def test_paths_reach_the_kernel_through_the_environment(tmp_path):
    paths = AppPaths(models_dir=tmp_path / "m", data_dir=tmp_path / "d")
    environment = json.loads(json.dumps(paths.to_environment()))
    assert AppPaths.from_environment(environment, default_base=tmp_path / "elsewhere") == paths
    assert AppPaths.from_environment({}, default_base=tmp_path) == AppPaths(models_dir=tmp_path / "models",
                                                                           data_dir=tmp_path / "data")
