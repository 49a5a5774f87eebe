"""trainer.model and trainer.config: the seed network as specified, normalization inside, flags."""
import argparse

import numpy as np
import pytest
from keras import layers

from beam_jobs.modalities import config as flags_lib
from beam_jobs.modalities.config import ConfigError
from trainer.config import NORMALIZATIONS as config_normalizations
from trainer.config import TrainConfig
from trainer.model import NORMALIZATIONS, build_model


def layer_summary(model) -> list[tuple]:
    summary = []
    for layer in model.layers:
        config = layer.get_config()
        summary.append((type(layer).__name__, config.get("filters") or config.get("units") or config.get("rate"),
                        config.get("activation")))
    return summary


def test_seed_network_is_the_reference_convnet():
    model = build_model(name="seed", modality="image", shape=[28, 28, 1], num_classes=10, learning_rate=1e-3)
    assert layer_summary(model) == [
        ("Rescaling", None, None),
        ("Conv2D", 32, "relu"), ("MaxPooling2D", None, None),
        ("Conv2D", 32, "relu"), ("MaxPooling2D", None, None),
        ("Flatten", None, None), ("Dense", 64, "relu"), ("Dropout", 0.5, None), ("Dense", 10, "softmax"),
    ]
    assert [layer.get_config()["kernel_size"] for layer in model.layers if isinstance(layer, layers.Conv2D)] == \
        [(3, 3), (3, 3)]
    assert type(model.optimizer).__name__ == "RMSprop"
    assert type(model.loss).__name__ == "CategoricalCrossentropy"


@pytest.mark.parametrize("name", ["seed", "wide"])
def test_audio_model_takes_spectrograms_and_ignores_loudness(name):
    model = build_model(name=name, modality="audio", shape=[98, 64], num_classes=5, learning_rate=1e-3)
    assert model.inputs[0].shape == (None, 98, 64) and model.inputs[0].dtype == "float32"
    spectrograms = np.random.default_rng(0).normal(size=(3, 98, 64)).astype(np.float32)
    probabilities = model.predict_on_batch(spectrograms)
    assert probabilities.shape == (3, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # A gain change adds a constant to a log spectrogram; per-utterance normalization removes it.
    np.testing.assert_allclose(model.predict_on_batch(spectrograms + 3.0), probabilities, atol=1e-5)


def test_bin_normalization_ignores_each_bins_fixed_colouring():
    model = build_model(name="seed", modality="audio", shape=[98, 64], num_classes=5, learning_rate=1e-3,
                        normalization="standardize_bins")
    spectrograms = np.random.default_rng(0).normal(size=(3, 98, 64)).astype(np.float32)
    probabilities = model.predict_on_batch(spectrograms)
    # A fixed filter (a microphone, a voice's timbre) adds a constant per bin to a log spectrogram.
    colouring = np.linspace(-4, 4, 64, dtype=np.float32)
    np.testing.assert_allclose(model.predict_on_batch(spectrograms + colouring), probabilities, atol=1e-5)


def test_the_configs_normalization_names_are_the_models():
    assert set(config_normalizations) == set(NORMALIZATIONS)


def test_image_model_takes_uint8_and_rescales_inside():
    model = build_model(name="wide", modality="image", shape=[28, 28, 3], num_classes=4, learning_rate=1e-3)
    assert model.inputs[0].shape == (None, 28, 28, 3) and model.inputs[0].dtype == "uint8"
    images = np.random.default_rng(0).integers(0, 256, size=(2, 28, 28, 3), dtype=np.uint8)
    assert model.predict_on_batch(images).shape == (2, 4)


def test_flags_come_from_the_config_with_its_defaults():
    parser = argparse.ArgumentParser()
    flags_lib.add_flags(parser, TrainConfig)
    assert flags_lib.from_flags(TrainConfig, parser.parse_args([])) == TrainConfig()
    config = flags_lib.from_flags(TrainConfig, parser.parse_args(["--epochs", "3", "--model", "wide", "--cache",
                                                                  "--mixup", "0.2"]))
    assert (config.epochs, config.model, config.cache, config.mixup) == (3, "wide", True, 0.2)


@pytest.mark.parametrize("flag, value", [("model", "huge"), ("epochs", 0), ("time_shift", 1.5),
                                         ("batch_size", -1), ("label_smoothing", 1.0)])
def test_bad_config_values_are_named(flag, value):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**{flag: value}).validate()
    assert caught.value.fields == (flag,)
    assert flags_lib.flag_error(TrainConfig, caught.value).startswith(f"--{flag}: {flag}={value!r} is invalid")
