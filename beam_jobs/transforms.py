"""Beam transforms from folder-per-class input trees to encoded examples and error rows.

Each step wraps a pure function of beam_jobs; the pipeline recipe that strings
them together is `beam_jobs.preprocess.IngestModality`:

  MatchInputFiles    roots -> InputFile (input extensions outside `_` folders)
  ComputeVocabulary  InputFile -> {label name: index}, the sorted class folder names
  ReadSplitLists     roots -> (root, {relative path: split}) from validation/testing lists
  CountFilesPerSplit InputFile -> (split, number of files), known before any file is read
  FeaturizeFile      InputFile -> EncodedExample, or an ErrorRow saying why not
  WriteErrorRows     ErrorRow -> OUT/errors.jsonl

Shard writing and the manifest live in `beam_jobs.sharding`.
"""
import hashlib
import json
import logging
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs import audio, image
from beam_jobs.errors import InvalidInputError
from beam_jobs.examples import encode_example
from beam_jobs.sharding import write_atomically
from beam_jobs.splits import LIST_FILES, assign_split

METRICS_NAMESPACE = "soundsight"
ERRORS_NAME = "errors.jsonl"
FEATURIZERS = {"audio": audio.featurize_wav, "image": image.featurize_image}


class InputFile(NamedTuple):
    """A matched file that must become either an example or an error row."""
    modality: str
    root: str
    path: str  # full path or URL, as matched
    relative_path: str  # relative to `root`, forward slashes
    size_bytes: int


class EncodedExample(NamedTuple):
    split: str
    label_name: str
    example_id: str  # hex SHA-256 of the file's bytes
    relative_path: str
    serialized: bytes  # a tf.train.Example


class ErrorRow(NamedTuple):
    path: str
    root: str
    modality: str
    reason: str

    def to_json(self) -> str:
        return json.dumps(self._asdict(), sort_keys=True)


def counter(name: str):
    return Metrics.counter(METRICS_NAMESPACE, name)


def relative_to_root(path: str, root: str) -> str:
    """`path` relative to `root` with forward slashes, for local paths and URLs alike."""
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"matched path {path!r} is not under its root {root!r}")
    return path[len(prefix):].replace("\\", "/")


def classify(relative_path: str, *, extensions: tuple[str, ...]) -> str:
    """'skipped' inside a folder named `_...`, 'ignored' for other extensions, else 'input'."""
    folders = relative_path.split("/")[:-1]
    if any(folder.startswith("_") for folder in folders):
        return "skipped"
    if not relative_path.lower().endswith(extensions):
        return "ignored"
    return "input"


def class_folder(relative_path: str) -> str | None:
    """The label of a file: its top folder under the root; None for a file directly in the root."""
    folder, separator, _ = relative_path.partition("/")
    return folder if separator else None


class _KeepInputFiles(beam.DoFn):
    """(root, FileMetadata) -> InputFile for input files; counts the files it passes over."""

    def __init__(self, *, modality: str, extensions: tuple[str, ...]):
        self._modality = modality
        self._extensions = extensions

    def process(self, root_and_metadata):
        root, metadata = root_and_metadata
        relative_path = relative_to_root(metadata.path, root)
        kind = classify(relative_path, extensions=self._extensions)
        counter(f"{self._modality}_{kind}_files").inc()
        if kind == "input":
            yield InputFile(self._modality, root, metadata.path, relative_path, metadata.size_in_bytes)


