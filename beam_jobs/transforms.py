"""Beam transforms from folder-per-class input trees to TFRecord shards and error rows.

Each step wraps a pure function of beam_jobs; the pipeline recipe that strings
them together is `beam_jobs.preprocess.IngestModality`:

  MatchInputFiles    roots -> InputFile (input extensions outside `_` folders)
  ComputeVocabulary  InputFile -> {label name: index}, the sorted class folder names
  ReadSplitLists     roots -> one {root index: {relative path: split}} from validation/testing lists
  AssignShards       InputFile -> ((split, shard index, part), InputFile), from the file's path alone
  FeaturizePart      ((split, shard index, part), [InputFile]) -> ShardPart written in one streaming
                     pass, and an ErrorRow for each file that could not be used
  WriteErrorRows     ErrorRow -> OUT/errors.jsonl

The rules of the input tree live in `beam_jobs.layout`; shard naming, writing
and the manifest in `beam_jobs.sharding`.
"""
import hashlib
import json
import logging
from typing import Iterable, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs import audio, image
from beam_jobs.errors import InvalidInputError
from beam_jobs.examples import encode_example
from beam_jobs.layout import class_folder, classify, join_root, read_split_lists, relative_to_root
from beam_jobs.sharding import (PART_BYTES, PART_FILES, PartWriter, num_parts_for, num_shards_for, part_index,
                                shard_index, shard_order, write_atomically)
from beam_jobs.splits import assign_split

_LOGGER = logging.getLogger(__name__)
METRICS_NAMESPACE = "soundsight"
ERRORS_NAME = "errors.jsonl"
FEATURIZERS = {"audio": audio.featurize_wav, "image": image.featurize_image}
PROGRESS_EVERY = 1000  # files between a worker's progress log lines


class InputFile(NamedTuple):
    """A matched file that must become either an example or an error row.

    Every file's reference crosses two stage boundaries and the shuffle, and a
    runner that keeps them in memory (the FnApiRunner) holds several copies of
    each, so it carries only what cannot be derived: no modality (each branch of
    the pipeline has one), no root (its index in the branch's roots), no full
    path. With its key, InputFileCoder encodes it in the split name, the
    relative path and about 8 bytes more; the root as a string added 0.25 KiB
    per file to the peak memory of a local run.
    """
    root_index: int  # position of the file's root in the modality's roots
    relative_path: str  # relative to the root, forward slashes
    size_bytes: int  # as listed; decides the size limit before the file is read

    def path(self, roots: tuple[str, ...]) -> str:
        """The full path or URL, as matched, given the modality's roots."""
        return join_root(roots[self.root_index], self.relative_path)


class InputFileCoder(beam.coders.Coder):
    """InputFile as a varint, a length-prefixed string and a varint, decoded back to an InputFile.

    A coder of its own rather than RowCoder: a worker process decodes RowCoder
    rows into a generated type unless the type registry reached it, and that
    type lacks InputFile's `path`. This coder travels pickled in the pipeline.
    """
    _fields = beam.coders.TupleCoder([beam.coders.VarIntCoder(), beam.coders.StrUtf8Coder(),
                                      beam.coders.VarIntCoder()])

    def encode(self, value: InputFile) -> bytes:
        return self._fields.encode(value)

    def decode(self, encoded: bytes) -> InputFile:
        return InputFile(*self._fields.decode(encoded))

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self):
        return InputFile


beam.coders.registry.register_coder(InputFile, InputFileCoder)


class ErrorRow(NamedTuple):
    path: str
    root: str
    modality: str
    reason: str

    def to_json(self) -> str:
        return json.dumps(self._asdict(), sort_keys=True)


class ModalityCounters:
    """The `soundsight` counters `<modality>_<name>`, each created once, not per element."""

    def __init__(self, modality: str):
        self._modality = modality
        self._counters = {}

    def inc(self, name: str) -> None:
        if name not in self._counters:
            self._counters[name] = Metrics.counter(METRICS_NAMESPACE, f"{self._modality}_{name}")
        self._counters[name].inc()


def read_text(path: str) -> str:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read().decode("utf-8")


def read_text_if_present(path: str) -> str | None:
    return read_text(path) if FileSystems.exists(path) else None


class _ListInputFiles(beam.DoFn):
    """(root index, root) -> InputFile for each input file under the root; counts the files it passes over."""

    def __init__(self, *, modality: str, extensions: tuple[str, ...]):
        self._modality = modality
        self._extensions = extensions

    def setup(self):
        self._counters = ModalityCounters(self._modality)

    def process(self, indexed_root: tuple[int, str]) -> Iterable[InputFile]:
        root_index, root = indexed_root
        for metadata in FileSystems.match([f"{root}/**"])[0].metadata_list:
            relative_path = relative_to_root(metadata.path, root)
            kind = classify(relative_path, extensions=self._extensions)
            self._counters.inc(f"{kind}_files")
            if kind == "input":
                yield InputFile(root_index, relative_path, metadata.size_in_bytes)


