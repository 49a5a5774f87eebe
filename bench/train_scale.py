"""Does training scale out, can the reader feed it, and is an epoch's memory flat in the data? Prints; asserts nothing.

    python -m bench.train_scale --data_dir out/audio --data_dir out/image [--epochs 2] [--work_dir /tmp/ts]

For each dataset, with the trainer's defaults (TrainConfig) but --epochs:
  workers      examples/s of `python -m trainer.train` in a fresh child process, with 1 worker and with 2 local
               workers (--workers 2): steps x global batch / the fastest epoch after the first (the first
               traces), from the chief's epochs.csv, whose seconds include the epoch's validation pass. Each
               run's wall time counts its start-up; its peak is the resident memory of its largest process
               (/usr/bin/time's %M).
  reader       examples/s of make_dataset(training=True) alone (the trainer's shuffle buffer, parsed and decoded,
               no augmentation): the fastest of 3 full passes after a warm-up pass, from the dataset's
               uncompressed shards and from a gzip copy that `beam_jobs.preprocess --compression gzip` writes
               from the manifest's input roots, with tf.data given 1 and 2 threads (private_threadpool_size,
               one thread per op)
  train step   examples/s of the network's training steps fed from in-memory arrays, no augmentation
               (bench.input_pipeline's way: the fastest of 2 epochs after a warm-up epoch)
  memory       peak resident memory of a child process that trains one epoch on the dataset, and one that
               trains one epoch on a copy whose training split lists every shard 4 times (symbolic links);
               beside them, the 1-worker run's, which trained --epochs epochs on the dataset
Targets: the 1-thread reader >= 10x the training step; peak memory at 4x the training split <= 1.1x at 1x.
On 2 cores, 2 workers cannot be faster than 1: their ratio shows what the all-reduce costs.
"""
import argparse
import csv
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

import keras
import tensorflow as tf

from beam_jobs.table.layout import SPANS_FOLDER, dataset_dir, manifest_path, shard_name, snapshot_path, span_dir
from beam_jobs.table.manifest import DatasetManifest, SplitInfo
from bench.input_pipeline import epochs_in_turn, in_memory
from trainer.config import JIT_COMPILE, TrainConfig
from trainer.data import load_manifest, make_dataset, shuffle_buffer_size
from trainer.model import build_model
from trainer.sharding import steps_per_epoch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READER_TARGET = 10.0  # the 1-thread reader's least examples/s, as a multiple of the training step's
MEMORY_TARGET = 1.1  # the most peak memory at REPEATS x the training split, as a multiple of that at 1x
REPEATS = 4
GNU_TIME = "/usr/bin/time"  # its %M: the peak resident memory, in KiB, of the command's largest process
WORKERS = (1, 2)
READER_THREADS = (1, 2)
READER_PASSES = 3  # timed passes over the training split; the fastest counts


@dataclasses.dataclass(frozen=True)
class ChildRun:
    seconds: float  # wall time from start to exit
    peak_bytes: int  # the highest resident memory of the child or of any descendant it waited for


