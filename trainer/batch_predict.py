"""Batch prediction on Beam: a trained model over every file of a folder tree, or over a split of a dataset.

    python -m trainer.batch_predict --model_dir models/audio --input_root data/raw/festival \\
        --output_dir predictions/festival [--top_k 5] [--overwrite] [--runner=PrismRunner] [--verbose]
    python -m trainer.batch_predict --model_dir models/audio --data_dir data/tfrecords/audio --split test \\
        --output_dir predictions/speech-test

Predictions come from the model folder's serving model (M/serving, `trainer.export`), whose graph
featurizes as the pipeline did; files are read by the pipeline's own readers first
(`trainer.predict.raw_input`): a WAV in any encoding or rate becomes a waveform at the model's rate, an
image is checked by Pillow and passed as bytes the serving model decodes. Flags this command does not
know are Beam pipeline options, the runner's among them, as for `python -m beam_jobs.preprocess`.

  launcher      lists ROOT as preprocessing does (`beam_jobs.pipeline.plan.list_input_files`: the model's
                extensions, `_*` folders skipped but for _silence_ and _unknown_), sorts the files by path and
                cuts them into batches of --batch_size, written to a work list; with --data_dir, the shards
                of the split in the dataset's current snapshot
  ReadWorkUnits a stretch of UNIT_BATCHES lines of the work list (its byte range: only these numbers pass
                through the runner) -> its batches
  ReadFiles     a batch's files -> [((shard, path, true label), raw input)], one element, and an error row
                for each file the readers refuse, with their reason (InvalidInputError)
  ReadRecords   (--data_dir) a stretch of UNIT_BATCHES batches of a shard -> its stored tensors in batches
  Predict       RunInference(KeyedModelHandler(ServingModelHandler).with_no_batching()): each batch through
                one signature of M/serving (padded_waveform, serving_default for image bytes, features for
                stored tensors); the key travels with each example
  WriteParts    (file name, (path, JSON line)) buffered per bundle, up to PART_ROWS lines, and written as
                sorted parts of each output file (no GroupByKey: on FnApiRunner its data would pass
                through the launcher, whose memory would grow with the output)
  launcher      merges each file's sorted parts, streaming (a retried bundle's identical rows once),
                checks in the same pass that every input is in exactly one row (the sorted rows against
                the sorted listing), writes summary.json, and commits

Output, in --output_dir OUT:

  predictions-NNNNN-of-MMMMM.jsonl  one row per input predicted: path (relative to its root), label,
                                    probability, top_k [{label, probability}] best first, and true_label when
                                    the file's top folder (a record's label_name) is one of the model's labels.
                                    A shard holds a run of the sorted files (with --data_dir, the records of
                                    one shard of the split), its rows sorted by path
  errors.jsonl                      path, reason: every input that could not be predicted
  summary.json                      files, predicted, errors; accuracy overall and per class (labelled files)

The same inputs give the same files, byte for byte, on every runner. OUT is committed like a snapshot:
everything is written into OUT.tmp-<run id>/out beside it, under a lease, and a rename makes it OUT, so
a run killed before that leaves OUT as it was, and the next run deletes what the dead run left. An
existing OUT is refused unless --overwrite, which swaps the new folder in with two renames. On an object
store, where a rename copies, the files are moved into OUT with summary.json last: OUT is whole once
summary.json is there.

Batching. The launcher cuts the batches, not RunInference's BatchElements: BatchElements (between its
min_batch_size and max_batch_size, growing as it measures) batches the elements of one bundle, bundles
differ between runners and runs, and an example's probabilities differ in their last bits with the size
of the batch computed (oneDNN: up to 2.4e-7 on the toy audio model), so the output would differ between
engines. A batch is --batch_size consecutive files of the sorted listing, less those that fail, and
RunInference takes it as it is (`with_no_batching`): in BatchElements' terms min_batch_size =
max_batch_size = --batch_size, on 2 cores as on many. 64 by default: per one-second clip on one core,
the toy audio model took 2.1 ms in batches of 1, 0.79 ms of 8, 0.63 ms of 32, 0.62 ms of 64 and 0.61 ms
of 256; beyond 64 a batch only costs memory (it pads its recordings to its longest one: 64 of 60 s at
16 kHz are 246 MB) and work redone when a bundle is retried.

Model sharing. Each worker process loads the serving model once for all its threads: Beam's default
(large_model=False, no model_copies), through `shared.Shared`. The model is a few MB (6 MB for the toy
audio model, featurizer constants included), small beside TensorFlow's runtime, which every worker
process holds anyway; FnApiRunner's workers are forked from a zygote that has imported TensorFlow
(`beam_jobs.runners.forked_workers`), so they share its pages. large_model or model_copies would keep
the copies in server processes of their own (`multi_process_shared`), to which every batch is pickled and
every result pickled back: on CPUs that buys nothing; it pays when a copy per process does not fit in
memory, or for processes sharing one accelerator. On 2 cores: 2 worker processes, 2 copies. On many
cores: a worker process per core, a copy each, and each one's TensorFlow limited to cores / workers
intra-op threads (TF_NUM_INTRAOP_THREADS, unless set), so that N workers do not each run N threads.
"""
import argparse
import dataclasses
import heapq
import io
import itertools
import json
import math
import os
import resource
import sys
import uuid

