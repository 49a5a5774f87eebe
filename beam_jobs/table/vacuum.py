"""Removes the files of an output folder that no snapshot needs and no live run owns, once they are old enough.

Retention (`beam_jobs.table.snapshots.expire`) deletes the spans of the
snapshots it removes, and every run removes dead runs' leftovers
(`beam_jobs.table.runs.clean_debris`); what neither reaches stays: a span kept
for a run that then died, the background noise files no kept snapshot lists,
half-written temporary files of a process killed mid-write
(`beam_jobs.storage.files.unique_temp_name`). `vacuum` removes, as Delta Lake's
VACUUM and Iceberg's remove_orphan_files do, every such file whose newest
modification is older than `older_than_seconds` (default 7 days, Delta's):

  OUT/.tmp-<run id>/, OUT/.runs/<run id>.json    of runs whose lease is dead (`Lease.is_dead`)
  OUT/<modality>/spans/<span>/                   listed by no snapshot that retention kept, its run not live
  OUT/<modality>/noise/<hash>.npy                listed by no kept snapshot          } while no run is
  *.tmp-<hex> anywhere                           an atomic write that never finished } live

A snapshot removed by retention keeps its manifest (history); its files go.
A dry run lists the same files and deletes nothing.
"""
import dataclasses
import re
import time

from apache_beam.io.filesystems import FileSystems

from beam_jobs.inputs.reading import read_text
from beam_jobs.storage.files import delete_tree, list_names
from beam_jobs.table import snapshots
from beam_jobs.table.layout import NOISE_FOLDER_NAME, SPANS_FOLDER, TEMP_PREFIX, lease_path, snapshot_path
from beam_jobs.table.manifest import DatasetManifest
from beam_jobs.table.runs import read_leases, span_run_id

DEFAULT_OLDER_THAN_SECONDS = 7 * 24 * 3600
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 24 * 3600}
_TEMP_FILE = re.compile(r"\.tmp-[0-9a-f]{32}$")  # beam_jobs.storage.files.unique_temp_name


def parse_age(text: str) -> float:
    """'7d', '12h', '30m', '90s' or '0' -> seconds; ValueError otherwise."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not match or (match.group(2) == "" and float(match.group(1)) != 0):
        raise ValueError(f"{text!r}: give a number and a unit, s, m, h or d (e.g. 7d), or 0")
    return float(match.group(1)) * _UNITS.get(match.group(2), 1)


@dataclasses.dataclass(frozen=True)
class Unreferenced:
    path: str
    is_folder: bool  # removed whole
    num_bytes: int
    age_seconds: float  # since its newest file was modified
    why: str


def _files(pattern: str) -> list[tuple[str, int, float]]:
    """(path, size, modification time) of the files matching `pattern`."""
    return [(metadata.path, metadata.size_in_bytes, metadata.last_updated_in_seconds)
            for metadata in FileSystems.match([pattern])[0].metadata_list]


def _unit(path: str, why: str, now: float, *, is_folder: bool) -> Unreferenced | None:
    files = _files(f"{path}/**" if is_folder else path)
    if not files:
        return None  # removed meanwhile
    return Unreferenced(path=path, is_folder=is_folder, num_bytes=sum(size for _, size, _ in files),
                        age_seconds=now - max(mtime for _, _, mtime in files), why=why)


def dataset_folders(output_dir: str) -> list[str]:
    """The dataset folders (those with snapshots) in `output_dir`."""
    return [f"{output_dir}/{name}" for name in list_names(output_dir)
            if not name.startswith(".") and snapshots.snapshot_ids(f"{output_dir}/{name}")[0]]


def find_unreferenced(output_dir: str, *, older_than_seconds: float) -> list[Unreferenced]:
    """What `vacuum` removes: the files of `output_dir` listed in the module docstring, old enough."""
    now = time.time()
    leases = read_leases(output_dir)
    live = {run_id for run_id, lease in leases.items() if not lease.is_dead()}
    found = [_unit(f"{output_dir}/{name}", "the temporary folder of a run that is not live", now, is_folder=True)
             for name in list_names(output_dir, f"{TEMP_PREFIX}*") if name[len(TEMP_PREFIX):] not in live]
    found += [_unit(lease_path(output_dir, run_id), "the lease of a dead run", now, is_folder=False)
              for run_id in sorted(set(leases) - live)]
    for dataset_dir in dataset_folders(output_dir):
        committed, removed = snapshots.snapshot_ids(dataset_dir)
        kept = [DatasetManifest.from_json(read_text(snapshot_path(dataset_dir, snapshot_id)))
                for snapshot_id in committed if snapshot_id not in removed]
        listed = {span for manifest in kept for span in manifest.spans}
        found += [_unit(f"{dataset_dir}/{SPANS_FOLDER}/{span}", "a span that no kept snapshot lists", now,
                        is_folder=True)
                  for span in list_names(f"{dataset_dir}/{SPANS_FOLDER}")
                  if span not in listed and span_run_id(span) not in live]
        if not live:  # a live run writes noise files before the commit that lists them
            noise = {entry["file"] for manifest in kept for entry in manifest.background_noise if "file" in entry}
            found += [_unit(f"{dataset_dir}/{NOISE_FOLDER_NAME}/{name}",
                            "a background noise file that no kept snapshot lists", now, is_folder=False)
                      for name in list_names(f"{dataset_dir}/{NOISE_FOLDER_NAME}", "*.npy")
                      if f"{NOISE_FOLDER_NAME}/{name}" not in noise]
    if not live:  # a live run's atomic writes are under way
        folders = tuple(f"{unit.path}/" for unit in found if unit and unit.is_folder)
        found += [Unreferenced(path=path, is_folder=False, num_bytes=size, age_seconds=now - mtime,
                               why="the temporary file of a write that never finished")
                  for path, size, mtime in _files(f"{output_dir}/**")
                  if _TEMP_FILE.search(path) and not path.startswith(folders)]
    return sorted((unit for unit in found if unit and unit.age_seconds >= older_than_seconds),
                  key=lambda unit: unit.path)


def vacuum(output_dir: str, *, older_than_seconds: float = DEFAULT_OLDER_THAN_SECONDS,
           dry_run: bool = False) -> list[Unreferenced]:
    """Removes (unless `dry_run`) and returns what `find_unreferenced` finds."""
    found = find_unreferenced(output_dir, older_than_seconds=older_than_seconds)
    if not dry_run:
        for unit in found:
            if unit.is_folder:
                delete_tree(unit.path)
            else:
                FileSystems.delete([unit.path])
    return found