class MatchInputFiles(beam.PTransform):
    """PBegin -> InputFile for every input file under `roots`.

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
        matched_per_root = [
            pipeline
            | f"MatchRoot{index}" >> fileio.MatchFiles(f"{root}/**")
            | f"TagRoot{index}" >> beam.Map(lambda metadata, root=root: (root, metadata))
            for index, root in enumerate(self._roots)]
        return (matched_per_root
                | "FlattenRoots" >> beam.Flatten()
                | "KeepInputFiles" >> beam.ParDo(
                    _KeepInputFiles(modality=self._modality, extensions=self._extensions)))


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
                | "DistinctClasses" >> beam.Distinct()
                | "CollectClasses" >> beam.combiners.ToList()
                | "IndexSortedClasses" >> beam.Map(lambda names: index_labels(sorted(names))))


def read_split_lists(root: str) -> dict[str, str]:
    """{relative path: split} from the root's validation_list.txt / testing_list.txt, if present.

    Raises ValueError when a file is listed in both, since no split would be right.
    """
    listed = {}
    for split, list_name in LIST_FILES.items():
        list_path = f"{root}/{list_name}"
        if not FileSystems.exists(list_path):
            continue  # the lists are optional: hashing assigns the splits then
        with FileSystems.open(list_path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            lines = handle.read().decode("utf-8").splitlines()
        for relative_path in filter(None, (line.strip() for line in lines)):
            if listed.setdefault(relative_path, split) != split:
                raise ValueError(f"{relative_path} is listed in more than one split list under {root}")
    return listed


class ReadSplitLists(beam.PTransform):
    """PBegin -> (root, {relative path: split}) for each root, to use as an AsDict side input."""

    def __init__(self, *, roots: tuple[str, ...]):
        super().__init__()
        self._roots = roots

    def expand(self, pipeline):
        return (pipeline
                | "Roots" >> beam.Create(self._roots)
                | "ReadListsOfRoot" >> beam.Map(lambda root: (root, read_split_lists(root))))


def split_of(input_file: InputFile, split_lists: dict, *, config) -> str:
    """The split of a file from its path alone; `split_lists` maps each root to its listed files."""
    return assign_split(input_file.relative_path, config=config, listed=split_lists.get(input_file.root, {}))


class CountFilesPerSplit(beam.PTransform):
    """InputFile -> (split, number of files), from the paths alone; `split_lists` as for FeaturizeFile."""

    def __init__(self, *, split_config, split_lists):
        super().__init__()
        self._split_config = split_config
        self._split_lists = split_lists

    def expand(self, input_files):
        return (input_files
                | "SplitOfEachFile" >> beam.Map(
                    split_of, beam.pvalue.AsDict(self._split_lists), config=self._split_config)
                | "CountPerSplit" >> beam.combiners.Count.PerElement())


def read_at_most(path: str, *, limit: int) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read(limit)


class FeaturizeFile(beam.DoFn):
    """InputFile -> EncodedExample, or an ErrorRow on the ERRORS output.

    Side inputs: `vocabulary` {label name: index} and `split_lists` {root: {relative path: split}}.
    Only InvalidInputError (a bad file) becomes an error row; any other exception
    is a bug or an I/O failure and fails the bundle, so the runner retries or stops.
    """
    ERRORS = "errors"

    def __init__(self, *, modality: str, config, split_config):
        self._modality = modality
        self._config = config
        self._split_config = split_config
        self._featurize = FEATURIZERS[modality]
        self._files_seen = 0

    def process(self, input_file: InputFile, vocabulary: dict[str, int], split_lists: dict):
        self._log_progress()
        try:
            example = self._encode(input_file, vocabulary, split_lists)
        except InvalidInputError as error:
            counter(f"{self._modality}_errors").inc()
            yield beam.pvalue.TaggedOutput(self.ERRORS, ErrorRow(
                input_file.path, input_file.root, self._modality, str(error)))
            return
        counter(f"{self._modality}_{example.split}_examples").inc()
        counter(f"{self._modality}_label_{example.label_name}_examples").inc()
        yield example

    def _encode(self, input_file: InputFile, vocabulary: dict[str, int], split_lists: dict):
        label_name = class_folder(input_file.relative_path)
        if label_name is None:
            raise InvalidInputError("file is directly in the input root; inputs must be in ROOT/<label>/")
        if label_name not in vocabulary:
            # Only a fixed vocabulary can miss a class folder.
            raise InvalidInputError(f"label {label_name!r} is not in the fixed {self._modality} labels")
        max_bytes = self._config.max_file_bytes
        if input_file.size_bytes > max_bytes:
            # Checked on the listing so that an oversized file is never read into memory.
            raise InvalidInputError(f"file is {input_file.size_bytes} bytes, over the limit of {max_bytes}")
        data = read_at_most(input_file.path, limit=max_bytes + 1)
        tensor = self._featurize(data, config=self._config)
        split = split_of(input_file, split_lists, config=self._split_config)
        example_id = hashlib.sha256(data).hexdigest()
        serialized = encode_example(
            tensor=tensor, label=vocabulary[label_name], label_name=label_name, modality=self._modality,
            example_id=example_id, path=input_file.relative_path, split=split)
        return EncodedExample(split, label_name, example_id, input_file.relative_path, serialized)

    def _log_progress(self):
        self._files_seen += 1
        if self._files_seen % 1000 == 0:
            logging.info("%s: this worker has featurized %d files", self._modality, self._files_seen)


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
