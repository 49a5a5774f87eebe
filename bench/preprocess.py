"""Is the Beam pipeline as fast as a plain loop? Prints rates, ratios, bytes, memory and two verdicts.

    python -m bench.preprocess --audio_files 4000 --image_files 16000

For each modality, at N and 4N files taken from /tmp/corpora/<its demo corpus folder> (perturbed
copies beyond the corpus's size; synthetic files when it is absent), with the corpus's split lists
(a testing_list.txt naming every tenth file when it has none, as Fashion-MNIST's and Speech
Commands' trees have):
  loop            a plain loop doing the pipeline's per-file work (beam_jobs.records.encode_input_file:
                  read, featurize, hash, encode; an error row for a bad file) and writing TFRecords
                  with Beam's framing (the floor, one core)
  beam in_memory  beam_jobs.preprocess on --runner=FnApiRunner, one process
  beam 2 workers  the same with --direct_running_mode=multi_processing --direct_num_workers=2
Each line: wall seconds and files/s (the fastest of --repeats runs), the ratio to the loop, the CPU
seconds of the whole process tree (less sensitive than wall time to other load on the machine),
bytes per example on disk, and the peak resident memory of the phase's process tree (main process
and workers), sampled from /proc. Each phase runs in a fresh child process of this script, so no
phase inherits another's heap or warm caches, and the repeats cycle through the phases, so a burst
of other load on the machine hurts one run of each rather than every run of one phase.
Targets: (a) beam on 2 workers at least as fast as the loop; (b) peak memory flat as the corpus
grows: the peak at 4N over the peak at N about 1. For (a), each phase's two sizes also give its
fixed start-up and its rate beyond it, and so the corpus size from which 2 workers beat the loop.
"""
import argparse
import contextlib
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
from beam_jobs.config import SplitConfig
from beam_jobs.errors import InvalidInputError
from beam_jobs.input_files import read_at_most
from beam_jobs.input_tree import class_folder, classify
from beam_jobs.labels import index_labels
from beam_jobs.modalities import MODALITIES
from beam_jobs.raw_files import read_listed_splits
from beam_jobs.records import encode_input_file
from beam_jobs.splits import LIST_FILES, SPLITS, SplitRule

