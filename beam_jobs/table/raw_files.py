"""Which raw files of a dataset fall in a split, found in its input roots without reading a TFRecord.

A file's split depends only on its path relative to its input root, the split
lists at that root and the manifest's `split_config` (`beam_jobs.inputs.splits`), so
the app and the report find the held-out test files in the raw folders the
manifest names. Local roots only; pure Python.
"""
import dataclasses
from pathlib import Path

from beam_jobs.inputs.splits import SplitRule
from beam_jobs.inputs.tree import classify, read_split_lists
from beam_jobs.modalities import get as get_modality
from beam_jobs.modalities.config import SplitConfig
from beam_jobs.table.manifest import DatasetManifest


@dataclasses.dataclass(frozen=True)
class Sample:
    path: Path
    relative_path: str  # forward slashes, relative to the input root: what the split is assigned from
    label: str  # the class folder the file is in


def _read_local_text(path: str) -> str | None:
    return Path(path).read_text(encoding="utf-8") if Path(path).is_file() else None


def read_listed_splits(root: Path) -> dict[str, str]:
    """{relative path: split} from the split lists at `root`; absent lists count as empty."""
    return read_split_lists(root.as_posix(), read_text=_read_local_text)


def list_split_samples(root: Path, *, split: str, labels: list[str], split_config: SplitConfig,
                       extensions: tuple[str, ...]) -> list[Sample]:
    """The files under `root/<label>/` with one of `extensions` that fall in `split`.

    As in the pipeline, a file's label is its top folder and files inside a
    folder named `_...` (e.g. `_background_noise_`) are not examples. Sorted by
    label order, then path.
    """
    rule = SplitRule(config=split_config, listed=read_listed_splits(root))
    samples = []
    for label in labels:
        folder = root / label
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            relative_path = path.relative_to(root).as_posix()
            if (classify(relative_path, extensions=extensions) == "input" and path.is_file()
                    and rule.split_of(relative_path) == split):
                samples.append(Sample(path=path, relative_path=relative_path, label=label))
    return samples


def list_test_samples(manifest: DatasetManifest) -> list[Sample]:
    """The held-out test files of every input root of `manifest` on this machine; other roots are skipped.

    The pipeline records its roots as absolute paths or URLs.
    """
    split_config = SplitConfig(**manifest.split_config)
    extensions = get_modality(manifest.modality).extensions
    return [sample
            for root in map(Path, manifest.input_roots) if root.is_dir()
            for sample in list_split_samples(root, split="test", labels=manifest.labels, split_config=split_config,
                                             extensions=extensions)]


def held_out_by_label(manifest: DatasetManifest) -> dict[str, list[Path]]:
    """{label: its held-out test files}, every label of the vocabulary present (possibly empty)."""
    by_label = {label: [] for label in manifest.labels}
    for sample in list_test_samples(manifest):
        by_label[sample.label].append(sample.path)
    return by_label
