"""Deterministic TFRecord shards and the span that holds them; file names from `beam_jobs.table.layout`.

  PartWriter   streams the records of one part of a shard into a temporary file -> ShardPart
  WriteShards  ShardPart -> ShardFile: each shard's parts concatenated, in order, into a temporary shard,
               read back and checked
  PublishSpan  ShardFile -> the shards renamed into the run's span folder, its index of files and
               errors, TFDS metadata, and span.json last

Temporary files are unique per attempt (`temp_part_path`, `temp_shard_path`),
so a retried or duplicated bundle cannot write into another attempt's file; the
run deletes its whole temporary folder at the end.

A file's shard (its hash bucket) and its part of that shard (a range of hash
values) come from a hash of its relative path, and a part's files are written in
`shard_order`, so the parts, concatenated, hold the shard's records in
`shard_order`. The same input gives byte-identical shards whatever the runner,
the number of workers or the order in which files were listed. Parts exist so
that a split with few shards still spreads over many workers.
"""
import dataclasses
import hashlib
import json
import math
import shutil
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from beam_jobs.inputs.splits import SPLITS
from beam_jobs.modalities.spec import Modality
from beam_jobs.records.examples import encode_example
from beam_jobs.storage.files import naming_the_file, write_atomically
from beam_jobs.table.failpoints import fail_if_asked
from beam_jobs.table.integrity import scan_shard
from beam_jobs.table.layout import (SPAN_ERRORS_NAME, SPAN_FILES_NAME, SPAN_MANIFEST_NAME, shard_name,
                                    temp_part_path, temp_shard_path)
from beam_jobs.table.manifest import DatasetManifest, ShardInfo, SplitInfo
from beam_jobs.table.tfds_metadata import tfds_files

# A part, the unit of work, holds at most PART_BYTES of records and at most PART_FILES files: small
# to balance the workers, large for few temporary files. The file cap is for small records, whose
# cost is in decoding, not bytes: 4 MiB is 160 spectrograms but 4,000 Fashion-MNIST images.
PART_BYTES = 4 * 1024 * 1024
PART_FILES = 1000
COPY_BUFFER_BYTES = 1024 * 1024


class ShardMismatchError(RuntimeError):
    """A shard on storage disagrees with what the pipeline wrote into it: it is not published."""


# A record's row in its span's files.jsonl: the input file (root index, relative path, size, modification
# time, split), its label, and where its framed record starts in the shard and how long its data is.
FILE_ROW_FIELDS = ("root", "path", "size", "mtime", "split", "label", "offset", "length")


class ShardPart(NamedTuple):
    """The records of one part of a shard, written uncompressed under a temporary name."""
    split: str
    index: int  # the shard's hash bucket
    part: int  # the range of path hashes within the bucket
    temp_path: str
    num_examples: int
    label_counts: dict[str, int]
    num_bytes: int  # of the framed records
    rows: list[tuple]  # FILE_ROW_FIELDS, offsets within the part


class ShardFile(NamedTuple):
    """A shard written under its temporary name and checked, waiting to be published."""
    split: str
    index: int  # the hash bucket; buckets that received no record have no file
    temp_path: str
    num_examples: int
    label_counts: dict[str, int]
    num_bytes: int  # as stored
    sha256: str  # of the stored bytes
    # A temporary file of its rows (FILE_ROW_FIELDS, offsets within the uncompressed shard), a JSON list of
    # lists: a shard's rows can be millions, too many to pass through the runner (`read_shard_rows`).
    rows_path: str


def num_shards_for(total_bytes: int, *, shard_bytes: int, fixed_num_shards: int | None) -> int:
    """`fixed_num_shards` if given, else enough shards of `shard_bytes` for `total_bytes`, at least 1."""
    if fixed_num_shards:
        return fixed_num_shards
    return max(1, math.ceil(total_bytes / shard_bytes))


