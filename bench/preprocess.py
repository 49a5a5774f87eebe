"""Is the Beam pipeline as fast as a plain loop? Prints rates, ratios, bytes and memory; asserts nothing.

    python bench/preprocess.py --audio_files 500 --image_files 2000

For each modality, at N and 4N files taken from /tmp/corpora/{speech,fashion} (generated when absent):
  loop            a plain loop over the same featurizers: read, featurize, encode_example,
                  write TFRecords with Beam's framing (the floor, one core)
  beam in_memory  beam_jobs.preprocess on --runner=FnApiRunner, one process
  beam 2 workers  the same with --direct_running_mode=multi_processing --direct_num_workers=2
Each line: wall seconds and files/s (the fastest of --repeats runs), the ratio to the loop, the CPU
seconds of the whole process tree (less sensitive than wall time to other load on the machine),
bytes per example on disk, and the peak resident memory of the phase's process tree, sampled from
/proc. Each phase runs in a fresh child process of this script, so no phase inherits another's heap
or warm caches. Targets: beam on 2 workers at least as fast as the loop; peak memory flat as the
corpus grows.
"""
import argparse
import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from apache_beam.io.tfrecordio import _TFRecordUtil
from PIL import Image
from scipy.io import wavfile

from beam_jobs import preprocess
from beam_jobs.config import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, AudioConfig, ImageConfig, SplitConfig
from beam_jobs.errors import InvalidInputError
from beam_jobs.examples import encode_example
from beam_jobs.splits import SPLITS, assign_split
from beam_jobs.transforms import FEATURIZERS, index_labels

