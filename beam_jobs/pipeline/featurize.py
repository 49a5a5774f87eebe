"""`FeaturizePart`: the DoFn that turns one part of a shard's work items into records and error rows."""
import json
import struct

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from beam_jobs.console.counters import ModalityCounters
from beam_jobs.console.progress import ProgressFile
from beam_jobs.inputs.reading import read_at_most
from beam_jobs.inputs.tree import excerpt_source, join_root
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.modalities.spec import Modality
from beam_jobs.pipeline.sharding import PartWriter, ShardPart, shard_order
from beam_jobs.records.from_file import encode_input_file
from beam_jobs.table.failpoints import pause_if_asked

_OPEN_SHARDS = 8  # earlier shards a worker keeps open while it copies records out of them


class CorruptSpanError(RuntimeError):
    """A record to copy from an earlier span is not where, or not what, its index says."""


class RecordCopier:
    """Reads framed records of earlier spans by offset, keeping a few shards open; checks each record's CRC."""

    def __init__(self, dataset_dir: str):
        self._dataset_dir = dataset_dir
        self._handles = {}

    def read(self, *, shard: str, offset: int, length: int) -> bytes:
        path = f"{self._dataset_dir}/{shard}"
        handle = self._handles.pop(path, None)
        if handle is None:
            if len(self._handles) >= _OPEN_SHARDS:
                self._handles.pop(next(iter(self._handles))).close()
            handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._handles[path] = handle  # last: the most recently used
        handle.seek(offset)
        framed = handle.read(length + 16)
        if len(framed) != length + 16 or struct.unpack("<Q", framed[:8])[0] != length or struct.unpack(
                "<I", framed[-4:])[0] != _TFRecordUtil._masked_crc32c(framed[12:-4]):
            raise CorruptSpanError(f"{path}: the record at byte {offset} is not the {length}-byte record its span's "
                                   f"files.jsonl says; check the dataset with python -m beam_jobs.verify "
                                   f"{self._dataset_dir}, or re-ingest with --full")
        return framed[12:-4]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}


class FeaturizePart(beam.DoFn):
    """((split, shard index, part), [work item]) -> the part's ShardPart, and a JSON error row (str) per bad file.

    Handles the part's work items (`beam_jobs.pipeline.plan`) one at a time in
    `shard_order` and streams each record into the part's temporary file, so a
    worker holds one record and the part's item list. An item is featurized
    from its file (`beam_jobs.records.from_file.encode_input_file`), or its record copied
    from an earlier span, or its error carried; the record bytes are the same
    either way. Only InvalidInputError (a bad file) becomes an error row; any
    other exception is a bug or an I/O failure and fails the bundle, so the
    runner retries or stops. `vocabulary` is {label name: index}; `roots` are
    the modality's roots, which the items' root indices point into.

    One output, not tagged outputs: runners implement those unevenly (Beam's
    DaskRunner hands every consumer all of them); `SplitOutputs` separates them.
    """

    def __init__(self, *, spec: Modality, config, dataset_dir: str, temp_dir: str, roots: tuple[str, ...],
                 vocabulary: dict[str, int], progress_dir: str):
        self._spec = spec
        self._config = config
        self._dataset_dir = dataset_dir
        self._temp_dir = temp_dir
        self._roots = roots
        self._vocabulary = vocabulary
        self._progress_dir = progress_dir

    def setup(self):
        self._counters = ModalityCounters(self._spec.name)
        self._progress = ProgressFile(progress_dir=self._progress_dir, modality=self._spec.name)

    def process(self, part_and_items):
        (split, index, part), items = part_and_items
        items = sorted(items, key=lambda item: shard_order(root_index=item["root"], relative_path=item["path"]))
        copier = RecordCopier(self._dataset_dir)
        try:
            with PartWriter(temp_dir=self._temp_dir, split=split, index=index, part=part) as writer:
                for item in items:
                    self._progress.add()
                    file_row = (item["root"], item["path"], item["size"], item["mtime"], item["split"])
                    try:
                        label_name, serialized = self._record(item, copier)
                    except InvalidInputError as error:
                        self._counters.inc("errors")
                        yield json.dumps({**dict(zip(("root", "path", "size", "mtime", "split"), file_row)),
                                          "reason": str(error)}, sort_keys=True)
                        continue
                    writer.write(serialized, label_name=label_name, file_row=file_row)
                    pause_if_asked("featurizing")
                    self._counters.inc(f"{split}_examples")
        finally:
            copier.close()
        if writer.shard_part is not None:
            yield writer.shard_part

    def _record(self, item: dict, copier: RecordCopier) -> tuple[str, bytes]:
        """(label name, serialized Example) of a work item; InvalidInputError for a file that cannot be one."""
        if "error" in item:
            raise InvalidInputError(item["error"])
        if "copy" in item:
            source = item["copy"]
            return source["label"], copier.read(shard=source["shard"], offset=source["offset"],
                                                length=source["length"])
        source = excerpt_source(item["path"])
        path = join_root(self._roots[item["root"]], source or item["path"])

        def read(limit: int) -> bytes:
            data = read_at_most(path, limit=limit, expected_bytes=item["size"])
            # A silence example: a clip cut from a noise recording, as the file the featurizer reads.
            return self._spec.noise_excerpt(data, config=self._config, key=item["path"]) if source else data

        return encode_input_file(
            spec=self._spec, config=self._config, relative_path=item["path"], size_bytes=item["size"],
            split=item["split"], vocabulary=self._vocabulary, read=read, label_name=item.get("label"))

    def finish_bundle(self):
        self._progress.write()


class SplitOutputs(beam.PTransform):
    """FeaturizePart's output -> (its ShardParts, its error rows), by type."""

    def expand(self, outputs):
        return (outputs | "ShardParts" >> beam.Filter(lambda output: isinstance(output, ShardPart)),
                outputs | "ErrorRows" >> beam.Filter(lambda output: isinstance(output, str)))