def run_child(args: list[str], *, log_path: str) -> ChildRun:
    """Runs `python <args>` from the repository root, its output into `log_path`; RuntimeError if it fails.

    The peak memory comes from GNU time, which forks the child: a child that this process spawns itself
    inherits its memory high-water mark (subprocess uses vfork), so its own rusage would report this
    process' peak, which holds TensorFlow and the training split, when that is the higher.
    """
    peak_path = f"{log_path}.peak-kib"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        returncode = subprocess.call([GNU_TIME, "--format=%M", f"--output={peak_path}", sys.executable, *args],
                                     cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if returncode:
        with open(log_path) as log:
            tail = "".join(log.readlines()[-20:])
        raise RuntimeError(f"python {' '.join(args)} exited with {returncode}; {log_path} ends:\n{tail}")
    with open(peak_path) as peak_file:
        return ChildRun(seconds=seconds, peak_bytes=int(peak_file.read()) * 1024)


def train_in_child(data_dir: str, model_dir: str, *, epochs: int, workers: int) -> ChildRun:
    """`python -m trainer.train` on `data_dir` into a fresh `model_dir`, its output in `model_dir`.log."""
    shutil.rmtree(model_dir, ignore_errors=True)
    return run_child(["-m", "trainer.train", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                      f"--epochs={epochs}", f"--workers={workers}"], log_path=f"{model_dir}.log")


def epoch_seconds_after_first(model_dir: str) -> float:
    """The fastest epoch's seconds in the chief's epochs.csv, the first epoch (tracing) left out."""
    with open(os.path.join(model_dir, "epochs.csv")) as epoch_log:
        return min(float(row["seconds"]) for row in csv.DictReader(epoch_log) if int(row["epoch"]) > 0)


def write_gzip_copy(manifest: DatasetManifest, out_dir: str) -> str:
    """The dataset folder of a gzip copy written by beam_jobs.preprocess into the fresh `out_dir`, from the
    manifest's input roots, labels and split percentages (in a child process: Beam's protobufs clash with
    TensorFlow's)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    modality = manifest.modality
    run_child(["-m", "beam_jobs.preprocess", *[f"--{modality}_root={root}" for root in manifest.input_roots],
               f"--{modality}_labels={','.join(manifest.labels)}", f"--output_dir={out_dir}", "--compression=gzip",
               *[f"--{name}={value}" for name, value in manifest.split_config.items()]],
              log_path=f"{out_dir}.log")
    gzip_dir = dataset_dir(out_dir, modality)
    copy = load_manifest(gzip_dir)
    if (copy.tensor_dtype, copy.tensor_shape) != (manifest.tensor_dtype, manifest.tensor_shape):
        raise RuntimeError(f"the gzip copy at {gzip_dir} holds {copy.tensor_dtype} {copy.tensor_shape} tensors, "
                           f"not {manifest.tensor_dtype} {manifest.tensor_shape}: its featurization differs")
    return gzip_dir


def write_repeated_train_copy(manifest: DatasetManifest, *, data_dir: str, dest: str, times: int) -> str:
    """dest: a dataset of one snapshot whose training split is `times` copies of `data_dir`'s, its other splits
    as they are; the shards are symbolic links, under their TFDS names in one span. Returns dest."""
    shutil.rmtree(dest, ignore_errors=True)
    span = f"train-x{times}"
    os.makedirs(span_dir(dest, span))
    os.makedirs(os.path.dirname(snapshot_path(dest, 1)))
    splits = {}
    for split, info in manifest.splits.items():
        copies = times if split == "train" else 1
        sources = info.shards * copies
        shards = []
        for rank, shard in enumerate(sources):
            name = shard_name(manifest.modality, split, rank, len(sources), manifest.compression)
            path = f"{SPANS_FOLDER}/{span}/{name}"
            os.symlink(os.path.abspath(os.path.join(data_dir, shard.path)), os.path.join(dest, path))
            shards.append(dataclasses.replace(shard, path=path))
        splits[split] = SplitInfo(num_examples=info.num_examples * copies,
                                  label_counts={label: count * copies for label, count in info.label_counts.items()},
                                  shards=shards)
    repeated = dataclasses.replace(manifest, splits=splits, snapshot_id=1, parent_snapshot=None, spans=[span],
                                   changes={}, run_id=None)
    # The snapshot first, then the pointer readers resolve, as beam_jobs.table.snapshots commits.
    for path in (snapshot_path(dest, 1), manifest_path(dest)):
        with open(path, "w") as manifest_file:
            manifest_file.write(repeated.to_json())
    return dest


def pass_rate(dataset: tf.data.Dataset) -> float:
    """Examples/s of one pass over `dataset`, from asking for its iterator to receiving its last batch."""
    count, start = 0, time.perf_counter()
    batches = iter(dataset)
    for tensors, _ in batches:
        count += int(tensors.shape[0])
    # Read before `batches` goes: deleting an iterator at times waits ~0.5 s for tf.data's threads to wind down,
    # which bench.input_pipeline.pipeline_rate counts: it nearly doubles a pass over Fashion-MNIST.
    return count / (time.perf_counter() - start)


def reader_rate(data_dir: str, *, config: TrainConfig, threads: int) -> float:
    """Examples/s of the training pipeline of `data_dir` without augmentation, tf.data on `threads` threads."""
    manifest = load_manifest(data_dir)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1  # no op spreads over threads beyond those above
    dataset = make_dataset(manifest=manifest, data_dir=data_dir, splits=["train"], batch_size=config.batch_size,
                           training=True, seed=config.seed,
                           shuffle_buffer=shuffle_buffer_size(manifest=manifest, megabytes=config.shuffle_buffer_mb))
    dataset = dataset.with_options(options)
    pass_rate(dataset)  # warm-up: the file cache, tf.data's autotuning
    return max(pass_rate(dataset) for _ in range(READER_PASSES))


def train_step_rate(data_dir: str, *, config: TrainConfig) -> float:
    """Examples/s of training steps of config.model fed from in-memory arrays of the training split."""
    manifest = load_manifest(data_dir)
    tensors, labels = in_memory(make_dataset(manifest=manifest, data_dir=data_dir, splits=["train"],
                                             batch_size=1024, training=False))
    from_memory = tf.data.Dataset.from_tensor_slices((tensors, labels)).shuffle(
        len(labels), seed=config.seed).batch(config.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    keras.utils.set_random_seed(config.seed)
    model = build_model(name=config.model, modality=manifest.modality, shape=manifest.tensor_shape,
                        num_classes=len(manifest.labels), learning_rate=config.learning_rate,
                        jit_compile=JIT_COMPILE[config.jit_compile])
    seconds = epochs_in_turn({"memory": (model, from_memory)}, rounds=2)["memory"]
    return (len(labels) // config.batch_size) * config.batch_size / min(seconds)


def bench(*, data_dir: str, work_dir: str, config: TrainConfig, epochs: int) -> dict:
    manifest = load_manifest(data_dir)
    os.makedirs(work_dir, exist_ok=True)
    train_examples = manifest.splits["train"].num_examples
    trainings = {}
    for workers in WORKERS:
        model_dir = os.path.join(work_dir, f"model-{workers}-workers")
        run = train_in_child(data_dir, model_dir, epochs=epochs, workers=workers)
        steps = steps_per_epoch(num_examples=train_examples, num_workers=workers,
                                worker_batch=config.batch_size // workers)
        trainings[workers] = {"rate": steps * config.batch_size / epoch_seconds_after_first(model_dir), "run": run}
    repeated_dir = write_repeated_train_copy(manifest, data_dir=data_dir, times=REPEATS,
                                             dest=os.path.join(work_dir, f"train-x{REPEATS}"))
    memory = {times: train_in_child(source, os.path.join(work_dir, f"model-memory-x{times}"), epochs=1,
                                    workers=1).peak_bytes
              for times, source in ((1, data_dir), (REPEATS, repeated_dir))}
    sources = {manifest.compression or "uncompressed": data_dir}
    if manifest.compression != "GZIP":
        sources["gzip"] = write_gzip_copy(manifest, os.path.join(work_dir, "gzip"))
    readers = {(compression, threads): reader_rate(source, config=config, threads=threads)
               for compression, source in sources.items() for threads in READER_THREADS}
    return {"modality": manifest.modality, "train_examples": train_examples, "trainings": trainings,
            "readers": readers, "train_step": train_step_rate(data_dir, config=config), "memory": memory}


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def row(label: str, value: str, note: str = "") -> str:
    return f"  {label:31} {value:>20}   {note}".rstrip()


def report(result: dict, *, data_dir: str, config: TrainConfig, epochs: int) -> str:
    trainings, step, memory = result["trainings"], result["train_step"], result["memory"]
    lines = [f"{result['modality']} ({data_dir}, {result['train_examples']} training examples, batch "
             f"{config.batch_size}, {epochs} epochs):"]
    for workers, training in trainings.items():
        run = training["run"]
        lines.append(row(f"train, {workers} worker{'s' * (workers > 1)}", f"{training['rate']:.0f} examples/s",
                         f"run {run.seconds:.1f} s with start-up, peak {run.peak_bytes / 2**20:.0f} MiB"))
    lines += [row("2 workers / 1 worker", f"{trainings[2]['rate'] / trainings[1]['rate']:.2f}x"),
              row("train step, from memory", f"{step:.0f} examples/s")]
    for (compression, threads), rate in result["readers"].items():
        note = f"{rate / step:.1f}x the train step"
        if threads == 1:
            note += (f" (target >= {READER_TARGET:g}x: {verdict(rate / step >= READER_TARGET)}); "
                     f"{10_000 / rate:.2f} cores per 10,000 examples/s of training")
        lines.append(row(f"reader, {compression}, {threads} thread{'s' * (threads > 1)}", f"{rate:.0f} examples/s",
                         note))
    ratio = memory[REPEATS] / memory[1]
    lines += [row("peak memory, 1 epoch, 1x", f"{memory[1] / 2**20:.0f} MiB"),
              row(f"peak memory, 1 epoch, {REPEATS}x", f"{memory[REPEATS] / 2**20:.0f} MiB",
                  f"{ratio:.2f}x the 1x peak (target <= {MEMORY_TARGET:g}x: {verdict(ratio <= MEMORY_TARGET)})"),
              row(f"peak memory, {epochs} epochs, 1x", f"{trainings[1]['run'].peak_bytes / 2**20:.0f} MiB",
                  f"the 1-worker run: the same data as 1x, {epochs}x the steps")]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", action="append", required=True, help="a beam_jobs.preprocess output folder; "
                        "repeat for several")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each timed training run; the fastest "
                        "after the first counts (default: 2)")
    parser.add_argument("--work_dir", help="where the model folders, logs, gzip and 4x copies go, one folder per "
                        "dataset, replaced on each run and kept (default: a temporary folder, removed at the end)")
    flags = parser.parse_args(argv)
    if not os.access(GNU_TIME, os.X_OK):
        parser.error(f"{GNU_TIME} (GNU time) is missing: it measures the training runs' peak memory")
    if flags.epochs < 2:
        parser.error(f"--epochs {flags.epochs} is invalid: the rate comes from the epochs after the first; "
                     f"it must be >= 2")
    names = [os.path.basename(data_dir.rstrip("/")) for data_dir in flags.data_dir]
    if len(set(names)) < len(names):
        parser.error(f"the --data_dir folders must have distinct names, each gets its folder in --work_dir: {names}")
    config = TrainConfig()
    work_dir = flags.work_dir or tempfile.mkdtemp(prefix="train_scale-")
    try:
        for data_dir, name in zip(flags.data_dir, names):
            start = time.perf_counter()
            result = bench(data_dir=data_dir, work_dir=os.path.join(work_dir, name), config=config,
                           epochs=flags.epochs)
            print(report(result, data_dir=data_dir, config=config, epochs=flags.epochs)
                  + f"\n  ({time.perf_counter() - start:.0f} s for this dataset)", flush=True)
    finally:
        if not flags.work_dir:
            shutil.rmtree(work_dir)


if __name__ == "__main__":
    main()