from beam_jobs.console import logs

logs.quiet_beam_import()  # before the first import of Beam, below: see beam_jobs.console.logs

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.ml.inference import base as inference_base  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference  # noqa: E402
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, SetupOptions  # noqa: E402
from apache_beam.options.pipeline_options import StandardOptions  # noqa: E402

from beam_jobs.inputs.reading import read_at_most, read_text  # noqa: E402
from beam_jobs.inputs.tree import class_folder, join_root  # noqa: E402
from beam_jobs.modalities.config import SplitConfig  # noqa: E402
from beam_jobs.modalities.errors import InvalidInputError  # noqa: E402
from beam_jobs.pipeline.plan import list_input_files  # noqa: E402
from beam_jobs.pipeline.settings import CLUSTER_HELP, normalize_output_dir, normalize_root  # noqa: E402
from beam_jobs.runners.default import runner_for, with_default_runner  # noqa: E402
from beam_jobs.storage.files import (delete_tree, is_local, list_names, use_pipeline_options,  # noqa: E402
                                     write_atomically)
from beam_jobs.table.failpoints import pause_if_asked  # noqa: E402
from beam_jobs.table.layout import ERRORS_NAME  # noqa: E402
from beam_jobs.table.manifest import DatasetManifest, resolve_manifest  # noqa: E402
from beam_jobs.table.runs import Lease, LeaseKeeper, check_lease_held, new_run_id, read_leases  # noqa: E402
from trainer.model_dir import ModelDir  # noqa: E402

BATCH_SIZE = 64  # files per batch: see "Batching" above
BATCHES_PER_SHARD = 100  # an output shard holds the rows of this many batches (6,400 rows, about 1.5 MB)
UNIT_BATCHES = 4  # batches a worker takes at a time: 256 files, small enough that 2 workers end together
PART_ROWS = 4096  # rows a worker buffers before it writes them out as parts: its memory for them is bounded
SUMMARY_NAME = "summary.json"
PRINTED_ERRORS = 10  # error rows printed; all of them are in errors.jsonl

# Beam 2.77 imports `resource` in one try block with its ModelManager, which needs PyTorch: without PyTorch
# it has none, and RunInference warns at every model load that it cannot measure the memory the model took.
inference_base.resource = inference_base.resource or resource


class BatchPredictError(RuntimeError):
    """What stops a run before it commits, in one line: a bad model folder, input or output folder."""


@dataclasses.dataclass(frozen=True)
class Job:
    """What a run predicts and where it writes, validated at start-up."""
    model_dir: str
    manifest: DatasetManifest  # the model's own: labels and featurization
    output_dir: str
    top_k: int
    batch_size: int
    overwrite: bool
    input_root: str | None = None  # a folder-per-class tree ...
    data_dir: str | None = None  # ... or a dataset, and its split
    split: str | None = None


def shard_name(index: int, count: int) -> str:
    return f"predictions-{index:05d}-of-{count:05d}.jsonl"


def true_label(label: str | None, labels: list[str]) -> str | None:
    """A file's or record's label when the model knows it, else None."""
    return label if label in labels else None


def error_output(path: str, reason: str) -> tuple[str, tuple[str, str]]:
    return ERRORS_NAME, (path, json.dumps({"path": path, "reason": reason}))


