"""trainer.noise: loading a dataset's background-noise spectrograms and mixing them into clips at a random SNR."""
import types

import numpy as np
import pytest
import tensorflow as tf

from trainer.noise import describe_noise_mixing, load_background_noise, make_noise_mixing

BATCH, FRAMES, BINS, CLASSES = 16, 20, 16, 3
FLOOR = np.float32(1e-6)  # a stored spectrogram is ln(power + 1e-6)


def log_spectrogram(power: np.ndarray) -> np.ndarray:
    return np.log(power + FLOOR).astype(np.float32)


def noises() -> list[np.ndarray]:
    """Two recordings' log-mel spectrograms, float32 [50, 16] and [73, 16], of distinct random powers."""
    rng = np.random.default_rng(1)
    return [log_spectrogram(rng.exponential(scale, (frames, BINS))) for scale, frames in ((0.01, 50), (3.0, 73))]


def clips() -> np.ndarray:
    """float32 [16, 20, 16]: clips of random powers at levels from 1e-4 to 1e2."""
    rng = np.random.default_rng(2)
    levels = np.logspace(-4, 2, BATCH)[:, None, None]
    return log_spectrogram(levels * rng.exponential(1.0, (BATCH, FRAMES, BINS)))


def labels() -> np.ndarray:
    return np.eye(CLASSES, dtype=np.float32)[np.arange(BATCH) % CLASSES]


def mix(op, batch: np.ndarray) -> np.ndarray:
    return op(tf.constant(batch), tf.constant(labels()))[0].numpy()


def power(spectrograms: np.ndarray) -> np.ndarray:
    return np.exp(spectrograms.astype(np.float64)) - FLOOR


def noise_part(mixed: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """What the mix added, float64 [batch, frames, bins] of power."""
    return np.exp(mixed.astype(np.float64)) - np.exp(batch.astype(np.float64))


def best_window(added: np.ndarray) -> tuple[float, float]:
    """(relative error, gain) of the scaled window of a recording of noises() closest to one clip's added power."""
    fits = []
    for noise in noises():
        for start in range(len(noise) - FRAMES + 1):
            window = power(noise[start:start + FRAMES])
            gain = added.sum() / window.sum()
            fits.append((np.abs(added - gain * window).sum() / added.sum(), gain))
    return min(fits)


def test_mixed_clips_hold_a_window_of_a_recording_at_an_snr_in_range():
    op = make_noise_mixing(noises(), probability=1.0, snr_db=(5.0, 15.0))
    batch = clips()
    for mixed in (mix(op, batch), next(iter(tf.data.Dataset.from_tensors((batch, labels())).map(op)))[0].numpy()):
        assert mixed.shape == batch.shape and mixed.dtype == np.float32 and np.all(np.isfinite(mixed))
        added = noise_part(mixed, batch)
        snr = 10 * np.log10(power(batch).sum(axis=(1, 2)) / added.sum(axis=(1, 2)))
        assert np.all((snr > 5 - 0.01) & (snr < 15 + 0.01)), snr
        for clip_added in added:
            error, _ = best_window(clip_added)
            assert error < 1e-3, "the added power is a scaled window of one recording"


def test_mixing_is_deterministic_under_the_global_seed():
    op = make_noise_mixing(noises(), probability=0.5, snr_db=(0.0, 20.0))
    runs = []
    for _ in range(2):
        tf.random.set_seed(7)
        dataset = tf.data.Dataset.from_tensors((clips(), labels())).repeat(2).map(op)
        runs.append([mix(op, clips())] + [x.numpy() for x, _ in dataset])
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)


def test_probability_picks_the_clips_to_mix():
    assert make_noise_mixing(noises(), probability=0.0, snr_db=(0.0, 20.0)) is None
    every = mix(make_noise_mixing(noises(), probability=1.0, snr_db=(0.0, 20.0)), clips())
    assert np.all((every != clips()).any(axis=(1, 2))), "probability 1 mixes every clip"
    batch = np.concatenate([clips()] * 4)
    some = make_noise_mixing(noises(), probability=0.5, snr_db=(0.0, 20.0))(tf.constant(batch), None)[0].numpy()
    unchanged = (some == batch).all(axis=(1, 2))
    assert 0 < unchanged.sum() < len(batch), "probability 0.5 mixes some clips and leaves others exactly as they were"


def test_no_noise_recordings_make_no_op():
    assert make_noise_mixing([], probability=0.8, snr_db=(0.0, 20.0)) is None


def test_digital_silence_gets_the_noise_at_its_own_level():
    silence = np.full((BATCH, FRAMES, BINS), np.log(FLOOR), np.float32)
    mixed = mix(make_noise_mixing(noises(), probability=1.0, snr_db=(0.0, 20.0)), silence)
    assert np.all(np.isfinite(mixed))
    for clip_added in noise_part(mixed, silence):
        error, gain = best_window(clip_added)
        assert error < 1e-3 and gain == pytest.approx(1.0, rel=1e-3)


def write_noise(data_dir, name: str, array: np.ndarray) -> dict:
    (data_dir / "noise").mkdir(exist_ok=True)
    np.save(data_dir / "noise" / f"{name}.npy", array)
    return {"path": f"_background_noise_/{name}.wav", "file": f"noise/{name}.npy", "frames": len(array)}


def test_load_background_noise_round_trips(tmp_path):
    entries = [write_noise(tmp_path, f"recording{i}", noise) for i, noise in enumerate(noises())]
    entries.insert(1, {"path": "_background_noise_/short.wav", "error": "background noise is 0.50 s long, ..."})
    manifest = types.SimpleNamespace(tensor_shape=[FRAMES, BINS], background_noise=entries)
    loaded = load_background_noise(manifest, str(tmp_path))
    assert len(loaded) == 2, "a recording the pipeline left out is not loaded"
    for got, want in zip(loaded, noises()):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    assert load_background_noise(types.SimpleNamespace(tensor_shape=[FRAMES, BINS]), str(tmp_path)) == [], \
        "a manifest from before background noise has none"


@pytest.mark.parametrize("bad", [np.zeros((FRAMES + 5, BINS + 1), np.float32), np.zeros((FRAMES - 1, BINS), np.float32),
                                 np.zeros(FRAMES * BINS, np.float32), "not an array"])
def test_load_background_noise_names_a_bad_file(tmp_path, bad):
    entries = [write_noise(tmp_path, "good", noises()[0])]
    if isinstance(bad, str):
        (tmp_path / "noise" / "bad.npy").write_text(bad)
        entries.append({"path": "_background_noise_/bad.wav", "file": "noise/bad.npy", "frames": 1})
    else:
        entries.append(write_noise(tmp_path, "bad", bad))
    manifest = types.SimpleNamespace(tensor_shape=[FRAMES, BINS], background_noise=entries)
    with pytest.raises(ValueError, match="bad.npy"):
        load_background_noise(manifest, str(tmp_path))


def test_describe_noise_mixing():
    assert describe_noise_mixing(noises(), probability=0.8, snr_db=(0.0, 20.0)) == (
        "noise mixing on 2 recordings at 0-20 dB SNR, 80% of clips")
    assert describe_noise_mixing([], probability=0.8, snr_db=(0.0, 20.0)) == (
        "noise mixing off: the dataset has no _background_noise_")
    assert describe_noise_mixing(noises(), probability=0.0, snr_db=(0.0, 20.0)) == "noise mixing off"
