"""The audio modality: WAV bytes to a log(-mel) spectrogram, its settings and its spec (`AUDIO`).

Pure numpy/scipy, no Beam, no TensorFlow: the pipeline, `trainer.predict`, the
app and the report all featurize a raw file with exactly these functions.
"""
import dataclasses
import functools
import hashlib
import io
import math
import struct
import warnings

import numpy as np

from beam_jobs.modalities.config import option, require
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.modalities.spec import DemoCorpus, Modality, ModelInput, PreviewPanel

LOG_FLOOR = 1e-6  # keeps log() finite on digital silence; a stored spectrogram is ln(power + LOG_FLOOR)
_SILENCE_DB = 40.0  # frames this far below the loudest frame count as silence when centring
_MAX_SAMPLE_RATE = 768_000  # the fastest rate recorders use; a higher one is a corrupt header
# scipy's parser reports corrupt or truncated headers with all of these (found by fuzzing).
_WAV_PARSE_ERRORS = (ValueError, EOFError, OSError, KeyError, struct.error, ZeroDivisionError,
                     TypeError, UnboundLocalError)


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = option(16000, "every clip is resampled to this rate (Hz)")
    clip_seconds: float = option(1.0, "clips are padded or trimmed to this length (Speech Commands' is 1 s)")
    align: str = option("center", "'center' centres the loudest stretch in the clip, 'start' keeps its start")
    window_ms: float = option(25.0, "spectrogram window length")
    hop_ms: float = option(10.0, "spectrogram hop between windows")
    fft_size: int = option(512, "FFT length in samples, at least one window")
    num_mel_bins: int = option(64, "mel bands; 0 keeps the linear-frequency spectrogram (fft_size // 2 + 1 bins)")
    max_file_bytes: int = option(64 * 1024 * 1024, "larger wav files become error rows", flag="max_audio_bytes")
    max_seconds: float = option(60.0, "longer recordings become error rows, not trimmed silently")

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def hop_samples(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def num_frames(self) -> int:
        return 1 + (self.clip_samples - self.window_samples) // self.hop_samples

    @property
    def num_bins(self) -> int:
        return self.num_mel_bins or self.fft_size // 2 + 1

    @property
    def feature_shape(self) -> tuple[int, int]:
        """Shape of one spectrogram: [time frames, frequency bins]."""
        return (self.num_frames, self.num_bins)

    def validate(self) -> "AudioConfig":
        require(self.sample_rate >= 1000, "sample_rate", self.sample_rate, ">= 1000")
        require(self.clip_seconds > 0, "clip_seconds", self.clip_seconds, "> 0")
        require(self.align in ("center", "start"), "align", self.align, "'center' or 'start'")
        require(self.window_samples >= 16, "window_ms", self.window_ms, "at least 16 samples long")
        require(self.hop_samples >= 1, "hop_ms", self.hop_ms, "at least one sample")
        require(self.fft_size >= self.window_samples, "fft_size", self.fft_size,
                f">= the window length ({self.window_samples} samples)")
        require(self.clip_samples >= self.window_samples, "clip_seconds", self.clip_seconds,
                "at least one window long")
        require(0 <= self.num_mel_bins <= self.fft_size // 2 + 1, "num_mel_bins", self.num_mel_bins,
                f"between 0 and {self.fft_size // 2 + 1}")
        require(self.max_file_bytes > 0, "max_file_bytes", self.max_file_bytes, "> 0")
        require(self.max_seconds >= self.clip_seconds, "max_seconds", self.max_seconds, ">= clip_seconds")
        return self


def decode_wav(data: bytes, *, config: AudioConfig) -> tuple[np.ndarray, int]:
    """Decodes any PCM or IEEE-float WAV to mono float32 in [-1, 1].

    Args:
      data: the bytes of a .wav file (8-bit unsigned, 16/24/32-bit int, 32/64-bit float,
        any number of channels).
      config: supplies the size and duration limits.

    Returns:
      (samples, sample_rate): samples is float32 of shape [num_samples].

    Raises:
      InvalidInputError: empty, truncated, not a WAV, unsupported encoding, over a limit.
    """
    if not data:
        raise InvalidInputError("empty file")
    if len(data) > config.max_file_bytes:
        raise InvalidInputError(f"file is {len(data)} bytes, over the limit of {config.max_file_bytes}")
    with warnings.catch_warnings(record=True) as caught:
        # Imported here, not at the top: importing scipy.io costs 0.3 s that a run with nothing to featurize,
        # and every reader of a manifest, need not pay.
        from scipy.io import wavfile
        warnings.simplefilter("always", wavfile.WavFileWarning)
        try:
            rate, samples = wavfile.read(io.BytesIO(data))
        except _WAV_PARSE_ERRORS as error:
            raise InvalidInputError(f"not a readable PCM WAV file: {error}") from error
    for warning in caught:
        # scipy returns whatever it could read from a truncated file and only warns.
        if "EOF" in str(warning.message) or "truncated" in str(warning.message).lower():
            raise InvalidInputError(f"truncated WAV file: {warning.message}")
    if not 0 < rate <= _MAX_SAMPLE_RATE:
        raise InvalidInputError(f"invalid sample rate {rate}")
    samples = _to_float(samples)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    if samples.size == 0:
        raise InvalidInputError("WAV file holds no samples")
    duration = samples.size / rate
    if duration > config.max_seconds:
        raise InvalidInputError(f"recording is {duration:.1f} s long, over the limit of {config.max_seconds} s")
    if not np.all(np.isfinite(samples)):
        raise InvalidInputError("WAV file holds NaN or infinite samples")
    return samples, int(rate)


def _to_float(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.uint8:
        return (samples.astype(np.float32) - 128.0) / 128.0
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if samples.dtype == np.int32:
        # scipy left-justifies 24-bit samples in int32, so one scale serves 24 and 32 bits.
        return (samples.astype(np.float64) / 2147483648.0).astype(np.float32)
    if samples.dtype in (np.float32, np.float64):
        return samples.astype(np.float32)
    raise InvalidInputError(f"unsupported sample type {samples.dtype}")


def resample(samples: np.ndarray, *, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling of float32 [n] samples; returns float32 [round(n * to / from)]."""
    if from_rate == to_rate:
        return samples
    from scipy import signal  # imported here: it takes about a second, paid only when a file needs resampling

    divisor = math.gcd(from_rate, to_rate)
    return signal.resample_poly(samples, to_rate // divisor, from_rate // divisor).astype(np.float32)


def fit_to_clip(samples: np.ndarray, *, config: AudioConfig) -> np.ndarray:
    """Pads with silence or trims float32 [n] samples to exactly `config.clip_samples`.

    With align="center" the loudest stretch (frames within 40 dB of the peak) is
    centred in the clip, so the same word lands in the same place whatever the
    leading silence of the recording; with align="start" the clip keeps its start.
    """
    length = config.clip_samples
    if config.align == "center":
        start, end = _voiced_region(samples, frame=config.hop_samples)
        middle = (start + end) // 2
        offset = middle - length // 2
    else:
        offset = 0
    clip = np.zeros(length, dtype=np.float32)
    source_start = max(offset, 0)
    source_end = min(offset + length, samples.size)
    if source_end > source_start:
        clip[source_start - offset:source_end - offset] = samples[source_start:source_end]
    return clip


def _voiced_region(samples: np.ndarray, *, frame: int) -> tuple[int, int]:
    # float64: squaring float32 samples of a corrupt float WAV overflows to inf.
    frames = samples[: samples.size // frame * frame].reshape(-1, frame).astype(np.float64)
    if frames.size == 0:
        return 0, samples.size
    energy_db = 10 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)
    loud = np.flatnonzero(energy_db > energy_db.max() - _SILENCE_DB)
    return int(loud[0]) * frame, int(loud[-1] + 1) * frame


def compute_log_spectrogram(clip: np.ndarray, *, config: AudioConfig, num_frames: int | None = None) -> np.ndarray:
    """Log power spectrogram of float32 [clip_samples]: float32 [num_frames, num_bins].

    Hann window of `window_ms`, hop `hop_ms`, `fft_size`-point FFT; projected to
    `num_mel_bins` mel bands when that is non-zero. `num_frames` defaults to the
    clip's (`config.num_frames`); None for a longer recording takes every whole window.
    """
    window = config.window_samples
    frames = np.lib.stride_tricks.sliding_window_view(clip, window)[:: config.hop_samples]
    frames = frames[: num_frames or config.num_frames] * _hann(window)
    power = np.abs(np.fft.rfft(frames, n=config.fft_size, axis=1)) ** 2
    if config.num_mel_bins:
        # einsum, not @: a matmul this size goes to multi-threaded OpenBLAS, whose spinning threads
        # made featurizing 5-10x slower on busy or shared cores (Beam workers, the trainer's input).
        mel = _mel_matrix(config.sample_rate, config.fft_size, config.num_mel_bins)
        power = np.einsum("fk,km->fm", power, mel)
    return np.log(power + LOG_FLOOR).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _hann(length: int) -> np.ndarray:
    """The periodic Hann window, float32 [length]: bit for bit scipy.signal.get_window("hann", length).

    Computed as scipy computes it, without importing scipy.signal (see resample()).
    """
    phase = np.linspace(-np.pi, np.pi, length + 1)
    return (0.5 + 0.5 * np.cos(phase))[:length].astype(np.float32)


@functools.lru_cache(maxsize=8)
def _mel_matrix(sample_rate: int, fft_size: int, num_mel_bins: int) -> np.ndarray:
    """HTK-style triangular filters, float32 [fft_size // 2 + 1, num_mel_bins]."""
    def hz_to_mel(hz):
        return 1127.0 * np.log1p(np.asarray(hz) / 700.0)

    fft_hz = np.linspace(0, sample_rate / 2, fft_size // 2 + 1)
    edges = np.linspace(hz_to_mel(20.0), hz_to_mel(sample_rate / 2), num_mel_bins + 2)
    fft_mel = hz_to_mel(fft_hz)[:, None]
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (fft_mel - lower) / (center - lower)
    falling = (upper - fft_mel) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def featurize_wav_clip(data: bytes, *, config: AudioConfig) -> tuple[np.ndarray, np.ndarray]:
    """WAV bytes to (clip float32 [clip_samples], spectrogram float32 [num_frames, num_bins]).

    The clip is the recording as the model gets it (resampled, cut or padded
    around the word); the spectrogram is the model's input. Raises InvalidInputError.
    """
    samples, rate = decode_wav(data, config=config)
    clip = fit_to_clip(resample(samples, from_rate=rate, to_rate=config.sample_rate), config=config)
    spectrogram = compute_log_spectrogram(clip, config=config)
    if not np.all(np.isfinite(spectrogram)):
        # Only a corrupt float WAV, with samples near the float32 limit, overflows the power spectrum.
        raise InvalidInputError("sample values are far out of range: the spectrogram overflows")
    return clip, spectrogram


def featurize_wav(data: bytes, *, config: AudioConfig) -> np.ndarray:
    """WAV bytes to the model's input: float32 [num_frames, num_bins]. Raises InvalidInputError."""
    return featurize_wav_clip(data, config=config)[1]


def _noise_recording(data: bytes, *, config: AudioConfig) -> np.ndarray:
    """A background-noise recording decoded and resampled, float32 [n]; InvalidInputError if under a clip long."""
    samples, rate = decode_wav(data, config=config)
    samples = resample(samples, from_rate=rate, to_rate=config.sample_rate)
    if samples.size < config.clip_samples:
        raise InvalidInputError(f"background noise is {samples.size / config.sample_rate:.2f} s long, shorter than "
                                f"one clip ({config.clip_seconds} s)")
    return samples


def featurize_noise_wav(data: bytes, *, config: AudioConfig) -> np.ndarray:
    """A background-noise recording, whole, as the stored spectrograms are made: float32 [frames, num_bins].

    Decoded and resampled like a clip but neither cut nor centred; at least one clip long, else
    InvalidInputError (a shorter recording cannot give a clip-long stretch of noise).
    """
    samples = _noise_recording(data, config=config)
    frames = 1 + (samples.size - config.window_samples) // config.hop_samples
    spectrogram = compute_log_spectrogram(samples, config=config, num_frames=frames)
    if not np.all(np.isfinite(spectrogram)):
        raise InvalidInputError("sample values are far out of range: the spectrogram overflows")
    return spectrogram


def noise_excerpt_wav(data: bytes, *, config: AudioConfig, key: str, max_volume: float = 1.0) -> bytes:
    """One clip of a background-noise recording at a random volume, as a float32 WAV: a silence example.

    `key` seeds the excerpt's start and its volume, uniform in [0, max_volume] times the recording's
    own level (as Speech Commands' silence, whose volume is uniform in [0, 1]), so one key always gives
    the same bytes. Raises InvalidInputError for a recording that is unreadable or shorter than a clip.
    """
    from scipy.io import wavfile

    samples = _noise_recording(data, config=config)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little"))
    start = int(rng.integers(0, samples.size - config.clip_samples + 1))
    excerpt = samples[start:start + config.clip_samples] * np.float32(rng.uniform(0.0, max_volume))
    output = io.BytesIO()
    wavfile.write(output, config.sample_rate, excerpt.astype(np.float32))
    return output.getvalue()


def preview_wav(data: bytes, *, config: AudioConfig) -> list[PreviewPanel]:
    """The clip the model gets as a waveform above its spectrogram, both over the clip's seconds."""
    clip, spectrogram = featurize_wav_clip(data, config=config)
    return [
        PreviewPanel("waveform", "waveform, as the model gets it", clip, rate=config.sample_rate,
                     seconds=config.clip_seconds),
        PreviewPanel("heatmap", f"log-{'mel ' if config.num_mel_bins else ''}spectrogram: the model's input",
                     spectrogram, seconds=config.clip_seconds,
                     ylabel="mel bin" if config.num_mel_bins else "frequency bin"),
    ]


AUDIO = Modality(
    name="audio", extensions=(".wav",), config_class=AudioConfig, tensor_dtype="float32",
    featurize=featurize_wav, preview=preview_wav,
    # Per-utterance standardization removes loudness and recording-level offsets, which differ between
    # speakers and synthesizers.
    model_input=ModelInput(name="spectrogram", normalization="standardize", add_channel_axis=True,
                           augmentation="spectrogram"),
    media="audio", title="Spoken words", nouns=("word", "words"), upload=("Upload a .wav", ".wav,audio/wav"),
    demo_corpus=DemoCorpus(folder="speech", command="speech-commands"), worker_imports=("scipy.io.wavfile",),
    featurize_noise=featurize_noise_wav, noise_excerpt=noise_excerpt_wav)