class ReadFiles(beam.DoFn):
    """(output shard, [{"path", "size"}]) -> the batch [((shard, path, true label), raw input)] of the files
    read, one element, and (errors.jsonl, (path, JSON row)) for each file the pipeline's readers refuse."""

    def __init__(self, *, root: str, manifest: DatasetManifest):
        self._root = root
        self._manifest = manifest

    def process(self, work):
        shard, files = work
        batch = []
        for file in files:
            try:
                batch.append(((shard, file["path"], true_label(class_folder(file["path"]), self._manifest.labels)),
                              self._read(file)))
            except InvalidInputError as error:
                yield error_output(file["path"], str(error))
        if batch:
            yield batch

    def _read(self, file: dict):
        # TensorFlow comes with it: imported by the workers (the zygote preloads it), never by the launcher.
        from trainer.predict import raw_input

        limit = self._manifest.featurizer_config().max_file_bytes
        if file["size"] > limit:
            # As preprocessing checks it, on the listing: an oversized file is never read into memory.
            raise InvalidInputError(f"file is {file['size']} bytes, over the limit of {limit}")
        try:
            data = read_at_most(join_root(self._root, file["path"]), limit=limit + 1, expected_bytes=file["size"])
        except OSError as error:  # gone since the listing, unreadable; Beam's BeamIOError is an OSError
            raise InvalidInputError(f"cannot read file: {error}") from error
        return raw_input(self._manifest, data)


class ReadRecords(beam.DoFn):
    """(output shard, shard path, first record, records) -> those records of the shard in batches of
    `batch_size`: [((shard, path, true label), stored tensor [*tensor_shape])], parsed by the trainer's
    parser (`trainer.data.make_parse`)."""

    def __init__(self, *, manifest: DatasetManifest, labels: list[str], batch_size: int):
        self._manifest = manifest  # the dataset's
        self._labels = labels  # the model's
        self._batch_size = batch_size

    def process(self, shard):
        import tensorflow as tf

        from trainer.data import make_parse

        index, path, start, count = shard
        dtype = np.dtype(self._manifest.tensor_dtype).newbyteorder("<")
        records = tf.data.TFRecordDataset(path, compression_type=self._manifest.compression or "").skip(start).take(
            count)
        for parsed in records.batch(self._batch_size).map(make_parse(("tensor", "path", "label_name"))):
            tensors = np.frombuffer(b"".join(parsed["tensor"].numpy()), dtype=dtype).reshape(
                [-1, *self._manifest.tensor_shape])
            yield [((index, source.decode(), true_label(label.decode(), self._labels)), tensor)
                   for source, label, tensor in zip(parsed["path"].numpy(), parsed["label_name"].numpy(), tensors)]


def _tensorflow_reason(error) -> str:
    """The line of a TensorFlow error that says what went wrong, without the graph's node names."""
    lines = [line for line in error.message.splitlines() if line.strip() and not line[0].isspace()]
    return lines[-1].strip() if lines else error.message.strip()


class ServingModelHandler(ModelHandler):
    """Batches through M/serving, loaded with tf.saved_model.load (`trainer.predict.Predictor`).

    Examples are raw inputs (`trainer.predict.raw_input`: waveforms float32 [n] or image bytes) or, with
    `stored_tensors`, the records' tensors [*tensor_shape]. Each PredictionResult's inference is
    {"top_k": [{"label", "probability"}, ...]} best first, or {"error": why the serving model refused it}.

    Not Beam's TFModelHandlerNumpy: its module imports tensorflow_hub, which soundsight does not install,
    and its loader, tf.keras.models.load_model, reads no SavedModel under Keras 3 ("Keras 3 only supports V3
    `.keras` files and legacy H5 format files").
    """

    def __init__(self, *, model_dir: str, top_k: int, stored_tensors: bool):
        super().__init__()  # large_model=False, no model_copies: a model per worker process (see the module)
        self._model_dir = model_dir
        self._top_k = top_k
        self._stored_tensors = stored_tensors

    def load_model(self):
        from trainer.predict import Predictor

        return Predictor.from_model_dir(self._model_dir)

    def run_inference(self, batch, model, inference_args=None) -> list[PredictionResult]:
        import tensorflow as tf

        try:
            probabilities = self._probabilities(batch, model)
        except tf.errors.InvalidArgumentError:
            # An input the serving model refuses fails its whole batch: the batch again, one by one, names it.
            return [self._predict_one(example, model) for example in batch]
        return [PredictionResult(example, {"top_k": model.top(row, top_k=self._top_k)}, self._model_dir)
                for example, row in zip(batch, probabilities)]

    def _predict_one(self, example, model) -> PredictionResult:
        import tensorflow as tf

        try:
            row = self._probabilities([example], model)[0]
        except tf.errors.InvalidArgumentError as error:
            return PredictionResult(example, {"error": f"the serving model cannot read it: "
                                                       f"{_tensorflow_reason(error)}"}, self._model_dir)
        return PredictionResult(example, {"top_k": model.top(row, top_k=self._top_k)}, self._model_dir)

    def _probabilities(self, batch, model) -> np.ndarray:
        if self._stored_tensors:
            return model.predict_tensors(np.stack(batch))
        return model.predict_raw(list(batch))

    def get_num_bytes(self, batch) -> int:
        # Beam's default pickles the batch to measure it: a copy of every waveform, for a metric.
        return sum(len(example) if isinstance(example, bytes) else example.nbytes for example in batch)

    def get_metrics_namespace(self) -> str:
        return "soundsight_batch_predict"


