"""Lists a dataset's snapshots, rolls it back to an older one, or vacuums an output folder.

    python -m beam_jobs.snapshots OUT/audio                   list the snapshots; * marks the current one
    python -m beam_jobs.snapshots OUT/audio --rollback 3      make snapshot 3's records current again
    python -m beam_jobs.snapshots OUT --vacuum [--older_than 7d] [--dry_run]
                                                              remove what no snapshot needs and no live run owns

The table of snapshots and its commit protocol: `beam_jobs.table.snapshots`.
"""
import argparse
import sys

from beam_jobs.console import logs

logs.quiet_beam_import()  # before the first import of Beam, below: see beam_jobs.console.logs

from beam_jobs.storage.files import PIPELINE_OPTIONS_HELP, use_pipeline_options  # noqa: E402
from beam_jobs.table.runs import new_run_id  # noqa: E402
from beam_jobs.table.snapshots import SnapshotConflictError, rollback, snapshot_ids, snapshot_listing  # noqa: E402
from beam_jobs.table.vacuum import dataset_folders, parse_age, vacuum  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.snapshots", description=__doc__.split("\n")[0],
                                     epilog=PIPELINE_OPTIONS_HELP)
    parser.add_argument("dataset_dir", help="a dataset folder written by beam_jobs.preprocess, e.g. OUT/audio; "
                                            "with --vacuum, the output folder OUT")
    parser.add_argument("--rollback", type=int, metavar="ID",
                        help="commit a new snapshot holding the records of snapshot ID")
    parser.add_argument("--vacuum", action="store_true",
                        help="remove the files of OUT that no kept snapshot lists and no live run owns, once "
                             "older than --older_than (beam_jobs.table.vacuum)")
    parser.add_argument("--older_than", default="7d", metavar="AGE",
                        help="--vacuum: the least age of what it removes: 7d (the default), 12h, 30m, 0")
    parser.add_argument("--dry_run", action="store_true", help="--vacuum: list what it would remove, remove nothing")
    args, pipeline_args = parser.parse_known_args(argv)
    use_pipeline_options(pipeline_args)
    dataset_dir = args.dataset_dir.rstrip("/")
    if args.vacuum:
        return run_vacuum(dataset_dir, older_than=args.older_than, dry_run=args.dry_run, parser=parser)
    if not snapshot_ids(dataset_dir)[0]:
        parser.error(f"{dataset_dir} has no snapshots: give a folder written by beam_jobs.preprocess")
    if args.rollback is not None:
        try:
            manifest = rollback(dataset_dir, args.rollback, run_id=new_run_id())
        except (FileNotFoundError, SnapshotConflictError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"committed snapshot {manifest.snapshot_id}: the records of snapshot {args.rollback}")
        return 0
    print("\n".join(snapshot_listing(dataset_dir)))
    return 0


def run_vacuum(output_dir: str, *, older_than: str, dry_run: bool, parser: argparse.ArgumentParser) -> int:
    try:
        older_than_seconds = parse_age(older_than)
    except ValueError as error:
        parser.error(f"--older_than {error}")
    if snapshot_ids(output_dir)[0] or not dataset_folders(output_dir):
        parser.error(f"{output_dir} holds no dataset folder: give the output folder of beam_jobs.preprocess "
                     f"(OUT, not OUT/audio)")
    found = vacuum(output_dir, older_than_seconds=older_than_seconds, dry_run=dry_run)
    for unit in found:
        print(f"{'would remove' if dry_run else 'removed'} {unit.path}{'/' if unit.is_folder else ''}  "
              f"({unit.num_bytes} bytes, {unit.age_seconds / 3600:.1f} h old): {unit.why}")
    print(f"{'would remove' if dry_run else 'removed'} {len(found)} unreferenced files or folders of "
          f"{sum(unit.num_bytes for unit in found)} bytes, older than {older_than}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
