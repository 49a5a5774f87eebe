"""Deterministic TFRecord shards and the manifest that publishes them.

  WriteShards     EncodedExample -> ShardFile: one temporary shard per (split, hash bucket)
  PublishDataset  ShardFile -> renames the shards into place, deletes stale ones,
                  then writes dataset.json last

A record's shard comes from a hash of its id and a shard's records are sorted by
(id, path), so the same input gives byte-identical shards whatever the runner,
the number of workers or the order in which files were read.
"""
import dataclasses
import math
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from beam_jobs.examples import encode_example
from beam_jobs.features import TENSOR_DTYPES
from beam_jobs.manifest import MANIFEST_NAME, DatasetManifest, ShardInfo, SplitInfo
from beam_jobs.splits import SPLITS

SHARD_PATTERN = "*-of-*.tfrecord*"
TEMP_PREFIX = ".tmp-"


class ShardFile(NamedTuple):
    """A shard written under its temporary name, waiting to be published."""
    split: str
    index: int  # the hash bucket; buckets that received no record have no file
    temp_path: str
    num_examples: int
    label_counts: dict[str, int]


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


def record_bytes(modality: str, *, feature_shape) -> int:
    """Bytes of one framed record: the same for every file of a modality, up to its path's length.

    The tensor's size is fixed by the featurization config, so the bytes of a split
    are known from its file count before any file is read.
    """
    example = encode_example(
        tensor=np.zeros(feature_shape, dtype=TENSOR_DTYPES[modality]), label=0, label_name="x" * 16,
        modality=modality, example_id="0" * 64, path="x" * 64, split="validation")
    return _TFRecordUtil.encoded_num_bytes(example)


def shard_index(example_id: str, *, num_shards: int) -> int:
    """The hash bucket of a hex SHA-256 id, in [0, num_shards)."""
    return int(example_id[:16], 16) % num_shards


def shard_suffix(compression: str | None) -> str:
    return ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"


def shard_name(split: str, rank: int, count: int, compression: str | None) -> str:
    return f"{split}-{rank:05d}-of-{count:05d}{shard_suffix(compression)}"


def beam_compression(compression: str | None) -> str:
    return CompressionTypes.GZIP if compression == "GZIP" else CompressionTypes.UNCOMPRESSED


def _key_by_shard(example, files_per_split: dict[str, int], *, record_bytes: int, shard_bytes: int,
                  fixed_num_shards: int | None):
    num_shards = num_shards_for(files_per_split[example.split] * record_bytes, shard_bytes=shard_bytes,
                                fixed_num_shards=fixed_num_shards)
    key = (example.split, shard_index(example.example_id, num_shards=num_shards))
    # The id leads so that sorting a shard's records orders them by id, then path.
    return key, (example.example_id, example.relative_path, example.label_name, example.serialized)


class _WriteShardFile(beam.DoFn):
    """((split, index), records) -> ShardFile, after writing the sorted records to a temporary file."""

    def __init__(self, *, dataset_dir: str, compression: str | None):
        self._dataset_dir = dataset_dir
        self._compression = compression

    def process(self, keyed_records):
        (split, index), records = keyed_records
        temp_path = f"{self._dataset_dir}/{TEMP_PREFIX}{split}-{index:05d}{shard_suffix(self._compression)}"
        label_counts = {}
        num_examples = 0
        with FileSystems.create(temp_path, compression_type=beam_compression(self._compression)) as handle:
            for _, _, label_name, serialized in sorted(records):
                _TFRecordUtil.write_record(handle, serialized)
                label_counts[label_name] = label_counts.get(label_name, 0) + 1
                num_examples += 1
        yield ShardFile(split, index, temp_path, num_examples, label_counts)


class WriteShards(beam.PTransform):
    """EncodedExample -> ShardFile, one per non-empty (split, hash bucket).

    The number of buckets per split is `fixed_num_shards`, or the split's
    uncompressed bytes (`files_per_split`, a PCollection of (split, count) from
    the listing, times `record_bytes`) divided by `shard_bytes`, rounded up.
    Counting files rather than featurized examples lets keying run in the same
    stage as featurizing, so the examples are shuffled once and never buffered
    on the way; files that turn out bad only make the shards a little smaller.
    """

    def __init__(self, *, dataset_dir: str, files_per_split, record_bytes: int, shard_bytes: int,
                 fixed_num_shards: int | None, compression: str | None):
        super().__init__()
        self._dataset_dir = dataset_dir
        self._files_per_split = files_per_split
        self._record_bytes = record_bytes
        self._shard_bytes = shard_bytes
        self._fixed_num_shards = fixed_num_shards
        self._compression = compression

    def expand(self, examples):
        return (examples
                | "KeyByShard" >> beam.Map(
                    _key_by_shard, beam.pvalue.AsDict(self._files_per_split), record_bytes=self._record_bytes,
                    shard_bytes=self._shard_bytes, fixed_num_shards=self._fixed_num_shards)
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteEachShard" >> beam.ParDo(
                    _WriteShardFile(dataset_dir=self._dataset_dir, compression=self._compression)))


def rename_into_place(sources: list[str], destinations: list[str]) -> None:
    """Renames temporary shards; a retried publish finds some already renamed and leaves them."""
    pending = []
    for source, destination in zip(sources, destinations):
        if FileSystems.exists(source):
            pending.append((source, destination))
        elif not FileSystems.exists(destination):
            raise FileNotFoundError(f"shard {source} vanished before it was renamed to {destination}")
    FileSystems.rename([source for source, _ in pending], [destination for _, destination in pending])


def delete_stale_files(dataset_dir: str, *, keep: set[str]) -> list[str]:
    """Deletes shards of earlier runs and temporaries of failed runs; returns the deleted paths."""
    patterns = [f"{dataset_dir}/{SHARD_PATTERN}", f"{dataset_dir}/{TEMP_PREFIX}*"]
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
                name = shard_name(split, rank, len(in_split), compression)
                sources.append(shard.temp_path)
                destinations.append(f"{self._dataset_dir}/{name}")
                shards.append(ShardInfo(path=name, num_examples=shard.num_examples))
                for label_name, count in shard.label_counts.items():
                    label_counts[label_name] += count
            splits[split] = SplitInfo(num_examples=sum(shard.num_examples for shard in shards),
                                      label_counts=label_counts, shards=shards)
        rename_into_place(sources, destinations)
        delete_stale_files(self._dataset_dir, keep=set(destinations))
        manifest = dataclasses.replace(self._template, labels=labels, splits=splits, num_errors=num_errors)
        manifest_path = f"{self._dataset_dir}/{MANIFEST_NAME}"
        write_atomically(manifest_path, manifest.to_json().encode("utf-8"))
        yield manifest_path


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
