"""Does a re-ingest cost only what changed? Times a full ingest and two re-ingests, and checks their snapshots.

    python -m bench.reingest --data_dir /tmp/fresh3/data

For each modality, its demo corpus (DATA/raw/<its folder>, or --audio_root / --image_root) is
hard-linked into a scratch tree (a link keeps the file's size and modification time, which are what a
re-ingest compares), and `python -m beam_jobs.preprocess` on 2 workers runs three times on that tree,
into one fresh output folder:
  full       the first ingest: every file featurized into snapshot 1
  no change  the same tree again: it lists the files, reads snapshot 1's index and commits nothing
  5% new     after adding 5% new files (perturbed copies of files spread over the corpus, under new
             names in their class folders): only they are featurized, into snapshot 2's new span
Each phase is the whole child process (interpreter start, imports, listing, pipeline, commit): its
wall seconds, the CPU seconds of its process tree, and the tree's peak resident memory sampled from
/proc (bench.preprocess). Each run's snapshot is checked: the no-change run committed nothing, and the
5%-new run's "changes" count the added files as new and every other file as reused. Each repeat starts
from a fresh tree and output folder; the fastest run of each phase counts, with its least CPU and its
highest memory peak.
Targets (issue #11): no change <= 0.15 x the full ingest; 5% new <= 0.3 x (audio), <= 0.6 x (images);
the peak memory of each re-ingest no higher than the full ingest's.
"""
import argparse
import errno
import os
import shutil
import sys
from pathlib import Path

from beam_jobs.modalities import MODALITIES
from beam_jobs.table import snapshots
from beam_jobs.table.layout import DataFolder, dataset_dir
from bench.engines import RUNNER_FLAGS
from bench.preprocess import FILE_MAKERS, list_inputs, run_measured

NEW_FRACTION = 0.05  # the share of the corpus the third run adds
NO_CHANGE_TARGET = 0.15  # the no-change re-ingest's most seconds, as a share of the full ingest's
NEW_FILES_TARGETS = {"audio": 0.3, "image": 0.6}  # the same for the 5%-new re-ingest, per modality
PHASES = ("full", "no change", "5% new")
TWO_WORKERS = RUNNER_FLAGS["beam 2 workers"]  # FnApiRunner on 2 worker processes


def link_tree(source: Path, dest: Path) -> None:
    """dest: a copy of the tree at `source` whose files are hard links (a copy across file systems)."""
    def link_or_copy(source_file: str, dest_file: str) -> None:
        try:
            os.link(source_file, dest_file)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            shutil.copy2(source_file, dest_file)  # another file system: a copy keeps the modification time too
    shutil.copytree(source, dest, copy_function=link_or_copy)


