"""Is batch prediction on Beam as fast as one process? Prints rates, ratios, start-up, memory, verdicts (issue #22).

    python -m bench.predict --model_dirs /tmp/models/audio,/tmp/models/image --corpora /tmp/fresh3/data/raw

For each model folder (its modality from its dataset.json; `python -m trainer.export` has written its serving/
and litert/), four engines predict every file of a folder-per-class tree, each in a fresh child process:

  batch_predict  `python -m trainer.batch_predict` (Beam RunInference) on 2 workers, with the flags of
                 bench.preprocess's "beam 2 workers"
  numpy+tensor   one process: the pipeline's NumPy featurizer and M/saved_model on batches (bench.predict_engines)
  serving        one process: M/serving on batches, padded_waveform for audio, serving_default on bytes for images
  litert int8    one process: M/litert/model_int8.tflite, one file at a time, num_threads=1

The trees hold N files (--audio_files, --image_files) and --scale x N, taken from <--corpora>/<the modality's
demo corpus folder> by bench.preprocess.build_corpus (perturbed copies beyond the corpus's size; synthetic
files when it is absent). Each line: the child's wall time from its start to its exit (the fastest of
--repeats runs), Python's and TensorFlow's imports and the model's load included, so that the pipeline, a
program of its own, is timed as the others are; files/s and its ratio to the best single-process engine's at
that size; the CPU seconds of the child's process tree; the tree's peak resident memory, sampled from /proc,
and the most processes in it at once. The repeats cycle through the engines, so a burst of other load on the
machine hurts one run of each rather than every run of one engine. The two sizes split each engine's time
into a fixed start-up and a rate (t = start-up + files / rate), as bench.preprocess does.

Targets, per modality, from ratios within this one run (the machine is noisy): (1) the pipeline's rate within
1.3 x the best single-process rate; (2) the serving model's rate >= 0.8 x numpy+tensor's; (3) peak memory flat
from N to --scale x N files (the larger peak over the smaller <= 1.2), for every engine.
"""
import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench import predict_engines
from bench.engines import REPO, RUNNER_FLAGS
from bench.preprocess import (FILE_MAKERS, FLAT_MEMORY_RATIO, best_of, build_corpus, fixed_and_rate, list_inputs,
                              memory_verdicts, run_measured)
from beam_jobs.modalities import MODALITIES
from trainer.model_dir import ModelDir

PIPELINE = "batch_predict"
PIPELINE_FLAGS = RUNNER_FLAGS["beam 2 workers"]
SINGLE_PROCESS = tuple(predict_engines.ENGINES)
ENGINES = (PIPELINE, *SINGLE_PROCESS)
WITHIN_BEST = 1.3  # target (1): the best single-process rate at most this many times the pipeline's
SERVING_AT_LEAST = 0.8  # target (2): the serving model's rate at least this many times numpy+tensor's
TENSOR_MODEL, SERVING = "numpy+tensor", "serving"


def pipeline_unavailable() -> str | None:
    """Why trainer.batch_predict cannot run from this checkout, or None when it can."""
    if importlib.util.find_spec("trainer.batch_predict") is None:
        return f"no module trainer.batch_predict in {REPO}"
    return None


def check_model_dirs(parser: argparse.ArgumentParser, value: str) -> dict[str, str]:
    """{modality: model folder} for --model_dirs; a parser error names a missing file and what writes it."""
    model_dirs = {}
    for model_dir in value.split(","):
        layout = ModelDir(model_dir)
        for path, writer in ((layout.manifest, "trainer.train"), (layout.saved_model, "trainer.train"),
                             (layout.serving, "trainer.export"), (layout.litert_model("int8"), "trainer.export")):
            if not os.path.exists(path):
                parser.error(f"--model_dirs: {path} not found; python -m {writer} --model_dir {model_dir} writes it")
        modality = predict_engines.load_manifest(model_dir).modality
        if modality not in FILE_MAKERS:
            parser.error(f"--model_dirs: {model_dir} is a {modality} model; the benchmark makes "
                         f"{' and '.join(FILE_MAKERS)} files only")
        if modality in model_dirs:
            parser.error(f"--model_dirs: {model_dirs[modality]} and {model_dir} are both {modality} models")
        model_dirs[modality] = model_dir
    return model_dirs