def record_bytes(spec: Modality, *, feature_shape) -> int:
    """Bytes of one framed record: the same for every file of a modality, up to its path's length.

    The tensor's size is fixed by the featurization config, so the bytes of a split
    are known from its file count before any file is read.
    """
    example = encode_example(
        tensor=np.zeros(feature_shape, dtype=spec.tensor_dtype), label=0, label_name="x" * 16,
        modality=spec.name, tensor_dtype=spec.tensor_dtype, example_id="0" * 64, path="x" * 64, split="validation")
    return _TFRecordUtil.encoded_num_bytes(example)


def num_parts_for(num_files: int, *, record_bytes: int, num_shards: int, part_bytes: int, part_files: int) -> int:
    """Parts per shard of a split of `num_files`: each holds about `part_bytes` and `part_files` at most.

    At least 1.
    """
    files_per_shard = num_files / num_shards
    return max(1, math.ceil(files_per_shard * record_bytes / part_bytes), math.ceil(files_per_shard / part_files))


def shard_index(relative_path: str, *, num_shards: int) -> int:
    """The hash bucket of a file, in [0, num_shards): the first 8 bytes of its path's SHA-256."""
    return int.from_bytes(path_hash(relative_path)[:8], "big") % num_shards


def part_index(relative_path: str, *, num_parts: int) -> int:
    """The part of a file within its shard, in [0, num_parts): it rises with the file's `shard_order`."""
    return int.from_bytes(path_hash(relative_path)[:8], "big") * num_parts >> 64


def path_hash(relative_path: str) -> bytes:
    return hashlib.sha256(relative_path.encode("utf-8")).digest()


def shard_order(*, root_index: int, relative_path: str) -> tuple[bytes, int, str]:
    """The sort key of a file within its shard: pseudo-random, so a shard is not grouped by class."""
    return path_hash(relative_path), root_index, relative_path


def beam_compression(compression: str | None) -> str:
    return CompressionTypes.GZIP if compression == "GZIP" else CompressionTypes.UNCOMPRESSED


class PartWriter:
    """Streams the records of one part of a shard into its temporary file; counts them per label, indexes them.

    The file is created at the first record, so a part whose files all fail gets
    none; after the `with` block, `shard_part` is its ShardPart, or None.
    """

    def __init__(self, *, temp_dir: str, split: str, index: int, part: int):
        self._key = (split, index, part)
        self._temp_path = temp_part_path(temp_dir, split=split, index=index, part=part)
        self._handle = None
        self._label_counts = {}
        self._rows = []
        self._num_bytes = 0
        self.shard_part = None

    def __enter__(self):
        return self

    def write(self, serialized: bytes, *, label_name: str, file_row: tuple) -> None:
        """`file_row`: the input file's root index, relative path, size, modification time and split."""
        if self._handle is None:
            fail_if_asked("writing", self._temp_path)
            self._handle = FileSystems.create(self._temp_path, compression_type=CompressionTypes.UNCOMPRESSED)
        with naming_the_file(self._temp_path):
            _TFRecordUtil.write_record(self._handle, serialized)
        self._rows.append((*file_row, label_name, self._num_bytes, len(serialized)))
        self._num_bytes += _TFRecordUtil.encoded_num_bytes(serialized)
        self._label_counts[label_name] = self._label_counts.get(label_name, 0) + 1

    def __exit__(self, exc_type, *_):
        if self._handle is None:
            return
        with naming_the_file(self._temp_path):
            self._handle.close()
        if exc_type is None:
            self.shard_part = ShardPart(*self._key, self._temp_path, len(self._rows), self._label_counts,
                                        self._num_bytes, self._rows)


