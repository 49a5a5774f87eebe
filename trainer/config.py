"""Every trainer default in one place, one line and one reason each.

The command-line flags of `trainer.train` are generated from `TrainConfig`,
so a default is written exactly once. Featurization settings are not here:
they belong to the dataset and are read from its manifest.
"""
import argparse
import dataclasses

from beam_jobs.config import ConfigError

MODELS = ("seed", "wide")
SCHEDULES = ("cosine", "constant")


def _option(default, help_text: str):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # Model and optimisation.
    model: str = _option("seed", "network: 'seed' (the reference convnet) or 'wide' (more filters + batch norm)")
    epochs: int = _option(40, "passes over the training data; the cosine schedule spans them all")
    batch_size: int = _option(64, "examples per training step")
    learning_rate: float = _option(1e-3, "initial RMSprop step size (Keras' default)")
    schedule: str = _option("cosine", "learning rate 'cosine' (decays to 0 over --epochs) or 'constant'")
    label_smoothing: float = _option(0.0, "cross-entropy label smoothing; 0 = plain one-hot targets")
    patience: int = _option(10, "epochs without a better validation accuracy before early stopping")
    seed: int = _option(0, "seeds weight init, file order, shuffling and augmentation")
    # Input pipeline.
    shuffle_buffer_mb: float = _option(128.0, "shuffle buffer memory: ~5k spectrograms, all of Fashion-MNIST")
    cache: bool = _option(False, "hold the training records in RAM after the first epoch")
    # Training-only augmentations of audio (images get none), applied to log-mel spectrogram batches in
    # tf.data; 0 turns one off. Defaults measured on unseen synthetic voices: see trainer/augment.py.
    time_shift: float = _option(0.1, "shift a clip by up to this fraction of its length, either way")
    time_stretch: float = _option(0.15, "resample time by a factor in [1 - x, 1 + x]: approximates speaking rate")
    freq_shift: float = _option(0.08, "shift mel bins by up to this fraction of the bins: voice / synthesizer pitch")
    freq_stretch: float = _option(0.1, "scale the mel axis by [1 - x, 1 + x]: vocal tract length")
    time_masks: int = _option(2, "SpecAugment time masks per clip")
    time_mask_width: float = _option(0.1, "maximum width of a time mask, as a fraction of the frames")
    freq_masks: int = _option(2, "SpecAugment frequency masks per clip")
    freq_mask_width: float = _option(0.15, "maximum width of a frequency mask, as a fraction of the bins")
    noise_floor_db: float = _option(0.0, "add background noise up to this many dB below the clip's peak; 0 = off")
    mixup: float = _option(0.0, "mixup Beta(a, a) parameter; 0 = off")

    def validate(self) -> "TrainConfig":
        _require(self.model in MODELS, "model", self.model, f"one of {MODELS}")
        _require(self.epochs >= 1, "epochs", self.epochs, ">= 1")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _require(self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {SCHEDULES}")
        _require(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "in [0, 1)")
        _require(self.patience >= 1, "patience", self.patience, ">= 1")
        _require(self.shuffle_buffer_mb > 0, "shuffle_buffer_mb", self.shuffle_buffer_mb, "> 0")
        for name in ("time_shift", "time_stretch", "freq_shift", "freq_stretch", "time_mask_width",
                     "freq_mask_width"):
            _require(0 <= getattr(self, name) < 1, name, getattr(self, name), "in [0, 1)")
        _require(self.time_masks >= 0, "time_masks", self.time_masks, ">= 0")
        _require(self.freq_masks >= 0, "freq_masks", self.freq_masks, ">= 0")
        _require(self.noise_floor_db >= 0, "noise_floor_db", self.noise_floor_db, ">= 0")
        _require(self.mixup >= 0, "mixup", self.mixup, ">= 0")
        return self


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field, with its default and help."""
    for field in dataclasses.fields(TrainConfig):
        help_text = f"{field.metadata['help']} (default: {field.default})"
        if field.type is bool:
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction,
                                default=field.default, help=help_text)
        else:
            parser.add_argument(f"--{field.name}", type=field.type, default=field.default, help=help_text)


def from_flags(flags: argparse.Namespace) -> TrainConfig:
    """The validated TrainConfig of parsed flags; raises ConfigError naming a bad value."""
    values = {field.name: getattr(flags, field.name) for field in dataclasses.fields(TrainConfig)}
    return TrainConfig(**values).validate()


def _require(ok: bool, name: str, value, expectation: str) -> None:
    if not ok:
        raise ConfigError(f"--{name}={value!r} is invalid: it must be {expectation}")
