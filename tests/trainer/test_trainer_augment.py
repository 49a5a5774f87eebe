"""trainer.augment: every op eagerly and inside Dataset.map, on a small spectrogram batch; the config's checks."""
import argparse
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs.modalities import config as flags_lib
from beam_jobs.modalities.config import ConfigError
from trainer import augment
from trainer.config import TrainConfig

BATCH, FRAMES, BINS, CLASSES = 4, 20, 16, 3
SILENCE = -13.8
FLOOR = float(np.log(np.float32(1e-6)))  # a stored spectrogram is ln(power + 1e-6): digital silence
NOISES = [np.log(np.random.default_rng(seed).exponential(0.1, (FRAMES + 30, BINS)) + 1e-6).astype(np.float32)
          for seed in range(2)]


def spectrograms() -> np.ndarray:
    """float32 [4, 20, 16]: silence with one loud block per clip, at frames 8-11 and bins 6-9."""
    batch = np.full((BATCH, FRAMES, BINS), SILENCE, np.float32)
    batch[:, 8:12, 6:10] = np.arange(1, BATCH + 1, dtype=np.float32)[:, None, None]
    return batch


def labels() -> np.ndarray:
    return np.eye(CLASSES, dtype=np.float32)[[0, 1, 2, 0]]


OPS = {
    "time_shift": augment.make_time_shift(0.3),
    "time_stretch": augment.make_time_stretch(0.3),
    "freq_shift": augment.make_freq_shift(0.2),
    "freq_stretch": augment.make_freq_stretch(0.3),
    "time_masks": augment.make_masks(axis=1, count=2, max_fraction=0.3),
    "freq_masks": augment.make_masks(axis=2, count=2, max_fraction=0.3),
    "noise_floor": augment.make_noise_floor(30.0),
    "mixup": augment.make_mixup(0.4),
    "gain": augment.make_gain(6.0),
    "reverb": augment.make_reverb(1.0),
    "band_limit": augment.make_band_limit(1.0),
    "all": augment.make_spectrogram_augmentation(
        dataclasses.replace(TrainConfig(), noise_floor_db=30.0, mixup=0.4, gain_db=6.0, reverb=0.5, band_limit=0.5),
        noises=NOISES),
}


def run_eagerly_and_mapped(op):
    eager = op(tf.constant(spectrograms()), tf.constant(labels()))
    dataset = tf.data.Dataset.from_tensors((spectrograms(), labels())).map(op)
    mapped = next(iter(dataset))
    return [tensor.numpy() for tensor in eager], [tensor.numpy() for tensor in mapped], dataset.element_spec


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_keeps_shapes_dtypes_and_label_mass(name):
    (eager_x, eager_y), (mapped_x, mapped_y), spec = run_eagerly_and_mapped(OPS[name])
    for x, y in ((eager_x, eager_y), (mapped_x, mapped_y)):
        assert x.shape == (BATCH, FRAMES, BINS) and x.dtype == np.float32, name
        assert np.all(np.isfinite(x)), name
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5, err_msg=name)
    assert spec[0].shape == (BATCH, FRAMES, BINS) and spec[0].dtype == tf.float32


def test_zero_parameters_turn_ops_off():
    assert augment.make_time_shift(0) is None and augment.make_mixup(0) is None
    assert augment.make_masks(axis=1, count=0, max_fraction=0.5) is None
    assert augment.make_gain(0) is None and augment.make_reverb(0) is None and augment.make_band_limit(0) is None
    off = dataclasses.replace(TrainConfig(), time_shift=0, time_stretch=0, freq_shift=0, freq_stretch=0,
                              time_masks=0, freq_masks=0, noise_floor_db=0, mixup=0)
    assert augment.make_spectrogram_augmentation(off, noises=NOISES) is None, "noise mixing is off by default"
    mixing = dataclasses.replace(off, noise_probability=0.8)
    assert augment.make_spectrogram_augmentation(mixing) is None, "noise mixing is off without noise recordings"
    assert augment.make_spectrogram_augmentation(mixing, noises=NOISES) is not None
    assert augment.make_spectrogram_augmentation(dataclasses.replace(off, noise_probability=0), noises=NOISES) is None


