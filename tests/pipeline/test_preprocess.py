"""End to end: `preprocess.run([...])` on a small generated tree with good, bad and skipped files."""
import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import apache_beam
import crc32c
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from beam_jobs import preprocess
from beam_jobs.modalities.config import SplitConfig
from beam_jobs.table.layout import (MANIFEST_NAME, SPAN_ERRORS_NAME, SPAN_FILES_NAME, SPAN_MANIFEST_NAME,
                                    TFDS_FEATURES_NAME, TFDS_INFO_NAME, TFDS_LABELS_NAME)

TFDS_METADATA = {TFDS_INFO_NAME, TFDS_FEATURES_NAME, TFDS_LABELS_NAME}
SPAN_METADATA = {SPAN_MANIFEST_NAME, SPAN_FILES_NAME, SPAN_ERRORS_NAME}  # beside a span's shards, with TFDS'
DATASET_FOLDER = {MANIFEST_NAME, "snapshots", "spans"}
from beam_jobs.inputs.splits import SPLITS, SplitRule
from beam_jobs.table.layout import NOISE_FOLDER_NAME
from beam_jobs.records.features import FEATURES
from beam_jobs.runners.default import find_prism
from beam_jobs.table.manifest import DatasetManifest

REPO = pathlib.Path(__file__).resolve().parents[2]
BAD_FILES = {  # relative to the tree: the reason each must give
    "speech/yes/truncated.wav": "truncated",
    "speech/no/empty.wav": "empty file",
    "speech/up/text.wav": "not a readable PCM WAV",
    "speech/stray.wav": "directly in the input root",
    "pictures/cat/truncated.png": "truncated",
    "pictures/dog/bomb.png": "over the limit of 1000000",
}
LISTED_FOR_VALIDATION = "no/s2_nohash_0.wav"
TREE_FLAGS = ["--max_pixels=1000000", "--shard_size_mb=0.1"]  # 0.1 MB: several audio shards per split


