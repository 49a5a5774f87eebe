"""Every file's split, shard and part, from its path alone: `ReadSplitLists` and `AssignShards`.

The arithmetic of shards and parts lives in `beam_jobs.sharding`, the split
rules in `beam_jobs.splits`; these transforms apply them to the file references.
"""
import apache_beam as beam

from beam_jobs.input_files import InputFile, read_text_if_present
from beam_jobs.input_tree import read_split_lists
from beam_jobs.sharding import PART_BYTES, PART_FILES, num_parts_for, num_shards_for, part_index, shard_index
from beam_jobs.splits import SplitRule


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


def _split_rules(split_lists: dict[int, dict[str, str]], *, config) -> dict[int | None, SplitRule]:
    """{root index: its SplitRule}, and under None the rule of a root without lists."""
    rules = {root_index: SplitRule(config=config, listed=listed) for root_index, listed in split_lists.items()}
    return {None: SplitRule(config=config, listed={}), **rules}


def _with_split(input_file: InputFile, split_rules: dict[int | None, SplitRule]) -> tuple[str, InputFile]:
    rule = split_rules.get(input_file.root_index, split_rules[None])
    return rule.split_of(input_file.relative_path), input_file


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
        # The rules are built once, not per file: a listed file then costs a dictionary lookup.
        split_rules = self._split_lists | "SplitRules" >> beam.Map(_split_rules, config=self._split_config)
        split_and_file = input_files | "SplitOfEachFile" >> beam.Map(
            _with_split, beam.pvalue.AsSingleton(split_rules))
        split_to_count = (split_and_file
                          | "Splits" >> beam.Keys()
                          | "CountPerSplit" >> beam.combiners.Count.PerElement()
                          | "CollectCounts" >> beam.combiners.ToDict())
        return split_and_file | "KeyByPart" >> beam.Map(
            _key_by_part, beam.pvalue.AsSingleton(split_to_count), record_bytes=self._record_bytes,
            shard_bytes=self._shard_bytes, fixed_num_shards=self._fixed_num_shards, part_bytes=self._part_bytes,
            part_files=self._part_files)