def test_time_shift_moves_the_block_and_fills_with_silence():
    for x, _ in run_eagerly_and_mapped(OPS["time_shift"])[:2]:
        loud_frames = [np.flatnonzero(clip.max(axis=1) > 0) for clip in x]
        for clip, frames in zip(x, loud_frames):
            assert 2 <= len(frames) <= 5, "a shift keeps the block's length (+1 for interpolation)"
            assert clip.min() == pytest.approx(SILENCE), "frames shifted in are silence"
            np.testing.assert_array_equal(np.flatnonzero(clip.max(axis=0) > 0), np.arange(6, 10))


def test_freq_shift_moves_bins_only():
    for x, _ in run_eagerly_and_mapped(OPS["freq_shift"])[:2]:
        for clip in x:
            np.testing.assert_array_equal(np.flatnonzero(clip.max(axis=1) > 0), np.arange(8, 12))
            assert 3 <= len(np.flatnonzero(clip.max(axis=0) > 0)) <= 5


def test_stretches_keep_the_block_near_its_anchor():
    time_stretched, _ = OPS["time_stretch"](tf.constant(spectrograms()), tf.constant(labels()))
    for clip in time_stretched.numpy():
        frames = np.flatnonzero(clip.max(axis=1) > 0)
        assert abs(frames.mean() - 9.5) <= 1.5, "time stretches about the centre"
    freq_stretched, _ = OPS["freq_stretch"](tf.constant(spectrograms()), tf.constant(labels()))
    for clip in freq_stretched.numpy():
        bins = np.flatnonzero(clip.max(axis=0) > 0)
        # Output bin i reads source bin i * s, s in [0.7, 1.3]: source bins 6-9 land within [6 / 1.3, 9 / 0.7]
        # = [4.6, 12.9], and linear interpolation lights one bin beyond, so 13 (a block centred about its
        # place would reach far lower).
        assert 4 <= bins.min() and bins.max() <= 13, "the mel axis scales about bin 0"


def test_masks_set_whole_bands_to_the_clip_mean():
    batch = np.random.default_rng(0).normal(size=(BATCH, FRAMES, BINS)).astype(np.float32)
    for axis, op in ((1, OPS["time_masks"]), (2, OPS["freq_masks"])):
        for x in (op(tf.constant(batch), tf.constant(labels()))[0].numpy(),
                  next(iter(tf.data.Dataset.from_tensors((batch, labels())).map(op)))[0].numpy()):
            changed = x != batch
            other_axis = 2 if axis == 1 else 1
            assert np.all(changed.any(axis=other_axis) == changed.all(axis=other_axis)), "masks span whole bands"
            assert changed.sum(axis=(1, 2)).max() <= 2 * int(0.3 * batch.shape[axis]) * batch.shape[other_axis]
            means = batch.mean(axis=(1, 2))
            for clip, mask, mean in zip(x, changed, means):
                np.testing.assert_allclose(clip[mask], mean, rtol=1e-5)


def test_noise_floor_raises_silence_and_keeps_the_peak():
    for x, _ in run_eagerly_and_mapped(OPS["noise_floor"])[:2]:
        assert np.all(x >= spectrograms() - 1e-5), "adding noise power never lowers a bin"
        np.testing.assert_allclose(x.max(axis=(1, 2)), spectrograms().max(axis=(1, 2)), atol=0.2)
        assert np.median(x[:, :5]) > SILENCE + 1, "silence now holds noise"


def test_mixup_mixes_inputs_and_labels_with_one_weight():
    x, y = (tensor.numpy() for tensor in OPS["mixup"](tf.constant(spectrograms()), tf.constant(labels())))
    peaks = x[:, 8:12, 6:10].mean(axis=(1, 2))
    assert np.all((peaks >= 1 - 1e-4) & (peaks <= BATCH + 1e-4)), "a convex mix of the clips' block levels"
    assert np.all(y >= 0) and np.all(y <= 1)