@pytest.fixture(scope="module")
def tree(tmp_path_factory, make_sine, make_wav, make_image, make_bomb_png) -> pathlib.Path:
    """speech/ with 3 classes of 4 wavs, pictures/ with 2 classes of 3 images, plus bad and skipped files."""
    root = tmp_path_factory.mktemp("tree")
    files = {}
    encodings = ("u8", "i16", "i24", "f32")
    for class_index, label in enumerate(("yes", "no", "up")):
        for take in range(4):
            rate = (8000, 16000)[take % 2]
            tone = make_sine(300 + 200 * class_index + 50 * take, rate=rate, seconds=0.8)
            files[f"speech/{label}/s{take}_nohash_0.wav"] = make_wav(tone, rate=rate, encoding=encodings[take])
    files["speech/_background_noise_/noise.wav"] = make_wav(make_sine(60, rate=16000, seconds=3), rate=16000)
    files["speech/validation_list.txt"] = f"{LISTED_FOR_VALIDATION}\n".encode()
    files["speech/README.txt"] = b"not an input"
    good_wav = files["speech/yes/s0_nohash_0.wav"]
    files.update({"speech/yes/truncated.wav": good_wav[: len(good_wav) // 2], "speech/no/empty.wav": b"",
                  "speech/up/text.wav": b"some text renamed to .wav", "speech/stray.wav": good_wav})
    rng = np.random.default_rng(7)
    for label in ("cat", "dog"):
        for index, image_format in enumerate(("PNG", "JPEG", "BMP")):
            picture = Image.fromarray(rng.integers(0, 256, (20 + index, 24, 3), dtype=np.uint8))
            files[f"pictures/{label}/{index}.{image_format.lower()}"] = make_image(picture, image_format)
    good_png = files["pictures/cat/0.png"]
    files.update({"pictures/cat/truncated.png": good_png[: len(good_png) // 2],
                  "pictures/dog/bomb.png": make_bomb_png(5000, 5000), "pictures/cat/notes.txt": b"notes"})
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def input_files(tree: pathlib.Path, folder: str) -> set[str]:
    """The files the pipeline must account for: input extensions outside `_` folders."""
    return {str(path) for path in (tree / folder).rglob("*")
            if path.suffix in (".wav", ".png", ".jpeg", ".bmp") and "_background_noise_" not in path.parts}


def run_pipeline(tree, output_dir, *flags, modalities=("audio", "image")) -> preprocess.PreprocessSummary:
    roots = {"audio": f"--audio_root={tree / 'speech'}", "image": f"--image_root={tree / 'pictures'}"}
    return preprocess.run([*(roots[m] for m in modalities), f"--output_dir={output_dir}", *TREE_FLAGS, *flags],
                          save_main_session=False)


@pytest.fixture(scope="module")
def base_run(tree, tmp_path_factory, runner_flags):
    return run_pipeline(tree, tmp_path_factory.mktemp("in_memory"), *runner_flags["in_memory"])


def masked_crc(data: bytes) -> bytes:
    """TFRecord's masked CRC-32C, little-endian."""
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).to_bytes(4, "little")


def read_verified_records(path: pathlib.Path, *, compressed: bool) -> list[bytes]:
    """Records of a shard after checking both CRCs of each with the `crc32c` package.

    An implementation independent of the google-crc32c one the pipeline writes with.
    """
    data = gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()
    records, offset = [], 0
    while offset < len(data):
        length_bytes = data[offset:offset + 8]
        assert data[offset + 8:offset + 12] == masked_crc(length_bytes), f"length CRC in {path}"
        length = int.from_bytes(length_bytes, "little")
        record = data[offset + 12:offset + 12 + length]
        data_crc = data[offset + 12 + length:offset + 16 + length]
        assert data_crc == masked_crc(record), f"data CRC in {path}"
        records.append(record)
        offset += 16 + length
    return records


def load_examples(output_dir: pathlib.Path, manifest: DatasetManifest, parse) -> dict[str, list[dict]]:
    """{split: examples} parsed by TensorFlow's tf.train.Example, in shard order; one root per modality."""
    examples = {}
    for split, info in manifest.splits.items():
        examples[split] = []
        for shard in info.shards:
            path = output_dir / manifest.modality / shard.path
            records = read_verified_records(path, compressed=manifest.compression == "GZIP")
            loaded = [parse(record) for record in records]
            assert len(loaded) == shard.num_examples, path
            paths = [example["path"].decode() for example in loaded]
            assert paths == sorted(paths, key=lambda p: hashlib.sha256(p.encode()).digest()), (
                f"{path} is not in the pseudo-random order of its paths' SHA-256")
            examples[split] += loaded
    return examples


def test_every_input_file_becomes_a_record_or_an_error_row(base_run, tree, example_parser):
    counters = base_run.counters
    # The _background_noise_ recording is no example: it is stored beside the records, for the trainer.
    assert (counters["audio_noise_files"], counters["audio_skipped_files"], counters["audio_ignored_files"],
            counters["image_ignored_files"]) == (1, 0, 2, 1)
    assert [entry["path"] for entry in base_run.manifests["audio"].background_noise] == [
        "_background_noise_/noise.wav"]
    paths_in_errors = {row["path"] for row in base_run.error_rows}
    for modality, folder in (("audio", "speech"), ("image", "pictures")):
        manifest = base_run.manifests[modality]
        examples = load_examples(pathlib.Path(base_run.output_dir), manifest, example_parser)
        record_paths = {str(tree / folder / example["path"].decode()) for split in examples
                        for example in examples[split]}
        num_records = sum(len(split_examples) for split_examples in examples.values())
        errors = {path for path in paths_in_errors if path.startswith(str(tree / folder))}
        assert num_records == len(record_paths) == sum(split.num_examples for split in manifest.splits.values())
        assert record_paths | errors == input_files(tree, folder) and not record_paths & errors
        assert counters[f"{modality}_input_files"] == num_records + manifest.num_errors == len(
            input_files(tree, folder))


def test_every_bad_file_has_an_error_row_with_its_reason(base_run, tree):
    rows = {row["path"]: row for row in base_run.error_rows}
    assert set(rows) == {str(tree / relative) for relative in BAD_FILES}
    for relative, reason in BAD_FILES.items():
        row = rows[str(tree / relative)]
        assert reason in row["reason"], f"{relative}: {row['reason']!r} should mention {reason!r}"
        assert row["modality"] == ("audio" if relative.startswith("speech") else "image")
        assert row["root"] == str(tree / relative.split("/")[0])
    assert [manifest.num_errors for manifest in base_run.manifests.values()] == [4, 2]


def test_records_carry_labels_splits_ids_and_tensors(base_run, tree, example_parser, bytes_to_tensor):
    for modality, folder in (("audio", "speech"), ("image", "pictures")):
        manifest = base_run.manifests[modality]
        for split, examples in load_examples(pathlib.Path(base_run.output_dir), manifest, example_parser).items():
            for example in examples:
                source = tree / folder / example["path"].decode()
                assert example["id"].decode() == hashlib.sha256(source.read_bytes()).hexdigest()
                assert example["label_name"].decode() == source.relative_to(tree / folder).parts[0]
                assert manifest.labels[example["label"][0]] == example["label_name"].decode()
                assert (example["split"].decode(), example["modality"].decode()) == (split, modality)
                tensor = bytes_to_tensor(example["tensor"], dtype=example["dtype"].decode(),
                                           shape=example["shape"])
                assert list(tensor.shape) == manifest.tensor_shape
                np.testing.assert_array_equal(tensor, manifest.featurize(source.read_bytes()))


def test_split_list_is_honoured_and_takes_only_listed_files(base_run, example_parser):
    examples = load_examples(pathlib.Path(base_run.output_dir), base_run.manifests["audio"], example_parser)
    assert [example["path"].decode() for example in examples["validation"]] == [LISTED_FOR_VALIDATION]


def test_manifest_describes_the_dataset_and_lists_exactly_the_shards(base_run, tree):
    audio, image = base_run.manifests["audio"], base_run.manifests["image"]
    assert (audio.labels, image.labels) == (["no", "up", "yes"], ["cat", "dog"])
    assert (audio.tensor_dtype, audio.tensor_shape) == ("float32", [98, 64])
    assert (image.tensor_dtype, image.tensor_shape, image.featurization["max_pixels"]) == (
        "uint8", [28, 28, 1], 1000000)
    assert audio.input_roots == [str(tree / "speech")] and audio.compression is None
    good_wavs = [f"{label}/s{take}_nohash_0.wav" for label in audio.labels for take in range(4)]
    listed = {LISTED_FOR_VALIDATION: "validation"}
    for split in SPLITS:
        rule = SplitRule(config=SplitConfig(), listed=listed)
        in_split = [path for path in good_wavs if rule.split_of(path) == split]
        assert audio.splits[split].label_counts == {label: sum(p.startswith(label + "/") for p in in_split)
                                                    for label in audio.labels}, split
    assert len(audio.splits["train"].shards) > 1, "--shard_size_mb 0.1 should give several train shards"
    for manifest in (audio, image):
        assert_holds_exactly_the_listed_files(pathlib.Path(base_run.output_dir) / manifest.modality, manifest)
    summary = preprocess.format_summary(base_run)
    assert "audio: committed snapshot 1: 12 examples and 4 errors from 16 input files" in summary
    assert "16 input files; 1 background noise files; skipped 0 files in _ folders" in summary
    assert "stray.wav: file is directly in the input root" in summary


def assert_holds_exactly_the_listed_files(folder: pathlib.Path, manifest: DatasetManifest):
    """A dataset of one snapshot of one span: the span holds the manifest's shards and the span's metadata."""
    # An audio dataset stores its background noise (here one recording) in noise/.
    assert {path.name for path in folder.iterdir()} == DATASET_FOLDER | (
        {NOISE_FOLDER_NAME} if manifest.background_noise else set())
    [span] = manifest.spans
    listed = {shard.path for split in manifest.splits.values() for shard in split.shards}
    metadata = SPAN_METADATA | (TFDS_METADATA if manifest.compression is None else set())
    assert {f"spans/{span}/{path.name}" for path in (folder / "spans" / span).iterdir()} == listed | {
        f"spans/{span}/{name}" for name in metadata}


def without_run(manifest: DatasetManifest) -> dict:
    """The manifest without what differs from run to run: its time, run id and span names, its shards' folder."""
    fields = dataclasses.asdict(manifest)
    for split in fields["splits"].values():
        for shard in split["shards"]:
            shard["path"] = shard["path"].rsplit("/", 1)[-1]
    return {**fields, "created": None, "input_roots": None, "run_id": None, "spans": None}


def only_span(output_dir: pathlib.Path, modality: str) -> pathlib.Path:
    [span] = (output_dir / modality / "spans").iterdir()
    return span


def assert_same_dataset(first: pathlib.Path, second: pathlib.Path, *, second_gzipped: bool = False):
    """The same shards (gzipped in `second`, where TFDS' metadata is then absent), file index and errors."""
    for modality in ("audio", "image"):
        first_span, second_span = only_span(first, modality), only_span(second, modality)
        names = sorted(path.name for path in first_span.iterdir() if ".tfrecord" in path.name)
        expected = [name.replace(".tfrecord-", ".tfrecord.gz-") if second_gzipped else name for name in names]
        assert sorted(path.name for path in second_span.iterdir() if ".tfrecord" in path.name) == sorted(expected)
        for name, other in zip(names, expected):
            data = (second_span / other).read_bytes()
            expected_bytes = (first_span / name).read_bytes()
            assert (gzip.decompress(data) if second_gzipped else data) == expected_bytes, name
        for name in (SPAN_FILES_NAME, SPAN_ERRORS_NAME):
            # The rows of files.jsonl name their shards; their offsets are in the uncompressed stream.
            expected_text = (first_span / name).read_text()
            if second_gzipped:
                expected_text = expected_text.replace(".tfrecord-", ".tfrecord.gz-")
            assert (second_span / name).read_text() == expected_text, name
    assert (first / "errors.jsonl").read_bytes() == (second / "errors.jsonl").read_bytes()


def test_two_worker_processes_write_byte_identical_shards(base_run, tree, tmp_path, runner_flags):
    summary = run_pipeline(tree, tmp_path, *runner_flags["multi_processing"])

    assert_same_dataset(pathlib.Path(base_run.output_dir), tmp_path)
    for modality, manifest in summary.manifests.items():
        assert without_run(manifest) == without_run(base_run.manifests[modality])


def test_a_small_work_list_written_in_process_without_a_runner_is_byte_identical(base_run, tree, tmp_path):
    # Two workers asked for, but 24 files: the launcher runs the pipeline's DoFns itself.
    summary = run_pipeline(tree, tmp_path, "--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                           "--direct_num_workers=2")

    assert_same_dataset(pathlib.Path(base_run.output_dir), tmp_path)
    for modality, manifest in summary.manifests.items():
        assert without_run(manifest) == without_run(base_run.manifests[modality])


def test_prism_runs_the_pipeline_with_the_built_binary_and_writes_byte_identical_shards(base_run, tree, tmp_path):
    assert find_prism(), "scripts/bootstrap.sh builds Prism into the venv; without it this run would download one"

    summary = run_pipeline(tree, tmp_path, "--runner=PrismRunner")  # no --prism_location: soundsight finds it

    assert_same_dataset(pathlib.Path(base_run.output_dir), tmp_path)
    for modality, manifest in summary.manifests.items():
        assert without_run(manifest) == without_run(base_run.manifests[modality])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(command: list[str], *, port: int, log: pathlib.Path, cwd: pathlib.Path = REPO,
            venv_bin: str | None = None):
    """Runs `command` in `cwd` until the block ends, once it accepts connections on `port`.

    With this venv first on PATH (or `venv_bin`, without PYTHONPATH): Beam's worker pool starts each SDK worker
    as plain `python`.
    """
    env = {**os.environ, "PATH": f"{venv_bin or os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    if venv_bin:
        env.pop("PYTHONPATH", None)
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            assert process.poll() is None, f"{command[0]} exited: {log.read_text()}"
            with socket.socket() as probe:
                if probe.connect_ex(("localhost", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{command} does not listen on {port} after 60 s: {log.read_text()}")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_prism_as_a_job_service_with_an_external_worker_pool_writes_byte_identical_shards(base_run, tree,
                                                                                         tmp_path):
    # The architecture of Dataflow Runner v2 and Flink: a job service, and SDK workers in processes of their own.
    job_port, pool_port = free_port(), free_port()
    out = tmp_path / "out"
    with serving([find_prism(), f"--job_port={job_port}", "--serve_http=false"], port=job_port,
                 log=tmp_path / "prism.log"), \
            serving([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                     f"--service_port={pool_port}"], port=pool_port, log=tmp_path / "pool.log"):
        summary = run_pipeline(tree, out, "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                               "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}")

    assert_same_dataset(pathlib.Path(base_run.output_dir), out)
    for modality, manifest in summary.manifests.items():
        assert without_run(manifest) == without_run(base_run.manifests[modality])


@pytest.fixture(scope="module")
def staged_venv(tmp_path_factory) -> pathlib.Path:
    """A virtual environment holding Beam (this version) and what Beam stages for `--setup_file ./setup.py`
    (the sdist its own Stager builds), installed with its requirements: what a Dataflow worker gets, and
    nothing else (no PYTHONPATH, no checkout)."""
    from apache_beam.runners.portability.stager import Stager
    folder = tmp_path_factory.mktemp("staged")
    sdist = Stager._build_setup_package(str(REPO / "setup.py"), str(folder))
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", sdist,
                                f"apache-beam=={apache_beam.__version__}"], capture_output=True, text=True,
                               timeout=900, env={name: value for name, value in os.environ.items()
                                                 if name != "PYTHONPATH"})
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_workers_with_only_the_staged_package_write_byte_identical_shards(base_run, tree, tmp_path, staged_venv):
    # What --setup_file ships is all a remote worker has: a module or a requirement setup.py leaves out fails
    # here, not in a user's Dataflow job. The pool runs outside the checkout, so its workers import the install.
    python = staged_venv / "bin" / "python"
    job_port, pool_port = free_port(), free_port()
    out = tmp_path / "out"
    with serving([find_prism(), f"--job_port={job_port}", "--serve_http=false"], port=job_port,
                 log=tmp_path / "prism.log"), \
            serving([str(python), "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"],
                    port=pool_port, log=tmp_path / "pool.log", cwd=tmp_path, venv_bin=str(python.parent)):
        summary = run_pipeline(tree, out, "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                               "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}")

    assert_same_dataset(pathlib.Path(base_run.output_dir), out)
    for modality, manifest in summary.manifests.items():
        assert without_run(manifest) == without_run(base_run.manifests[modality])
    where = subprocess.run([str(python), "-c", "import beam_jobs; print(beam_jobs.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env={name: value for name, value in os.environ.items()
                                                                if name != "PYTHONPATH"})
    assert str(staged_venv) in where.stdout, "the workers must import the staged package, not the checkout"


def test_beams_dask_runner_on_a_cluster_of_worker_processes_writes_byte_identical_shards(base_run, tree,
                                                                                         tmp_path):
    # A dask.distributed cluster as users run one: a scheduler and two worker processes of their own. Dask
    # may run a task again; the pipeline's outputs must not depend on a bundle running once.
    scheduler_port = free_port()
    address = f"tcp://127.0.0.1:{scheduler_port}"
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    out = tmp_path / "out"
    with serving([dask, "scheduler", f"--port={scheduler_port}", "--no-dashboard"], port=scheduler_port,
                 log=tmp_path / "scheduler.log"), \
            serving([dask, "worker", address, "--nworkers=2", "--nthreads=1", "--no-dashboard"],
                    port=scheduler_port, log=tmp_path / "workers.log"):
        summary = run_pipeline(tree, out, "--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                               f"--dask_client_address={address}")

    assert_same_dataset(pathlib.Path(base_run.output_dir), out)
    for modality, manifest in summary.manifests.items():
        assert without_run(manifest) == without_run(base_run.manifests[modality])


def read_with_tf_data(manifest_path: str) -> list[list]:
    """[id, label, shape, tensor sum] of every record, read by tf.data as the trainer reads shards."""
    spec = {f.name: tf.io.VarLenFeature(tf.int64) if f.length is None else
            tf.io.FixedLenFeature([f.length], tf.string if f.kind == "bytes" else tf.int64) for f in FEATURES}
    manifest = json.loads(pathlib.Path(manifest_path).read_text())
    folder = manifest_path.rsplit("/", 1)[0]
    files = [f"{folder}/{shard['path']}" for split in manifest["splits"].values() for shard in split["shards"]]
    rows = []
    for record in tf.data.TFRecordDataset(files, compression_type=manifest["compression"] or ""):
        example = tf.io.parse_single_example(record, spec)
        tensor = tf.io.decode_raw(example["tensor"][0], tf.dtypes.as_dtype(manifest["tensor_dtype"]))
        tensor = tf.reshape(tensor, tf.sparse.to_dense(example["shape"]))
        rows.append([example["id"][0].numpy().decode(), int(example["label"][0]), tensor.shape.as_list(),
                     float(tf.reduce_sum(tf.cast(tensor, tf.float64)))])
    return rows


# Runs in a process of its own: the `tfrecord` package registers the same protobuf names as TensorFlow.
TFRECORD_READER = """
import json, sys
from tfrecord import reader
read = {}
for manifest_path in sys.argv[1:]:
    manifest = json.load(open(manifest_path))
    folder = manifest_path.rsplit("/", 1)[0]
    compression = "gzip" if manifest["compression"] == "GZIP" else None
    rows = []
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            loaded = reader.example_loader(f"{folder}/{shard['path']}", None, {"id": "byte", "label": "int"},
                                           compression_type=compression)
            rows += [[example["id"].decode(), int(example["label"][0])] for example in loaded]
    read[manifest_path] = rows
print(json.dumps({"tensorflow imported": "tensorflow" in sys.modules, "read": read}))
"""


def test_gzip_shards_tf_data_and_the_tfrecord_package_read_the_same_examples(base_run, tree, tmp_path,
                                                                               example_parser, bytes_to_tensor):
    # The bundle-based runner is a third, independent way to run the same pipeline.
    gzipped = run_pipeline(tree, tmp_path, "--runner=BundleBasedDirectRunner", "--compression=gzip")
    assert_same_dataset(pathlib.Path(base_run.output_dir), tmp_path, second_gzipped=True)
    assert gzipped.manifests["audio"].compression == "GZIP"

    manifest_paths = [path for run in (base_run, gzipped) for path in run.manifest_paths.values()]
    completed = subprocess.run([sys.executable, "-c", TFRECORD_READER, *manifest_paths], cwd=REPO, check=True,
                               capture_output=True, text=True, timeout=120)
    tf_free = json.loads(completed.stdout.strip().splitlines()[-1])
    assert not tf_free["tensorflow imported"]

    for run in (base_run, gzipped):
        for modality, manifest in run.manifests.items():
            examples = load_examples(pathlib.Path(run.output_dir), manifest, example_parser)
            in_file_order = json.loads(pathlib.Path(run.manifest_paths[modality]).read_text())["splits"]
            expected = [[example["id"].decode(), int(example["label"][0]), manifest.tensor_shape,
                         float(bytes_to_tensor(example["tensor"], dtype=manifest.tensor_dtype,
                                               shape=manifest.tensor_shape).sum(dtype=np.float64))]
                        for split in in_file_order for example in examples[split]]
            got = read_with_tf_data(run.manifest_paths[modality])
            assert [row[:3] for row in got] == [row[:3] for row in expected]
            np.testing.assert_allclose([row[3] for row in got], [row[3] for row in expected], rtol=1e-6)
            assert tf_free["read"][run.manifest_paths[modality]] == [row[:2] for row in expected]


def test_a_dataset_written_before_snapshots_becomes_snapshot_1_and_loses_its_old_files(base_run, tmp_path,
                                                                                         tree, runner_flags):
    output_dir = tmp_path / "out"
    audio = output_dir / "audio"
    audio.mkdir(parents=True)
    # What the pipeline left before snapshots: the manifest beside its shards, TFDS metadata, debris.
    old = dataclasses.replace(base_run.manifests["audio"], labels=["yes", "no", "up"], snapshot_id=None, spans=[],
                              changes={}, run_id=None)
    (audio / MANIFEST_NAME).write_text(old.to_json())
    for name in ("soundsight_audio-train.tfrecord-00000-of-00001", "train-00000-of-00004.tfrecord",
                 ".tmp-train-00009.tfrecord", *TFDS_METADATA):
        (audio / name).write_bytes(b"left by the pipeline before snapshots")

    summary = run_pipeline(tree, output_dir, "--num_shards=3", *runner_flags["in_memory"], modalities=("audio",))

    manifest = summary.manifests["audio"]
    assert (manifest.snapshot_id, manifest.parent_snapshot) == (1, None)
    assert "full ingest (the dataset predates snapshots)" in preprocess.format_summary(summary)
    assert manifest.labels == ["yes", "no", "up"], "the labels of the old dataset keep their indices"
    assert_holds_exactly_the_listed_files(audio, manifest)
    assert [shard.path.rsplit("/", 1)[-1] for shard in manifest.splits["train"].shards] == [
        f"soundsight_audio-train.tfrecord-0000{index}-of-00003" for index in range(3)]
    assert sum(split.num_examples for split in manifest.splits.values()) == 12


def test_fixed_labels_keep_their_order_and_reject_other_classes(tree, tmp_path, runner_flags, example_parser):
    summary = run_pipeline(tree, tmp_path, "--audio_labels=yes,no", *runner_flags["in_memory"],
                           modalities=("audio",))

    manifest = summary.manifests["audio"]
    assert manifest.labels == ["yes", "no"]
    unknown = sorted(row["path"] for row in summary.error_rows if "not in the fixed audio labels" in row["reason"])
    assert unknown == sorted(str(path) for path in (tree / "speech" / "up").glob("*.wav"))
    for examples in load_examples(tmp_path, manifest, example_parser).values():
        assert all(manifest.labels[e["label"][0]] == e["label_name"].decode() for e in examples)


def test_a_modality_without_good_files_gets_an_empty_manifest(tmp_path, runner_flags):
    (tmp_path / "in" / "cat").mkdir(parents=True)
    (tmp_path / "in" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    summary = preprocess.run([f"--image_root={tmp_path / 'in'}", f"--output_dir={tmp_path / 'out'}",
                              *runner_flags["in_memory"]], save_main_session=False)

    manifest = summary.manifests["image"]
    assert (manifest.labels, manifest.num_errors) == (["cat"], 1)
    assert all(split.num_examples == 0 and split.shards == [] for split in manifest.splits.values())
    assert [(row["path"], row["reason"]) for row in summary.error_rows] == [
        (str(tmp_path / "in" / "cat" / "broken.png"), "not a PNG/JPEG/BMP/GIF/WEBP image")]


@pytest.mark.parametrize("flags, message", [
    (["--window_ms=0.5"], "--window_ms"),
    (["--max_audio_bytes=0"], "--max_audio_bytes"),
    (["--validation_percent=60", "--test_percent=50"], "--validation_percent + --test_percent"),
    (["--image_channels=2"], "--image_channels"),
    (["--num_shards=0"], "--num_shards"),
    (["--audio_labels=yes,,no"], "--audio_labels"),
])
def test_bad_flags_fail_at_start_naming_the_flag(flags, message, tree, tmp_path, capsys):
    with pytest.raises(SystemExit):
        preprocess.run([f"--audio_root={tree / 'speech'}", f"--output_dir={tmp_path}", *flags])
    assert message in capsys.readouterr().err


def test_missing_roots_fail_at_start(tmp_path, capsys):
    with pytest.raises(SystemExit):
        preprocess.run([f"--audio_root={tmp_path / 'nowhere'}", f"--output_dir={tmp_path}"])
    assert "no files found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preprocess.run([f"--output_dir={tmp_path}"])
    assert "--audio_root or --image_root" in capsys.readouterr().err


def test_a_reingest_keeps_every_label_at_its_index_and_appends_new_classes(tree, tmp_path, runner_flags,
                                                                            example_parser):
    speech = tmp_path / "speech"
    shutil.copytree(tree / "speech", speech)
    first = run_pipeline(tmp_path, tmp_path / "out", *runner_flags["in_memory"], modalities=("audio",))
    assert first.manifests["audio"].labels == ["no", "up", "yes"]

    # A class that sorts first arrives, and another one leaves.
    shutil.copytree(speech / "yes", speech / "maybe")
    shutil.rmtree(speech / "up")
    second = run_pipeline(tmp_path, tmp_path / "out", *runner_flags["in_memory"], modalities=("audio",))

    manifest = second.manifests["audio"]
    assert manifest.labels == ["no", "up", "yes", "maybe"]
    assert sum(split.label_counts["up"] for split in manifest.splits.values()) == 0
    assert second.added_labels == {"audio": ["maybe"]}
    assert "new labels, after the 3 the dataset had: maybe (3)" in preprocess.format_summary(second)
    for examples in load_examples(tmp_path / "out", manifest, example_parser).values():
        assert all(manifest.labels[example["label"][0]] == example["label_name"].decode() for example in examples)
