"""Deterministic TFRecord shards and the manifest that publishes them; file names from `beam_jobs.dataset_layout`.

  PartWriter      streams the records of one part of a shard into a temporary file -> ShardPart
  WriteShards     ShardPart -> ShardFile: each shard's parts concatenated, in order, into a temporary shard
  PublishDataset  ShardFile -> renames the shards into place, deletes stale ones and the parts,
                  then writes dataset.json last

A file's shard (its hash bucket) and its part of that shard (a range of hash
values) come from a hash of its relative path, and a part's files are written in
`shard_order`, so the parts, concatenated, hold the shard's records in
`shard_order`. The same input gives byte-identical shards whatever the runner,
the number of workers or the order in which files were listed. Parts exist so
that a split with few shards still spreads over many workers.
"""
import dataclasses
import hashlib
import math
import shutil
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from beam_jobs.dataset_layout import (SHARD_PATTERNS, TEMP_PREFIX, TFDS_FEATURES_NAME, TFDS_INFO_NAME,
                                      TFDS_LABELS_NAME, manifest_path, shard_name, temp_part_path, temp_shard_path)
from beam_jobs.examples import encode_example
from beam_jobs.integrity import scan_shard
from beam_jobs.manifest import DatasetManifest, ShardInfo, SplitInfo
from beam_jobs.modality import Modality
from beam_jobs.splits import SPLITS
from beam_jobs.tfds_metadata import tfds_files

# A part, the unit of work, holds at most PART_BYTES of records and at most PART_FILES files: small
# to balance the workers, large for few temporary files. The file cap is for small records, whose
# cost is in decoding, not bytes: 4 MiB is 160 spectrograms but 4,000 Fashion-MNIST images.
PART_BYTES = 4 * 1024 * 1024
PART_FILES = 1000
COPY_BUFFER_BYTES = 1024 * 1024


class ShardMismatchError(RuntimeError):
    """A shard on storage disagrees with what the pipeline wrote into it: it is not published."""


class ShardPart(NamedTuple):
    """The records of one part of a shard, written uncompressed under a temporary name."""
    split: str
    index: int  # the shard's hash bucket
    part: int  # the range of path hashes within the bucket
    temp_path: str
    num_examples: int
    label_counts: dict[str, int]


class ShardFile(NamedTuple):
    """A shard written under its temporary name and checked, waiting to be published."""
    split: str
    index: int  # the hash bucket; buckets that received no record have no file
    temp_path: str
    num_examples: int
    label_counts: dict[str, int]
    num_bytes: int  # as stored
    sha256: str  # of the stored bytes


