"""Listing and reading the input files: `InputFile` references, their coder, `MatchInputFiles`, `read_at_most`.

Files are read through Beam's `FileSystems`, so local paths and URLs (gs://,
s3://) work alike; the rules of the tree come from `beam_jobs.input_tree`.
"""
from typing import Iterable, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.counters import ModalityCounters
from beam_jobs.input_tree import classify, join_root, relative_to_root

READ_CHUNK_BYTES = 1024 * 1024


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


def read_text(path: str) -> str:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read().decode("utf-8")


def read_text_if_present(path: str) -> str | None:
    return read_text(path) if FileSystems.exists(path) else None


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
