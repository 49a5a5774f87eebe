"""What a run must do for one modality: list the inputs, compare them with the base snapshot, decide.

The launcher plans before the pipeline starts, in one pass over the listing:

  list_input_files  every file under the roots: input files (with size and modification time),
                    and counts of those passed over (in `_` folders, other extensions)
  read_base_index   the base snapshot's spans' files.jsonl and errors.jsonl: one row per input file
                    it holds, as a record or as an error
  make_plan         each listed file is new (no row), changed (another size, modification time or
                    split) or reused; rows no file matches are removed. A span with no changed or removed
                    file is kept as it is; the reused files of the other spans are rewritten, with the new
                    and changed files, into one new span. --compact rewrites every span, --full or a
                    changed config featurizes every file.

A reused file is never read: its record is copied from its old shard by
offset (uncompressed shards), or, for a gzip dataset, featurized again, which
gives the same bytes; a reused error is carried with its reason. The work list
(`WorkItem`s as JSON lines) goes to the pipeline through a file in the run's
temporary folder, so it scales past what a pipeline graph can carry.
"""
import dataclasses
import json
import os
from typing import Iterable

from apache_beam.io.filesystems import FileSystems

import beam_jobs
from beam_jobs.inputs.labels import extend_labels
from beam_jobs.modalities.config import SILENCE_LABEL, UNKNOWN_LABEL, KeywordConfig
from beam_jobs.inputs.reading import read_text, read_text_if_present
from beam_jobs.inputs.splits import SPLITS, SplitRule, hash_percentage
from beam_jobs.inputs.tree import class_folder, classify, excerpt_path, read_split_lists, relative_to_root
from beam_jobs.pipeline.settings import Settings, keyword_fields
from beam_jobs.storage.files import is_local
from beam_jobs.table.layout import SPAN_ERRORS_NAME, SPAN_FILES_NAME, span_dir
from beam_jobs.table.manifest import DatasetManifest


@dataclasses.dataclass(frozen=True)
class ListedFile:
    root_index: int  # position of the file's root in the modality's sorted roots
    relative_path: str
    size_bytes: int
    mtime: float  # seconds since the epoch, as the file system reports it
    split: str  # NOISE_SPLIT for a background-noise recording, which is no example
    label: str | None = None  # set when not its class folder: _unknown_, _silence_

    @property
    def key(self) -> tuple[int, str]:
        return self.root_index, self.relative_path

    def row(self) -> dict:
        row = {"root": self.root_index, "path": self.relative_path, "size": self.size_bytes,
               "mtime": self.mtime, "split": self.split}
        if self.label is not None:
            row["label"] = self.label
        return row


NOISE_SPLIT = "background_noise"  # the `split` of a listed noise recording: it is in no split


def list_input_files(roots: tuple[str, ...], *, extensions: tuple[str, ...], split_config,
                     noise: bool = False) -> tuple[list[ListedFile], dict[str, int]]:
    """(the input files under `roots` with their splits, and with `noise` the background-noise recordings,
    {"input_files", "noise_files", "skipped_files", "ignored_files": n})."""
    files, counts = [], {"input_files": 0, "noise_files": 0, "skipped_files": 0, "ignored_files": 0}
    for root_index, root in enumerate(roots):
        rule = SplitRule(config=split_config, listed=read_split_lists(root, read_text=read_text_if_present))
        for path, size_bytes, mtime in _walk(root):
            relative_path = relative_to_root(path, root)
            kind = classify(relative_path, extensions=extensions, noise=noise)
            counts[f"{kind}_files"] += 1
            if kind == "input":
                files.append(ListedFile(root_index, relative_path, size_bytes, mtime, rule.split_of(relative_path)))
            elif kind == "noise":
                files.append(ListedFile(root_index, relative_path, size_bytes, mtime, NOISE_SPLIT))
    if not noise:
        del counts["noise_files"]
    return files, counts


