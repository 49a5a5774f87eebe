"""Is the Beam pipeline as fast as the same work on two cores? Prints times, ratios, start-up, memory, verdicts.

    python -m bench.preprocess --corpora /tmp/fresh3/data/raw --audio_files 9000 --image_files 70000

For each modality, the engines of bench.engines (loop, pool 2, beam 2 workers, beam 2 spawned, prism,
prism service, and hf datasets, the tool our users would otherwise pick; `--engines` picks them, beam
in_memory too) run at two sizes: N files (--audio_files, --image_files; the demo corpora's sizes by
default) and --startup_files (30), taken from <--corpora>/<its demo corpus
folder> (perturbed copies beyond the corpus's size; synthetic files when it is absent), with the
corpus's split lists (a testing_list.txt naming every tenth file when it has none, as Fashion-MNIST's
and Speech Commands' trees have). Each line: wall seconds and files/s (the fastest of --repeats runs),
the ratio of the wall time to pool 2's, the CPU seconds of the whole process tree (less sensitive than
wall time to other load on the machine; with the services'), bytes per example on disk, the peak
resident memory of the engine's process tree (main process, workers, Prism, and for prism service the
job service, the worker pool and its SDK workers), sampled from /proc, the most processes in that
tree at once, and the seconds the long-lived services took to start (before, not in, the wall time).
Each engine runs in a fresh child process of this script, with its services started afresh, so no
engine inherits another's heap or warm caches, and the repeats cycle through the engines, so a burst
of other load on the machine hurts one run of each rather than every run of one engine. The wall time
starts once the child has imported Python's and Beam's modules, which every engine pays alike (and hf
datasets' child has imported `datasets`).
The two sizes split each engine's wall time into a fixed start-up and a rate (t = start-up + files /
rate): at 30 files the time is almost all start-up.
Targets at N: (1) the best Beam runner within 1.25 x pool 2's wall time for every modality, (2) its
fixed start-up <= 2 s; and (3) peak memory flat as the corpus grows: the peak at N over the peak at
--startup_files about 1.
"""
import argparse
import dataclasses
import importlib
import importlib.util
import io
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import wavfile

from bench.engines import ENGINE_ENVIRONMENT, ENGINE_IMPORTS, ENGINES, REPO, RUNNER_FLAGS, run_engine, services
from beam_jobs.inputs.splits import LIST_FILES
from beam_jobs.inputs.tree import classify
from beam_jobs.modalities import MODALITIES
from beam_jobs.table.raw_files import read_listed_splits

LISTED_EVERY = 10  # a corpus without split lists gets every tenth file in its testing_list.txt
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CEILING = "pool 2"  # the engine every other one is compared with
WITHIN_CEILING = 1.25  # target (1): the best runner's wall time at most this many times the pool's
MAX_STARTUP_SECONDS = 2.0  # target (2)
FLAT_MEMORY_RATIO = 1.2  # target (3) counts a peak at N up to this many times the peak at the small size as flat
DEFAULT_ENGINES = "loop,pool 2,beam 2 workers,beam 2 spawned,prism,prism service,hf datasets"


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


def build_corpus(modality: str, *, count: int, corpora: Path, dest: Path) -> Path:
    """dest/<label>/<file>: `count` files spread evenly over corpora/<the modality's demo corpus folder>,
    and a testing_list.txt.

    Beyond the corpus's size, perturbed copies of its files are added, named
    `<stem>_copyK` so that a speaker's copies share the speaker's split.
    Without a corpus on disk, synthetic files in 5 classes. The corpus's own
    split lists are kept for the files taken; without them every tenth file is
    listed for testing, so that the listed files' cost stays measured.
    """
    spec = MODALITIES[modality]
    source_root = corpora / spec.demo_corpus.folder
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


def tree_usage(root_pids: list[int]) -> tuple[int, int]:
    """(resident bytes, number of processes) of `root_pids` and all their descendants, from /proc."""
    children = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue  # the process ended while we looked
            children.setdefault(parent, []).append(int(entry.name))
    total, processes, pending = 0, 0, list(root_pids)
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * PAGE_BYTES
        except (FileNotFoundError, ProcessLookupError):
            continue
        processes += 1
    return total, processes


