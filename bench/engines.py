"""The engines bench.preprocess compares, each turning a folder-per-class tree into TFRecord files.

  loop            the pipeline's per-file work (beam_jobs.records.from_file.encode_input_file: read, featurize,
                  hash, encode; an error row for a bad file) in one plain loop, writing TFRecords with
                  Beam's framing: the floor, one core
  pool 2          the same per-file work in a multiprocessing.Pool(2), each task writing its own
                  shards: the practical ceiling on two cores
  beam in_memory  beam_jobs.preprocess on --runner=FnApiRunner, one process
  beam 2 workers  the same with --direct_running_mode=multi_processing --direct_num_workers=2: its workers
                  forked from a zygote that has imported Beam (beam_jobs.runners.forked_workers)
  beam 2 spawned  the same with SOUNDSIGHT_FORK_WORKERS=0: each worker a new Python, as Beam starts them
  prism           the same on --runner=PrismRunner: Prism in a process of its own, the SDK worker in
                  the launching process (LOOPBACK)
  prism service   the same on a Prism job service and Beam's SDK worker pool (worker_pool_main), both
                  long-lived processes started before the run (`services`); the architecture of
                  Dataflow Runner v2 and Flink. Prism 2.77 asks the pool for one SDK worker process
                  per environment, and this pipeline has one.
  hf datasets     the tool our users would otherwise pick: a Hugging Face `datasets.Dataset` of the
                  listing, mapped by the same per-file work in 2 processes (`Dataset.map(num_proc=2)`)
                  and saved as Arrow (`save_to_disk`)
Every Beam engine gets --in_process_below=0, so that a small corpus, too, goes through its runner.
"""
import contextlib
import io
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from apache_beam.io.tfrecordio import _TFRecordUtil

from beam_jobs import preprocess
from beam_jobs.inputs.labels import index_labels
from beam_jobs.inputs.reading import read_at_most
from beam_jobs.inputs.splits import SPLITS
from beam_jobs.inputs.tree import class_folder
from beam_jobs.modalities import MODALITIES
from beam_jobs.modalities.config import SplitConfig
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.modalities.spec import Modality
from beam_jobs.pipeline.plan import ListedFile, list_input_files
from beam_jobs.records.from_file import encode_input_file
from beam_jobs.runners.default import find_prism
from beam_jobs.runners.forked_workers import FORK_WORKERS_VARIABLE

REPO = Path(__file__).resolve().parents[1]
POOL_PROCESSES = 2
TASKS_PER_PROCESS = 8  # small enough tasks that neither process idles at the end, few enough shard files
PRISM_SERVICE = "prism service"
HF_DATASETS = "hf datasets"
# Flags of beam_jobs.preprocess per Beam engine; {job_port} and {pool_port} are those of `services`.
RUNNER_FLAGS = {
    "beam in_memory": ["--runner=FnApiRunner", "--direct_running_mode=in_memory"],
    "beam 2 workers": ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "beam 2 spawned": ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "prism": ["--runner=PrismRunner"],
    PRISM_SERVICE: ["--runner=PortableRunner", "--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
                    "--environment_config=localhost:{pool_port}"],
}
ENGINES = ("loop", "pool 2", *RUNNER_FLAGS, HF_DATASETS)
# Environment variables an engine's process gets on top of this one's.
ENGINE_ENVIRONMENT = {"beam 2 spawned": {FORK_WORKERS_VARIABLE: "0"},
                      HF_DATASETS: {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}}
# Modules an engine's process imports before its clock starts, as every engine's has imported Beam's; only
# that engine's: the others' start-up and memory do not pay for them.
ENGINE_IMPORTS = {HF_DATASETS: ("datasets",)}


def list_work(root: Path, *, modality: str) -> tuple[list[ListedFile], dict[str, int]]:
    """(the input files under `root` with their splits, as the pipeline's planning lists them; the vocabulary)."""
    files, _ = list_input_files((str(root),), extensions=MODALITIES[modality].extensions, split_config=SplitConfig())
    labels = sorted({class_folder(file.relative_path) for file in files} - {None})
    return files, index_labels(labels)


