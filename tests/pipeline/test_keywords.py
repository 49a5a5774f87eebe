"""Keyword spotting's classes and background noise in the pipeline: --wanted_words, _unknown_, _silence_,
and ROOT/_background_noise_ stored once per snapshot."""
import io
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import preprocess
from beam_jobs.inputs.splits import SPLITS
from beam_jobs.modalities.audio import AudioConfig, featurize_noise_wav, featurize_wav, noise_excerpt_wav
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.table.layout import SPAN_FILES_NAME

KEYWORDS = ["--wanted_words=a,b", "--unknown_percentage=25", "--silence_percentage=10"]
# (name, encoding, sample rate, channels, seconds): the noise recordings of the tree, in several encodings.
NOISE = [("white.wav", "i16", 16000, 1, 3.0), ("hum.wav", "f32", 44100, 2, 2.0), ("quiet.wav", "u8", 8000, 1, 1.5),
         ("deep.wav", "i24", 22050, 1, 2.5)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory, make_sine, make_wav) -> pathlib.Path:
    """a, b: 40 clips each (wanted); c, d: 20 each (unknown); four noise recordings; one bad noise file."""
    root = tmp_path_factory.mktemp("keywords")
    for label, count, frequency in (("a", 40, 300), ("b", 40, 900), ("c", 20, 2000), ("d", 20, 3000)):
        (root / label).mkdir()
        for take in range(count):
            (root / label / f"s{take}_nohash_0.wav").write_bytes(
                make_wav(make_sine(frequency + 5 * take, rate=16000, seconds=0.5), rate=16000))
    noise = root / "_background_noise_"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for name, encoding, rate, channels, seconds in NOISE:
        samples = np.clip(rng.normal(0, 0.2, (int(rate * seconds), channels)), -1, 1)
        (noise / name).write_bytes(make_wav(samples[:, 0] if channels == 1 else samples, rate=rate,
                                            encoding=encoding))
    (noise / "README.txt").write_text("not a recording: ignored")
    return root


def run(root, output_dir, *flags):
    return preprocess.run([f"--audio_root={root}", f"--output_dir={output_dir}", *flags], save_main_session=False)


def label_counts(manifest, split):
    return {label: count for label, count in manifest.splits[split].label_counts.items() if count}


def test_unknown_and_silence_are_their_configured_shares_of_every_split(tree, tmp_path):
    summary = run(tree, tmp_path, *KEYWORDS)
    manifest = summary.manifests["audio"]
    assert manifest.labels == ["_silence_", "_unknown_", "a", "b"]
    assert manifest.keywords == {"wanted_words": "a,b", "unknown_percentage": 25.0, "silence_percentage": 10.0}
    rows = [json.loads(line) for line in (tmp_path / "audio" / "spans" / manifest.spans[0] / SPAN_FILES_NAME)
            .read_text().splitlines()]
    for split in SPLITS:
        counts = manifest.splits[split].label_counts
        wanted = counts["a"] + counts["b"]
        unknown_rows = [row for row in rows if row["split"] == split and row["label"] == "_unknown_"]
        assert counts["_unknown_"] == len(unknown_rows) == round(0.25 * wanted), split
        assert {row["path"].split("/")[0] for row in unknown_rows} <= {"c", "d"}
        assert counts["_silence_"] == round(0.10 * wanted), split
    assert summary.outcomes["audio"].plan.listing_counts["unknown_left_out"] == 40 - sum(
        manifest.splits[split].label_counts["_unknown_"] for split in SPLITS)
    silence = [row for row in rows if row["label"] == "_silence_"]
    assert {row["path"].split("#")[0] for row in silence} <= {f"_background_noise_/{name}" for name, *_ in NOISE}


def test_a_silence_example_is_an_excerpt_of_a_noise_recording_through_the_one_featurizer(
        tree, tmp_path, example_parser, bytes_to_tensor):
    manifest = run(tree, tmp_path, *KEYWORDS).manifests["audio"]
    config = AudioConfig(**manifest.featurization)
    shard = manifest.splits["train"].shards[0]
    silences = [example for example in map(example_parser, tf.data.TFRecordDataset(
        str(tmp_path / "audio" / shard.path)).as_numpy_iterator()) if example["label_name"] == b"_silence_"]
    assert silences, "the first train shard holds silence examples"
    for example in silences:
        path = example["path"].decode()
        source = (tree / path.split("#")[0]).read_bytes()
        expected = featurize_wav(noise_excerpt_wav(source, config=config, key=path), config=config)
        np.testing.assert_array_equal(bytes_to_tensor(example["tensor"], dtype="float32",
                                                      shape=manifest.tensor_shape), expected)


