"""Training-only augmentations of log-mel spectrogram batches, as small factories.

Each `make_*` returns `op(spectrograms, labels) -> (spectrograms, labels)` on a
batch: spectrograms float32 [batch, frames, bins] (natural-log power, as stored),
labels float32 one-hot [batch, classes]. Every example draws its own random
parameters. They run inside `Dataset.map` after batching, so they are vectorised
over the batch; a parameter of 0 makes the factory return None (no op).

What they buy, measured with the seed network trained on espeak-ng voices only
(25 epochs) and tested on festival voices, chance 0.033: none 0.53; time shift +
stretch alone 0.53; frequency shift + stretch alone 0.48; masks alone 0.55; the
defaults (all three) 0.58, at the price of in-domain test accuracy (0.996 -> 0.965).
Noise floor, mixup and stronger frequency warps did not help; they stay off.
Background-noise mixing (`trainer.noise`) and the room and channel ops (gain, reverb,
band limit) came later; the README will give their measurements.
"""
from typing import Callable

import tensorflow as tf

from trainer.config import TrainConfig
from trainer.noise import from_power, make_noise_mixing, to_power

_DB_TO_LOG_POWER = 0.2302585  # ln(10) / 10: the spectrogram is ln(power), dB is 10 log10(power)
_BAND_LIMIT_HZ = (3000.0, 7000.0)  # telephone lines to recorders sampling at 8-16 kHz
_ROLL_OFF_BINS = 2.0  # a band limit's filter falls from full power to none over this many mel bins
_REVERBERANT_TO_DIRECT = (0.1, 1.0)  # the reverberant-to-direct energy ratio r of make_reverb


def make_time_shift(max_fraction: float) -> Callable | None:
    """Shifts each clip by up to max_fraction of its frames either way, filling with its quietest value."""
    return _make_shift(axis=1, max_fraction=max_fraction, fill_silence=True)


def make_time_stretch(max_deviation: float) -> Callable | None:
    """Stretches each clip in time about its centre by a factor in [1 - d, 1 + d] (speaking rate)."""
    return _make_stretch(axis=1, max_deviation=max_deviation, about_centre=True, fill_silence=True)


def make_freq_shift(max_fraction: float) -> Callable | None:
    """Moves each clip up or down by up to max_fraction of its mel bins (pitch and formant offsets)."""
    return _make_shift(axis=2, max_fraction=max_fraction, fill_silence=False)


def make_freq_stretch(max_deviation: float) -> Callable | None:
    """Scales each clip's mel axis about bin 0 by a factor in [1 - d, 1 + d] (vocal tract length)."""
    return _make_stretch(axis=2, max_deviation=max_deviation, about_centre=False, fill_silence=False)


def _make_shift(*, axis: int, max_fraction: float, fill_silence: bool) -> Callable | None:
    """Moves `axis` of each clip by up to max_fraction of its length either way."""
    if not max_fraction:
        return None

    def shift(spectrograms, labels):
        length = tf.cast(tf.shape(spectrograms)[axis], tf.float32)
        offset = _uniform_per_example(spectrograms, -max_fraction, max_fraction) * length
        positions = _affine_positions(spectrograms, axis=axis, scale=tf.ones_like(offset), shift=offset,
                                      about_centre=True)
        return _resample(spectrograms, axis=axis, positions=positions, fill_silence=fill_silence), labels

    return shift


def _make_stretch(*, axis: int, max_deviation: float, about_centre: bool, fill_silence: bool) -> Callable | None:
    """Scales `axis` of each clip by a factor in [1 - d, 1 + d], about its centre or about index 0."""
    if not max_deviation:
        return None

    def stretch(spectrograms, labels):
        scale = _uniform_per_example(spectrograms, 1 - max_deviation, 1 + max_deviation)
        positions = _affine_positions(spectrograms, axis=axis, scale=scale, shift=tf.zeros_like(scale),
                                      about_centre=about_centre)
        return _resample(spectrograms, axis=axis, positions=positions, fill_silence=fill_silence), labels

    return stretch


def make_masks(*, axis: int, count: int, max_fraction: float) -> Callable | None:
    """SpecAugment: `count` bands of up to max_fraction of `axis` (1 time, 2 frequency) set to the clip's mean."""
    if not count or not max_fraction:
        return None

    def masks(spectrograms, labels):
        batch, length = tf.shape(spectrograms)[0], tf.shape(spectrograms)[axis]
        length_f = tf.cast(length, tf.float32)
        widths = tf.floor(tf.random.uniform([batch, count, 1], 0, tf.floor(max_fraction * length_f) + 1))
        starts = tf.floor(tf.random.uniform([batch, count, 1]) * (length_f - widths + 1))
        positions = tf.cast(tf.range(length), tf.float32)[None, None, :]
        masked = tf.reduce_any((positions >= starts) & (positions < starts + widths), axis=1)  # [batch, length]
        masked = masked[:, :, None] if axis == 1 else masked[:, None, :]
        mean = tf.reduce_mean(spectrograms, axis=[1, 2], keepdims=True)
        return tf.where(masked, mean, spectrograms), labels

    return masks


