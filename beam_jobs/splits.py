"""Stable, hash-based train/validation/test assignment.

A file keeps its split when the dataset grows: the split depends only on the
file's own name. Following Speech Commands, everything from `_nohash_` on is
dropped before hashing, so all clips of one speaker land in the same split.
"""
import hashlib
import posixpath
import re

from beam_jobs.config import SplitConfig

SPLITS = ("train", "validation", "test")
LIST_FILES = {"validation": "validation_list.txt", "test": "testing_list.txt"}
_MAX_NUM_FILES_PER_CLASS = 2**27 - 1  # the constant of Speech Commands' which_set()


def split_key(relative_path: str) -> str:
    """What is hashed: the base name up to `_nohash_`, else the whole relative path."""
    base_name = posixpath.basename(relative_path)
    if "_nohash_" in base_name:
        return re.sub(r"_nohash_.*$", "", base_name)
    return relative_path


def hash_percentage(key: str) -> float:
    """Speech Commands' stable percentage in [0, 100] for a key."""
    digest = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16)
    return (digest % (_MAX_NUM_FILES_PER_CLASS + 1)) * (100.0 / _MAX_NUM_FILES_PER_CLASS)


def assign_split(relative_path: str, *, config: SplitConfig, listed: dict[str, str]) -> str:
    """The split of a file at `relative_path` (forward slashes, relative to its root).

    `listed` maps relative paths from a root's validation_list.txt / testing_list.txt
    to their split. A listed file takes its listed split; a split that has a list
    gets no other files, and the hash divides the rest among the remaining splits
    in proportion to their configured percentages.
    """
    if relative_path in listed:
        return listed[relative_path]
    listed_splits = set(listed.values())
    bands = [(name, percent) for name, percent in (
        ("validation", config.validation_percent),
        ("test", config.test_percent),
        ("train", 100.0 - config.validation_percent - config.test_percent),
    ) if name not in listed_splits]
    total = sum(percent for _, percent in bands)
    position = hash_percentage(split_key(relative_path)) / 100.0 * total
    for name, percent in bands:
        if position < percent:
            return name
        position -= percent
    return "train"