def select_examples(listed: list[ListedFile], *, keywords: KeywordConfig | None,
                    listing_counts: dict[str, int]) -> tuple[list[ListedFile], list[ListedFile]]:
    """(the examples of a listing, its background-noise recordings), as `keywords` makes them.

    With --wanted_words, files of other class folders are labelled _unknown_, and per split only
    --unknown_percentage of its wanted files are kept: those first by the hash of their path, so that
    the choice holds as the dataset grows; the others are counted in listing_counts["unknown_left_out"].
    --silence_percentage adds that share of each split's wanted files as _silence_ excerpts of the noise
    recordings, named `<recording>#<split>-<n>` and taken from the recordings in turn.
    """
    noise = sorted((file for file in listed if file.split == NOISE_SPLIT), key=lambda file: file.key)
    examples = [file for file in listed if file.split != NOISE_SPLIT]
    if keywords is None or not keywords.active:
        return examples, noise
    wanted = keywords.wanted
    kept, candidates = [], {}
    for file in examples:
        if wanted is None or class_folder(file.relative_path) in wanted:
            kept.append(file)
        else:
            candidates.setdefault(file.split, []).append(file)
    wanted_per_split = {split: 0 for split in SPLITS}
    for file in kept:
        wanted_per_split[file.split] += 1
    unknown = []
    for split, files in sorted(candidates.items()):
        files.sort(key=lambda file: (hash_percentage(f"{file.root_index}/{file.relative_path}"), file.key))
        count = round(keywords.unknown_percentage / 100 * wanted_per_split[split])
        unknown += [dataclasses.replace(file, label=UNKNOWN_LABEL) for file in files[:count]]
    if wanted is not None:
        listing_counts["unknown_left_out"] = sum(map(len, candidates.values())) - len(unknown)
    silence = []
    if keywords.silence_percentage and noise:
        for split in SPLITS:
            for number in range(round(keywords.silence_percentage / 100 * wanted_per_split[split])):
                source = noise[number % len(noise)]
                silence.append(dataclasses.replace(
                    source, relative_path=excerpt_path(source.relative_path, f"{split}-{number}"), split=split,
                    label=SILENCE_LABEL))
    elif keywords.silence_percentage:
        listing_counts["silence_without_noise"] = 1
    return kept + unknown + silence, noise


def _walk(root: str) -> Iterable[tuple[str, int, float]]:
    """(path, size, modification time) of every file under `root`.

    Locally by os.walk with one stat per file, as Beam's local `match("**")`
    walks (it stats each file twice, which doubles the listing of 70,000 files);
    through FileSystems for URLs.
    """
    if not is_local(root):
        for metadata in FileSystems.match([f"{root}/**"])[0].metadata_list:
            yield metadata.path, metadata.size_in_bytes, metadata.last_updated_in_seconds
        return
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            yield path, stat.st_size, stat.st_mtime


def read_base_index(dataset_dir: str, base: DatasetManifest) -> dict[tuple[int, str], dict]:
    """{(root index, relative path): its row, with "span"} for every input file of the base snapshot."""
    index = {}
    for span in base.spans:
        folder = span_dir(dataset_dir, span)
        for name in (SPAN_FILES_NAME, SPAN_ERRORS_NAME):
            # One json.loads of all the lines as an array: 1.7 times faster than one per line for 70,000 rows.
            for row in json.loads("[" + ",".join(read_text(f"{folder}/{name}").splitlines()) + "]"):
                row["span"] = span
                index[(row["root"], row["path"])] = row
    return index


def incompatibility(base: DatasetManifest | None, settings: Settings, modality: str) -> str | None:
    """Why the base snapshot's records cannot be reused by this run, or None when they can."""
    if base is None:
        return "first ingest"
    if base.snapshot_id is None:
        return "the dataset predates snapshots"
    config = settings.configs[modality]
    fixed_labels = settings.fixed_labels[modality]
    differences = [
        ("featurization", base.featurization != dataclasses.asdict(config)),
        ("input roots", base.input_roots != list(settings.roots[modality])),
        ("split config", base.split_config != dataclasses.asdict(settings.split_config)),
        ("compression", base.compression != settings.compression),
        ("pipeline version", base.pipeline_version != beam_jobs.PIPELINE_VERSION),
        ("fixed labels", fixed_labels is not None and list(fixed_labels) != base.labels),
        ("keyword classes", base.keywords != keyword_fields(settings.keywords_of(modality))),
    ]
    changed = [name for name, differs in differences if differs]
    return f"{', '.join(changed)} changed since snapshot {base.snapshot_id}" if changed else None


def class_labels(keywords: KeywordConfig | None) -> set[str]:
    """The labels `keywords` gives a vocabulary whether or not files are found for them."""
    if keywords is None or not keywords.active:
        return set()
    return {*(keywords.wanted or ()), *([UNKNOWN_LABEL] if keywords.wanted else []),
            *([SILENCE_LABEL] if keywords.silence_percentage else [])}


