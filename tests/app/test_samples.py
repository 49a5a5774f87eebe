"""beam_jobs.table.raw_files finds the raw files of the held-out test split exactly as the pipeline assigns them."""
import collections
import dataclasses

import pytest

from beam_jobs.inputs.splits import SplitRule
from beam_jobs.modalities.config import SplitConfig
from beam_jobs.table.layout import MANIFEST_NAME
from beam_jobs.table.manifest import DatasetManifest
from beam_jobs.table.raw_files import list_split_samples, list_test_samples, read_listed_splits

WAV_EXTENSIONS = (".wav",)


def touch(root, relative_path: str) -> None:
    path = root / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_listed_files_take_their_listed_split(tmp_path):
    for relative_path in ("yes/a_nohash_0.wav", "yes/b_nohash_0.wav", "no/a_nohash_0.wav"):
        touch(tmp_path, relative_path)
    (tmp_path / "testing_list.txt").write_text("yes/b_nohash_0.wav\n\n")
    (tmp_path / "validation_list.txt").write_text("no/a_nohash_0.wav\n")
    assert read_listed_splits(tmp_path) == {"yes/b_nohash_0.wav": "test", "no/a_nohash_0.wav": "validation"}
    samples = list_split_samples(tmp_path, split="test", labels=["no", "yes"], split_config=SplitConfig(),
                                 extensions=WAV_EXTENSIONS)
    # Both lists exist, so no unlisted file can be hashed into test.
    assert [(sample.relative_path, sample.label) for sample in samples] == [("yes/b_nohash_0.wav", "yes")]
    assert samples[0].path == tmp_path / "yes" / "b_nohash_0.wav"


def test_a_file_listed_twice_is_an_error(tmp_path):
    (tmp_path / "testing_list.txt").write_text("yes/a.wav\n")
    (tmp_path / "validation_list.txt").write_text("yes/a.wav\n")
    with pytest.raises(ValueError, match="yes/a.wav is listed in more than one split list"):
        read_listed_splits(tmp_path)


def test_hashed_split_keeps_a_speaker_together_and_skips_what_is_not_an_example(tmp_path):
    config = SplitConfig(validation_percent=20, test_percent=40)
    speakers = [f"speaker{index:02d}" for index in range(30)]
    for speaker in speakers:
        for word in ("up", "down"):
            touch(tmp_path, f"{word}/{speaker}_nohash_0.wav")
    for not_an_example in ("up/notes.txt", "up/_takes/speaker00_nohash_1.wav", "_background_noise_/hum.wav",
                           "left/speaker00_nohash_0.wav", "stray.wav"):
        touch(tmp_path, not_an_example)
    samples = list_split_samples(tmp_path, split="test", labels=["down", "up"], split_config=config,
                                 extensions=WAV_EXTENSIONS)
    test_speakers = {speaker for speaker in speakers
                     if SplitRule(config=config, listed={}).split_of(f"up/{speaker}_nohash_0.wav") == "test"}
    assert 0 < len(test_speakers) < len(speakers)
    assert [sample.relative_path for sample in samples] == [
        f"{word}/{speaker}_nohash_0.wav" for word in ("down", "up") for speaker in sorted(test_speakers)]


def test_roots_that_are_not_here_are_skipped(tmp_path):
    touch(tmp_path / "root", "cat/1.png")
    manifest = DatasetManifest(
        modality="image", labels=["cat"], tensor_dtype="uint8", tensor_shape=[28, 28, 1], featurization={},
        splits={}, features=[], compression=None, input_roots=[str(tmp_path / "gone"), str(tmp_path / "root")],
        split_config=dataclasses.asdict(SplitConfig(validation_percent=0, test_percent=99)), num_errors=0,
        pipeline_version="test", created="")
    assert [sample.relative_path for sample in list_test_samples(manifest)] == ["cat/1.png"]


@pytest.mark.parametrize("modality", ["audio", "image"])
def test_the_test_files_are_the_pipelines_test_split(data_dir, modality):
    """Counted per label against the manifest the real pipeline wrote for the toy corpora."""
    manifest = DatasetManifest.from_json((data_dir / "tfrecords" / modality / MANIFEST_NAME).read_text())
    samples = list_test_samples(manifest)
    assert samples, "the toy corpora should have held-out test files"
    assert collections.Counter(sample.label for sample in samples) == manifest.splits["test"].label_counts