def make_noise_floor(max_db_below_peak: float) -> Callable | None:
    """Adds white noise at max_db_below_peak to 20 dB further below each clip's peak.

    Synthetic clips hold digital silence; other recordings hold noise there.
    """
    if not max_db_below_peak:
        return None

    def noise_floor(spectrograms, labels):
        below_peak = _uniform_per_example(spectrograms, max_db_below_peak, max_db_below_peak + 20)
        level = tf.reduce_max(spectrograms, axis=[1, 2]) - below_peak * _DB_TO_LOG_POWER
        # ln of an exponential (chi-square, 2 dof) power: the per-bin fluctuation of white noise.
        jitter = tf.math.log(-tf.math.log(tf.random.uniform(tf.shape(spectrograms), 1e-6, 1.0)))
        noise = level[:, None, None] + jitter
        return tf.math.reduce_logsumexp(tf.stack([spectrograms, noise]), axis=0), labels

    return noise_floor


def make_gain(max_db: float) -> Callable | None:
    """Scales each clip's power by a gain in [-max_db, +max_db] dB, under the featurizer's fixed floor.

    The model standardizes each clip and noise mixing sets its noise by SNR, so a gain shows
    only where the clip meets the floor of ln(power + 1e-6): it sinks quiet parts into it or
    lifts them out, as a recording level does; placed before noise mixing and the band limit.
    """
    if not max_db:
        return None

    def gain(spectrograms, labels):
        scale = tf.exp(_uniform_per_example(spectrograms, -max_db, max_db) * _DB_TO_LOG_POWER)
        return from_power(scale[:, None, None] * to_power(spectrograms)), labels

    return gain


def make_reverb(probability: float, *, rt60_range: tuple[float, float] = (0.2, 0.8),
                hop_seconds: float = 0.01) -> Callable | None:
    """Adds late reverberation to a clip with `probability`: an exponentially decaying tail of each frame.

    P_rev[t] = P[t] + r * sum_{k >= 1} P[t - k] 10^(-6 k hop / RT60) on the power, RT60 uniform
    in `rt60_range` seconds (the time to decay 60 dB) and r uniform in [0.1, 1] per clip;
    `hop_seconds` is the spectrogram's hop.
    """
    if not probability:
        return None

    def reverb(spectrograms, labels):
        rt60 = _uniform_per_example(spectrograms, *rt60_range)
        ratio = _uniform_per_example(spectrograms, *_REVERBERANT_TO_DIRECT)
        index = tf.range(tf.shape(spectrograms)[1])
        delay = tf.cast(index[:, None] - index[None, :], tf.float32)  # [to frame, from frame]
        # exp, not 10 ** x: TensorFlow's pow took 3x as long as all the rest of the op.
        decay = ratio[:, None, None] * tf.exp(-6 * hop_seconds * tf.math.log(10.0) / rt60[:, None, None]
                                              * tf.nn.relu(delay))
        response = tf.where(delay > 0, decay, tf.cast(delay == 0, tf.float32))  # [batch, frames, frames]
        reverberant = from_power(tf.einsum("bts,bsf->btf", response, to_power(spectrograms)))
        return _where_chosen(probability, reverberant, spectrograms), labels

    return reverb


def make_band_limit(probability: float, *, sample_rate: int = 16000, low_hz: float = 20.0) -> Callable | None:
    """Removes a clip's power above a cutoff uniform in [3000, 7000] Hz with `probability` (phone, cheap recorder).

    Mel bins (HTK, equally spaced from `low_hz` to sample_rate / 2, as the featurizer's) whose
    centre lies below the cutoff keep their power; above it, the power falls linearly to none
    (the floor) over 2 bins.
    """
    if not probability:
        return None

    def band_limit(spectrograms, labels):
        bins = tf.shape(spectrograms)[2]
        low, high = _hz_to_mel(low_hz), _hz_to_mel(sample_rate / 2)
        spacing = (high - low) / tf.cast(bins + 1, tf.float32)  # bin i is centred at low + (i + 1) spacing
        cutoff_bin = (_hz_to_mel(_uniform_per_example(spectrograms, *_BAND_LIMIT_HZ)) - low) / spacing - 1
        above = tf.cast(tf.range(bins), tf.float32)[None, :] - cutoff_bin[:, None]
        keep = tf.clip_by_value(1 - above / _ROLL_OFF_BINS, 0.0, 1.0)[:, None, :]  # [batch, 1, bins]
        limited = from_power(keep * to_power(spectrograms))
        # Bins below the cutoff stay exactly as they were, not as exp and log give them back.
        return _where_chosen(probability, tf.where(keep < 1, limited, spectrograms), spectrograms), labels

    return band_limit


