"""tf.data input pipeline: the Beam pipeline's TFRecord shards to (tensor, one-hot label) batches.

The `tf.io.parse_example` spec is built from `beam_jobs.records.features.FEATURES`, the
schema the pipeline encoded with, so reader and writer cannot drift apart.
Files are read with `tf.io.gfile` / `TFRecordDataset`, so `gs://` paths work;
`s3://` needs an S3 file system, which TensorFlow 2.x no longer has built in
(tensorflow-io's loads with TF 2.16 at the latest).
Normalization lives in the model (serving then needs no extra code), so the
batches hold the stored tensors: float32 spectrograms or uint8 images.
"""
import contextlib
import json
import math
import re
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

from beam_jobs.records.features import FEATURES
from beam_jobs.table.layout import tombstone_path
from beam_jobs.table.manifest import DatasetManifest, SnapshotRemovedError, removed_message, resolve_manifest
from trainer.sharding import epoch_ranges

AUTOTUNE = tf.data.AUTOTUNE
TRAINING_FEATURES = ("tensor", "label")
_INTERLEAVE_CYCLE = 16  # shards read at once: beyond parallelism, more open shards also mix examples
# Records handed over at once by a shard reader: about this many bytes of tensors, so that the blocks
# in flight (two per open shard) take the same memory whatever the record size and however many shards.
_READ_BLOCK_BYTES = 2**19
_TF_DTYPES = {"bytes": tf.string, "int64": tf.int64}
# Training takes batches in whichever order the parallel maps finish them: no thread waits for a slower one.
_TRAINING_OPTIONS = tf.data.Options()
_TRAINING_OPTIONS.deterministic = False


class DatasetReadError(RuntimeError):
    """Shards that cannot be read whole, or hold another number of records than the manifest says."""


def load_manifest(data_dir: str, snapshot: int | None = None) -> DatasetManifest:
    """The manifest of snapshot `snapshot` of `data_dir` (local or gs://), or of its current snapshot when None.

    A reader calls it once, at start, and reads only the shards it lists, which no later
    commit changes. Raises SnapshotNotFoundError or SnapshotRemovedError (both
    FileNotFoundError) with one line that names the folder or the snapshot.
    """
    return resolve_manifest(data_dir, snapshot, read_text=_read_text, exists=tf.io.gfile.exists)


def _read_text(path: str) -> str:
    with tf.io.gfile.GFile(path) as text_file:
        return text_file.read()


def shard_paths(*, manifest: DatasetManifest, data_dir: str, splits: Iterable[str]) -> list[str]:
    """Full paths of the shards of `splits`, in manifest order; ValueError for an unknown split."""
    paths = []
    for split in splits:
        if split not in manifest.splits:
            raise ValueError(f"split {split!r} is not in the dataset at {data_dir}: "
                             f"it has {sorted(manifest.splits)}")
        paths += [tf.io.gfile.join(data_dir, shard.path) for shard in manifest.splits[split].shards]
    return paths


def parse_spec(names: Iterable[str] = TRAINING_FEATURES) -> dict:
    """A `tf.io.parse_example` spec for the named FEATURES: scalars, fixed-length or ragged."""
    spec = {}
    for feature in FEATURES:
        if feature.name not in names:
            continue
        dtype = _TF_DTYPES[feature.kind]
        if feature.length is None:
            spec[feature.name] = tf.io.RaggedFeature(dtype)
        else:
            spec[feature.name] = tf.io.FixedLenFeature([] if feature.length == 1 else [feature.length], dtype)
    return spec


def make_parse(names: Iterable[str] = TRAINING_FEATURES) -> Callable:
    """serialized string [batch] -> {name: tensor [batch, ...]} for the named features."""
    spec = parse_spec(names)

    def parse(serialized):
        return tf.io.parse_example(serialized, spec)

    return parse


def make_decode(*, dtype: str, shape: Iterable[int], num_classes: int) -> Callable:
    """{"tensor": string [batch], "label": int64 [batch]} -> (dtype [batch, *shape], float32 [batch, num_classes]).

    `dtype` is the manifest's numpy name; the stored bytes are little-endian.
    """
    shape = list(shape)

    def decode(features):
        flat = tf.io.decode_raw(features["tensor"], tf.dtypes.as_dtype(dtype), little_endian=True)
        # The batch size taken from the input's shape keeps a static batch dimension static.
        tensor = tf.reshape(flat, tf.concat([tf.shape(flat)[:1], shape], axis=0))
        return tensor, tf.one_hot(features["label"], num_classes, dtype=tf.float32)

    return decode


