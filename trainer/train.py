"""Trains a classifier on the TFRecords of one `beam_jobs.preprocess` output folder.

    python -m trainer.train --data_dir out/audio --model_dir models/audio [--snapshot 3] [--epochs 40 ...]

Everything about the data (labels, tensor shape, counts, shards, featurization)
comes from the manifest of one snapshot of the dataset (`beam_jobs.table.snapshots`),
resolved once, at start: the current one, or --snapshot ID. Writes the model
folder of `trainer.model_dir`: the best model, its SavedModel export, that
snapshot's manifest, the history, the run's settings (the snapshot among them),
TensorBoard logs and, while training, the backup. Killed mid-training, the same
command resumes from the last finished epoch, on the snapshot it started on
even when a re-ingest has committed newer ones since; a finished run is not
retrained unless --overwrite.
"""
import argparse
import contextlib
import csv
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

import keras
import tensorflow as tf

from beam_jobs.modalities import config as config_lib
from beam_jobs.modalities.config import ConfigError
from beam_jobs.table.manifest import SnapshotNotFoundError, SnapshotRemovedError
from trainer import distribute
from trainer import export as export_lib
from trainer.augment import make_augmentation
from trainer.config import JIT_COMPILE, TrainConfig
from trainer.data import (DatasetReadError, load_manifest, make_dataset, make_worker_dataset, naming_bad_shards,
                          shuffle_buffer_size)
from trainer.model import build_model
from trainer.model_dir import ModelDir
from trainer.noise import describe_noise_mixing, load_background_noise
from trainer.sharding import sharing_note, steps_per_epoch

MONITOR = "val_accuracy"


def train(*, data_dir: str, model_dir: str, config: TrainConfig, overwrite: bool = False,
          snapshot: int | None = None, export: str = "all") -> dict:
    """Trains (or resumes) on a snapshot of `data_dir` and writes the model_dir artifacts; returns the history.

    `snapshot` None means the current snapshot, or, when resuming, the one the run started on.
    `export` is what `trainer.export` writes when training ends: "all" (serving/ and litert/),
    "serving" (serving/ only) or "none".
    Under a TF_CONFIG cluster every worker calls this; only the chief (worker 0) writes into
    `model_dir`, and the other workers return {}.
    """
    strategy, role = distribute.make_strategy()
    layout = ModelDir(model_dir)
    if overwrite and role.is_chief:
        _remove_run(model_dir)
    if role.num_workers > 1:
        distribute.barrier(strategy)  # the other workers look into model_dir once the chief has cleared it
    if not overwrite and tf.io.gfile.exists(layout.history):
        history = _read_json(layout.history)
        trained_on = _recorded_snapshot(layout.train_config)
        print(f"{model_dir} is already trained (best {MONITOR} {history['best_val_accuracy']:.4f}"
              f"{'' if trained_on is None else f' on snapshot {trained_on}'}); pass --overwrite to train it again.")
        return history
    snapshot = _snapshot_to_train_on(layout.train_config, data_dir=data_dir, requested=snapshot)
    manifest = load_manifest(data_dir, snapshot)
    for split in ("train", "validation"):
        if split not in manifest.splits or manifest.splits[split].num_examples == 0:
            raise ValueError(f"the dataset at {data_dir} has no {split} examples; training needs both "
                             f"train and validation")
    run_settings = {"data_dir": data_dir, "dataset_created": manifest.created, "snapshot": manifest.snapshot_id,
                    "workers": role.num_workers, "config": dataclasses.asdict(config)}
    _check_resumable(layout.train_config, run_settings)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(f"batch_size={config.batch_size} is invalid: it is the global batch, split evenly "
                          f"over the {replicas} replicas in sync; it must be a multiple of {replicas}")
    if role.num_workers > 1 and config.cache:
        raise ConfigError("cache=True is invalid with several workers: each epoch a worker reads other shards, so "
                          "no worker can hold its records; train without --cache")
    if role.is_chief:
        tf.io.gfile.makedirs(model_dir)
        _write_json(layout.train_config, run_settings)

    with _precision_policy(config.mixed_precision):
        history = _fit(manifest=manifest, data_dir=data_dir, layout=layout, config=config, strategy=strategy,
                       role=role, export=export)
    if role.num_workers > 1:
        distribute.barrier(strategy)  # the others exit only once the chief has written everything
    return history