def make_mixup(alpha: float) -> Callable | None:
    """Mixes each example with another of the batch (inputs and labels), weight ~ Beta(alpha, alpha)."""
    if not alpha:
        return None

    def mixup(spectrograms, labels):
        batch = tf.shape(spectrograms)[0]
        first = tf.random.gamma([batch], alpha)
        weight = first / (first + tf.random.gamma([batch], alpha))
        partner = tf.random.shuffle(tf.range(batch))

        def mix(values, weights):
            return weights * values + (1 - weights) * tf.gather(values, partner)

        return mix(spectrograms, weight[:, None, None]), mix(labels, weight[:, None])

    return mixup


def make_spectrogram_augmentation(config: TrainConfig, *, noises=()) -> Callable | None:
    """All enabled augmentations of `config`, in order, or None.

    The room and channel first, as a recording makes them: gain, reverb, mixing in
    `noises` (background-noise spectrograms for `trainer.noise.make_noise_mixing`), band
    limit; then the speaker's stretches and shifts, the noise floor, masks and mixup.
    """
    ops = [op for op in (
        make_gain(config.gain_db),
        make_reverb(config.reverb),
        make_noise_mixing(list(noises), probability=config.noise_probability, snr_db=config.noise_snr_db),
        make_band_limit(config.band_limit),
        make_time_stretch(config.time_stretch),
        make_time_shift(config.time_shift),
        make_freq_stretch(config.freq_stretch),
        make_freq_shift(config.freq_shift),
        make_noise_floor(config.noise_floor_db),
        make_masks(axis=1, count=config.time_masks, max_fraction=config.time_mask_width),
        make_masks(axis=2, count=config.freq_masks, max_fraction=config.freq_mask_width),
        make_mixup(config.mixup),
    ) if op is not None]
    if not ops:
        return None

    def augment(spectrograms, labels):
        for op in ops:
            spectrograms, labels = op(spectrograms, labels)
        return spectrograms, labels

    return augment


def _uniform_per_example(spectrograms, low: float, high: float):
    return tf.random.uniform([tf.shape(spectrograms)[0]], low, high)


def _where_chosen(probability: float, changed, spectrograms):
    """`changed` for each clip with `probability`, the clip itself otherwise."""
    chosen = tf.random.uniform([tf.shape(spectrograms)[0]]) < probability
    return tf.where(chosen[:, None, None], changed, spectrograms)


def _hz_to_mel(hz):
    """HTK mel of a frequency in Hz (a float or a float32 tensor): a float32 tensor."""
    return 1127.0 * tf.math.log1p(tf.cast(hz, tf.float32) / 700.0)


def _affine_positions(spectrograms, *, axis: int, scale, shift, about_centre: bool):
    """Source positions (i - c) * scale + c - shift, [batch, length], c the axis' centre or 0."""
    last = tf.cast(tf.shape(spectrograms)[axis] - 1, tf.float32)
    centre = last / 2 if about_centre else 0.0
    index = tf.cast(tf.range(tf.shape(spectrograms)[axis]), tf.float32)[None, :]
    return (index - centre) * scale[:, None] + centre - shift[:, None]


def _resample(spectrograms, *, axis: int, positions, fill_silence: bool):
    """Reads `axis` of [batch, frames, bins] at fractional source positions [batch, length], linearly.

    Positions outside the axis take the clip's minimum when fill_silence, else the nearest edge value.
    """
    last = tf.cast(tf.shape(spectrograms)[axis] - 1, tf.float32)
    clipped = tf.clip_by_value(positions, 0.0, last)
    low = tf.floor(clipped)
    high = tf.minimum(low + 1, last)
    weight = clipped - low

    def gather(indices):
        return tf.gather(spectrograms, tf.cast(indices, tf.int32), axis=axis, batch_dims=1)

    def along_axis(values):  # [batch, length] -> broadcastable against [batch, frames, bins]
        return values[:, :, None] if axis == 1 else values[:, None, :]

    warped = gather(low) * (1 - along_axis(weight)) + gather(high) * along_axis(weight)
    if not fill_silence:
        return warped
    outside = along_axis((positions < 0) | (positions > last))
    return tf.where(outside, tf.reduce_min(spectrograms, axis=[1, 2], keepdims=True), warped)


# ModelInput.augmentation -> the factory of a batch augmentation from the training config.
AUGMENTATIONS = {"spectrogram": make_spectrogram_augmentation}


def make_augmentation(family: str | None, config: TrainConfig, *, noises=()) -> Callable | None:
    """The training-only augmentation of a modality's `ModelInput.augmentation` family; None for none.

    `noises`: the dataset's background-noise spectrograms (`trainer.noise.load_background_noise`).
    """
    return AUGMENTATIONS[family](config, noises=noises) if family else None
