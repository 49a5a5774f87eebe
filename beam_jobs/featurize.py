"""`FeaturizePart`: the DoFn that turns one part of a shard's files into records and error rows."""
import apache_beam as beam

from beam_jobs.counters import ModalityCounters
from beam_jobs.errors import InvalidInputError
from beam_jobs.input_files import read_at_most
from beam_jobs.modality import Modality
from beam_jobs.progress import ProgressFile
from beam_jobs.records import ErrorRow, encode_input_file
from beam_jobs.sharding import PartWriter, shard_order


class FeaturizePart(beam.DoFn):
    """((split, shard index, part), [InputFile]) -> ShardPart; an ErrorRow on the ERRORS output per bad file.

    Reads, featurizes and encodes the files one at a time in `shard_order`
    (`beam_jobs.records.encode_input_file`) and streams each record into the
    part's temporary file, so a worker holds one record and the part's file
    list. Side input: `vocabulary` {label name: index}. `roots` are the
    modality's roots, which the files' root indices point into. Only
    InvalidInputError (a bad file) becomes an error row; any other exception is
    a bug or an I/O failure and fails the bundle, so the runner retries or stops.
    """
    ERRORS = "errors"

    def __init__(self, *, spec: Modality, config, dataset_dir: str, roots: tuple[str, ...], progress_dir: str):
        self._spec = spec
        self._config = config
        self._dataset_dir = dataset_dir
        self._roots = roots
        self._progress_dir = progress_dir

    def setup(self):
        self._counters = ModalityCounters(self._spec.name)
        self._progress = ProgressFile(progress_dir=self._progress_dir, modality=self._spec.name)

    def process(self, part_and_files, vocabulary: dict[str, int]):
        (split, index, part), input_files = part_and_files
        ordered = sorted(input_files,
                         key=lambda f: shard_order(root_index=f.root_index, relative_path=f.relative_path))
        with PartWriter(dataset_dir=self._dataset_dir, split=split, index=index, part=part) as writer:
            for input_file in ordered:
                self._progress.add()
                path = input_file.path(self._roots)
                try:
                    label_name, serialized = encode_input_file(
                        spec=self._spec, config=self._config, relative_path=input_file.relative_path,
                        size_bytes=input_file.size_bytes, split=split, vocabulary=vocabulary,
                        read=lambda limit: read_at_most(path, limit=limit, expected_bytes=input_file.size_bytes))
                except InvalidInputError as error:
                    self._counters.inc("errors")
                    yield beam.pvalue.TaggedOutput(self.ERRORS, ErrorRow(
                        path, self._roots[input_file.root_index], self._spec.name, str(error)))
                    continue
                writer.write(serialized, label_name=label_name)
                self._counters.inc(f"{split}_examples")
                self._counters.inc(f"label_{label_name}_examples")
        if writer.shard_part is not None:
            yield writer.shard_part

    def finish_bundle(self):
        self._progress.write()