def make_dataset(*, manifest: DatasetManifest, data_dir: str, splits: Iterable[str], batch_size: int,
                 training: bool, shuffle_buffer: int | None = None, seed: int | None = None, cache: bool = False,
                 augment: Callable | None = None) -> tf.data.Dataset:
    """Batches of (tensor [batch, *manifest.tensor_shape] of manifest.tensor_dtype, one-hot float32 [batch, C]).

    training=True shuffles shards and then examples in a buffer of `shuffle_buffer`
    examples (differently every epoch), reads shards in a non-deterministic order,
    drops the last partial batch and applies `augment` ((tensor, label) -> (tensor,
    label) on a batch); otherwise every example comes exactly once, in the same order
    every time (blocks of records from the shards in turn, shards in manifest order).
    """
    if training and not shuffle_buffer:
        raise ValueError("a training dataset needs shuffle_buffer >= 1")
    splits = list(splits)
    paths = shard_paths(manifest=manifest, data_dir=data_dir, splits=splits)
    num_examples = sum(manifest.splits[split].num_examples for split in splits)
    if not paths or num_examples == 0:
        raise ValueError(f"split(s) {splits} of the dataset at {data_dir} hold no examples")
    files = tf.data.Dataset.from_tensor_slices(paths)
    if training:
        # A new shard order every epoch mixes examples beyond what the shuffle buffer holds.
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    # Shards are read in parallel (remote storage needs it), handing over blocks of records rather than
    # single records: a parallel interleave pays a thread hand-off per element, which for single records
    # cost more than the reading itself (0.8 s of every Fashion-MNIST epoch, against 0.15 s in blocks).
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=manifest.compression or "").batch(
            _read_block(manifest)),
        cycle_length=min(len(paths), _INTERLEAVE_CYCLE), num_parallel_calls=AUTOTUNE,
        deterministic=not training).unbatch()  # training takes whichever shard is ready first
    # Plain finite epochs, not repeat() + steps_per_epoch: every epoch sees each example once, validation
    # and BackupAndRestore act at true epoch boundaries, and the manifest's counts give Keras the exact
    # length (the progress bar's total) while failing loudly if shards and manifest disagree.
    records = records.apply(tf.data.experimental.assert_cardinality(num_examples))
    if cache:
        # Serialized records, before the shuffle, so every epoch is still shuffled anew.
        records = records.cache()
    if training:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # Batch before parsing: one parse_example per batch is far cheaper than one per example;
    # dropping the remainder gives training static batch shapes.
    batches = records.batch(batch_size, drop_remainder=training)
    batches = _tensors(batches, manifest=manifest, augment=augment if training else None)
    return batches.with_options(_TRAINING_OPTIONS) if training else batches


def make_worker_dataset(*, manifest: DatasetManifest, data_dir: str, worker: int, num_workers: int,
                        batch_size: int, batches_per_epoch: int, first_epoch: int, epochs: int, seed: int,
                        shuffle_buffer: int, augment: Callable | None = None) -> tf.data.Dataset:
    """Worker `worker`'s training batches for epochs first_epoch..epochs-1 (0-based), one epoch after another.

    Each epoch is exactly `batches_per_epoch` batches of (tensor [batch_size, *shape], one-hot
    float32 [batch_size, C]) from the records `trainer.sharding.epoch_ranges` gives this worker,
    shuffled in a buffer of `shuffle_buffer` examples. Every worker's call gives the same number
    of batches, as their collective steps need; a shard holding fewer records than the manifest
    says fails the read (FailedPreconditionError) rather than ending one worker's epoch early.
    """
    shards = [(tf.io.gfile.join(data_dir, shard.path), shard.num_examples) for shard in manifest.splits["train"].shards]
    plans = [epoch_ranges(shards, num_workers=num_workers, seed=seed, epoch=epoch)[worker]
             for epoch in range(first_epoch, epochs)]
    width = max(len(plan) for plan in plans)
    # One row per epoch, padded with empty ranges to the longest: flat_map turns each row into its epoch.
    table = tf.data.Dataset.from_tensor_slices((
        tf.range(first_epoch, epochs, dtype=tf.int64),
        [[r.path for r in plan] + [""] * (width - len(plan)) for plan in plans],
        tf.constant([[r.start for r in plan] + [0] * (width - len(plan)) for plan in plans], tf.int64),
        tf.constant([[r.count for r in plan] + [0] * (width - len(plan)) for plan in plans], tf.int64)))
    compression = manifest.compression or ""

    def read_range(path, start, count):
        records = tf.data.TFRecordDataset(path, compression_type=compression).skip(start).take(count)
        return records.apply(tf.data.experimental.assert_cardinality(count)).batch(_read_block(manifest))

    def epoch_batches(epoch, paths, starts, counts):
        ranges = tf.data.Dataset.from_tensor_slices((paths, starts, counts)).filter(lambda p, s, count: count > 0)
        records = ranges.interleave(read_range, cycle_length=min(width, _INTERLEAVE_CYCLE),
                                    num_parallel_calls=AUTOTUNE, deterministic=False).unbatch()
        # One seed for all epochs: each epoch shuffles other records (its ranges), in another order.
        records = records.shuffle(shuffle_buffer, seed=seed)
        return records.batch(batch_size, drop_remainder=True).take(batches_per_epoch)

    return _tensors(table.flat_map(epoch_batches), manifest=manifest, augment=augment).with_options(_TRAINING_OPTIONS)


