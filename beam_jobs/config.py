"""Featurization settings, with every default in one place.

The same `AudioConfig` / `ImageConfig` are written into each dataset's
manifest and read back at prediction time, so a model is always fed exactly
what it was trained on.
"""
import dataclasses

AUDIO_EXTENSIONS = (".wav",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class ConfigError(ValueError):
    """A configuration value is out of range; the message names it."""


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 16000  # every clip is resampled to this rate
    clip_seconds: float = 1.0  # Speech Commands clips are one second long
    align: str = "center"  # "center" centres the loudest region, "start" keeps the clip as recorded
    window_ms: float = 25.0
    hop_ms: float = 10.0
    fft_size: int = 512
    num_mel_bins: int = 64  # 0 gives the linear-frequency log spectrogram (fft_size // 2 + 1 bins)
    max_file_bytes: int = 64 * 1024 * 1024
    max_seconds: float = 60.0  # longer recordings are rejected, not trimmed silently

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
        _require(self.sample_rate >= 1000, "sample_rate", self.sample_rate, ">= 1000")
        _require(self.clip_seconds > 0, "clip_seconds", self.clip_seconds, "> 0")
        _require(self.align in ("center", "start"), "align", self.align, "'center' or 'start'")
        _require(self.window_samples >= 16, "window_ms", self.window_ms, "at least 16 samples long")
        _require(self.hop_samples >= 1, "hop_ms", self.hop_ms, "at least one sample")
        _require(self.fft_size >= self.window_samples, "fft_size", self.fft_size,
                 f">= the window length ({self.window_samples} samples)")
        _require(self.clip_samples >= self.window_samples, "clip_seconds", self.clip_seconds,
                 "at least one window long")
        _require(0 <= self.num_mel_bins <= self.fft_size // 2 + 1, "num_mel_bins", self.num_mel_bins,
                 f"between 0 and {self.fft_size // 2 + 1}")
        _require(self.max_file_bytes > 0, "max_file_bytes", self.max_file_bytes, "> 0")
        _require(self.max_seconds >= self.clip_seconds, "max_seconds", self.max_seconds, ">= clip_seconds")
        return self


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    height: int = 28
    width: int = 28
    channels: int = 1  # 1 = grayscale, 3 = RGB
    max_file_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 40_000_000  # checked before decoding, so a decompression bomb is never expanded

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape of one image: [height, width, channels]."""
        return (self.height, self.width, self.channels)

    def validate(self) -> "ImageConfig":
        _require(self.height >= 1, "height", self.height, ">= 1")
        _require(self.width >= 1, "width", self.width, ">= 1")
        _require(self.channels in (1, 3), "channels", self.channels, "1 (grayscale) or 3 (RGB)")
        _require(self.max_file_bytes > 0, "max_file_bytes", self.max_file_bytes, "> 0")
        _require(self.max_pixels >= self.height * self.width, "max_pixels", self.max_pixels,
                 "at least height * width")
        return self


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    validation_percent: float = 10.0
    test_percent: float = 10.0

    def validate(self) -> "SplitConfig":
        _require(0 <= self.validation_percent < 100, "validation_percent", self.validation_percent, "in [0, 100)")
        _require(0 <= self.test_percent < 100, "test_percent", self.test_percent, "in [0, 100)")
        _require(self.validation_percent + self.test_percent < 100, "validation_percent + test_percent",
                 self.validation_percent + self.test_percent, "< 100 so that training keeps some files")
        return self


def _require(ok: bool, name: str, value, expectation: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: it must be {expectation}")