class PeakMemory:
    """Samples tree_usage(root_pids) every `interval` seconds while in the `with` block; keeps the peaks."""

    def __init__(self, root_pids: list[int], interval: float = 0.1):
        self.root_pids = root_pids
        self.interval = interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            resident_bytes, processes = tree_usage(self.root_pids)
            self.peak_bytes = max(self.peak_bytes, resident_bytes)
            self.peak_processes = max(self.peak_processes, processes)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def bytes_on_disk(out_dir: Path) -> int:
    """The bytes of the records an engine wrote: TFRecord shards, or hf datasets' Arrow files."""
    return sum(path.stat().st_size for pattern in ("*.tfrecord*", "*.arrow") for path in out_dir.rglob(pattern))


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass(frozen=True)
class ChildRun:
    stdout: str
    seconds: float  # from its start to its exit
    cpu_seconds: float  # its own and that of the processes it waited for
    peak_mib: float  # of its process tree
    peak_processes: int


def run_measured(command: list[str], *, what: str) -> ChildRun:
    """Runs `command` in a child process from the repository, timing it and sampling its tree's memory;
    RuntimeError naming `what`, with the child's stderr, when it fails."""
    cpu_before = children_cpu_seconds()
    start = time.perf_counter()
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        with PeakMemory([child.pid]) as memory:
            stdout, stderr = child.communicate()
    seconds = time.perf_counter() - start
    if child.returncode:
        raise RuntimeError(f"{what} failed with exit status {child.returncode}: {' '.join(command)}\n{stderr}")
    return ChildRun(stdout=stdout, seconds=seconds, cpu_seconds=children_cpu_seconds() - cpu_before,
                    peak_mib=memory.peak_bytes / 2**20, peak_processes=memory.peak_processes)


def measure(engine: str, *, modality: str, root: Path, files: int, out_dir: Path) -> dict:
    """Times `engine` in a fresh child process, after starting its services, sampling the memory of both."""
    shutil.rmtree(out_dir, ignore_errors=True)
    log_dir = out_dir.with_name(f"{out_dir.name}-logs")
    cpu_before = children_cpu_seconds()  # counts the child, the services, and the workers they waited for
    with services(engine, log_dir=log_dir) as (pipeline_args, service_pids, service_seconds):
        command = [sys.executable, "-m", "bench.preprocess", "--engine", engine, "--modality", modality,
                   "--root", str(root), "--out_dir", str(out_dir), "--", *pipeline_args]
        with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **ENGINE_ENVIRONMENT.get(engine, {})}) as child:
            with PeakMemory([child.pid, *service_pids]) as memory:
                stdout, stderr = child.communicate()
    if child.returncode:
        logs = f" (services' logs in {log_dir})" if log_dir.exists() else ""
        raise RuntimeError(f"{engine} on {root} failed{logs}:\n{stderr}")
    measured = json.loads(stdout.strip().splitlines()[-1])
    return {"engine": engine, "files": files, **measured, "files_per_s": files / measured["seconds"],
            "cpu_seconds": children_cpu_seconds() - cpu_before,
            "bytes_per_example": bytes_on_disk(out_dir) / max(measured["records"], 1),
            "peak_mib": memory.peak_bytes / 2**20, "processes": memory.peak_processes,
            "service_seconds": service_seconds}


def bench_size(modality: str, *, count: int, engines: list[str], corpora: Path, work_dir: Path,
               repeats: int) -> dict[str, dict]:
    """{engine: the fastest of `repeats` runs, with the least CPU and service start-up, the highest peaks}."""
    root = build_corpus(modality, count=count, corpora=corpora, dest=work_dir / f"{modality}-{count}" / "input")
    runs = {engine: [] for engine in engines}
    for _ in range(repeats):
        for engine in engines:
            runs[engine].append(measure(engine, modality=modality, root=root, files=count,
                                        out_dir=work_dir / f"{modality}-{count}" / engine.replace(" ", "_")))
    return {engine: {**best_of(engine_runs), "service_seconds": min(run["service_seconds"] for run in engine_runs)}
            for engine, engine_runs in runs.items()}


def best_of(runs: list[dict]) -> dict:
    """The fastest of one engine's runs at one size, with the least CPU and the highest peaks of them all."""
    return {**min(runs, key=lambda run: run["seconds"]),
            "cpu_seconds": min(run["cpu_seconds"] for run in runs),
            "peak_mib": max(run["peak_mib"] for run in runs),
            "processes": max(run["processes"] for run in runs)}