def _fit(*, manifest, data_dir: str, layout: ModelDir, config: TrainConfig, strategy: tf.distribute.Strategy,
         role: distribute.Role, export: str) -> dict:
    """Builds the model under `strategy`, fits it with the callbacks of `role` and, on the chief, exports it."""
    multi_worker = role.num_workers > 1  # make_strategy gives MultiWorkerMirroredStrategy exactly then
    keras.utils.set_random_seed(config.seed)
    family = manifest.spec.model_input.augmentation
    noises = load_background_noise(manifest, data_dir) if family and config.noise_probability else []
    augment = make_augmentation(family, config, noises=noises)
    noise_mixing = describe_noise_mixing(noises, probability=config.noise_probability, snr_db=config.noise_snr_db)
    train_examples = manifest.splits["train"].num_examples
    per_replica_batch = config.batch_size // strategy.num_replicas_in_sync
    if multi_worker:
        steps = steps_per_epoch(num_examples=train_examples, num_workers=role.num_workers,
                                worker_batch=config.batch_size // role.num_workers)
    else:
        steps = train_examples // config.batch_size
    if steps == 0:
        raise ConfigError(f"batch_size={config.batch_size} is invalid: the {train_examples} training examples "
                          f"make no full batch{f' on each of {role.num_workers} workers' * multi_worker}")
    jit_compile = JIT_COMPILE[config.jit_compile]
    if jit_compile is True and multi_worker and not tf.config.list_physical_devices("GPU"):
        raise ConfigError("jit_compile='on' is invalid with several workers on CPUs: TensorFlow cannot compile "
                          "their all-reduce with XLA (\"Collectives are not yet implemented for CPU devices when "
                          "compiling with XLA\"); use 'auto' or 'off'")
    with strategy.scope():
        model = build_model(name=config.model, modality=manifest.modality, shape=manifest.tensor_shape,
                            num_classes=len(manifest.labels), learning_rate=config.learning_rate,
                            decay_steps=config.epochs * steps if config.schedule == "cosine" else 0,
                            label_smoothing=config.label_smoothing, jit_compile=jit_compile,
                            normalization=config.normalization or None)
    if multi_worker:
        distribute.barrier(strategy)  # the chief has written the run's settings; its backup is what all restore
    counts = ", ".join(f"{split} {info.num_examples}" for split, info in manifest.splits.items())
    print(f"Training on {distribute.describe(strategy, role)}; "
          f"{'mixed float16' if config.mixed_precision else 'float32'} precision; "
          f"XLA {'on' if model.jit_compile else 'off'}.")
    if role.is_chief:
        print(f"Training the {config.model} network on {data_dir}, {manifest.describe()}: {manifest.modality}, "
              f"{len(manifest.labels)} labels, "
              f"examples {counts}; input {manifest.tensor_dtype} {manifest.tensor_shape}; "
              f"augmentation {'on' if augment else 'off'}{f', {noise_mixing}' * bool(family)}; "
              f"up to {config.epochs} epochs of {steps} batches of {config.batch_size}"
              f"{f' ({per_replica_batch} on each of {strategy.num_replicas_in_sync} replicas)' * (strategy.num_replicas_in_sync > 1)}"
              f", {config.schedule} learning rate from {config.learning_rate}.")
        model.summary()
    best_so_far = max((epoch[MONITOR] for epoch in _read_epoch_log(layout.epoch_log)), default=None)
    resumed_epoch = _backed_up_epoch(layout.backup)
    if resumed_epoch and role.is_chief:
        print(f"Resuming {layout.path} after epoch {resumed_epoch} (best {MONITOR} so far {best_so_far:.4f}) "
              f"on {manifest.describe()}, the data it started on.")
    shuffle_buffer = shuffle_buffer_size(manifest=manifest, megabytes=config.shuffle_buffer_mb)
    validation_data = make_dataset(manifest=manifest, data_dir=data_dir, splits=["validation"],
                                   batch_size=config.batch_size, training=False)
    if multi_worker:
        note = sharing_note(split="train", num_shards=len(manifest.splits["train"].shards),
                            num_workers=role.num_workers)
        if note and role.is_chief:
            print(f"Note: {note}.")

        def worker_dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
            local_replicas = strategy.num_replicas_in_sync // context.num_input_pipelines
            return make_worker_dataset(
                manifest=manifest, data_dir=data_dir, worker=context.input_pipeline_id,
                num_workers=context.num_input_pipelines, batch_size=per_replica_batch,
                batches_per_epoch=steps * local_replicas, first_epoch=resumed_epoch, epochs=config.epochs,
                seed=config.seed, shuffle_buffer=shuffle_buffer, augment=augment)

        train_data = strategy.distribute_datasets_from_function(worker_dataset)
        # Validation counts every example once: each worker takes every Nth batch (its own are few, and
        # uneven numbers of batches are what tf.distribute evaluates with partial batches).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        validation_data = validation_data.with_options(options)
        distribute.work_around_keras_multi_worker(model, strategy=strategy, batch_spec=(
            tf.TensorSpec([per_replica_batch, *manifest.tensor_shape], manifest.tensor_dtype),
            tf.TensorSpec([per_replica_batch, len(manifest.labels)], tf.float32)))
    else:
        train_data = make_dataset(manifest=manifest, data_dir=data_dir, splits=["train"],
                                  batch_size=config.batch_size, training=True, seed=config.seed,
                                  shuffle_buffer=shuffle_buffer, cache=config.cache, augment=augment)

    # The other workers run the same callbacks (saving can involve collectives) into a scratch folder.
    scratch = None if role.is_chief else tempfile.mkdtemp(prefix=f"soundsight-worker{role.worker}-")
    try:
        callbacks = [
            _EpochTimer(),  # first, so that the epoch log below records the seconds
            # The checkpoint is the final model; its threshold carries the best score across resumes.
            keras.callbacks.ModelCheckpoint(layout.model if role.is_chief else os.path.join(scratch, "model.keras"),
                                            monitor=MONITOR, mode="max", save_best_only=True,
                                            initial_value_threshold=best_so_far),
            keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=config.patience),
        ]
        if role.is_chief:
            callbacks += [
                # Appended epoch by epoch, so it survives resumes (Keras' History does not).
                keras.callbacks.CSVLogger(layout.epoch_log, append=True),
                keras.callbacks.TensorBoard(layout.logs),
            ]
        # Last, so an epoch counts as done only once everything above has recorded it; kept after
        # fit, so that a kill during the export below does not restart training from scratch. Every
        # worker restores the chief's backup; the others back up into their scratch folder.
        callbacks.append(keras.callbacks.BackupAndRestore(
            layout.backup if role.is_chief else _copy_backup(layout.backup, os.path.join(scratch, "backup")),
            delete_checkpoint=False, double_checkpoint=True))
        with naming_bad_shards(manifest=manifest, data_dir=data_dir, splits=["train", "validation"]):
            model.fit(train_data, validation_data=validation_data, epochs=config.epochs, callbacks=callbacks,
                      steps_per_epoch=steps if multi_worker else None,
                      shuffle=False,  # make_dataset shuffles; Keras cannot shuffle a Dataset anyway
                      verbose=(1 if sys.stdout.isatty() else 2) if role.is_chief else 0)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch)
    if not role.is_chief:
        print(f"Worker {role.worker} done; the chief writes {layout.path}.")
        return {}

    # The best checkpoint, not EarlyStopping(restore_best_weights): that only knows this process' epochs.
    best_model = keras.saving.load_model(layout.model)
    best_model.export(layout.saved_model, format="tf_saved_model", verbose=False)
    # The pinned snapshot's manifest, not the dataset's pointer, which a re-ingest may have moved on.
    with tf.io.gfile.GFile(layout.manifest, "w") as manifest_file:
        manifest_file.write(manifest.to_json())
    exported = None
    if export != "none":
        exported = export_lib.export(layout.path, model=best_model, litert=export == "all", require_int8=False)
    history = _history(_read_epoch_log(layout.epoch_log))
    _write_json(layout.history, history)
    tf.io.gfile.rmtree(layout.backup)
    print(f"Done: best {MONITOR} {history['best_val_accuracy']:.4f} at epoch {history['best_epoch']} of "
          f"{len(history['epoch'])} ({history['total_seconds'] / 60:.1f} min of training on {manifest.describe()}). "
          f"Wrote {layout.model}, "
          f"{layout.saved_model}, {layout.manifest}, {layout.history}"
          f"{'' if exported is None else ', ' + exported.describe()}; TensorBoard logs in {layout.logs}.")
    return history


