"""What does audio augmentation cost a training epoch? Prints epoch times and ratios; asserts nothing.

    python -m bench.augmentation --data_dir out/audio [--rounds 3]

On the dataset's training split, three seed networks train one epoch in turn, fed from the shards:
  none      no augmentation
  defaults  the trainer's defaults
  all on    every audio augmentation on: the defaults, background-noise mixing (80% of clips, when the
            dataset holds _background_noise_), reverberation and band-limiting (half the clips) and gain
The target (issue 21): an epoch with every augmentation on costs <= 1.5x one with the defaults, in the
same run on the same machine. After one warm-up epoch of each, the fastest of --rounds epochs counts.
"""
import argparse
import dataclasses

import keras

from bench.input_pipeline import epochs_in_turn, format_seconds
from trainer.augment import make_augmentation
from trainer.config import TrainConfig
from trainer.data import load_manifest, make_dataset, shuffle_buffer_size
from trainer.model import build_model
from trainer.noise import load_background_noise

NONE = dict(time_shift=0, time_stretch=0, freq_shift=0, freq_stretch=0, time_masks=0, freq_masks=0)
ALL_ON = dict(noise_probability=0.8, reverb=0.5, band_limit=0.5, gain_db=6.0)


def bench(*, data_dir: str, config: TrainConfig, rounds: int) -> dict:
    manifest = load_manifest(data_dir)
    family = manifest.spec.model_input.augmentation
    noises = load_background_noise(manifest, data_dir)
    configs = {"none": dataclasses.replace(config, **NONE), "defaults": config,
               "all on": dataclasses.replace(config, **ALL_ON)}
    runs = {}
    for name, run_config in configs.items():
        dataset = make_dataset(manifest=manifest, data_dir=data_dir, splits=["train"], batch_size=config.batch_size,
                               training=True, seed=config.seed, augment=make_augmentation(family, run_config,
                                                                                          noises=noises),
                               shuffle_buffer=shuffle_buffer_size(manifest=manifest,
                                                                  megabytes=config.shuffle_buffer_mb))
        keras.utils.set_random_seed(config.seed)
        runs[name] = (build_model(name=config.model, modality=manifest.modality, shape=manifest.tensor_shape,
                                  num_classes=len(manifest.labels), learning_rate=config.learning_rate), dataset)
    return {"modality": manifest.modality, "noise_recordings": len(noises),
            "seconds": epochs_in_turn(runs, rounds=rounds)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="a beam_jobs.preprocess audio output folder")
    parser.add_argument("--batch_size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs of each; the fastest counts")
    flags = parser.parse_args(argv)
    config = TrainConfig(batch_size=flags.batch_size).validate()
    result = bench(data_dir=flags.data_dir, config=config, rounds=flags.rounds)
    seconds = result["seconds"]
    print(f"{result['modality']} ({flags.data_dir}, {result['noise_recordings']} noise recordings, "
          f"batch {config.batch_size}): fastest epoch, all epochs")
    for name, epochs in seconds.items():
        print(f"  {name:9} {min(epochs):7.1f} s   (all: {format_seconds(epochs)})")
    print(f"  all on / defaults   {min(seconds['all on']) / min(seconds['defaults']):5.2f}x   (target <= 1.5)\n"
          f"  defaults / none     {min(seconds['defaults']) / min(seconds['none']):5.2f}x", flush=True)


if __name__ == "__main__":
    main()
