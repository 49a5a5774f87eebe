"""Is the tf.data input pipeline fast enough? Prints rates and ratios; asserts nothing.

    python -m bench.input_pipeline --data_dir out/audio --data_dir out/image [--batch_size 64]

For each dataset, on its training split with the trainer's defaults (augmentation included):
  pipeline     examples/s of make_dataset alone, iterated without a model
  train step   examples/s of training steps fed from in-memory arrays (what training consumes)
  epoch times  one training epoch fed from the shards vs from the same examples held in memory
Targets: pipeline >= 3x train step; shards epoch <= 1.2x memory epoch. Epochs are timed after a
first, warm-up epoch (tracing, file cache).
"""
import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from trainer.augment import make_audio_augmentation
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


def timed_epoch(model: keras.Model, dataset: tf.data.Dataset) -> float:
    """Seconds of the second of two training epochs on `dataset`."""
    times = []
    timer = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: times.append(time.perf_counter()),
                                           on_epoch_end=lambda epoch, logs: times.append(time.perf_counter()))
    model.fit(dataset, epochs=2, callbacks=[timer], shuffle=False, verbose=0)
    return times[3] - times[2]


def in_memory(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All (tensor, one-hot label) pairs of an evaluation-order dataset as two arrays."""
    tensors, labels = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    return np.concatenate(tensors), np.concatenate(labels)


def bench(*, data_dir: str, config: TrainConfig) -> dict:
    manifest = load_manifest(data_dir)
    augment = make_audio_augmentation(config) if manifest.modality == "audio" else None
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
    memory_seconds = timed_epoch(fresh_model(), from_memory)
    shards_seconds = timed_epoch(fresh_model(), from_shards)
    return {"modality": manifest.modality, "examples": examples, "pipeline": pipeline_rate(from_shards),
            "train_step": examples / memory_seconds, "memory_epoch": memory_seconds, "shards_epoch": shards_seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", action="append", required=True, help="a beam_jobs.preprocess output folder; "
                        "repeat for several")
    parser.add_argument("--batch_size", type=int, default=TrainConfig().batch_size)
    flags = parser.parse_args(argv)
    config = TrainConfig(batch_size=flags.batch_size).validate()
    for data_dir in flags.data_dir:
        result = bench(data_dir=data_dir, config=config)
        print(f"{result['modality']} ({data_dir}, {result['examples']} training examples, batch {config.batch_size}):\n"
              f"  input pipeline alone   {result['pipeline']:9.0f} examples/s\n"
              f"  training step          {result['train_step']:9.0f} examples/s\n"
              f"  pipeline / training    {result['pipeline'] / result['train_step']:9.1f}x   (target >= 3)\n"
              f"  epoch from memory      {result['memory_epoch']:9.1f} s\n"
              f"  epoch from shards      {result['shards_epoch']:9.1f} s\n"
              f"  shards / memory        {result['shards_epoch'] / result['memory_epoch']:9.2f}x   (target <= 1.2)",
              flush=True)


if __name__ == "__main__":
    main()
