"""How long a file dropped into a watched root takes to reach a committed snapshot, and what watching costs.

    python -m bench.watch --audio_root /tmp/corpora/speech --image_root /tmp/corpora/fashion \\
        [--drops 8] [--poll_seconds 1] [--commit_seconds 10]

The roots are hard-linked into a work folder and ingested by a batch run
(FnApiRunner, 2 workers), so the watch starts on a snapshot of the whole
corpus and lists all of it at every poll, as a watch of a grown dataset does.
Then `python -m beam_jobs.preprocess --watch` runs on Prism, and the script
drops one new file at a time into a class folder of the first root, at a
random moment of the commit cycle, and times it from the drop until the
current snapshot lists it. It also samples the CPU time of the watch's
process tree while nothing lands (the cost of the polls).
Target: every drop committed within --commit_seconds + 5 s.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beam_jobs.table import snapshots
from beam_jobs.table.layout import SPAN_FILES_NAME

REPO = Path(__file__).resolve().parents[1]
TARGET_MARGIN_S = 5.0


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append((int(entry), int(fields[11]) + int(fields[12])))
    total, stack = 0, [pid]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    except OSError:
        return 0.0
    while stack:
        for child, cpu in children.get(stack.pop(), []):
            total += cpu
            stack.append(child)
    return total / ticks


def committed_paths(dataset_dir: str) -> tuple[int, set[str]]:
    manifest = snapshots.latest(dataset_dir)
    if manifest is None:
        return 0, set()
    newest = manifest.spans[-1]
    with open(f"{dataset_dir}/spans/{newest}/{SPAN_FILES_NAME}") as rows:
        return manifest.snapshot_id, {json.loads(line)["path"] for line in rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio_root", required=True)
    parser.add_argument("--image_root")
    parser.add_argument("--drops", type=int, default=8)
    parser.add_argument("--poll_seconds", type=float, default=1.0)
    parser.add_argument("--commit_seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    try:
        roots = {"audio": work / "audio_in"}
        shutil.copytree(args.audio_root, roots["audio"], copy_function=os.link)
        if args.image_root:
            roots["image"] = work / "image_in"
            shutil.copytree(args.image_root, roots["image"], copy_function=os.link)
        out = work / "out"
        root_flags = [f"--{modality}_root={root}" for modality, root in roots.items()]
        files = sum(1 for root in roots.values() for _ in root.rglob("*") if _.is_file())
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "beam_jobs.preprocess", *root_flags, f"--output_dir={out}",
                        "--direct_num_workers=2"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        print(f"batch ingest of {files} files: {time.monotonic() - started:.1f} s")

        log = open(work / "watch.log", "w")
        watch = subprocess.Popen(
            [sys.executable, "-m", "beam_jobs.preprocess", *root_flags, f"--output_dir={out}", "--watch",
             f"--poll_seconds={args.poll_seconds}", f"--commit_seconds={args.commit_seconds}"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_watching(watch, work / "watch.log")
            run_drops(watch, roots["audio"], str(out / "audio"), args=args)
        finally:
            os.killpg(watch.pid, signal.SIGTERM)
            watch.wait(timeout=120)
            log.close()
    finally:
        shutil.rmtree(work)


def wait_until_watching(watch: subprocess.Popen, log_path: Path) -> None:
    """Returns once the watch says it is watching: its pipeline runs on Prism."""
    while "watching " not in log_path.read_text():
        if watch.poll() is not None:
            sys.exit(f"the watch exited ({watch.returncode}) before it started:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.05)


def run_drops(watch: subprocess.Popen, root: Path, dataset_dir: str, *, args) -> None:
    time.sleep(3 * args.poll_seconds)  # the first polls
    cpu_before, idle_start = tree_cpu_seconds(watch.pid), time.monotonic()
    time.sleep(4 * args.poll_seconds)
    idle_cpu = (tree_cpu_seconds(watch.pid) - cpu_before) / (time.monotonic() - idle_start)
    print(f"watching, nothing landing: {idle_cpu:.2f} CPU cores busy (a poll every {args.poll_seconds:g} s)")
    label_folder = sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("_"))[0]
    source = sorted(label_folder.iterdir())[0]
    random.seed(0)
    latencies = []
    for drop in range(args.drops):
        time.sleep(random.uniform(0, args.commit_seconds))
        name = f"bench_drop_{drop}{source.suffix}"
        before, _ = committed_paths(dataset_dir)
        dropped_at = time.monotonic()
        (label_folder / name).write_bytes(source.read_bytes())
        relative = f"{label_folder.name}/{name}"
        while True:
            if watch.poll() is not None:
                sys.exit(f"the watch exited ({watch.returncode}); see its log")
            snapshot_id, paths = committed_paths(dataset_dir)
            if snapshot_id > before and relative in paths:
                break
            time.sleep(0.02)
        latencies.append(time.monotonic() - dropped_at)
        print(f"drop {drop}: in snapshot {snapshot_id} after {latencies[-1]:.2f} s")
    limit = args.commit_seconds + TARGET_MARGIN_S
    verdict = "PASS" if max(latencies) <= limit else "FAIL"
    print(f"latency: median {sorted(latencies)[len(latencies) // 2]:.2f} s, max {max(latencies):.2f} s; target "
          f"<= --commit_seconds + {TARGET_MARGIN_S:g} s = {limit:g} s: {verdict}")


if __name__ == "__main__":
    main()