def add_new_files(root: Path, *, modality: str, fraction: float) -> int:
    """Adds `fraction` of root's input files as `<stem>_new<ext>` beside their sources; returns how many.

    Each is a perturbed copy (one sample or pixel nudged), so its content, and so its example id, is new.
    Created exclusively: writing through an existing name would change a hard-linked corpus file.
    """
    spec = MODALITIES[modality]
    _, perturbed = FILE_MAKERS[modality]
    inputs = list_inputs(root, spec.extensions)
    count = max(1, round(fraction * len(inputs)))
    for index in range(count):
        source = inputs[index * len(inputs) // count]
        with open(source.with_name(f"{source.stem}_new{source.suffix}"), "xb") as new_file:
            new_file.write(perturbed(source, 1))
    return count


def run_ingest(root: Path, out_dir: Path, *, modality: str) -> dict:
    """Runs `python -m beam_jobs.preprocess` on 2 workers in a child process; its seconds, CPU and peak memory."""
    command = [sys.executable, "-m", "beam_jobs.preprocess", f"--{modality}_root={root}", f"--output_dir={out_dir}",
               *TWO_WORKERS]
    child = run_measured(command, what="beam_jobs.preprocess")  # its CPU counts the workers it waited for
    return {"seconds": child.seconds, "cpu_seconds": child.cpu_seconds, "peak_mib": child.peak_mib}


def check_snapshot(out_dir: Path, *, modality: str, phase: str, snapshot_id: int, changes: dict[str, int]) -> None:
    """Raises RuntimeError unless the current snapshot and the committed ones are what `phase` should leave."""
    folder = dataset_dir(str(out_dir), modality)
    manifest = snapshots.load(folder)
    committed, _ = snapshots.snapshot_ids(folder)
    if (manifest.snapshot_id, committed, manifest.changes) != (snapshot_id, list(range(1, snapshot_id + 1)), changes):
        raise RuntimeError(f"{modality} {phase}: expected current snapshot {snapshot_id} of {snapshot_id} with "
                           f"changes {changes}; found snapshot {manifest.snapshot_id} of {committed} with changes "
                           f"{manifest.changes}")


def bench_once(corpus: Path, *, modality: str, work_dir: Path) -> dict:
    """One run of each phase on a fresh tree linked from `corpus`: {phase: figures}, and the file counts."""
    root, out_dir = work_dir / "input", work_dir / "output"
    shutil.rmtree(work_dir, ignore_errors=True)
    link_tree(corpus, root)
    files = len(list_inputs(root, MODALITIES[modality].extensions))
    runs = {"full": run_ingest(root, out_dir, modality=modality)}
    check_snapshot(out_dir, modality=modality, phase="full", snapshot_id=1,
                   changes={"new": files, "changed": 0, "removed": 0, "reused": 0})
    runs["no change"] = run_ingest(root, out_dir, modality=modality)
    check_snapshot(out_dir, modality=modality, phase="no change", snapshot_id=1,
                   changes={"new": files, "changed": 0, "removed": 0, "reused": 0})
    added = add_new_files(root, modality=modality, fraction=NEW_FRACTION)
    runs["5% new"] = run_ingest(root, out_dir, modality=modality)
    check_snapshot(out_dir, modality=modality, phase="5% new", snapshot_id=2,
                   changes={"new": added, "changed": 0, "removed": 0, "reused": files})
    return {"files": files, "added": added, "runs": runs}


def best_of(repeats: list[dict]) -> dict[str, dict]:
    """Per phase, the fastest run, with the least CPU and the highest memory peak among the repeats."""
    return {phase: {"seconds": min(repeat["runs"][phase]["seconds"] for repeat in repeats),
                    "cpu_seconds": min(repeat["runs"][phase]["cpu_seconds"] for repeat in repeats),
                    "peak_mib": max(repeat["runs"][phase]["peak_mib"] for repeat in repeats)}
            for phase in PHASES}


def verdict(met: bool) -> str:
    return "PASS" if met else "FAIL"


def print_modality(modality: str, *, files: int, added: int, repeats: int, best: dict[str, dict]) -> bool:
    """Prints the modality's figures and verdicts; returns whether every target was met."""
    full = best["full"]
    targets = {"no change": NO_CHANGE_TARGET, "5% new": NEW_FILES_TARGETS[modality]}
    print(f"\n{modality}: {files} files, {added} added for the 5% run; best of {repeats}")
    print(f"  {'phase':10} {'seconds':>8} {'x full':>7} {'CPU s':>8} {'peak MiB':>9}  target")
    print(f"  {'full':10} {full['seconds']:8.2f} {1:7.2f} {full['cpu_seconds']:8.2f} {full['peak_mib']:9.0f}")
    all_met = True
    for phase, target in targets.items():
        row = best[phase]
        ratio = row["seconds"] / full["seconds"]
        memory_met = row["peak_mib"] <= full["peak_mib"]
        all_met &= ratio <= target and memory_met
        print(f"  {phase:10} {row['seconds']:8.2f} {ratio:7.2f} {row['cpu_seconds']:8.2f} {row['peak_mib']:9.0f}  "
              f"time <= {target:.2f} x full: {verdict(ratio <= target)}; "
              f"peak <= full's: {verdict(memory_met)}")
    return all_met


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="data", help="the main job's data folder, holding raw/<corpus>")
    for modality in MODALITIES:
        parser.add_argument(f"--{modality}_root", help=f"the {modality} corpus; default: its demo corpus in DATA")
    parser.add_argument("--work_dir", default="/tmp/soundsight-reingest", help="emptied first")
    parser.add_argument("--repeats", type=int, default=2, help="runs per phase; the fastest counts")
    parser.add_argument("--modalities", default=",".join(MODALITIES), help="comma-separated subset")
    args = parser.parse_args(argv)
    corpora = {modality: Path(getattr(args, f"{modality}_root") or DataFolder(Path(args.data_dir)).demo_raw(modality))
               for modality in args.modalities.split(",")}
    for modality, corpus in corpora.items():
        if not corpus.is_dir():
            sys.exit(f"error: no {modality} corpus at {corpus}: give --data_dir or --{modality}_root")
    work_dir = Path(args.work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; each phase: python -m "
          f"beam_jobs.preprocess --<modality>_root=TREE --output_dir=OUT {' '.join(TWO_WORKERS)}",
          flush=True)
    all_met = True
    for modality, corpus in corpora.items():
        repeats = [bench_once(corpus, modality=modality, work_dir=work_dir / modality) for _ in range(args.repeats)]
        all_met &= print_modality(modality, files=repeats[0]["files"], added=repeats[0]["added"],
                                  repeats=args.repeats, best=best_of(repeats))
        sys.stdout.flush()
    print(f"\nload average {os.getloadavg()[0]:.1f}; every target met: {'yes' if all_met else 'no'}")


if __name__ == "__main__":
    main()