def encode_listed_file(root: Path, *, relative_path: str, size_bytes: int, split: str, spec: Modality, config,
                       vocabulary: dict[str, int]) -> bytes:
    """The serialized Example of one listed file, as the pipeline makes it; InvalidInputError says why it is none."""
    path = str(root / relative_path)
    _, serialized = encode_input_file(
        spec=spec, config=config, relative_path=relative_path, size_bytes=size_bytes, split=split,
        vocabulary=vocabulary, read=lambda limit: read_at_most(path, limit=limit, expected_bytes=size_bytes))
    return serialized


def encode_files(root: Path, files: list[ListedFile], *, modality: str, vocabulary: dict[str, int],
                 shard_name: str) -> tuple[int, list[str]]:
    """Writes the records of `files` to the shards `shard_name.format(split=...)`; (records, error rows)."""
    spec = MODALITIES[modality]
    config = spec.config_class()
    records, error_rows = 0, []
    with contextlib.ExitStack() as stack:
        shards = {split: stack.enter_context(open(shard_name.format(split=split), "wb")) for split in SPLITS}
        for file in files:
            try:
                serialized = encode_listed_file(root, relative_path=file.relative_path, size_bytes=file.size_bytes,
                                                split=file.split, spec=spec, config=config, vocabulary=vocabulary)
            except InvalidInputError as error:
                error_rows.append(f"{root / file.relative_path}: {error}")
                continue
            _TFRecordUtil.write_record(shards[file.split], serialized)
            records += 1
    return records, error_rows


def plain_loop(root: Path, out_dir: Path, *, modality: str) -> int:
    """The floor: the per-file work for every file in one loop. Returns the number of records."""
    files, vocabulary = list_work(root, modality=modality)
    out_dir.mkdir(parents=True)
    records, error_rows = encode_files(root, files, modality=modality, vocabulary=vocabulary,
                                       shard_name=f"{out_dir}/{{split}}.tfrecord")
    (out_dir / "errors.txt").write_text("".join(row + "\n" for row in error_rows))
    return records