def test_background_noise_in_any_encoding_is_stored_once_featurized_whole(tree, tmp_path):
    first = run(tree, tmp_path, *KEYWORDS).manifests["audio"]
    config = AudioConfig(**first.featurization)
    assert [entry["path"] for entry in first.background_noise] == sorted(
        f"_background_noise_/{name}" for name, *_ in NOISE)
    for entry in first.background_noise:
        stored = np.load(io.BytesIO((tmp_path / "audio" / entry["file"]).read_bytes()), allow_pickle=False)
        expected = featurize_noise_wav((tree / entry["path"]).read_bytes(), config=config)
        np.testing.assert_array_equal(stored, expected)
        seconds = next(seconds for name, *_, seconds in NOISE if entry["path"].endswith(name))
        assert entry["frames"] == stored.shape[0] == 1 + (int(seconds * 16000) - 400) // 160
    # Unchanged noise keeps its files: a second run has nothing to do.
    again = run(tree, tmp_path, *KEYWORDS)
    assert not again.outcomes["audio"].committed
    assert again.manifests["audio"].background_noise == first.background_noise


def test_keyword_classes_added_to_an_existing_dataset_keep_its_labels_at_their_indices(tree, tmp_path):
    before = run(tree, tmp_path).manifests["audio"]
    assert before.labels == ["a", "b", "c", "d"] and before.keywords == {}
    assert before.background_noise, "noise is stored whether or not silence is made: the trainer mixes it"
    after = run(tree, tmp_path, *KEYWORDS)
    manifest = after.manifests["audio"]
    assert manifest.labels == ["a", "b", "c", "d", "_silence_", "_unknown_"]
    assert after.outcomes["audio"].plan.full_reason == "keyword classes changed since snapshot 1"
    assert sum(manifest.splits[split].label_counts["c"] for split in SPLITS) == 0


def test_silence_without_noise_recordings_is_said(tmp_path, make_tone_tree, capsys):
    root = make_tone_tree(tmp_path / "tones", per_class=4)
    assert preprocess.main([f"--audio_root={root}", f"--output_dir={tmp_path / 'out'}",
                            "--silence_percentage=10"]) == 0
    assert "no _silence_ examples: --silence_percentage needs recordings in ROOT/_background_noise_/" in \
        capsys.readouterr().out


def test_bad_keyword_flags_stop_the_run_naming_the_flag(tmp_path, make_tone_tree, capsys):
    root = make_tone_tree(tmp_path / "tones", per_class=2)
    for flags, message in ((["--wanted_words=a,a"], "--wanted_words"), (["--silence_percentage=120"],
                                                                        "--silence_percentage")):
        with pytest.raises(SystemExit):
            preprocess.run([f"--audio_root={root}", f"--output_dir={tmp_path / 'out'}", *flags])
        assert message in capsys.readouterr().err


def test_a_noise_excerpt_is_one_clip_seeded_by_its_key_and_no_louder_than_its_recording(make_wav):
    config = AudioConfig()
    rng = np.random.default_rng(1)
    recording = make_wav(np.clip(rng.normal(0, 0.3, 48000), -1, 1), rate=16000)
    first = noise_excerpt_wav(recording, config=config, key="_background_noise_/a.wav#train-0")
    assert first == noise_excerpt_wav(recording, config=config, key="_background_noise_/a.wav#train-0")
    assert first != noise_excerpt_wav(recording, config=config, key="_background_noise_/a.wav#train-1")
    from scipy.io import wavfile

    rate, samples = wavfile.read(io.BytesIO(first))
    assert rate == 16000 and samples.shape == (config.clip_samples,) and samples.dtype == np.float32
    assert np.abs(samples).max() <= 1.0 and np.std(samples) <= 0.31
    short = make_wav(np.zeros(8000), rate=16000)
    for featurize in (featurize_noise_wav, lambda data, config: noise_excerpt_wav(data, config=config, key="k")):
        with pytest.raises(InvalidInputError, match=r"background noise is 0.50 s long, shorter than one clip"):
            featurize(short, config=config)