def format_prediction(keyed_result, *, num_shards: int) -> tuple[str, tuple[str, str]]:
    """((shard, path, true label), PredictionResult) -> (its file's name, (path, JSON row))."""
    (shard, path, label), result = keyed_result
    if "error" in result.inference:
        return error_output(path, result.inference["error"])
    top = result.inference["top_k"]
    row = {"path": path, "label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
    if label is not None:
        row["true_label"] = label
    return shard_name(shard, num_shards), (path, json.dumps(row))


class WriteParts(beam.DoFn):
    """(file name, (path, JSON line)) -> parts of the output files in `parts`: PARTS/<file name>/<random>.jsonl,
    each a run of one file's lines sorted by path, written when PART_ROWS lines are buffered and at the end
    of a bundle. Yields nothing: the launcher merges the parts (`merge_parts`)."""

    def __init__(self, *, parts: str):
        self._parts = parts
        self._buffer: dict[str, list] = {}
        self._buffered = 0

    def start_bundle(self):
        self._buffer, self._buffered = {}, 0

    def process(self, named_line):
        name, line = named_line
        self._buffer.setdefault(name, []).append(line)
        self._buffered += 1
        if self._buffered >= PART_ROWS:
            self._flush()

    def finish_bundle(self):
        self._flush()

    def _flush(self):
        for name, lines in self._buffer.items():
            write_atomically(f"{self._parts}/{name}/{uuid.uuid4().hex}.jsonl",
                             "".join(line + "\n" for _, line in sorted(lines)).encode("utf-8"))
        self._buffer, self._buffered = {}, 0


def _lines(path: str):
    """The lines of a text file, streamed, without their line ends."""
    with io.TextIOWrapper(FileSystems.open(path), encoding="utf-8") as handle:
        for line in handle:
            yield line.rstrip("\n")


def _merged_rows(part_paths: list[str]):
    """(path, line) of the sorted parts merged into one sorted stream; a line repeated whole (a retried
    bundle's) once; RuntimeError for one path with two different rows."""
    streams = [((json.loads(line)["path"], line) for line in _lines(path)) for path in part_paths]
    previous = None
    for path, line in heapq.merge(*streams):
        if previous is not None and path == previous[0]:
            if line != previous[1]:
                raise RuntimeError(f"the pipeline wrote two different rows for {path}")
            continue
        previous = (path, line)
        yield path, line


def merge_parts(parts: str, out: str, *, names: list[str]) -> None:
    """Writes each of `names` into `out` from its sorted parts in `parts` (an empty file when it has none)."""
    for name in names:
        part_paths = [f"{parts}/{name}/{part}" for part in list_names(f"{parts}/{name}", "*.jsonl")]
        write_atomically(f"{out}/{name}", "".join(line + "\n" for _, line in _merged_rows(part_paths))
                         .encode("utf-8"))  # one output file at a time: at most 6,400 rows, or the errors


def read_work_unit(unit: tuple[str, int, int]) -> list[list]:
    """A stretch of the launcher's work list, (path, byte offset, byte length): [output shard, [{"path",
    "size"}]] per batch of it."""
    path, offset, length = unit
    with FileSystems.open(path) as handle:
        handle.seek(offset)
        return [json.loads(line) for line in handle.read(length).decode("utf-8").splitlines()]


def write_work_list(path: str, batches: list[list[dict]]) -> list[tuple[str, int, int]]:
    """Writes the work list, a line [output shard, batch] per batch; returns its units of UNIT_BATCHES lines."""
    lines = [(json.dumps([index // BATCHES_PER_SHARD, batch]) + "\n").encode("utf-8")
             for index, batch in enumerate(batches)]
    write_atomically(path, b"".join(lines))
    units, offset = [], 0
    for start in range(0, len(lines), UNIT_BATCHES):
        length = sum(len(line) for line in lines[start:start + UNIT_BATCHES])
        units.append((path, offset, length))
        offset += length
    return units


class ReadFileBatches(beam.PTransform):
    """PBegin -> (batches of raw inputs, error rows) from the launcher's work list (`plan_files`)."""

    def __init__(self, *, units: list[tuple[str, int, int]], job: Job):
        super().__init__()
        self._units = units
        self._job = job

    def expand(self, pipeline):
        read = (pipeline
                # Stretches of the work list, not its batches: what passes through the runner (on FnApiRunner,
                # the launcher) is a few numbers per UNIT_BATCHES batches, and each worker reads its own.
                | "WorkUnits" >> beam.Create(self._units)
                | "SpreadUnits" >> beam.Reshuffle()
                | "ReadWorkUnits" >> beam.FlatMap(read_work_unit)
                | "ReadFiles" >> beam.ParDo(ReadFiles(root=self._job.input_root, manifest=self._job.manifest)))
        # One output filtered by type, not tagged outputs, which runners implement unevenly (see FeaturizePart).
        return (read | "Batches" >> beam.Filter(lambda output: isinstance(output, list)),
                read | "ErrorRows" >> beam.Filter(lambda output: isinstance(output, tuple)).with_output_types(
                    tuple[str, tuple[str, str]]))  # as inferred, the type of both of ReadFiles' outputs


class ReadRecordBatches(beam.PTransform):
    """PBegin -> (batches of stored tensors, no error rows) from the shards of a dataset split."""

    def __init__(self, *, manifest: DatasetManifest, job: Job):
        super().__init__()
        self._manifest = manifest  # the dataset's
        self._job = job

    def expand(self, pipeline):
        # Stretches of UNIT_BATCHES batches of each shard, so that a split of few shards keeps every worker busy,
        # and nothing but these numbers passes through the runner (on FnApiRunner, the launcher).
        unit = UNIT_BATCHES * self._job.batch_size
        units = [(index, f"{self._job.data_dir}/{shard.path}", start, min(unit, shard.num_examples - start))
                 for index, shard in enumerate(self._manifest.splits[self._job.split].shards)
                 for start in range(0, shard.num_examples, unit)]
        batches = (pipeline
                   | "Units" >> beam.Create(units)
                   | "SpreadUnits" >> beam.Reshuffle()
                   | "ReadRecords" >> beam.ParDo(ReadRecords(manifest=self._manifest, labels=self._job.manifest.labels,
                                                             batch_size=self._job.batch_size)))
        return batches, pipeline | "NoErrorRows" >> beam.Create([])


def build_pipeline(pipeline: beam.Pipeline, job: Job, *, read: beam.PTransform, num_shards: int, parts: str) -> None:
    """Adds the steps of the module docstring: `read`'s batches and error rows to sorted parts in `parts`."""
    batches, error_rows = pipeline | "Read" >> read
    handler = ServingModelHandler(model_dir=job.model_dir, top_k=job.top_k, stored_tensors=job.data_dir is not None)
    rows = (batches
            | "Predict" >> RunInference(KeyedModelHandler(handler).with_no_batching())
            | "FormatRows" >> beam.Map(format_prediction, num_shards=num_shards))
    # One sink for both: a runner that computes only what a sink needs (Beam's DaskRunner) computes both.
    _ = ((rows, error_rows)
         | "Rows" >> beam.Flatten()
         | "WriteParts" >> beam.ParDo(WriteParts(parts=parts)))


def plan_files(job: Job) -> list[list[dict]]:
    """The model's files under the input root, sorted by path, in batches of job.batch_size."""
    listed, counts = list_input_files((job.input_root,), extensions=job.manifest.spec.extensions,
                                      split_config=SplitConfig(**job.manifest.split_config))
    if not listed:
        raise BatchPredictError(f"{job.input_root}: no {'/'.join(job.manifest.spec.extensions)} file to predict "
                                f"({counts['skipped_files']} in _* folders, {counts['ignored_files']} of other kinds)")
    files = sorted(({"path": file.relative_path, "size": file.size_bytes} for file in listed),
                   key=lambda file: file["path"])
    return [files[start:start + job.batch_size] for start in range(0, len(files), job.batch_size)]


def load_data_manifest(job: Job) -> DatasetManifest:
    """The current snapshot of --data_dir, checked against the model: same modality and featurization."""
    try:
        manifest = resolve_manifest(job.data_dir, None, read_text=read_text, exists=FileSystems.exists)
    except FileNotFoundError as error:  # no dataset there, or its snapshot was removed
        raise BatchPredictError(str(error)) from error
    if manifest.modality != job.manifest.modality:
        raise BatchPredictError(f"{job.data_dir} is {manifest.modality}, but {job.model_dir} was trained on "
                                f"{job.manifest.modality}")
    differing = {name: (value, job.manifest.featurization.get(name))
                 for name, value in manifest.featurization.items() if value != job.manifest.featurization.get(name)}
    if differing:
        raise BatchPredictError(f"{job.data_dir} was featurized otherwise than {job.model_dir} was trained on: " +
                                ", ".join(f"{name} {value} (the model's: {own})"
                                          for name, (value, own) in sorted(differing.items())))
    if job.split not in manifest.splits:
        raise BatchPredictError(f"{job.data_dir} has no split {job.split!r}: it has {', '.join(manifest.splits)}")
    return manifest


def summarize(job: Job, *, out: str, names: list[str], expected: int, listing: str | None) -> tuple[dict, list[dict]]:
    """(summary.json's fields, the first PRINTED_ERRORS error rows), streaming the files written into `out`.

    RuntimeError unless every input is in exactly one row: `expected` of them, and with `listing` (the
    launcher's work list, sorted by path) exactly its paths; the shards, runs of the sorted listing in order,
    and the errors merge into one sorted stream that is compared with the listing's, path by path.
    """
    per_class, errors, printed_errors, predicted = {}, 0, [], 0

    def predictions():
        nonlocal predicted
        for name in names:
            if name == ERRORS_NAME:
                continue
            for line in _lines(f"{out}/{name}"):
                row = json.loads(line)
                predicted += 1
                if "true_label" in row:
                    counts = per_class.setdefault(row["true_label"], {"files": 0, "correct": 0})
                    counts["files"] += 1
                    counts["correct"] += row["label"] == row["true_label"]
                yield row["path"]

    def error_paths():
        nonlocal errors
        for line in _lines(f"{out}/{ERRORS_NAME}"):
            row = json.loads(line)
            errors += 1
            if len(printed_errors) < PRINTED_ERRORS:
                printed_errors.append(row)
            yield row["path"]

    written = heapq.merge(predictions(), error_paths()) if listing else itertools.chain(predictions(), error_paths())
    wanted = (file["path"] for line in _lines(listing) for file in json.loads(line)[1]) if listing else None
    count = 0
    for count, path in enumerate(written, start=1):
        if wanted is not None and path != (expected_path := next(wanted, None)):
            raise RuntimeError(f"the pipeline's rows do not match the inputs: {path} where {expected_path} was due")
    if count != expected:
        raise RuntimeError(f"the pipeline wrote {count} rows, not one for each of the {expected} inputs")
    for counts in per_class.values():
        counts["accuracy"] = counts["correct"] / counts["files"]
    labelled = sum(counts["files"] for counts in per_class.values())
    return {"model_dir": job.model_dir, "modality": job.manifest.modality,
            "input": job.input_root or f"{job.data_dir} ({job.split})",
            "files": expected, "predicted": predicted, "errors": errors, "labelled": labelled,
            "accuracy": sum(counts["correct"] for counts in per_class.values()) / labelled if labelled else None,
            "per_class": dict(sorted(per_class.items()))}, printed_errors


def format_summary(summary: dict, error_rows: list[dict], *, output_dir: str) -> str:
    accuracy = f": accuracy {summary['accuracy']:.3f} on {summary['labelled']} labelled" if summary["labelled"] else ""
    lines = [f"predicted {summary['predicted']} of {summary['files']} {summary['modality']} inputs of "
             f"{summary['input']} with {summary['model_dir']}{accuracy}"]
    if summary["per_class"]:
        lines.append("  " + ", ".join(f"{label} {counts['accuracy']:.3f} ({counts['files']})"
                                      for label, counts in summary["per_class"].items()))
    if summary["errors"]:
        lines.append(f"errors: {summary['errors']} rows in {output_dir}/{ERRORS_NAME}")
        lines += [f"  {row['path']}: {row['reason']}" for row in error_rows[:PRINTED_ERRORS]]
        if summary["errors"] > PRINTED_ERRORS:
            lines.append(f"  ... and {summary['errors'] - PRINTED_ERRORS} more")
    lines.append(f"wrote {output_dir}")
    return "\n".join(lines)


def check_output_free(output_dir: str, *, overwrite: bool) -> None:
    names = list_names(output_dir)
    if names and not overwrite:
        held = "the predictions of an earlier run" if SUMMARY_NAME in names else f"{len(names)} other files"
        raise BatchPredictError(f"{output_dir} already holds {held}: give --overwrite to replace it, or another "
                                f"--output_dir")


def clean_dead_runs(output_dir: str) -> None:
    """Deletes the temporary folders beside `output_dir` of runs that provably died (`Lease.is_dead`)."""
    parent, name = output_dir.rsplit("/", 1)
    for folder in list_names(parent, f"{name}.tmp-*"):
        leases: dict[str, Lease] = read_leases(f"{parent}/{folder}")
        if all(lease.is_dead() for lease in leases.values()):
            delete_tree(f"{parent}/{folder}")


def commit(out: str, output_dir: str, *, names: list[str], overwrite: bool) -> None:
    """Makes the folder `out` (holding `names`) `output_dir`, replacing what is there when `overwrite`."""
    check_output_free(output_dir, overwrite=overwrite)  # again: another run may have committed meanwhile
    if not is_local(output_dir):
        delete_tree(output_dir)
        # An object store renames by copying: summary.json last, so that OUT is whole once it is there.
        for name in sorted(names, key=lambda name: name == SUMMARY_NAME):
            FileSystems.rename([f"{out}/{name}"], [f"{output_dir}/{name}"])
        return
    os.makedirs(os.path.dirname(output_dir), exist_ok=True)
    replaced = f"{os.path.dirname(out)}/replaced"
    if os.path.exists(output_dir):
        os.rename(output_dir, replaced)  # killed here, OUT is gone until the next run, not half written
    try:
        os.rename(out, output_dir)
    except OSError as error:  # another run committed OUT meanwhile
        raise BatchPredictError(f"{output_dir} was written by another run meanwhile ({error.strerror}); this run "
                                f"committed nothing") from error


def limit_tensorflow_threads(options: PipelineOptions) -> None:
    """On FnApiRunner's worker processes, cores / workers intra-op threads each (see "Model sharing")."""
    direct = options.view_as(DirectOptions)
    if (options.view_as(StandardOptions).runner == "FnApiRunner"
            and direct.direct_running_mode == "multi_processing"):
        cores = os.cpu_count() or 1
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, cores // (direct.direct_num_workers or cores))))


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.batch_predict", description=__doc__.split("\n\n")[0],
                                     epilog=CLUSTER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a trained model folder with serving/ (trainer.export)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input_root", help="folder-per-class tree ROOT/<label>/.../<file> (local or a URL)")
    source.add_argument("--data_dir", help="a dataset (OUT/<modality> of beam_jobs.preprocess): predicts the stored "
                                           "tensors of --split of its current snapshot")
    parser.add_argument("--split", help="with --data_dir: the split to predict (default: test)")
    parser.add_argument("--output_dir", required=True, help="the folder to write (local or a URL)")
    parser.add_argument("--top_k", type=int, default=5, help="labels per row (default: 5)")
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE,
                        help=f"inputs per call of the model (default: {BATCH_SIZE})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    logs.add_verbose_flag(parser)
    return parser


def parse_job(argv=None) -> tuple[Job, list[str]]:
    """(the validated Job, the remaining arguments for PipelineOptions)."""
    parser = build_arg_parser()
    flags, pipeline_args = parser.parse_known_args(argv)
    use_pipeline_options(pipeline_args)  # the launcher's own file operations, on an object store too
    if flags.split and not flags.data_dir:
        parser.error("--split selects records of --data_dir; with --input_root every file is predicted")
    for flag in ("top_k", "batch_size"):
        if getattr(flags, flag) < 1:
            parser.error(f"--{flag}={getattr(flags, flag)}: must be >= 1")
    model_dir = flags.model_dir.rstrip("/")
    layout = ModelDir(model_dir)
    for path, how in ((layout.manifest, "is it the --model_dir of a finished `python -m trainer.train` run?"),
                      (layout.serving, f"write it with python -m trainer.export --model_dir {model_dir}")):
        if not FileSystems.exists(path):
            parser.error(f"{path} not found: {how}")
    data_dir = flags.data_dir and flags.data_dir.rstrip("/")
    if data_dir and FileSystems.get_scheme(data_dir) is None:
        data_dir = os.path.abspath(data_dir)
    job = Job(model_dir=model_dir, manifest=DatasetManifest.from_json(read_text(layout.manifest)),
              output_dir=normalize_output_dir(flags.output_dir, parser=parser), top_k=flags.top_k,
              batch_size=flags.batch_size, overwrite=flags.overwrite,
              input_root=flags.input_root and normalize_root(flags.input_root, flag="input_root", parser=parser),
              data_dir=data_dir, split=(flags.split or "test") if data_dir else None)
    return job, pipeline_args


def run(argv=None, save_main_session=True) -> dict:
    """Predicts, commits OUT, prints the summary and returns it. BatchPredictError for a run refused."""
    job, pipeline_args = parse_job(argv)
    check_output_free(job.output_dir, overwrite=job.overwrite)
    clean_dead_runs(job.output_dir)
    run_id = new_run_id()
    temp = f"{job.output_dir}.tmp-{run_id}"
    out = f"{temp}/out"
    try:
        with LeaseKeeper(temp, run_id):
            if job.data_dir is None:
                batches = plan_files(job)
                num_shards = math.ceil(len(batches) / BATCHES_PER_SHARD)
                expected = sum(len(batch) for batch in batches)
                work_path = f"{temp}/work.jsonl"
                units = write_work_list(work_path, batches)
                del batches  # the work list holds them
                read = ReadFileBatches(units=units, job=job)
            else:
                data_manifest = load_data_manifest(job)
                num_shards = len(data_manifest.splits[job.split].shards)
                work_path, expected = None, data_manifest.splits[job.split].num_examples
                read = ReadRecordBatches(manifest=data_manifest, job=job)
            options = PipelineOptions(with_default_runner(pipeline_args))
            options.view_as(SetupOptions).save_main_session = save_main_session
            limit_tensorflow_threads(options)
            with runner_for(options, preloaded_modules=(ReadFiles.__module__, "trainer.predict")) as runner:
                pipeline = beam.Pipeline(runner=runner, options=options)
                build_pipeline(pipeline, job, read=read, num_shards=num_shards, parts=f"{temp}/parts")
                pipeline.run().wait_until_finish()
            names = [shard_name(index, num_shards) for index in range(num_shards)] + [ERRORS_NAME]
            merge_parts(f"{temp}/parts", out, names=names)
            summary, error_rows = summarize(job, out=out, names=names, expected=expected, listing=work_path)
            write_atomically(f"{out}/{SUMMARY_NAME}",
                             json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
            pause_if_asked("predictions_written")
            check_lease_held(temp, run_id)  # a run paused past its lease's time to live may be taken for dead
            commit(out, job.output_dir, names=[*names, SUMMARY_NAME], overwrite=job.overwrite)
    finally:
        delete_tree(temp)  # its lease with it: what is left of a run killed before this is a dead run's
    print(format_summary(summary, error_rows, output_dir=job.output_dir))
    return summary


def main(argv=None) -> int:
    verbose = logs.wants_verbose(sys.argv[1:] if argv is None else argv)
    with logs.worker_output_filtered(verbose=verbose) as stderr:
        logs.configure_logging(verbose=verbose, stream=stderr)
        try:
            summary = run(argv)
        except BatchPredictError as error:
            print(f"error: {error}", file=stderr)
            return 1
        except Exception as error:  # noqa: BLE001 -- a failed run says why in one line; --verbose shows where
            if verbose:
                raise
            print(f"error: {logs.one_line(error)} (--verbose shows the traceback)", file=stderr)
            return 1
    return 0 if summary["predicted"] else 1


if __name__ == "__main__":
    # Run through the module, not as __main__: the pipeline's classes are then pickled by reference to
    # trainer.batch_predict, which the workers import, rather than by value.
    from trainer import batch_predict

    sys.exit(batch_predict.main())