@contextlib.contextmanager
def _precision_policy(mixed: bool):
    """Keras' global dtype policy "mixed_float16" while building and training if `mixed`, restored after."""
    previous = keras.config.dtype_policy()
    if mixed:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _copy_backup(backup_dir: str, copy_dir: str) -> str:
    """Copies the files of `backup_dir` (if any) into the new folder `copy_dir`; returns `copy_dir`."""
    tf.io.gfile.makedirs(copy_dir)
    if tf.io.gfile.isdir(backup_dir):
        for name in tf.io.gfile.listdir(backup_dir):
            tf.io.gfile.copy(tf.io.gfile.join(backup_dir, name), tf.io.gfile.join(copy_dir, name), overwrite=True)
    return copy_dir


class _EpochTimer(keras.callbacks.Callback):
    """Adds the epoch's wall-clock seconds to the logs, for the epoch log and history.json."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs["seconds"] = time.monotonic() - self._start


def _backed_up_epoch(backup_dir: str) -> int:
    """Epochs finished according to BackupAndRestore's metadata: where fit() will resume; 0 if none."""
    metadata_path = tf.io.gfile.join(backup_dir, "training_metadata.json")
    return _read_json(metadata_path)["epoch"] if tf.io.gfile.exists(metadata_path) else 0


