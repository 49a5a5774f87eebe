"""Every work item's shard and part, from its split and path alone: `key_by_part`.

The arithmetic of shards and parts lives in `beam_jobs.sharding`; the launcher
(`beam_jobs.plan`) has already given each file its split.
"""
import json

from beam_jobs.sharding import PART_BYTES, PART_FILES, num_parts_for, num_shards_for, part_index, shard_index


def key_by_part(line: str, *, files_per_split: dict[str, int], record_bytes: int, shard_bytes: int,
                fixed_num_shards: int | None, part_bytes: int = PART_BYTES,
                part_files: int = PART_FILES) -> tuple[tuple[str, int, int], str]:
    """A work item's JSON line -> ((split, shard index, part), the line).

    A split of a span has `fixed_num_shards` hash buckets, or its uncompressed
    bytes (its number of work items times `record_bytes`) divided by
    `shard_bytes`, rounded up; each bucket is cut into parts, the unit of work, of
    at most about `part_bytes` and `part_files`. Counting files rather than
    featurized examples fixes every file's shard before any file is read; files
    that turn out bad only make the shards a little smaller.
    """
    item = json.loads(line)
    split, relative_path = item["split"], item["path"]
    num_files = files_per_split[split]
    num_shards = num_shards_for(num_files * record_bytes, shard_bytes=shard_bytes, fixed_num_shards=fixed_num_shards)
    num_parts = num_parts_for(num_files, record_bytes=record_bytes, num_shards=num_shards, part_bytes=part_bytes,
                              part_files=part_files)
    return (split, shard_index(relative_path, num_shards=num_shards),
            part_index(relative_path, num_parts=num_parts)), line