def test_gain_scales_the_power_and_keeps_the_floor():
    for x, _ in run_eagerly_and_mapped(OPS["gain"])[:2]:
        change = x[:, 8:12, 6:10] - spectrograms()[:, 8:12, 6:10]
        np.testing.assert_allclose(change, change[:, :1, :1] + np.zeros_like(change), atol=1e-5,
                                   err_msg="one gain per clip")
        assert np.all(np.abs(change) <= 0.6 * np.log(10) + 1e-5), "at most 6 dB either way"
        np.testing.assert_allclose(x[:, :5], spectrograms()[:, :5], atol=0.1, err_msg="silence stays at the floor")


def test_reverb_keeps_the_first_frame_and_adds_a_decaying_tail():
    for x, _ in run_eagerly_and_mapped(OPS["reverb"])[:2]:
        np.testing.assert_allclose(x[:, 0], spectrograms()[:, 0], atol=1e-5, err_msg="nothing precedes frame 0")
        assert np.all(x >= spectrograms() - 1e-5), "reverberation never removes power"
        tail = np.exp(x[:, 12:, 6:10].astype(np.float64)) - np.exp(spectrograms()[:, 12:, 6:10].astype(np.float64))
        assert np.all(tail > 1e-4), "the frames after the block hold its reverberation"
        # After the block, every frame's tail is the last one's times 10^(-6 hop / RT60), RT60 in [0.2, 0.8] s.
        ratios = tail[:, 1:] / tail[:, :-1]
        assert np.all((ratios > 10 ** -0.3 - 1e-3) & (ratios < 10 ** -0.075 + 1e-3))


def mel_centres_hz(bins: int) -> np.ndarray:
    edges = np.linspace(1127 * np.log1p(20 / 700), 1127 * np.log1p(8000 / 700), bins + 2)
    return 700 * np.expm1(edges[1:-1] / 1127)


def test_band_limit_keeps_the_low_band_and_silences_the_high_band():
    bins = 64
    batch = np.zeros((16, FRAMES, bins), np.float32)  # power 1 in every bin
    op = OPS["band_limit"]
    centres = mel_centres_hz(bins)
    for x in (op(tf.constant(batch), tf.constant(labels()))[0].numpy(),
              next(iter(tf.data.Dataset.from_tensors((batch, labels())).map(op)))[0].numpy()):
        for clip in x:
            changed = np.flatnonzero((clip != 0).any(axis=0))
            first = changed[0]
            np.testing.assert_array_equal(changed, np.arange(first, bins), "the cut removes the bins above it")
            assert centres[first] > 3000 and centres[first - 1] <= 7000, "the cutoff is in [3, 7] kHz"
            np.testing.assert_allclose(clip[:, first + 2:], FLOOR, atol=1e-5,
                                       err_msg="two bins above the cutoff is the floor")
            assert np.all(clip[:, first:first + 2] < 0), "the roll-off bins lose power"


@pytest.mark.parametrize("flag, value", [("noise_probability", 1.5), ("band_limit", -0.1), ("reverb", 2.0),
                                         ("gain_db", -3.0)])
def test_bad_room_and_channel_values_are_named(flag, value):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**{flag: value}).validate()
    assert caught.value.fields == (flag,)
    assert flags_lib.flag_error(TrainConfig, caught.value).startswith(f"--{flag}: {flag}={value!r} is invalid")


def test_an_inverted_snr_range_names_both_flags():
    with pytest.raises(ConfigError) as caught:
        TrainConfig(noise_snr_min_db=30.0).validate()
    assert flags_lib.flag_error(TrainConfig, caught.value).startswith("--noise_snr_min_db + --noise_snr_max_db: ")


def test_room_and_channel_flags_reach_the_config():
    parser = argparse.ArgumentParser()
    flags_lib.add_flags(parser, TrainConfig)
    config = flags_lib.from_flags(TrainConfig, parser.parse_args(
        ["--noise_probability", "0.5", "--noise_snr_min_db", "-5", "--noise_snr_max_db", "10", "--band_limit",
         "0.2", "--reverb", "0.3", "--gain_db", "6"]))
    assert (config.noise_probability, config.noise_snr_db, config.band_limit, config.reverb, config.gain_db) == (
        0.5, (-5.0, 10.0), 0.2, 0.3, 6.0)