def _snapshot_to_train_on(settings_path: str, *, data_dir: str, requested: int | None) -> int | None:
    """The snapshot an unfinished run on `data_dir` recorded, else `requested` (None: the current one).

    ConfigError when `requested` contradicts the recorded one: resuming on other data would mix two datasets.
    """
    previous = _read_json(settings_path) if tf.io.gfile.exists(settings_path) else {}
    recorded = previous.get("snapshot")
    if recorded is None or previous.get("data_dir") != data_dir:
        return requested  # nothing to resume on, or _check_resumable names what differs
    if requested is not None and requested != recorded:
        raise ConfigError(f"{settings_path} holds an unfinished run on snapshot {recorded}, not {requested}: rerun "
                          f"with --snapshot {recorded} or none to resume it, or pass --overwrite to start over")
    return recorded


def _recorded_snapshot(settings_path: str) -> int | None:
    """The snapshot recorded in a run's settings; None without settings or for data written before snapshots."""
    return _read_json(settings_path).get("snapshot") if tf.io.gfile.exists(settings_path) else None


def _check_resumable(settings_path: str, run_settings: dict) -> None:
    if not tf.io.gfile.exists(settings_path):
        return
    previous = _read_json(settings_path)
    if previous != json.loads(json.dumps(run_settings)):
        changed = [f"{key}: {previous['config'].get(key)!r} -> {value!r}"
                   for key, value in run_settings["config"].items() if previous["config"].get(key) != value]
        changed += [f"{key}: {previous.get(key)!r} -> {run_settings[key]!r}"
                    for key in ("data_dir", "dataset_created", "snapshot", "workers")
                    if previous.get(key) != run_settings[key]]
        raise ConfigError(
            f"{settings_path} holds an unfinished run with other settings ({'; '.join(changed)}): "
            f"rerun with the same flags to resume it, or pass --overwrite to start over")