@dataclasses.dataclass
class ModalityPlan:
    modality: str
    base: DatasetManifest | None  # the snapshot or pre-snapshot manifest this run builds on
    full_reason: str | None  # why every file is featurized, None for an incremental run
    compact: bool
    labels: list[str]  # the new snapshot's vocabulary
    counts: dict[str, int]  # input files new, changed, removed, reused
    kept_spans: list[str]  # base spans the new snapshot lists unchanged
    work: list[dict]  # the WorkItem rows of the new span, in listing order
    listing_counts: dict[str, int]
    noise: list[ListedFile] = dataclasses.field(default_factory=list)  # the background-noise recordings

    @property
    def noise_unchanged(self) -> bool:
        """The base snapshot holds the background noise as it is listed now."""
        return [file.row() for file in self.noise] == [
            {"root": entry["root"], "path": entry["path"], "size": entry["size"], "mtime": entry["mtime"],
             "split": NOISE_SPLIT} for entry in (self.base.background_noise if self.base else [])]

    @property
    def nothing_to_do(self) -> bool:
        """The input and config are as the base snapshot has them: committing would change nothing."""
        return (self.full_reason is None and not self.compact and not self.work
                and self.base is not None and self.kept_spans == self.base.spans and self.noise_unchanged)


def make_plan(*, modality: str, settings: Settings, base: DatasetManifest | None, listed: list[ListedFile],
              listing_counts: dict[str, int], base_index: dict[tuple[int, str], dict] | None, full: bool,
              compact: bool, max_spans: int) -> ModalityPlan:
    keywords = settings.keywords_of(modality)
    listing_counts = dict(listing_counts)
    listed, noise = select_examples(listed, keywords=keywords, listing_counts=listing_counts)
    fixed_labels = settings.fixed_labels[modality]
    labels = list(fixed_labels) if fixed_labels is not None else extend_labels(
        tuple(base.labels) if base is not None else (), _labels_of(listed) | class_labels(keywords))
    full_reason = "--full" if full else incompatibility(base, settings, modality)
    if full_reason is not None:
        return ModalityPlan(modality, base, full_reason, False, labels,
                            {"new": len(listed), "changed": 0, "removed": 0, "reused": 0}, [],
                            [file.row() for file in listed], listing_counts, noise)
    reused, fresh, changed_spans, counts = [], [], set(), {"new": 0, "changed": 0, "removed": 0, "reused": 0}
    seen = set()
    for file in listed:
        row = base_index.get(file.key)
        seen.add(file.key)
        if row is None:
            counts["new"] += 1
            fresh.append(file.row())
        elif (row["size"], row["mtime"], row["split"]) != (file.size_bytes, file.mtime, file.split):
            counts["changed"] += 1
            changed_spans.add(row["span"])
            fresh.append(file.row())
        else:
            counts["reused"] += 1
            reused.append(row)
    for key, row in base_index.items():
        if key not in seen:
            counts["removed"] += 1
            changed_spans.add(row["span"])
    kept = [span for span in base.spans if span not in changed_spans]
    if compact or len(kept) + bool(fresh) > max_spans:
        compact, kept = True, []
    carried = [_carry(row, compression=settings.compression) for row in reused if row["span"] not in kept]
    return ModalityPlan(modality, base, None, compact, labels, counts, kept, fresh + carried, listing_counts, noise)


def _labels_of(listed: Iterable[ListedFile]) -> set[str]:
    return {label for label in (file.label or class_folder(file.relative_path) for file in listed)
            if label is not None}


def _carry(row: dict, *, compression: str | None) -> dict:
    """The WorkItem of a reused file in a span being rewritten: copy its record, or carry its error."""
    item = {name: row[name] for name in ("root", "path", "size", "mtime", "split")}
    if "label" in row and "reason" not in row and row["label"] != class_folder(row["path"]):
        item["label"] = row["label"]  # _unknown_ or _silence_, for a gzip record featurized again
    if "reason" in row:
        item["error"] = row["reason"]
    elif compression is None:  # a gzip shard cannot be read from an offset: the file is featurized again
        item["copy"] = {"shard": f"spans/{row['span']}/{row['shard']}", "offset": row["offset"],
                        "length": row["length"], "label": row["label"]}
    return item
