"""Stable, hash-based train/validation/test assignment.

A file keeps its split when the dataset grows: the split depends only on the
file's own name. Following Speech Commands, everything from `_nohash_` on is
dropped before hashing, so all clips of one speaker land in the same split.
"""
import hashlib
import posixpath
import re

from beam_jobs.modalities.config import SplitConfig

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


class SplitRule:
    """The split of every file under one root: its listed split, else a hash band.

    `listed` maps relative paths from the root's validation_list.txt /
    testing_list.txt to their split. A listed file takes its listed split; a split
    that has a list gets no other files, and the hash divides the rest among the
    remaining splits in proportion to their configured percentages. The bands are
    worked out once, so a file costs a dictionary lookup and, unlisted, one hash.
    """

    def __init__(self, *, config: SplitConfig, listed: dict[str, str]):
        self._listed = listed
        listed_splits = set(listed.values())
        self._bands = [(name, percent) for name, percent in (
            ("validation", config.validation_percent),
            ("test", config.test_percent),
            ("train", 100.0 - config.validation_percent - config.test_percent),
        ) if name not in listed_splits]
        self._total = sum(percent for _, percent in self._bands)

    def split_of(self, relative_path: str) -> str:
        """The split of the file at `relative_path` (forward slashes, relative to the root)."""
        listed = self._listed.get(relative_path)
        if listed is not None:
            return listed
        position = hash_percentage(split_key(relative_path)) / 100.0 * self._total
        for name, percent in self._bands:
            if position < percent:
                return name
            position -= percent
        return "train"
