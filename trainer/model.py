"""The networks, each one Sequential list, with input normalization inside the model.

The model takes the stored tensor as is (float32 [frames, bins] log-mel
spectrograms, uint8 [height, width, channels] images), so the exported
SavedModel serves the pipeline's featurizer output with no extra code. What
sits in front of the convolutions comes from the modality's `ModelInput`.
"""
import keras
from keras import layers

from beam_jobs.modalities import get as get_modality
from beam_jobs.modalities.spec import ModelInput

# ModelInput.normalization -> the layer that maps the stored tensor to what the convolutions see.
NORMALIZATIONS = {
    # Mean/variance over the whole example: per utterance, it removes loudness and recording-level
    # offsets, which differ between speakers and synthesizers.
    "standardize": lambda: layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False,
                                                     name="utterance_normalization"),
    # Mean/variance of each frequency bin over the clip's frames (CMVN, as speech recognisers normalise
    # cepstra): it also removes the clip's fixed spectral colouring, which differs between voices and
    # synthesizers as a microphone or a room would.
    "standardize_bins": lambda: layers.LayerNormalization(axis=(1, 3), center=False, scale=False,
                                                          name="bin_normalization"),
    "unit_range": lambda: layers.Rescaling(1 / 255, name="to_unit_range"),
}


def input_layers(*, model_input: ModelInput, dtype: str, shape: list[int], normalization: str | None = None) -> list:
    """The Input of the stored tensor, a channel axis if it has none, and its normalization (the modality's,
    or `normalization` when given)."""
    stack = [keras.Input(shape=tuple(shape), dtype=dtype, name=model_input.name)]
    if model_input.add_channel_axis:
        stack.append(layers.Reshape((*shape, 1)))
    return stack + [NORMALIZATIONS[normalization or model_input.normalization]()]


def output_layer(num_classes: int) -> layers.Layer:
    """Class probabilities, computed in float32 even under mixed precision: float16 softmax and loss lose accuracy."""
    return layers.Dense(num_classes, activation="softmax", dtype="float32")


def seed_network(num_classes: int) -> list:
    """The reference convnet: two 3x3 convolutions of 32 filters with max-pooling, Dense 64, dropout 0.5."""
    return [
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dropout(0.5),
        output_layer(num_classes),
    ]


def wide_network(num_classes: int) -> list:
    """A stronger variant: four times the filters, batch norm, global pooling (~5x the seed's compute)."""
    def conv(filters):
        return [layers.Conv2D(filters, (3, 3), padding="same", use_bias=False),
                layers.BatchNormalization(), layers.ReLU()]

    return [
        *conv(32), layers.MaxPooling2D((2, 2)),
        *conv(64), layers.MaxPooling2D((2, 2)),
        *conv(128), layers.MaxPooling2D((2, 2)),
        *conv(128),
        layers.GlobalAveragePooling2D(),
        layers.Dropout(0.3),
        output_layer(num_classes),
    ]


NETWORKS = {"seed": seed_network, "wide": wide_network}


def build_model(*, name: str, modality: str, shape: list[int], num_classes: int, learning_rate: float,
                decay_steps: int = 0, label_smoothing: float = 0.0, jit_compile: bool | str = "auto",
                normalization: str | None = None) -> keras.Model:
    """A compiled model: stored tensor batch -> float32 class probabilities [batch, num_classes].

    RMSprop, its step size cosine-decayed to 0 over `decay_steps` (0: constant), and
    categorical cross-entropy on one-hot labels; reports accuracy. Under Keras' "mixed_float16"
    policy the layers compute in float16 and Keras scales the loss (LossScaleOptimizer).
    """
    spec = get_modality(modality)
    model = keras.Sequential(input_layers(model_input=spec.model_input, dtype=spec.tensor_dtype, shape=shape,
                                          normalization=normalization)
                             + NETWORKS[name](num_classes), name=f"{name}_{modality}")
    if decay_steps:
        # A function of the optimizer's step count, which BackupAndRestore restores: resumes exactly.
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=decay_steps)
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                  metrics=["accuracy"], jit_compile=jit_compile)
    return model