HEADER = (f"{'':6} {'files':>6} {'engine':15} {'seconds':>8} {'files/s':>9} {'vs pool':>8} {'CPU s':>8} "
          f"{'bytes/example':>14} {'peak MiB':>9} {'procs':>6} {'services s':>10}")


def print_rows(modality: str, rows: dict[str, dict]) -> None:
    ceiling_seconds = rows[CEILING]["seconds"]
    for row in rows.values():
        services_column = f"{row['service_seconds']:10.2f}" if row["service_seconds"] else f"{'':10}"
        print(f"{modality:6} {row['files']:6d} {row['engine']:15} {row['seconds']:8.2f} {row['files_per_s']:9.1f} "
              f"{row['seconds'] / ceiling_seconds:8.2f} {row['cpu_seconds']:8.2f} {row['bytes_per_example']:14.0f} "
              f"{row['peak_mib']:9.0f} {row['processes']:6d} {services_column}", flush=True)


def fixed_and_rate(small: dict, large: dict) -> tuple[float, float]:
    """(seconds that do not depend on the corpus, files/s beyond them), from one engine's runs at two sizes.

    A larger run no slower than the smaller (noise, on tiny corpora) gives the smaller's time and an infinite rate.
    """
    if large["seconds"] <= small["seconds"]:
        return small["seconds"], math.inf
    rate = (large["files"] - small["files"]) / (large["seconds"] - small["seconds"])
    return small["seconds"] - small["files"] / rate, rate


def print_verdicts(rows_by_size: dict[str, list[dict[str, dict]]]) -> None:
    """Each engine's start-up and rate; targets (1) and (2) for the best runner at N; target (3) per runner."""
    print("\nfixed start-up and rate, from the two sizes (t = start-up + files / rate; services start before t):")
    startup = {}
    for modality, (small, large) in rows_by_size.items():
        for engine in small:
            startup[modality, engine], rate = fixed_and_rate(small[engine], large[engine])
            print(f"  {modality:6} {engine:15} {startup[modality, engine]:5.2f} s + {rate:7.1f} files/s")
    runners = [engine for engine in next(iter(rows_by_size.values()))[1] if engine in RUNNER_FLAGS]
    if not runners:
        return
    sizes = ", ".join(f"{large[CEILING]['files']} {modality}" for modality, (_, large) in rows_by_size.items())
    print(f"target (1): the best runner within {WITHIN_CEILING} x pool 2's wall time for every modality "
          f"(at {sizes} files)")
    ratios = {engine: {modality: large[engine]["seconds"] / large[CEILING]["seconds"]
                       for modality, (_, large) in rows_by_size.items()} for engine in runners}
    for engine, by_modality in ratios.items():
        print(f"  {engine:15} " + ", ".join(f"{modality} {ratio:.2f} x" for modality, ratio in by_modality.items()))
    best = min(runners, key=lambda engine: max(ratios[engine].values()))
    worst_ratio = max(ratios[best].values())
    print(f"  best: {best}, at worst {worst_ratio:.2f} x: {'PASS' if worst_ratio <= WITHIN_CEILING else 'FAIL'}")
    best_startup = {modality: startup[modality, best] for modality in rows_by_size}
    service_seconds = max(large[best]["service_seconds"] for _, large in rows_by_size.values())
    services_note = f" (and {service_seconds:.2f} s to start its services, once)" if service_seconds else ""
    print(f"target (2): {best}'s fixed start-up <= {MAX_STARTUP_SECONDS} s: "
          + ", ".join(f"{modality} {seconds:.2f} s" for modality, seconds in best_startup.items()) + services_note
          + f": {'PASS' if max(best_startup.values()) <= MAX_STARTUP_SECONDS else 'FAIL'}")
    print(f"target (3): peak memory flat as the corpus grows (peak at N / peak at the small size <= "
          f"{FLAT_MEMORY_RATIO})")
    for line in memory_verdicts(rows_by_size, engines=runners):
        print(line)