class MatchInputFiles(beam.PTransform):
    """PBegin -> InputFile for every input file under `roots`, with the index of its root.

    Files inside `_` folders (such as `_background_noise_`) and files with other
    extensions (such as the split lists) are counted in the metrics
    `<modality>_skipped_files` and `<modality>_ignored_files`, never emitted.
    """

    def __init__(self, *, modality: str, roots: tuple[str, ...], extensions: tuple[str, ...]):
        super().__init__()
        self._modality = modality
        self._roots = roots
        self._extensions = extensions

    def expand(self, pipeline):
        return (pipeline
                | "Roots" >> beam.Create(list(enumerate(self._roots)))
                | "ListInputFiles" >> beam.ParDo(
                    _ListInputFiles(modality=self._modality, extensions=self._extensions)))


def _class_folders(input_file: InputFile):
    folder = class_folder(input_file.relative_path)
    if folder is not None:
        yield folder


def index_labels(names) -> dict[str, int]:
    return {name: index for index, name in enumerate(names)}


class ComputeVocabulary(beam.PTransform):
    """InputFile -> a single {label name: index}, indexing the sorted class folder names."""

    def expand(self, input_files):
        return (input_files
                | "ClassFolders" >> beam.FlatMap(_class_folders)
                | "CollectClasses" >> beam.combiners.ToSet()
                | "IndexSortedClasses" >> beam.Map(lambda names: index_labels(sorted(names))))


def read_split_lists_of_roots(roots: tuple[str, ...]) -> dict[int, dict[str, str]]:
    return {root_index: read_split_lists(root, read_text=read_text_if_present)
            for root_index, root in enumerate(roots)}


class ReadSplitLists(beam.PTransform):
    """PBegin -> one {root index: {relative path: split}}, to use as an AsSingleton side input."""

    def __init__(self, *, roots: tuple[str, ...]):
        super().__init__()
        self._roots = roots

    def expand(self, pipeline):
        return (pipeline
                | "Roots" >> beam.Create([self._roots])
                | "ReadListsOfRoots" >> beam.Map(read_split_lists_of_roots))


def split_of(input_file: InputFile, split_lists: dict, *, config) -> str:
    """The split of a file from its path alone; `split_lists` maps each root index to its listed files."""
    return assign_split(input_file.relative_path, config=config, listed=split_lists.get(input_file.root_index, {}))


def _with_split(input_file: InputFile, split_lists: dict, *, config) -> tuple[str, InputFile]:
    return split_of(input_file, split_lists, config=config), input_file


def _key_by_part(split_and_file, files_per_split: dict[str, int], *, record_bytes: int, shard_bytes: int,
                 fixed_num_shards: int | None, part_bytes: int,
                 part_files: int) -> tuple[tuple[str, int, int], InputFile]:
    split, input_file = split_and_file
    num_files = files_per_split[split]
    num_shards = num_shards_for(num_files * record_bytes, shard_bytes=shard_bytes, fixed_num_shards=fixed_num_shards)
    num_parts = num_parts_for(num_files, record_bytes=record_bytes, num_shards=num_shards, part_bytes=part_bytes,
                              part_files=part_files)
    return (split, shard_index(input_file.relative_path, num_shards=num_shards),
            part_index(input_file.relative_path, num_parts=num_parts)), input_file


class AssignShards(beam.PTransform):
    """InputFile -> ((split, shard index, part), InputFile), from the file's relative path alone.

    `split_lists` is a singleton {root index: {relative path: split}}. A split has
    `fixed_num_shards` hash buckets, or its uncompressed bytes (its number of
    listed files times `record_bytes`) divided by `shard_bytes`, rounded up; each
    bucket is cut into parts, the unit of work, of at most about `part_bytes` and `part_files`.
    Counting files rather than featurized examples fixes every file's shard before
    any file is read; files that turn out bad only make the shards a little smaller.
    """

    def __init__(self, *, split_config, split_lists, record_bytes: int, shard_bytes: int,
                 fixed_num_shards: int | None, part_bytes: int = PART_BYTES, part_files: int = PART_FILES):
        super().__init__()
        self._split_config = split_config
        self._split_lists = split_lists
        self._record_bytes = record_bytes
        self._shard_bytes = shard_bytes
        self._fixed_num_shards = fixed_num_shards
        self._part_bytes = part_bytes
        self._part_files = part_files

    def expand(self, input_files):
        split_and_file = input_files | "SplitOfEachFile" >> beam.Map(
            _with_split, beam.pvalue.AsSingleton(self._split_lists), config=self._split_config)
        split_to_count = (split_and_file
                          | "Splits" >> beam.Keys()
                          | "CountPerSplit" >> beam.combiners.Count.PerElement()
                          | "CollectCounts" >> beam.combiners.ToDict())
        return split_and_file | "KeyByPart" >> beam.Map(
            _key_by_part, beam.pvalue.AsSingleton(split_to_count), record_bytes=self._record_bytes,
            shard_bytes=self._shard_bytes, fixed_num_shards=self._fixed_num_shards, part_bytes=self._part_bytes,
            part_files=self._part_files)