SOURCES = {"audio": Path("/tmp/corpora/speech"), "image": Path("/tmp/corpora/fashion")}
EXTENSIONS = {"audio": AUDIO_EXTENSIONS, "image": IMAGE_EXTENSIONS}
CONFIGS = {"audio": AudioConfig(), "image": ImageConfig()}
RUNNERS = {
    "beam in_memory": ["--runner=FnApiRunner", "--direct_running_mode=in_memory"],
    "beam 2 workers": ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def list_inputs(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(path for path in root.rglob("*")
                  if path.suffix.lower() in extensions and not any(part.startswith("_") for part in
                                                                   path.relative_to(root).parts[:-1]))


def generate_file(modality: str, index: int) -> bytes:
    """A stand-in when no corpus is on disk: a one-second tone, or a 28x28 noise image."""
    rng = np.random.default_rng(index)
    buffer = io.BytesIO()
    if modality == "audio":
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * np.arange(16000) / 16000)
        wavfile.write(buffer, 16000, (tone * 32767).astype(np.int16))
    else:
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def build_corpus(modality: str, *, count: int, dest: Path) -> Path:
    """dest/<label>/<file>: `count` files spread evenly over the source corpus's classes."""
    available = list_inputs(SOURCES[modality], EXTENSIONS[modality]) if SOURCES[modality].is_dir() else []
    for index in range(count):
        if len(available) >= count:
            source = available[index * len(available) // count]
            target = dest / source.relative_to(SOURCES[modality])
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)  # same filesystem as /tmp: no copy
        else:
            target = dest / f"class{index % 5}" / f"{index}{EXTENSIONS[modality][0]}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(generate_file(modality, index))
    return dest


def plain_loop(root: Path, out_dir: Path, *, modality: str) -> int:
    """The floor: the pipeline's work for each file in one loop. Returns the number of records."""
    config, split_config = CONFIGS[modality], SplitConfig()
    files = list_inputs(root, EXTENSIONS[modality])
    vocabulary = index_labels(sorted({path.relative_to(root).parts[0] for path in files}))
    out_dir.mkdir(parents=True)
    records = 0
    with contextlib.ExitStack() as stack:
        shards = {split: stack.enter_context(open(out_dir / f"{split}.tfrecord", "wb")) for split in SPLITS}
        for path in files:
            data = path.read_bytes()
            relative_path = path.relative_to(root).as_posix()
            try:
                tensor = FEATURIZERS[modality](data, config=config)
            except InvalidInputError:
                continue  # the pipeline writes an error row; the floor only needs the good files' cost
            label_name = relative_path.split("/")[0]
            split = assign_split(relative_path, config=split_config, listed={})
            _TFRecordUtil.write_record(shards[split], encode_example(
                tensor=tensor, label=vocabulary[label_name], label_name=label_name, modality=modality,
                example_id=hashlib.sha256(data).hexdigest(), path=relative_path, split=split))
            records += 1
    return records


def beam_pipeline(root: Path, out_dir: Path, *, modality: str, runner_flags: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own summary would drown the table
        summary = preprocess.run([f"--{modality}_root={root}", f"--output_dir={out_dir}", *runner_flags],
                                 save_main_session=False)
    return sum(split.num_examples for split in summary.manifests[modality].splits.values())


def tree_rss_bytes(root_pid: int) -> int:
    """Resident bytes of `root_pid` and all its descendants, from /proc."""
    children = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue  # the process ended while we looked
            children.setdefault(parent, []).append(int(entry.name))
    total, pending = 0, [root_pid]
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * PAGE_BYTES
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class PeakMemory:
    """Samples tree_rss_bytes(root_pid) every `interval` seconds while in the `with` block."""

    def __init__(self, root_pid: int, interval: float = 0.05):
        self.root_pid = root_pid
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, tree_rss_bytes(self.root_pid))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def bytes_on_disk(out_dir: Path) -> int:
    return sum(path.stat().st_size for path in out_dir.rglob("*.tfrecord*"))


PHASES = {"loop": None, **RUNNERS}


def run_phase(phase: str, *, modality: str, root: Path, out_dir: Path) -> int:
    """Runs one phase in this process; returns the number of records written."""
    if phase == "loop":
        return plain_loop(root, out_dir, modality=modality)
    return beam_pipeline(root, out_dir, modality=modality, runner_flags=PHASES[phase])


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(phase: str, *, modality: str, root: Path, files: int, out_dir: Path) -> dict:
    """Times `phase` in a fresh child process while sampling the memory of its process tree."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cpu_before = children_cpu_seconds()  # counts the child and the workers it waited for
    command = [sys.executable, __file__, "--phase", phase, "--modality", modality, "--root", str(root),
               "--out_dir", str(out_dir)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        with PeakMemory(child.pid) as memory:
            stdout, stderr = child.communicate()
    if child.returncode:
        raise RuntimeError(f"{phase} on {root} failed:\n{stderr}")
    measured = json.loads(stdout.strip().splitlines()[-1])
    return {"phase": phase, "files": files, **measured, "files_per_s": files / measured["seconds"],
            "cpu_seconds": children_cpu_seconds() - cpu_before,
            "bytes_per_example": bytes_on_disk(out_dir) / max(measured["records"], 1),
            "peak_mib": memory.peak_bytes / 2**20}


def bench_modality(modality: str, *, count: int, work_dir: Path, repeats: int) -> list[dict]:
    """The fastest of `repeats` runs of each phase, with the highest memory peak among them."""
    root = build_corpus(modality, count=count, dest=work_dir / f"{modality}-{count}" / "input")
    rows = []
    for phase in PHASES:
        runs = [measure(phase, modality=modality, root=root, files=count,
                        out_dir=work_dir / f"{modality}-{count}" / phase.replace(" ", "_"))
                for _ in range(repeats)]
        rows.append({**min(runs, key=lambda run: run["seconds"]),
                     "cpu_seconds": min(run["cpu_seconds"] for run in runs),
                     "peak_mib": max(run["peak_mib"] for run in runs)})
    return rows


def print_rows(modality: str, rows: list[dict]) -> None:
    loop_rate = rows[0]["files_per_s"]
    for row in rows:
        print(f"{modality:6} {row['files']:6d} {row['phase']:15} {row['seconds']:8.2f} {row['files_per_s']:9.1f} "
              f"{row['files_per_s'] / loop_rate:8.2f} {row['cpu_seconds']:8.2f} {row['bytes_per_example']:14.0f} "
              f"{row['peak_mib']:9.0f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--audio_files", type=int, default=500, help="N for audio; 4N is run too")
    parser.add_argument("--image_files", type=int, default=2000, help="N for images; 4N is run too")
    parser.add_argument("--work_dir", default="/tmp/soundsight-bench", help="emptied first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per phase; the fastest counts")
    parser.add_argument("--modalities", default="audio,image", help="comma-separated subset of audio,image")
    parser.add_argument("--phase", choices=PHASES, help="internal: run one phase and print its JSON")
    parser.add_argument("--modality", choices=EXTENSIONS, help="internal, with --phase")
    parser.add_argument("--root", help="internal, with --phase")
    parser.add_argument("--out_dir", help="internal, with --phase")
    args = parser.parse_args()
    if args.phase:
        start = time.perf_counter()
        records = run_phase(args.phase, modality=args.modality, root=Path(args.root), out_dir=Path(args.out_dir))
        print(json.dumps({"records": records, "seconds": time.perf_counter() - start}))
        return
    work_dir = Path(args.work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'':6} {'files':>6} {'phase':15} {'seconds':>8} {'files/s':>9} {'vs loop':>8} {'CPU s':>8} "
          f"{'bytes/example':>14} {'peak MiB':>9}")
    counts = {"audio": args.audio_files, "image": args.image_files}
    for modality in args.modalities.split(","):
        count = counts[modality]
        for files in (count, 4 * count):
            print_rows(modality, bench_modality(modality, count=files, work_dir=work_dir, repeats=args.repeats))
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