def parse_engines(parser: argparse.ArgumentParser, value: str) -> list[str]:
    engines = value.split(",")
    unknown = [engine for engine in engines if engine not in ENGINES]
    if unknown:
        parser.error(f"--engines: unknown {', '.join(map(repr, unknown))}; known: {', '.join(ENGINES)}")
    if CEILING not in engines:
        parser.error(f"--engines={value}: must include {CEILING!r}, which every ratio divides by")
    for engine in engines:
        for module in ENGINE_IMPORTS.get(engine, ()):
            if importlib.util.find_spec(module) is None:
                parser.error(f"--engines: {engine!r} needs the {module!r} package, which is not installed: "
                             f"pip install -e '.[test]', or leave {engine!r} out")
    return engines


def memory_verdicts(rows_by_size: dict, *, engines, flat_ratio: float = FLAT_MEMORY_RATIO) -> list[str]:
    """A line per modality and engine: its peak memory at the small and the large size, their ratio, the
    growth per added file, and PASS when the ratio is at most `flat_ratio`. `rows_by_size` maps each modality
    to (small, large), each {engine: {"peak_mib", "files", ...}}."""
    lines = []
    for modality, (small, large) in rows_by_size.items():
        for engine in engines:
            ratio = large[engine]["peak_mib"] / small[engine]["peak_mib"]
            per_file = ((large[engine]["peak_mib"] - small[engine]["peak_mib"]) * 1024
                        / (large[engine]["files"] - small[engine]["files"]))
            lines.append(f"  {modality:6} {engine:15} {small[engine]['peak_mib']:5.0f} MiB at {small[engine]['files']} "
                         f"files, {large[engine]['peak_mib']:5.0f} MiB at {large[engine]['files']}: {ratio:.2f} "
                         f"({per_file:+.1f} KiB per added file): {'PASS' if ratio <= flat_ratio else 'FAIL'}")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--audio_files", type=int, default=9000, help="N for audio (the demo corpus's size)")
    parser.add_argument("--image_files", type=int, default=70000, help="N for images (the demo corpus's size)")
    parser.add_argument("--startup_files", type=int, default=30,
                        help="the small size, which with N splits each engine's time into start-up and rate")
    parser.add_argument("--corpora", default="/tmp/corpora",
                        help="folder of the demo corpora, laid out as DATA/raw (speech/, fashion/)")
    parser.add_argument("--engines", default=DEFAULT_ENGINES, help=f"comma-separated subset of {','.join(ENGINES)}")
    parser.add_argument("--work_dir", default="/tmp/soundsight-bench", help="emptied first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine and size; the fastest counts")
    parser.add_argument("--modalities", default="audio,image", help="comma-separated subset of audio,image")
    parser.add_argument("--engine", choices=ENGINES, help="internal: run one engine and print its JSON")
    parser.add_argument("--modality", choices=MODALITIES, help="internal, with --engine")
    parser.add_argument("--root", help="internal, with --engine")
    parser.add_argument("--out_dir", help="internal, with --engine")
    parser.add_argument("pipeline_args", nargs="*", help="internal, with --engine, after --")
    args = parser.parse_args(argv)
    if args.engine:
        for module in ENGINE_IMPORTS.get(args.engine, ()):
            importlib.import_module(module)
        start = time.perf_counter()
        records = run_engine(args.engine, modality=args.modality, root=Path(args.root), out_dir=Path(args.out_dir),
                             pipeline_args=args.pipeline_args)
        print(json.dumps({"records": records, "seconds": time.perf_counter() - start}))
        return
    engines = parse_engines(parser, args.engines)
    counts = {"audio": args.audio_files, "image": args.image_files}
    for modality in args.modalities.split(","):
        if not 0 < args.startup_files < counts[modality]:
            parser.error(f"--startup_files={args.startup_files}: must be between 0 and {modality}'s "
                         f"{counts[modality]} files")
    work_dir = Path(args.work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    began = time.monotonic()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(HEADER)
    rows_by_size = {}
    for modality in args.modalities.split(","):
        for files in (args.startup_files, counts[modality]):
            rows = bench_size(modality, count=files, engines=engines, corpora=Path(args.corpora), work_dir=work_dir,
                              repeats=args.repeats)
            print_rows(modality, rows)
            rows_by_size.setdefault(modality, []).append(rows)
    print_verdicts(rows_by_size)
    print(f"load average {os.getloadavg()[0]:.1f}; {(time.monotonic() - began) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