def engine_command(engine: str, *, model_dir: str, root: Path, file_list: Path, out_dir: Path) -> list[str]:
    if engine == PIPELINE:
        return [sys.executable, "-m", "trainer.batch_predict", "--model_dir", model_dir, "--input_root", str(root),
                "--output_dir", str(out_dir), *PIPELINE_FLAGS]
    return [sys.executable, "-m", "bench.predict_engines", "--engine", engine, "--model_dir", model_dir,
            "--root", str(root), "--file_list", str(file_list), "--out_dir", str(out_dir)]


def measure(engine: str, *, model_dir: str, root: Path, file_list: Path, files: int, out_dir: Path) -> dict:
    """Times `engine` in a fresh child process, from its start to its exit, sampling its tree's memory."""
    shutil.rmtree(out_dir, ignore_errors=True)
    command = engine_command(engine, model_dir=model_dir, root=root, file_list=file_list, out_dir=out_dir)
    child = run_measured(command, what=f"{engine} on {root}")
    if engine != PIPELINE:
        counts = json.loads(child.stdout.strip().splitlines()[-1])
        if counts["records"] + counts["errors"] != files:
            raise RuntimeError(f"{engine} on {root} answered for {counts} of {files} files")
    return {"engine": engine, "files": files, "seconds": child.seconds, "files_per_s": files / child.seconds,
            "cpu_seconds": child.cpu_seconds, "peak_mib": child.peak_mib, "processes": child.peak_processes}


def bench_size(modality: str, *, model_dir: str, count: int, engines: list[str], corpora: Path, work_dir: Path,
               repeats: int) -> dict[str, dict]:
    """{engine: the fastest of `repeats` runs on `count` files, with the least CPU, the highest peaks}."""
    size_dir = work_dir / f"{modality}-{count}"
    root = build_corpus(modality, count=count, corpora=corpora, dest=size_dir / "input")
    file_list = size_dir / "files.txt"
    file_list.write_text("".join(f"{path.relative_to(root).as_posix()}\n"
                                 for path in list_inputs(root, MODALITIES[modality].extensions)))
    runs = {engine: [] for engine in engines}
    for _ in range(repeats):
        for engine in engines:
            runs[engine].append(measure(engine, model_dir=model_dir, root=root, file_list=file_list, files=count,
                                        out_dir=size_dir / engine.replace(" ", "_")))
    return {engine: best_of(engine_runs) for engine, engine_runs in runs.items()}


HEADER = (f"{'':6} {'files':>6} {'engine':14} {'seconds':>8} {'files/s':>9} {'vs best':>8} {'CPU s':>8} "
          f"{'peak MiB':>9} {'procs':>6}")


def best_single(rates: dict[str, float]) -> str:
    """The single-process engine with the highest of `rates` ({engine: files/s})."""
    return max(SINGLE_PROCESS, key=lambda engine: rates[engine])


