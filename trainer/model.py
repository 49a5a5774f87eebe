"""The networks, each one Sequential list, with input normalization inside the model.

The model takes the stored tensor as is (float32 [frames, bins] log-mel
spectrograms, uint8 [height, width, channels] images), so the exported
SavedModel serves the pipeline's featurizer output with no extra code.
"""
import keras
from keras import layers


def input_layers(*, modality: str, shape: list[int]) -> list:
    """The Input and the normalization that maps the stored tensor to what the convolutions see."""
    if modality == "audio":
        frames, bins = shape
        return [
            keras.Input(shape=(frames, bins), dtype="float32", name="spectrogram"),
            layers.Reshape((frames, bins, 1)),
            # Per-utterance mean/variance over the whole spectrogram: removes loudness and
            # recording-level offsets, which differ between speakers and synthesizers.
            layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False, name="utterance_normalization"),
        ]
    return [
        keras.Input(shape=tuple(shape), dtype="uint8", name="image"),
        layers.Rescaling(1 / 255, name="to_unit_range"),
    ]


def seed_network(num_classes: int) -> list:
    """The reference convnet (keras-io mnist_convnet shape)."""
    return [
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
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
        layers.Dense(num_classes, activation="softmax"),
    ]


NETWORKS = {"seed": seed_network, "wide": wide_network}


def build_model(*, name: str, modality: str, shape: list[int], num_classes: int, learning_rate: float,
                decay_steps: int = 0, label_smoothing: float = 0.0) -> keras.Model:
    """A compiled model: stored tensor batch -> float32 class probabilities [batch, num_classes].

    RMSprop, its step size cosine-decayed to 0 over `decay_steps` (0: constant), and
    categorical cross-entropy on one-hot labels; reports accuracy.
    """
    model = keras.Sequential(input_layers(modality=modality, shape=shape) + NETWORKS[name](num_classes),
                             name=f"{name}_{modality}")
    if decay_steps:
        # A function of the optimizer's step count, which BackupAndRestore restores: resumes exactly.
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=decay_steps)
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                  metrics=["accuracy"])
    return model
