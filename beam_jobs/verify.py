"""Checks a snapshot of a dataset against its manifest: every shard's size, SHA-256, framing, CRCs and count.

    python -m beam_jobs.verify OUT/audio [--snapshot ID] [--s3_endpoint_url URL ...]

Prints one line per bad shard (missing, another size or checksum, broken
framing, another record count) and a verdict; exits 0 when every shard is as
its manifest says, 1 otherwise. Local paths and URLs alike.
"""
import argparse
import sys

from beam_jobs.console import logs

logs.quiet_beam_import()  # before the first import of Beam, below: see beam_jobs.console.logs

from apache_beam.io.filesystems import FileSystems  # noqa: E402

from beam_jobs.storage.files import PIPELINE_OPTIONS_HELP, use_pipeline_options  # noqa: E402
from beam_jobs.table.integrity import scan_shard  # noqa: E402
from beam_jobs.table.manifest import DatasetManifest, ShardInfo  # noqa: E402
from beam_jobs.table.snapshots import load  # noqa: E402


def shard_problems(path: str, shard: ShardInfo, *, compression: str | None) -> list[str]:
    """What is wrong with the shard at `path` compared with its manifest entry; empty when nothing is."""
    if not FileSystems.exists(path):
        return ["missing"]
    scan = scan_shard(path, compression=compression)
    problems = []
    if shard.num_bytes is not None and scan.num_bytes != shard.num_bytes:
        problems.append(f"{scan.num_bytes} bytes, the manifest says {shard.num_bytes}")
    if shard.sha256 is not None and scan.sha256 != shard.sha256:
        problems.append("its SHA-256 differs from the manifest's")
    if scan.problem:
        problems.append(scan.problem)
    if scan.num_records != shard.num_examples:
        problems.append(f"{scan.num_records} intact records, the manifest says {shard.num_examples}")
    return problems


def verify(dataset_dir: str, manifest: DatasetManifest) -> tuple[list[str], int, int]:
    """(one line per bad shard, shards checked, records the manifest claims) of the snapshot `manifest`."""
    bad, num_shards, num_records = [], 0, 0
    for split in manifest.splits.values():
        for shard in split.shards:
            num_shards += 1
            num_records += shard.num_examples
            path = f"{dataset_dir.rstrip('/')}/{shard.path}"
            problems = shard_problems(path, shard, compression=manifest.compression)
            if problems:
                bad.append(f"{path}: {'; '.join(problems)}")
    return bad, num_shards, num_records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.verify", description=__doc__.split("\n")[0],
                                     epilog=PIPELINE_OPTIONS_HELP)
    parser.add_argument("dataset_dir", help="a folder with dataset.json, e.g. OUT/audio (local or URL)")
    parser.add_argument("--snapshot", type=int, metavar="ID", help="the snapshot to check; default: the current one")
    args, pipeline_args = parser.parse_known_args(argv)
    use_pipeline_options(pipeline_args)
    dataset_dir = args.dataset_dir.rstrip("/")
    try:
        manifest = load(dataset_dir, args.snapshot)
    except FileNotFoundError as error:
        parser.error(str(error))
    bad, num_shards, num_records = verify(dataset_dir, manifest)
    for line in bad:
        print(line)
    what = f"{manifest.describe()} of {dataset_dir}"
    if bad:
        print(f"BAD: {len(bad)} of {num_shards} shards of {what} differ from its manifest")
        return 1
    print(f"OK: {num_shards} shards, {num_records} records, as the manifest of {what} says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
