"""Background-noise mixing, a training-only audio augmentation: recorded noise added to clips at a random SNR.

A dataset's `_background_noise_/` recordings are stored once per snapshot, each as the
log-mel spectrogram of the whole recording (the manifest's `background_noise` lists
them). `load_background_noise` reads them; `make_noise_mixing` returns a batch op like
those of `trainer.augment`, which adds a random window of one of them to a clip. Like
TensorFlow's speech_commands example (noise at volume U(0, 0.1) of a peak-normalised
file, 80% of the time), but by signal-to-noise ratio, since the clips' levels differ.
"""
import io
from typing import Callable

import numpy as np
import tensorflow as tf

from beam_jobs.modalities.audio import LOG_FLOOR as POWER_FLOOR  # a stored spectrogram is ln(power + floor)

# Mean power per bin below which a clip is digital silence: far under the floor, above its float32 rounding.
_SILENT_POWER = 1e-3 * POWER_FLOOR


def to_power(spectrograms):
    """The power of stored ln(power + floor) spectrograms, without the floor."""
    return tf.nn.relu(tf.exp(spectrograms) - POWER_FLOOR)


def from_power(power):
    """Power back to a spectrogram as stored: ln(power + floor)."""
    return tf.math.log(power + POWER_FLOOR)


def load_background_noise(manifest, data_dir: str) -> list[np.ndarray]:
    """The manifest's background-noise spectrograms, float32 [frames_i, bins] each, from `data_dir` (or gs://).

    Each entry's `file` (relative to `data_dir`) is a .npy of at least the clips' frames and
    exactly their bins (`manifest.tensor_shape`); ValueError naming the file otherwise. A recording
    the pipeline left out has an "error" instead (its summary reported it) and is skipped. Manifests
    written before noise was stored have none: [].
    """
    frames, bins = manifest.tensor_shape
    noises = []
    for entry in getattr(manifest, "background_noise", []):
        if "file" not in entry:
            continue
        path = tf.io.gfile.join(data_dir, entry["file"])
        with tf.io.gfile.GFile(path, "rb") as npy_file:
            data = npy_file.read()
        try:
            noise = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ValueError(f"{path} (background noise {entry['path']}) is not a .npy array: {error}") from error
        if noise.ndim != 2 or noise.shape[1] != bins or noise.shape[0] < frames:
            raise ValueError(f"{path} (background noise {entry['path']}) holds an array of shape {noise.shape}: "
                             f"it must be a spectrogram [frames >= {frames}, {bins}]")
        noises.append(noise.astype(np.float32))
    return noises


def make_noise_mixing(noises: list[np.ndarray], *, probability: float,
                      snr_db: tuple[float, float]) -> Callable | None:
    """Mixes a random window of a random recording of `noises` into a clip, with `probability` per clip.

    `noises` are log-mel spectrograms float32 [frames_i, bins], each at least as long as the
    clips. Mixing adds powers, P_clip + g P_noise, and the gain g makes the clip's SNR (its total
    power over the window's, in dB) uniform in `snr_db`; a clip of digital silence gets the noise
    at its own level (g = 1). None when probability is 0 or there are no noises.
    """
    if not probability or not noises:
        return None
    # Powers, not logs: the floor is the featurizer's, so that the mix is ln(P_clip + g P_noise + floor).
    power = tf.constant(np.maximum(np.exp(np.concatenate(noises).astype(np.float64)) - POWER_FLOOR, 0.0),
                        tf.float32)  # [all recordings' frames, bins]
    lengths = [len(noise) for noise in noises]
    starts = tf.constant(np.cumsum([0] + lengths[:-1]), tf.int32)
    lengths = tf.constant(lengths, tf.int32)

    def noise_mixing(spectrograms, labels):
        batch, frames, bins = tf.unstack(tf.shape(spectrograms))
        recording = tf.random.uniform([batch], 0, len(noises), dtype=tf.int32)
        fitting_starts = tf.cast(tf.gather(lengths, recording) - frames + 1, tf.float32)
        offset = tf.cast(tf.random.uniform([batch]) * fitting_starts, tf.int32)
        window = tf.gather(power, (tf.gather(starts, recording) + offset)[:, None] + tf.range(frames)[None, :])
        clip = tf.exp(spectrograms)
        clip_power = tf.reduce_sum(to_power(spectrograms), axis=[1, 2])
        silent = tf.cast(frames * bins, tf.float32) * _SILENT_POWER
        noise_power = tf.maximum(tf.reduce_sum(window, axis=[1, 2]), silent)
        snr = tf.random.uniform([batch], *snr_db)
        gain = tf.where(clip_power > silent, clip_power / (noise_power * 10 ** (snr / 10)), 1.0)
        mixed = tf.math.log(clip + gain[:, None, None] * window)
        chosen = tf.random.uniform([batch]) < probability
        return tf.where(chosen[:, None, None], mixed, spectrograms), labels

    return noise_mixing


def describe_noise_mixing(noises: list[np.ndarray], *, probability: float, snr_db: tuple[float, float]) -> str:
    """What `make_noise_mixing` does with these arguments, for the trainer's start-up line."""
    if not probability:
        return "noise mixing off"
    if not noises:
        return "noise mixing off: the dataset has no _background_noise_"
    return (f"noise mixing on {len(noises)} recordings at {snr_db[0]:g}-{snr_db[1]:g} dB SNR, "
            f"{probability:.0%} of clips")