REPO = Path(__file__).resolve().parents[1]
CORPORA = Path("/tmp/corpora")
LISTED_EVERY = 10  # a corpus without split lists gets every tenth file in its testing_list.txt
RUNNERS = {
    "beam in_memory": ["--runner=FnApiRunner", "--direct_running_mode=in_memory"],
    "beam 2 workers": ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
FLAT_MEMORY_RATIO = 1.2  # target (b) counts a peak at 4N up to this many times the peak at N as flat
TWO_WORKERS = "beam 2 workers"


def list_inputs(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(path for path in root.rglob("*")
                  if classify(path.relative_to(root).as_posix(), extensions=extensions) == "input")


def synthetic_wav(index: int) -> bytes:
    """A one-second tone."""
    rng = np.random.default_rng(index)
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * np.arange(16000) / 16000)
    buffer = io.BytesIO()
    wavfile.write(buffer, 16000, (tone * 32767).astype(np.int16))
    return buffer.getvalue()


def synthetic_png(index: int) -> bytes:
    """A 28x28 noise image."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(index).integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def perturbed_wav(source: Path, copy: int) -> bytes:
    rate, samples = wavfile.read(source)
    samples = samples.copy()
    samples.flat[copy % samples.size] ^= 1
    buffer = io.BytesIO()
    wavfile.write(buffer, rate, samples)
    return buffer.getvalue()


def perturbed_png(source: Path, copy: int) -> bytes:
    with Image.open(source) as picture:
        pixels = np.array(picture)
    pixels.flat[copy % pixels.size] ^= 1
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# How the benchmark makes files of a modality's format: (a stand-in when no corpus is on disk, a copy
# of a corpus file with one sample or pixel nudged, so that it is a distinct file with a distinct id).
FILE_MAKERS = {"audio": (synthetic_wav, perturbed_wav), "image": (synthetic_png, perturbed_png)}


def build_corpus(modality: str, *, count: int, dest: Path) -> Path:
    """dest/<label>/<file>: `count` files spread evenly over the source corpus, and a testing_list.txt.

    Beyond the corpus's size, perturbed copies of its files are added, named
    `<stem>_copyK` so that a speaker's copies share the speaker's split.
    Without a corpus on disk, synthetic files in 5 classes. The corpus's own
    split lists are kept for the files taken; without them every tenth file is
    listed for testing, so that the listed files' cost stays measured.
    """
    spec = MODALITIES[modality]
    source_root = CORPORA / spec.demo_corpus.folder
    synthetic, perturbed = FILE_MAKERS[modality]
    available = list_inputs(source_root, spec.extensions) if source_root.is_dir() else []
    source_lists = read_listed_splits(source_root) if available else {}
    listed = {}
    for index in range(count):
        if not available:
            relative = Path(f"class{index % 5}") / f"{index}{spec.extensions[0]}"
            data, split = synthetic(index), None
        else:
            copy, position = divmod(index, len(available))
            source = available[position if count > len(available) else index * len(available) // count]
            relative = source.relative_to(source_root)
            split = source_lists.get(relative.as_posix())
            data = None
            if copy:
                relative = relative.with_name(f"{relative.stem}_copy{copy}{relative.suffix}")
                data = perturbed(source, copy)
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            os.link(source, target)  # same filesystem as /tmp: no copy
        else:
            target.write_bytes(data)
        if split is not None or (not source_lists and index % LISTED_EVERY == 0):
            listed[relative.as_posix()] = split or "test"
    for split, list_name in LIST_FILES.items():
        names = sorted(path for path, listed_split in listed.items() if listed_split == split)
        if names:
            (dest / list_name).write_text("".join(f"{name}\n" for name in names))
    return dest


def plain_loop(root: Path, out_dir: Path, *, modality: str) -> int:
    """The floor: the pipeline's per-file work for each file in one loop. Returns the number of records."""
    spec = MODALITIES[modality]
    config = spec.config_class()
    rule = SplitRule(config=SplitConfig(), listed=read_listed_splits(root))
    files = list_inputs(root, spec.extensions)
    vocabulary = index_labels(sorted({class_folder(path.relative_to(root).as_posix()) for path in files} - {None}))
    out_dir.mkdir(parents=True)
    records, error_rows = 0, []
    with contextlib.ExitStack() as stack:
        shards = {split: stack.enter_context(open(out_dir / f"{split}.tfrecord", "wb")) for split in SPLITS}
        for path in files:
            relative_path = path.relative_to(root).as_posix()
            split = rule.split_of(relative_path)
            size = path.stat().st_size
            try:
                _, serialized = encode_input_file(
                    spec=spec, config=config, relative_path=relative_path, size_bytes=size, split=split,
                    vocabulary=vocabulary,
                    read=lambda limit: read_at_most(str(path), limit=limit, expected_bytes=size))
            except InvalidInputError as error:
                error_rows.append(f"{path}: {error}")
                continue
            _TFRecordUtil.write_record(shards[split], serialized)
            records += 1
    (out_dir / "errors.txt").write_text("".join(row + "\n" for row in error_rows))
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

    def __init__(self, root_pid: int, interval: float = 0.1):
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
    command = [sys.executable, "-m", "bench.preprocess", "--phase", phase, "--modality", modality, "--root", str(root),
               "--out_dir", str(out_dir)]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
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
    """Per phase, the fastest of `repeats` runs, with the least CPU and the highest memory peak among them."""
    root = build_corpus(modality, count=count, dest=work_dir / f"{modality}-{count}" / "input")
    runs = {phase: [] for phase in PHASES}
    for _ in range(repeats):
        for phase in PHASES:
            runs[phase].append(measure(phase, modality=modality, root=root, files=count,
                                       out_dir=work_dir / f"{modality}-{count}" / phase.replace(" ", "_")))
    return [{**min(phase_runs, key=lambda run: run["seconds"]),
             "cpu_seconds": min(run["cpu_seconds"] for run in phase_runs),
             "peak_mib": max(run["peak_mib"] for run in phase_runs)}
            for phase_runs in runs.values()]


def print_rows(modality: str, rows: list[dict]) -> None:
    loop_rate = rows[0]["files_per_s"]
    for row in rows:
        print(f"{modality:6} {row['files']:6d} {row['phase']:15} {row['seconds']:8.2f} {row['files_per_s']:9.1f} "
              f"{row['files_per_s'] / loop_rate:8.2f} {row['cpu_seconds']:8.2f} {row['bytes_per_example']:14.0f} "
              f"{row['peak_mib']:9.0f}", flush=True)


def fixed_and_rate(small: dict, large: dict) -> tuple[float, float]:
    """(seconds that do not depend on the corpus, files/s beyond them), from one phase's runs at two sizes."""
    rate = (large["files"] - small["files"]) / (large["seconds"] - small["seconds"])
    return small["seconds"] - small["files"] / rate, rate


def print_verdicts(rows_by_size: dict[str, list[list[dict]]]) -> None:
    """Target (a) for each corpus; target (b) for each Beam phase, from its two corpus sizes."""
    print("\ntarget (a): beam on 2 workers at least as fast as the plain loop on one core")
    for modality, sizes in rows_by_size.items():
        for rows in sizes:
            loop, two_workers = rows[0], next(row for row in rows if row["phase"] == TWO_WORKERS)
            ratio = two_workers["files_per_s"] / loop["files_per_s"]
            print(f"  {modality:6} {loop['files']:6d} files: {two_workers['files_per_s']:7.1f} vs "
                  f"{loop['files_per_s']:7.1f} files/s = {ratio:.2f} x the loop: {'met' if ratio >= 1 else 'MISSED'}")
    print("  split into a fixed start-up and a rate, from the two corpus sizes (t = start-up + files / rate):")
    for modality, (small, large) in rows_by_size.items():
        loop_start, loop_rate = fixed_and_rate(small[0], large[0])
        workers_start, workers_rate = fixed_and_rate(*(next(row for row in rows if row["phase"] == TWO_WORKERS)
                                                       for rows in (small, large)))
        line = (f"  {modality:6} loop {loop_start:4.1f} s + {loop_rate:7.1f} files/s; "
                f"2 workers {workers_start:4.1f} s + {workers_rate:7.1f} files/s = "
                f"{workers_rate / loop_rate:.2f} x the loop's rate")
        if workers_rate > loop_rate:
            break_even = (workers_start - loop_start) / (1 / loop_rate - 1 / workers_rate)
            line += f"; as fast as the loop from about {break_even:,.0f} files"
        print(line)
    print(f"target (b): peak memory flat as the corpus grows (peak at 4N / peak at N <= {FLAT_MEMORY_RATIO})")
    for modality, (small, large) in rows_by_size.items():
        for row_small, row_large in zip(small[1:], large[1:]):
            ratio = row_large["peak_mib"] / row_small["peak_mib"]
            added_files = row_large["files"] - row_small["files"]
            per_file = (row_large["peak_mib"] - row_small["peak_mib"]) * 1024 / added_files
            print(f"  {modality:6} {row_small['phase']:15} {row_small['peak_mib']:5.0f} MiB at {row_small['files']} "
                  f"files, {row_large['peak_mib']:5.0f} MiB at {row_large['files']}: {ratio:.2f} "
                  f"({per_file:+.1f} KiB per added file): {'met' if ratio <= FLAT_MEMORY_RATIO else 'MISSED'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--audio_files", type=int, default=4000, help="N for audio; 4N is run too")
    parser.add_argument("--image_files", type=int, default=16000, help="N for images; 4N is run too")
    parser.add_argument("--work_dir", default="/tmp/soundsight-bench", help="emptied first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per phase; the fastest counts")
    parser.add_argument("--modalities", default="audio,image", help="comma-separated subset of audio,image")
    parser.add_argument("--phase", choices=PHASES, help="internal: run one phase and print its JSON")
    parser.add_argument("--modality", choices=MODALITIES, help="internal, with --phase")
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
    rows_by_size = {}
    for modality in args.modalities.split(","):
        for files in (counts[modality], 4 * counts[modality]):
            rows = bench_modality(modality, count=files, work_dir=work_dir, repeats=args.repeats)
            print_rows(modality, rows)
            rows_by_size.setdefault(modality, []).append(rows)
    print_verdicts(rows_by_size)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
