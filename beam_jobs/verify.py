"""Checks a dataset folder against its manifest: every shard's size, SHA-256, framing, CRCs and record count.

    python -m beam_jobs.verify OUT/audio

Prints one line per bad shard (missing, another size or checksum, broken
framing, another record count) and a verdict; exits 0 when every shard is as
its manifest says, 1 otherwise. Local paths and URLs alike.
"""
import argparse
import sys

from beam_jobs import console

console.quiet_beam_import()  # before the first import of Beam, below: see beam_jobs.console

from apache_beam.io.filesystems import FileSystems  # noqa: E402

from beam_jobs.dataset_layout import manifest_path  # noqa: E402
from beam_jobs.input_files import read_text  # noqa: E402
from beam_jobs.integrity import scan_shard  # noqa: E402
from beam_jobs.manifest import DatasetManifest, ShardInfo  # noqa: E402


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


def verify(dataset_dir: str) -> tuple[list[str], int, int]:
    """(one line per bad shard, shards checked, records the manifest claims)."""
    manifest = DatasetManifest.from_json(read_text(manifest_path(dataset_dir)))
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
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.verify", description=__doc__.split("\n")[0])
    parser.add_argument("dataset_dir", help="a folder with dataset.json, e.g. OUT/audio (local or URL)")
    args = parser.parse_args(argv)
    dataset_dir = args.dataset_dir.rstrip("/")
    if not FileSystems.exists(manifest_path(dataset_dir)):
        parser.error(f"{manifest_path(dataset_dir)} not found: give a folder written by beam_jobs.preprocess")
    bad, num_shards, num_records = verify(dataset_dir)
    for line in bad:
        print(line)
    if bad:
        print(f"BAD: {len(bad)} of {num_shards} shards of {dataset_dir} differ from the manifest")
        return 1
    print(f"OK: {num_shards} shards, {num_records} records, as the manifest of {dataset_dir} says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