def _tensors(batches: tf.data.Dataset, *, manifest: DatasetManifest, augment: Callable | None) -> tf.data.Dataset:
    """Serialized Example batches -> (tensor, one-hot label) batches, augmented if `augment`, prefetched."""
    parse = make_parse()
    decode = make_decode(dtype=manifest.tensor_dtype, shape=manifest.tensor_shape, num_classes=len(manifest.labels))
    # Parse and decode in one map: one hand-off between tf.data threads per batch instead of two.
    batches = batches.map(lambda serialized: decode(parse(serialized)), num_parallel_calls=AUTOTUNE)
    if augment is not None:
        batches = batches.map(augment, num_parallel_calls=AUTOTUNE)
    return batches.prefetch(AUTOTUNE)


def _read_block(manifest: DatasetManifest) -> int:
    """Records per block handed over by a shard reader: _READ_BLOCK_BYTES of tensors, 16 to 1024 records."""
    return int(min(1024, max(16, _READ_BLOCK_BYTES // _example_bytes(manifest))))


def _example_bytes(manifest: DatasetManifest) -> int:
    return np.dtype(manifest.tensor_dtype).itemsize * math.prod(manifest.tensor_shape)


def shuffle_buffer_size(*, manifest: DatasetManifest, megabytes: float) -> int:
    """Examples of the training split that fit in `megabytes` (their stored tensors), at least one."""
    return int(max(1, min(manifest.splits["train"].num_examples, megabytes * 2**20 // _example_bytes(manifest))))


def find_bad_shards(*, manifest: DatasetManifest, data_dir: str, splits: Iterable[str]) -> list[str]:
    """One line per shard of `splits` that TensorFlow cannot read whole or that holds another record count."""
    bad = []
    for split in splits:
        for shard in manifest.splits[split].shards:
            path = tf.io.gfile.join(data_dir, shard.path)
            count = 0
            try:
                # One record at a time, so the count says where a shard breaks: slow, but only after an error.
                for _ in tf.data.TFRecordDataset(path, compression_type=manifest.compression or ""):
                    count += 1
            except (tf.errors.DataLossError, tf.errors.NotFoundError) as error:
                bad.append(f"{path}: {_reason(error)} after {count} records")
                continue
            if count != shard.num_examples:
                bad.append(f"{path}: {count} records, the manifest says {shard.num_examples}")
    return bad


@contextlib.contextmanager
def naming_bad_shards(*, manifest: DatasetManifest, data_dir: str, splits: Iterable[str]):
    """Turns tf.data's errors about broken or missing shards, which name no file or no cause, into ones that do.

    tf.data reports a corrupt or truncated shard as DataLossError ("corrupted record at N"),
    a shard with too few records as FailedPreconditionError from assert_cardinality and a
    missing shard as NotFoundError. A shard goes missing when retention removed the
    snapshot being read: that raises SnapshotRemovedError, which says so and names the
    snapshot. Otherwise the DatasetReadError raised lists the bad shards and the command
    that checks the whole dataset.
    """
    splits = list(splits)
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.FailedPreconditionError, tf.errors.NotFoundError) as error:
        if not _is_about_shards(error, manifest=manifest, data_dir=data_dir, splits=splits):
            raise
        removal = _removal_message(manifest=manifest, data_dir=data_dir)
        if removal is not None:
            raise SnapshotRemovedError(removal) from error
        bad = find_bad_shards(manifest=manifest, data_dir=data_dir, splits=splits)
        raise DatasetReadError(
            f"reading {data_dir} failed ({_reason(error)}): "
            + ("; ".join(bad) if bad else "no shard is bad now: was the dataset rewritten while it was read?")
            + f". Check the dataset with: python -m beam_jobs.verify {data_dir}") from error


def _removal_message(*, manifest: DatasetManifest, data_dir: str) -> str | None:
    """What retention did to the snapshot of `manifest`, in one line; None while its files are kept."""
    if manifest.snapshot_id is None:
        return None
    tombstone = tombstone_path(data_dir, manifest.snapshot_id)
    if not tf.io.gfile.exists(tombstone):
        return None
    return removed_message(data_dir.rstrip("/"), manifest.snapshot_id, json.loads(_read_text(tombstone)))


def _is_about_shards(error: tf.errors.OpError, *, manifest: DatasetManifest, data_dir: str,
                     splits: list[str]) -> bool:
    """Whether tf.data's `error` comes from reading the shards rather than from anything else in the step."""
    if isinstance(error, tf.errors.FailedPreconditionError):
        return "expected to contain" in error.message
    if isinstance(error, tf.errors.NotFoundError):
        return any(path in error.message for path in shard_paths(manifest=manifest, data_dir=data_dir, splits=splits))
    return True


# What tf.data says about a broken shard, without the graph's node names around it.
_SHARD_ERRORS = re.compile(r"(corrupted record at \d+|truncated record at \d+|Input dataset was expected to contain "
                           r"\d+ elements but contained only \d+|[^{}\n]*No such file or directory)")


def _reason(error: tf.errors.OpError) -> str:
    found = _SHARD_ERRORS.search(error.message)
    return found.group(1).strip() if found else error.message.strip().splitlines()[-1]