def write_atomically(path: str, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file, so readers never see half a file."""
    temp_path = f"{path}.tmp"
    with FileSystems.create(temp_path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)
    FileSystems.rename([temp_path], [path])


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
    """Streams the records of one part of a shard into its temporary file and counts them per label.

    The file is created at the first record, so a part whose files all fail gets
    none; after the `with` block, `shard_part` is its ShardPart, or None.
    """

    def __init__(self, *, dataset_dir: str, split: str, index: int, part: int):
        self._key = (split, index, part)
        self._temp_path = temp_part_path(dataset_dir, split=split, index=index, part=part)
        self._handle = None
        self._label_counts = {}
        self.shard_part = None

    def __enter__(self):
        return self

    def write(self, serialized: bytes, *, label_name: str) -> None:
        if self._handle is None:
            self._handle = FileSystems.create(self._temp_path, compression_type=CompressionTypes.UNCOMPRESSED)
        _TFRecordUtil.write_record(self._handle, serialized)
        self._label_counts[label_name] = self._label_counts.get(label_name, 0) + 1

    def __exit__(self, exc_type, *_):
        if self._handle is None:
            return
        self._handle.close()
        if exc_type is None:
            self.shard_part = ShardPart(*self._key, self._temp_path, sum(self._label_counts.values()),
                                        self._label_counts)


class _ConcatenateParts(beam.DoFn):
    """((split, index), [ShardPart]) -> ShardFile, after copying the parts in order into a temporary shard.

    The parts stay until PublishDataset deletes them, so a retried bundle finds them
    again; until then the dataset takes twice its size on disk.
    """

    def __init__(self, *, dataset_dir: str, compression: str | None):
        self._dataset_dir = dataset_dir
        self._compression = compression

    def process(self, shard_and_parts):
        (split, index), parts = shard_and_parts
        parts = sorted(parts, key=lambda shard_part: shard_part.part)
        temp_path = temp_shard_path(self._dataset_dir, split=split, index=index, compression=self._compression)
        label_counts = {}
        with FileSystems.create(temp_path, compression_type=beam_compression(self._compression)) as shard:
            for shard_part in parts:
                with FileSystems.open(shard_part.temp_path, compression_type=CompressionTypes.UNCOMPRESSED) as part:
                    shutil.copyfileobj(part, shard, COPY_BUFFER_BYTES)
                for label_name, count in shard_part.label_counts.items():
                    label_counts[label_name] = label_counts.get(label_name, 0) + count
        num_examples = sum(shard_part.num_examples for shard_part in parts)
        # Read back before it is published: a runner that ran a bundle twice at once, or lost part of a
        # write, must fail here rather than publish a shard that disagrees with the manifest.
        scan = scan_shard(temp_path, compression=self._compression)
        if scan.problem or scan.num_records != num_examples:
            raise ShardMismatchError(f"{temp_path}: holds {scan.num_records} intact records where its parts "
                                     f"wrote {num_examples}{'; ' + scan.problem if scan.problem else ''}")
        yield ShardFile(split, index, temp_path, num_examples, label_counts, scan.num_bytes, scan.sha256)


def _key_by_shard(shard_part: ShardPart):
    return (shard_part.split, shard_part.index), shard_part


class WriteShards(beam.PTransform):
    """ShardPart -> ShardFile, one per (split, hash bucket) with at least one record; gzipped if asked."""

    def __init__(self, *, dataset_dir: str, compression: str | None):
        super().__init__()
        self._dataset_dir = dataset_dir
        self._compression = compression

    def expand(self, shard_parts):
        return (shard_parts
                | "KeyByShard" >> beam.Map(_key_by_shard)
                | "GroupPartsByShard" >> beam.GroupByKey()
                | "ConcatenateParts" >> beam.ParDo(
                    _ConcatenateParts(dataset_dir=self._dataset_dir, compression=self._compression)))


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


def write_tfds_metadata(manifest: DatasetManifest, *, dataset_dir: str) -> None:
    """Writes TFDS' metadata files of `manifest`, and deletes those of an earlier run that no longer apply."""
    files = tfds_files(manifest)
    for name in (TFDS_INFO_NAME, TFDS_FEATURES_NAME, TFDS_LABELS_NAME):
        path = f"{dataset_dir}/{name}"
        if name in files:
            write_atomically(path, files[name])
        elif FileSystems.exists(path):
            FileSystems.delete([path])


def delete_stale_files(dataset_dir: str, *, keep: set[str]) -> list[str]:
    """Deletes shards of earlier runs, shard parts and temporaries of failed runs; returns the deleted paths."""
    patterns = [f"{dataset_dir}/{pattern}" for pattern in (*SHARD_PATTERNS, f"{TEMP_PREFIX}*")]
    stale = sorted({metadata.path
                    for match in FileSystems.match(patterns)
                    for metadata in match.metadata_list} - keep)
    if stale:
        FileSystems.delete(stale)
    return stale


class _PublishManifest(beam.DoFn):
    """[ShardFile] -> the manifest path; side inputs: vocabulary {label: index} and num_errors."""

    def __init__(self, *, dataset_dir: str, template: DatasetManifest):
        self._dataset_dir = dataset_dir
        self._template = template

    def process(self, shard_files: list[ShardFile], vocabulary: dict[str, int], num_errors: int):
        labels = sorted(vocabulary, key=vocabulary.get)
        compression = self._template.compression
        sources, destinations, splits = [], [], {}
        for split in SPLITS:
            in_split = sorted((shard for shard in shard_files if shard.split == split), key=lambda s: s.index)
            label_counts = dict.fromkeys(labels, 0)
            shards = []
            for rank, shard in enumerate(in_split):
                name = shard_name(self._template.modality, split, rank, len(in_split), compression)
                sources.append(shard.temp_path)
                destinations.append(f"{self._dataset_dir}/{name}")
                shards.append(ShardInfo(path=name, num_examples=shard.num_examples, num_bytes=shard.num_bytes,
                                        sha256=shard.sha256))
                for label_name, count in shard.label_counts.items():
                    label_counts[label_name] += count
            splits[split] = SplitInfo(num_examples=sum(shard.num_examples for shard in shards),
                                      label_counts=label_counts, shards=shards)
        rename_into_place(sources, destinations)
        check_published_sizes(destinations, [shard for split in splits.values() for shard in split.shards])
        delete_stale_files(self._dataset_dir, keep=set(destinations))
        manifest = dataclasses.replace(self._template, labels=labels, splits=splits, num_errors=num_errors)
        write_tfds_metadata(manifest, dataset_dir=self._dataset_dir)
        path = manifest_path(self._dataset_dir)
        write_atomically(path, manifest.to_json().encode("utf-8"))
        yield path


class PublishDataset(beam.PTransform):
    """ShardFile -> the path of dataset.json, written after every shard is in place.

    `vocabulary` (one {label: index}) and `num_errors` (one int) are singleton
    PCollections; `template` holds the manifest fields known at launch.
    """

    def __init__(self, *, dataset_dir: str, template: DatasetManifest, vocabulary, num_errors):
        super().__init__()
        self._dataset_dir = dataset_dir
        self._template = template
        self._vocabulary = vocabulary
        self._num_errors = num_errors

    def expand(self, shard_files):
        return (shard_files
                | "CollectShards" >> beam.combiners.ToList()
                | "RenameShardsAndWriteManifest" >> beam.ParDo(
                    _PublishManifest(dataset_dir=self._dataset_dir, template=self._template),
                    vocabulary=beam.pvalue.AsSingleton(self._vocabulary),
                    num_errors=beam.pvalue.AsSingleton(self._num_errors)))