def print_rows(modality: str, rows: dict[str, dict], *, unavailable: str | None) -> None:
    best_files_per_s = rows[best_single({engine: rows[engine]["files_per_s"] for engine in SINGLE_PROCESS})][
        "files_per_s"]
    files = rows[SINGLE_PROCESS[0]]["files"]
    if unavailable:
        print(f"{modality:6} {files:6d} {PIPELINE:14} not available: {unavailable}", flush=True)
    for row in rows.values():
        print(f"{modality:6} {row['files']:6d} {row['engine']:14} {row['seconds']:8.2f} {row['files_per_s']:9.1f} "
              f"{row['files_per_s'] / best_files_per_s:8.2f} {row['cpu_seconds']:8.2f} {row['peak_mib']:9.0f} "
              f"{row['processes']:6d}", flush=True)


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def print_verdicts(rows_by_size: dict[str, list[dict[str, dict]]], *, unavailable: str | None) -> None:
    """Each engine's start-up and rate against the best single-process rate; then targets (1), (2) and (3)."""
    print("\nfixed start-up and rate, from the two sizes (t = start-up + files / rate), and the rate over the best "
          "single-process rate:")
    rates, best = {}, {}
    for modality, (small, large) in rows_by_size.items():
        fits = {engine: fixed_and_rate(small[engine], large[engine]) for engine in small}
        rates[modality] = {engine: rate for engine, (_, rate) in fits.items()}
        best[modality] = best_single(rates[modality])
        for engine, (startup, rate) in fits.items():
            print(f"  {modality:6} {engine:14} {startup:5.2f} s + {rate:7.1f} files/s: "
                  f"{rate / rates[modality][best[modality]]:5.2f} x {best[modality]}'s")
    print(f"target (1): {PIPELINE}'s rate within {WITHIN_BEST} x the best single-process rate")
    for modality in rows_by_size:
        if unavailable:
            print(f"  {modality:6} {PIPELINE} not available: {unavailable}")
            continue
        ratio = rates[modality][best[modality]] / rates[modality][PIPELINE]
        print(f"  {modality:6} {best[modality]} {rates[modality][best[modality]]:.1f} files/s, {PIPELINE} "
              f"{rates[modality][PIPELINE]:.1f} files/s: {ratio:.2f} x: {verdict(ratio <= WITHIN_BEST)}")
    print(f"target (2): the serving model's rate >= {SERVING_AT_LEAST} x the rate of {TENSOR_MODEL}")
    for modality in rows_by_size:
        ratio = rates[modality][SERVING] / rates[modality][TENSOR_MODEL]
        print(f"  {modality:6} {SERVING} {rates[modality][SERVING]:.1f} files/s, {TENSOR_MODEL} "
              f"{rates[modality][TENSOR_MODEL]:.1f} files/s: {ratio:.2f} x: {verdict(ratio >= SERVING_AT_LEAST)}")
    print(f"target (3): peak memory flat as the input grows (the larger size's peak / the smaller's <= "
          f"{FLAT_MEMORY_RATIO})")
    engines = list(next(iter(rows_by_size.values()))[0]) if rows_by_size else []
    for line in memory_verdicts(rows_by_size, engines=engines, flat_ratio=FLAT_MEMORY_RATIO):
        print(line)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dirs", required=True,
                        help="comma-separated model folders, one per modality, each with serving/ and litert/")
    parser.add_argument("--corpora", default="/tmp/corpora",
                        help="folder of the demo corpora, laid out as DATA/raw (speech/, fashion/)")
    parser.add_argument("--audio_files", type=int, default=9000, help="N for audio (the demo corpus's size)")
    parser.add_argument("--image_files", type=int, default=10000, help="N for images")
    parser.add_argument("--scale", type=int, default=4,
                        help="the larger size is this many times N: with N, it splits start-up from rate and "
                             "shows whether memory stays flat")
    parser.add_argument("--repeats", type=int, default=2, help="runs per engine and size; the fastest counts")
    parser.add_argument("--work_dir", default="/tmp/soundsight-bench-predict", help="emptied first")
    args = parser.parse_args(argv)
    model_dirs = check_model_dirs(parser, args.model_dirs)
    counts = {"audio": args.audio_files, "image": args.image_files}
    for modality in model_dirs:
        if counts[modality] < 1:
            parser.error(f"--{modality}_files={counts[modality]}: must be at least 1")
    if args.scale < 2:
        parser.error(f"--scale={args.scale}: must be at least 2, to split start-up from rate")
    unavailable = pipeline_unavailable()
    engines = list(SINGLE_PROCESS if unavailable else ENGINES)
    work_dir = Path(args.work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    began = time.monotonic()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(HEADER)
    rows_by_size = {}
    for modality, model_dir in model_dirs.items():
        for files in (counts[modality], args.scale * counts[modality]):
            rows = bench_size(modality, model_dir=model_dir, count=files, engines=engines, corpora=Path(args.corpora),
                              work_dir=work_dir, repeats=args.repeats)
            print_rows(modality, rows, unavailable=unavailable)
            rows_by_size.setdefault(modality, []).append(rows)
    print_verdicts(rows_by_size, unavailable=unavailable)
    print(f"load average {os.getloadavg()[0]:.1f}; {(time.monotonic() - began) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
