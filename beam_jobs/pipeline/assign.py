"""Every work item's shard and part, from its split and path alone: `part_of`, and the work grouped by part.

The arithmetic of shards and parts lives in `beam_jobs.pipeline.sharding`; the launcher
(`beam_jobs.pipeline.plan`) has already given each file its split, and groups the work
items by part (`group_by_part`) before the pipeline starts, so that the
pipeline's elements are the parts (tens to hundreds), not the files: a
runner then spreads whole parts over its workers from the first step.
"""
from beam_jobs.pipeline.sharding import PART_BYTES, PART_FILES, num_parts_for, num_shards_for, part_index, shard_index

PartKey = tuple[str, int, int]  # (split, shard index, part)


def part_of(item: dict, *, files_per_split: dict[str, int], record_bytes: int, shard_bytes: int,
            fixed_num_shards: int | None, part_bytes: int = PART_BYTES, part_files: int = PART_FILES) -> PartKey:
    """A work item's (split, shard index, part).

    A split of a span has `fixed_num_shards` hash buckets, or its uncompressed
    bytes (its number of work items times `record_bytes`) divided by
    `shard_bytes`, rounded up; each bucket is cut into parts, the unit of work, of
    at most about `part_bytes` and `part_files`. Counting files rather than
    featurized examples fixes every file's shard before any file is read; files
    that turn out bad only make the shards a little smaller.
    """
    split, relative_path = item["split"], item["path"]
    num_files = files_per_split[split]
    num_shards = num_shards_for(num_files * record_bytes, shard_bytes=shard_bytes, fixed_num_shards=fixed_num_shards)
    num_parts = num_parts_for(num_files, record_bytes=record_bytes, num_shards=num_shards, part_bytes=part_bytes,
                              part_files=part_files)
    return split, shard_index(relative_path, num_shards=num_shards), part_index(relative_path, num_parts=num_parts)


def group_by_part(items: list[dict], **part_settings) -> list[tuple[PartKey, list[dict]]]:
    """[(part, its work items in listing order)], in part order; `part_settings` as `part_of` takes them,
    but `files_per_split`, which is counted from `items`."""
    files_per_split = {}
    for item in items:
        files_per_split[item["split"]] = files_per_split.get(item["split"], 0) + 1
    parts = {}
    for item in items:
        parts.setdefault(part_of(item, files_per_split=files_per_split, **part_settings), []).append(item)
    return sorted(parts.items())
