"""Is the tf.data input pipeline fast enough? Prints rates and ratios; asserts nothing.

    python -m bench.input_pipeline --data_dir out/audio --data_dir out/image [--batch_size 64] [--rounds 3]

For each dataset, on its training split with the trainer's defaults (augmentation included):
  pipeline     examples/s of make_dataset alone, iterated without a model
  train step   examples/s of training steps fed from in-memory arrays (what training consumes)
  epoch times  one training epoch fed from the shards vs from the same examples held in memory
Targets: pipeline >= 3x train step; shards epoch <= 1.2x memory epoch. After a first, warm-up epoch
of each (tracing, file cache), the two models train one epoch in turn for --rounds rounds, so that a
burst of other load on the machine hurts one epoch of each rather than every epoch of one; the
fastest epoch of each counts.
"""
import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from trainer.augment import make_augmentation
from trainer.config import TrainConfig
from trainer.data import load_manifest, make_dataset, shuffle_buffer_size
from trainer.model import build_model


def pipeline_rate(dataset: tf.data.Dataset) -> float:
    """Examples per second over a full pass, after one warm-up pass."""
    for _ in dataset:
        pass
    start, count = time.perf_counter(), 0
    for tensors, _ in dataset:
        count += int(tensors.shape[0])
    return count / (time.perf_counter() - start)


def epoch_seconds(model: keras.Model, dataset: tf.data.Dataset) -> float:
    """Seconds of one training epoch of `model` on `dataset`, from the start to the end of the epoch."""
    times = []
    timer = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: times.append(time.perf_counter()),
                                           on_epoch_end=lambda epoch, logs: times.append(time.perf_counter()))
    model.fit(dataset, epochs=1, callbacks=[timer], shuffle=False, verbose=0)
    return times[1] - times[0]


def epochs_in_turn(runs: dict[str, tuple[keras.Model, tf.data.Dataset]], *, rounds: int) -> dict[str, list[float]]:
    """{name: seconds of each of `rounds` epochs}, the runs taking turns after one warm-up epoch each."""
    for model, dataset in runs.values():
        epoch_seconds(model, dataset)
    seconds = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, dataset) in runs.items():
            seconds[name].append(epoch_seconds(model, dataset))
    return seconds


def in_memory(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All (tensor, one-hot label) pairs of an evaluation-order dataset as two arrays."""
    tensors, labels = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    return np.concatenate(tensors), np.concatenate(labels)


def bench(*, data_dir: str, config: TrainConfig, rounds: int) -> dict:
    manifest = load_manifest(data_dir)
    augment = make_augmentation(manifest.spec.model_input.augmentation, config)
    from_shards = make_dataset(manifest=manifest, data_dir=data_dir, splits=["train"], batch_size=config.batch_size,
                               training=True, seed=config.seed,
                               shuffle_buffer=shuffle_buffer_size(manifest=manifest, megabytes=config.shuffle_buffer_mb),
                               augment=augment)
    tensors, labels = in_memory(make_dataset(manifest=manifest, data_dir=data_dir, splits=["train"],
                                             batch_size=1024, training=False))
    from_memory = tf.data.Dataset.from_tensor_slices((tensors, labels)).shuffle(
        len(labels), seed=config.seed).batch(config.batch_size, drop_remainder=True)
    if augment is not None:
        from_memory = from_memory.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    from_memory = from_memory.prefetch(tf.data.AUTOTUNE)

    def fresh_model():
        keras.utils.set_random_seed(config.seed)
        return build_model(name=config.model, modality=manifest.modality, shape=manifest.tensor_shape,
                           num_classes=len(manifest.labels), learning_rate=config.learning_rate)

    examples = (len(labels) // config.batch_size) * config.batch_size
    seconds = epochs_in_turn({"memory": (fresh_model(), from_memory), "shards": (fresh_model(), from_shards)},
                             rounds=rounds)
    return {"modality": manifest.modality, "examples": examples, "pipeline": pipeline_rate(from_shards),
            "train_step": examples / min(seconds["memory"]), "memory_epochs": seconds["memory"],
            "shards_epochs": seconds["shards"]}


def format_seconds(seconds: list[float]) -> str:
    return " ".join(f"{value:.1f}" for value in seconds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", action="append", required=True, help="a beam_jobs.preprocess output folder; "
                        "repeat for several")
    parser.add_argument("--batch_size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs of each; the fastest counts")
    flags = parser.parse_args(argv)
    config = TrainConfig(batch_size=flags.batch_size).validate()
    for data_dir in flags.data_dir:
        result = bench(data_dir=data_dir, config=config, rounds=flags.rounds)
        memory, shards = result["memory_epochs"], result["shards_epochs"]
        print(f"{result['modality']} ({data_dir}, {result['examples']} training examples, batch {config.batch_size}):\n"
              f"  input pipeline alone   {result['pipeline']:9.0f} examples/s\n"
              f"  training step          {result['train_step']:9.0f} examples/s\n"
              f"  pipeline / training    {result['pipeline'] / result['train_step']:9.1f}x   (target >= 3)\n"
              f"  epoch from memory      {min(memory):9.1f} s   (all: {format_seconds(memory)})\n"
              f"  epoch from shards      {min(shards):9.1f} s   (all: {format_seconds(shards)})\n"
              f"  shards / memory        {min(shards) / min(memory):9.2f}x   (target <= 1.2, fastest epochs)",
              flush=True)


if __name__ == "__main__":
    main()