READ_CHUNK_BYTES = 1024 * 1024


def read_at_most(path: str, *, limit: int, expected_bytes: int) -> bytes:
    """The file's first `limit` bytes, or all of it when shorter.

    Asks first for `expected_bytes` + 1 (the listed size, and one byte more to see
    the end): a buffered read allocates all it asks for, so asking for `limit`
    (64 MiB by default) would cost every small file a 64 MiB allocation. A file
    that grew since it was listed is read on, in chunks, up to `limit`.
    """
    chunks, total = [], 0
    request = min(expected_bytes + 1, limit)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while request > 0:
            chunk = handle.read(request)
            chunks.append(chunk)
            total += len(chunk)
            if len(chunk) < request:  # a buffered read returns less only at the end of the file
                break
            request = min(READ_CHUNK_BYTES, limit - total)
    return b"".join(chunks)


class FeaturizePart(beam.DoFn):
    """((split, shard index, part), [InputFile]) -> ShardPart; an ErrorRow on the ERRORS output per bad file.

    Reads, featurizes and encodes the files one at a time in `shard_order` and
    streams each record into the part's temporary file, so a worker holds one
    record and the part's file list. Side input: `vocabulary` {label name: index}.
    `roots` are the modality's roots, which the files' root indices point into.
    Only InvalidInputError (a bad file) becomes an error row; any other exception
    is a bug or an I/O failure and fails the bundle, so the runner retries or stops.
    """
    ERRORS = "errors"

    def __init__(self, *, modality: str, config, dataset_dir: str, roots: tuple[str, ...]):
        self._modality = modality
        self._config = config
        self._dataset_dir = dataset_dir
        self._roots = roots
        self._featurize = FEATURIZERS[modality]

    def setup(self):
        self._counters = ModalityCounters(self._modality)
        self._files_seen = 0

    def process(self, part_and_files, vocabulary: dict[str, int]):
        (split, index, part), input_files = part_and_files
        ordered = sorted(input_files,
                         key=lambda f: shard_order(root_index=f.root_index, relative_path=f.relative_path))
        with PartWriter(dataset_dir=self._dataset_dir, split=split, index=index, part=part) as writer:
            for input_file in ordered:
                self._log_progress()
                label_name = class_folder(input_file.relative_path)
                try:
                    serialized = self._encode(input_file, label_name=label_name, split=split, vocabulary=vocabulary)
                except InvalidInputError as error:
                    self._counters.inc("errors")
                    yield beam.pvalue.TaggedOutput(self.ERRORS, ErrorRow(
                        input_file.path(self._roots), self._roots[input_file.root_index], self._modality,
                        str(error)))
                    continue
                writer.write(serialized, label_name=label_name)
                self._counters.inc(f"{split}_examples")
                self._counters.inc(f"label_{label_name}_examples")
        if writer.shard_part is not None:
            yield writer.shard_part

    def _encode(self, input_file: InputFile, *, label_name: str | None, split: str,
                vocabulary: dict[str, int]) -> bytes:
        if label_name is None:
            raise InvalidInputError("file is directly in the input root; inputs must be in ROOT/<label>/")
        if label_name not in vocabulary:
            # Only a fixed vocabulary can miss a class folder.
            raise InvalidInputError(f"label {label_name!r} is not in the fixed {self._modality} labels")
        max_bytes = self._config.max_file_bytes
        if input_file.size_bytes > max_bytes:
            # Checked on the listing so that an oversized file is never read into memory.
            raise InvalidInputError(f"file is {input_file.size_bytes} bytes, over the limit of {max_bytes}")
        data = read_at_most(input_file.path(self._roots), limit=max_bytes + 1, expected_bytes=input_file.size_bytes)
        tensor = self._featurize(data, config=self._config)
        return encode_example(
            tensor=tensor, label=vocabulary[label_name], label_name=label_name, modality=self._modality,
            example_id=hashlib.sha256(data).hexdigest(), path=input_file.relative_path, split=split)

    def _log_progress(self):
        self._files_seen += 1
        if self._files_seen % PROGRESS_EVERY == 0:
            _LOGGER.info("%s: this worker has featurized %d files", self._modality, self._files_seen)


def write_error_rows(error_rows: list[ErrorRow], *, path: str) -> None:
    """Writes one JSON object per line, sorted by modality and path; an empty file for none."""
    lines = sorted((row.modality, row.path, row.to_json()) for row in error_rows)
    write_atomically(path, "".join(line + "\n" for _, _, line in lines).encode("utf-8"))


class WriteErrorRows(beam.PTransform):
    """ErrorRow -> OUT/errors.jsonl (written even when there is no error)."""

    def __init__(self, *, path: str):
        super().__init__()
        self._path = path

    def expand(self, error_rows):
        return (error_rows
                | "CollectErrorRows" >> beam.combiners.ToList()
                | "WriteErrorsFile" >> beam.Map(write_error_rows, path=self._path))
