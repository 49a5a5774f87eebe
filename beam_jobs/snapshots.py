"""Lists a dataset's snapshots, or rolls it back to an older one.

    python -m beam_jobs.snapshots OUT/audio                   list the snapshots; * marks the current one
    python -m beam_jobs.snapshots OUT/audio --rollback 3      make snapshot 3's records current again

The table of snapshots and its commit protocol: `beam_jobs.table.snapshots`.
"""
import argparse
import sys

from beam_jobs.console import logs

logs.quiet_beam_import()  # before the first import of Beam, below: see beam_jobs.console.logs

from beam_jobs.storage.files import PIPELINE_OPTIONS_HELP, use_pipeline_options  # noqa: E402
from beam_jobs.table.runs import new_run_id  # noqa: E402
from beam_jobs.table.snapshots import SnapshotConflictError, rollback, snapshot_ids, snapshot_listing  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.snapshots", description=__doc__.split("\n")[0],
                                     epilog=PIPELINE_OPTIONS_HELP)
    parser.add_argument("dataset_dir", help="a dataset folder written by beam_jobs.preprocess, e.g. OUT/audio")
    parser.add_argument("--rollback", type=int, metavar="ID",
                        help="commit a new snapshot holding the records of snapshot ID")
    args, pipeline_args = parser.parse_known_args(argv)
    use_pipeline_options(pipeline_args)
    dataset_dir = args.dataset_dir.rstrip("/")
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


if __name__ == "__main__":
    sys.exit(main())