class ConcatenateParts(beam.DoFn):
    """((split, index), [ShardPart]) -> ShardFile, after copying the parts in order into a temporary shard.

    The parts stay until the run deletes its temporary folder, so a retried bundle
    finds them again; until then the new records take twice their size on disk.
    """

    def __init__(self, *, temp_dir: str, compression: str | None):
        self._temp_dir = temp_dir
        self._compression = compression

    def process(self, shard_and_parts):
        (split, index), parts = shard_and_parts
        parts = sorted(parts, key=lambda shard_part: shard_part.part)
        temp_path = temp_shard_path(self._temp_dir, split=split, index=index, compression=self._compression)
        label_counts, rows, offset = {}, [], 0
        with naming_the_file(temp_path), FileSystems.create(
                temp_path, compression_type=beam_compression(self._compression)) as shard:
            for shard_part in parts:
                with FileSystems.open(shard_part.temp_path, compression_type=CompressionTypes.UNCOMPRESSED) as part:
                    shutil.copyfileobj(part, shard, COPY_BUFFER_BYTES)
                for label_name, count in shard_part.label_counts.items():
                    label_counts[label_name] = label_counts.get(label_name, 0) + count
                rows += [(*row[:-2], row[-2] + offset, row[-1]) for row in shard_part.rows]
                offset += shard_part.num_bytes
        num_examples = sum(shard_part.num_examples for shard_part in parts)
        # Read back before it is published: a runner that ran a bundle twice at once, or lost part of a
        # write, must fail here rather than publish a shard that disagrees with the manifest.
        scan = scan_shard(temp_path, compression=self._compression)
        if scan.problem or scan.num_records != num_examples:
            raise ShardMismatchError(f"{temp_path}: holds {scan.num_records} intact records where its parts "
                                     f"wrote {num_examples}{'; ' + scan.problem if scan.problem else ''}")
        rows_path = f"{temp_path}.rows.json"
        with FileSystems.create(rows_path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.write(json.dumps(rows).encode("utf-8"))
        yield ShardFile(split, index, temp_path, num_examples, label_counts, scan.num_bytes, scan.sha256, rows_path)


def read_shard_rows(shard: ShardFile) -> list[list]:
    with FileSystems.open(shard.rows_path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return json.loads(handle.read())


def _key_by_shard(shard_part: ShardPart):
    return (shard_part.split, shard_part.index), shard_part


class WriteShards(beam.PTransform):
    """ShardPart -> ShardFile, one per (split, hash bucket) with at least one record; gzipped if asked."""

    def __init__(self, *, temp_dir: str, compression: str | None):
        super().__init__()
        self._temp_dir = temp_dir
        self._compression = compression

    def expand(self, shard_parts):
        return (shard_parts
                | "KeyByShard" >> beam.Map(_key_by_shard)
                | "GroupPartsByShard" >> beam.GroupByKey()
                | "ConcatenateParts" >> beam.ParDo(
                    ConcatenateParts(temp_dir=self._temp_dir, compression=self._compression)))


def rename_into_place(sources: list[str], destinations: list[str]) -> None:
    """Renames temporary shards; a retried publish finds some already renamed and leaves them."""
    pending = []
    for source, destination in zip(sources, destinations):
        if FileSystems.exists(source):
            pending.append((source, destination))
        elif not FileSystems.exists(destination):
            raise FileNotFoundError(f"shard {source} vanished before it was renamed to {destination}")
    FileSystems.rename([source for source, _ in pending], [destination for _, destination in pending])


def check_published_sizes(paths: list[str], shards: list[ShardInfo]) -> None:
    """Raises ShardMismatchError, before any manifest names them, for shards whose size changed since checked."""
    sizes = {metadata.path: metadata.size_in_bytes
             for match in FileSystems.match(paths) for metadata in match.metadata_list}
    for path, shard in zip(paths, shards):
        if sizes.get(path) != shard.num_bytes:
            raise ShardMismatchError(f"{path}: {sizes.get(path)} bytes where {shard.num_bytes} were checked; "
                                     f"refusing to publish the manifest")


def write_tfds_metadata(manifest: DatasetManifest, *, folder: str) -> None:
    """Writes TFDS' metadata files of `manifest`'s shards, which lie in `folder`."""
    for name, data in tfds_files(manifest).items():
        write_atomically(f"{folder}/{name}", data)


_ROW_ENCODER = json.JSONEncoder(sort_keys=True)  # json.dumps(row, sort_keys=True) makes one per call: 1.6x slower


def _jsonl(rows) -> bytes:
    return "".join(_ROW_ENCODER.encode(row) + "\n" for row in rows).encode("utf-8")


class PublishSpanFiles(beam.DoFn):
    """[ShardFile] -> the span's folder; side input: the span's error rows (JSON lines)."""

    def __init__(self, *, span_dir: str, template: DatasetManifest):
        self._span_dir = span_dir
        self._template = template

    def process(self, shard_files: list[ShardFile], error_lines: list[str]):
        error_rows = [json.loads(line) for line in error_lines]
        labels = self._template.labels
        compression = self._template.compression
        sources, destinations, splits, file_rows = [], [], {}, []
        for split in SPLITS:
            in_split = sorted((shard for shard in shard_files if shard.split == split), key=lambda s: s.index)
            label_counts = dict.fromkeys(labels, 0)
            shards = []
            for rank, shard in enumerate(in_split):
                name = shard_name(self._template.modality, split, rank, len(in_split), compression)
                sources.append(shard.temp_path)
                destinations.append(f"{self._span_dir}/{name}")
                shards.append(ShardInfo(path=name, num_examples=shard.num_examples, num_bytes=shard.num_bytes,
                                        sha256=shard.sha256))
                for label_name, count in shard.label_counts.items():
                    label_counts[label_name] += count
                file_rows += [{**dict(zip(FILE_ROW_FIELDS, row)), "shard": name} for row in read_shard_rows(shard)]
            splits[split] = SplitInfo(num_examples=sum(shard.num_examples for shard in shards),
                                      label_counts=label_counts, shards=shards)
        if not FileSystems.exists(self._span_dir):
            FileSystems.mkdirs(self._span_dir)  # a local rename needs the folder; on object stores, no-op
        rename_into_place(sources, destinations)
        check_published_sizes(destinations, [shard for split in splits.values() for shard in split.shards])
        manifest = dataclasses.replace(self._template, splits=splits, num_errors=len(error_rows))
        write_tfds_metadata(manifest, folder=self._span_dir)
        write_atomically(f"{self._span_dir}/{SPAN_FILES_NAME}", _jsonl(sorted(
            file_rows, key=lambda row: (row["root"], row["path"]))))
        write_atomically(f"{self._span_dir}/{SPAN_ERRORS_NAME}", _jsonl(sorted(
            error_rows, key=lambda row: (row["root"], row["path"]))))
        write_atomically(f"{self._span_dir}/{SPAN_MANIFEST_NAME}", manifest.to_json().encode("utf-8"))
        yield self._span_dir


class PublishSpan(beam.PTransform):
    """ShardFile -> the span's folder, once its shards, index, metadata and, last, span.json are in place.

    `error_rows` is a PCollection of the span's error rows as JSON; `template` holds its
    manifest fields but the splits and the error count.
    """

    def __init__(self, *, span_dir: str, template: DatasetManifest, error_rows):
        super().__init__()
        self._span_dir = span_dir
        self._template = template
        self._error_rows = error_rows

    def expand(self, shard_files):
        # Collected by a transform of their own, not read as an AsList side input: the bundle-based
        # DirectRunner hands such a side input every output of the multi-output ParDo that made it.
        error_lines = self._error_rows | "CollectErrorRows" >> beam.combiners.ToList()
        return (shard_files
                | "CollectShards" >> beam.combiners.ToList()
                | "RenameShardsAndWriteSpan" >> beam.ParDo(
                    PublishSpanFiles(span_dir=self._span_dir, template=self._template),
                    error_lines=beam.pvalue.AsSingleton(error_lines)))