def _remove_run(model_dir: str) -> None:
    """Deletes what train and evaluate write into model_dir, nothing else."""
    for pattern in ModelDir(model_dir).run_files():
        for match in tf.io.gfile.glob(pattern):
            if tf.io.gfile.isdir(match):
                tf.io.gfile.rmtree(match)
            else:
                tf.io.gfile.remove(match)


def _read_epoch_log(log_path: str) -> list[dict]:
    """Rows of the epoch log as dicts of floats (epoch an int, 0-based); a repeated epoch keeps its last row."""
    if not tf.io.gfile.exists(log_path):
        return []
    with tf.io.gfile.GFile(log_path) as log_file:
        rows = {}
        for row in csv.DictReader(log_file):
            rows[int(row["epoch"])] = {key: int(value) if key == "epoch" else float(value)
                                       for key, value in row.items()}
    return [rows[epoch] for epoch in sorted(rows)]


def _history(epochs: list[dict]) -> dict:
    """Per-metric lists (Keras History style, epochs 1-based) plus the best epoch and total seconds."""
    history = {key: [row[key] for row in epochs] for key in epochs[0]}
    history["epoch"] = [epoch + 1 for epoch in history["epoch"]]
    best = max(range(len(epochs)), key=lambda i: (history[MONITOR][i], -i))
    history.update(best_epoch=history["epoch"][best], best_val_accuracy=history[MONITOR][best],
                   total_seconds=sum(history["seconds"]))
    return history


def _read_json(json_path: str) -> dict:
    with tf.io.gfile.GFile(json_path) as json_file:
        return json.load(json_file)


def _write_json(json_path: str, value: dict) -> None:
    """Writes a temporary file and renames it: other workers may be reading `json_path` meanwhile."""
    temporary = f"{json_path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "w") as json_file:
        json_file.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tf.io.gfile.rename(temporary, json_path, overwrite=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("data, model folder and workers")
    run.add_argument("--data_dir", required=True, help="a beam_jobs.preprocess output folder holding dataset.json")
    run.add_argument("--model_dir", required=True, help="where the model, logs and checkpoints go")
    run.add_argument("--snapshot", type=int, metavar="ID",
                     help="train on snapshot ID of --data_dir (default: the current one; when resuming, the one "
                          "the run started on); python -m beam_jobs.snapshots DATA_DIR lists them")
    run.add_argument("--overwrite", action="store_true", help="delete a previous run in --model_dir and retrain")
    run.add_argument("--export", choices=("all", "serving", "none"), default="all",
                     help="what trainer.export writes when training ends: serving/ (the SavedModel on raw input) "
                          "and litert/ (float32 and int8 LiteRT models), serving/ only, or none (default: all)")
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="train data-parallel in N worker processes on this machine (a loopback cluster); "
                          "on a real cluster set TF_CONFIG on each machine instead (README) (default: 1)")
    config_lib.add_flags(parser, TrainConfig)
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = parser.parse_args(argv)
    try:
        config = config_lib.from_flags(TrainConfig, flags)
    except ConfigError as error:
        parser.error(config_lib.flag_error(TrainConfig, error))
    if flags.workers < 1:
        parser.error(f"--workers {flags.workers} is invalid: it must be >= 1")
    if flags.workers > 1:
        if os.environ.get("TF_CONFIG"):
            parser.error("--workers starts a cluster on this machine, but TF_CONFIG already names one: "
                         "unset TF_CONFIG, or start each worker without --workers")
        return distribute.run_local_workers(["trainer.train", *_without_workers_flag(argv)],
                                            num_workers=flags.workers)
    try:
        train(data_dir=flags.data_dir, model_dir=flags.model_dir, config=config, overwrite=flags.overwrite,
              snapshot=flags.snapshot, export=flags.export)
    except (ConfigError, DatasetReadError, SnapshotNotFoundError, SnapshotRemovedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _without_workers_flag(argv: list[str]) -> list[str]:
    """`argv` without "--workers N" / "--workers=N": the command each local worker runs."""
    kept, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--workers":
            skip_next = True
        elif not arg.startswith("--workers="):
            kept.append(arg)
    return kept


if __name__ == "__main__":
    sys.exit(main())