def pool_of_processes(root: Path, out_dir: Path, *, modality: str) -> int:
    """The ceiling: the per-file work in POOL_PROCESSES processes, over contiguous runs of the listing, each
    written to shards of its own. Returns the number of records."""
    files, vocabulary = list_work(root, modality=modality)
    out_dir.mkdir(parents=True)
    tasks = max(1, min(len(files), POOL_PROCESSES * TASKS_PER_PROCESS))
    bounds = [len(files) * task // tasks for task in range(tasks + 1)]
    arguments = [(root, files[start:end], modality, vocabulary, f"{out_dir}/{{split}}-{task:05d}.tfrecord")
                 for task, (start, end) in enumerate(zip(bounds, bounds[1:]))]
    with multiprocessing.Pool(POOL_PROCESSES) as pool:
        results = pool.starmap(_encode_task, arguments)
    (out_dir / "errors.txt").write_text("".join(row + "\n" for _, rows in results for row in rows))
    return sum(records for records, _ in results)


def _encode_task(root: Path, files: list[ListedFile], modality: str, vocabulary: dict[str, int],
                 shard_name: str) -> tuple[int, list[str]]:
    """encode_files with positional arguments, as Pool.starmap passes them."""
    return encode_files(root, files, modality=modality, vocabulary=vocabulary, shard_name=shard_name)


def hugging_face_datasets(root: Path, out_dir: Path, *, modality: str) -> int:
    """The per-file work as a Hugging Face `datasets` user writes it: the listing as a Dataset, mapped in
    batches by POOL_PROCESSES processes, saved to `out_dir` as Arrow. Returns the number of records.

    The saved table has the listing's columns (relative_path, size_bytes, split) and two more: example (the
    serialized Example, None for a bad file) and error (None, or why the file is no example).
    """
    import datasets  # only this engine's process pays for it (ENGINE_IMPORTS)

    files, vocabulary = list_work(root, modality=modality)
    listing = datasets.Dataset.from_dict({"relative_path": [file.relative_path for file in files],
                                          "size_bytes": [file.size_bytes for file in files],
                                          "split": [file.split for file in files]})
    encoded = listing.map(_encode_batch, batched=True, num_proc=POOL_PROCESSES,
                          fn_kwargs={"root": root, "modality": modality, "vocabulary": vocabulary})
    # One process: map has written the table to Arrow already, and save_to_disk's num_proc spawns fresh
    # interpreters that import this program again (seconds), to copy it.
    encoded.save_to_disk(str(out_dir))
    error_rows = [f"{root / path}: {error}" for path, error in zip(encoded["relative_path"], encoded["error"])
                  if error is not None]
    (out_dir / "errors.txt").write_text("".join(row + "\n" for row in error_rows))
    return len(encoded) - len(error_rows)


def _encode_batch(batch: dict[str, list], *, root: Path, modality: str,
                  vocabulary: dict[str, int]) -> dict[str, list]:
    """A batch of the listing (columns of equal length) -> the columns example and error, for Dataset.map."""
    spec = MODALITIES[modality]
    config = spec.config_class()
    examples, errors = [], []
    for relative_path, size_bytes, split in zip(batch["relative_path"], batch["size_bytes"], batch["split"]):
        try:
            examples.append(encode_listed_file(root, relative_path=relative_path, size_bytes=size_bytes,
                                               split=split, spec=spec, config=config, vocabulary=vocabulary))
            errors.append(None)
        except InvalidInputError as error:
            examples.append(None)
            errors.append(str(error))
    return {"example": examples, "error": errors}


def beam_pipeline(root: Path, out_dir: Path, *, modality: str, pipeline_args: list[str]) -> int:
    """beam_jobs.preprocess on `root` with `pipeline_args`. Returns the number of records."""
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own summary would drown the table
        summary = preprocess.run([f"--{modality}_root={root}", f"--output_dir={out_dir}", "--in_process_below=0",
                                  *pipeline_args], save_main_session=False)
    return sum(split.num_examples for split in summary.manifests[modality].splits.values())


def run_engine(engine: str, *, modality: str, root: Path, out_dir: Path, pipeline_args: list[str]) -> int:
    """Runs one engine in this process; returns the number of records written."""
    if engine == "loop":
        return plain_loop(root, out_dir, modality=modality)
    if engine == "pool 2":
        return pool_of_processes(root, out_dir, modality=modality)
    if engine == HF_DATASETS:
        return hugging_face_datasets(root, out_dir, modality=modality)
    return beam_pipeline(root, out_dir, modality=modality, pipeline_args=pipeline_args)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def services(engine: str, *, log_dir: Path):
    """Yields (the engine's pipeline flags, the pids of its long-lived services, the seconds they took to start).

    For PRISM_SERVICE, starts Prism's job service and Beam's SDK worker pool together, waits until both
    accept connections, and stops them when the block ends; other engines have none. With this venv first
    on PATH: the worker pool starts each SDK worker as plain `python`, which must import beam_jobs (cwd REPO).
    """
    if engine != PRISM_SERVICE:
        yield RUNNER_FLAGS.get(engine, []), [], 0.0
        return
    ports = {"job_port": free_port(), "pool_port": free_port()}
    commands = {
        "prism": ([find_prism(), f"--job_port={ports['job_port']}", "--serve_http=false"], ports["job_port"]),
        "worker pool": ([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                         f"--service_port={ports['pool_port']}"], ports["pool_port"]),
    }
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    processes = {}
    try:
        for name, (command, _) in commands.items():
            with open(log_dir / f"{name}.log", "w") as log:
                processes[name] = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        for name, (_, port) in commands.items():
            wait_until_listening(processes[name], port=port, log=log_dir / f"{name}.log")
        yield ([flag.format(**ports) for flag in RUNNER_FLAGS[engine]],
               [process.pid for process in processes.values()], time.perf_counter() - start)
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=30)


def wait_until_listening(process: subprocess.Popen, *, port: int, log: Path, timeout: float = 60) -> None:
    """Returns once something accepts connections on `port`; RuntimeError with `log` if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}: {log.read_text()}")
        with socket.socket() as probe:
            if probe.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{process.args} does not listen on {port} after {timeout} s: {log.read_text()}")
