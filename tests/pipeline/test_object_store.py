"""The pipeline and its commit on an object store: S3, served by moto on a loopback port for this module.

Raw trees and the output live in a bucket, reached through Beam's S3 file
system and the --s3_endpoint_url, --s3_access_key_id, ... pipeline options; the
commit's exclusive create is a PutObject with If-None-Match. The runs use
FnApiRunner in this process: its worker processes (multi_processing) are not
handed the pipeline options, so they would not find the endpoint. The trainer
is not tested here: TensorFlow 2.x has no s3:// file system of its own, and
tensorflow-io, which had one, does not load with the installed TensorFlow.
"""
import contextlib
import dataclasses
import json
import pathlib
import socket
import subprocess
import sys
import time

import boto3
import botocore.exceptions
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from beam_jobs import preprocess, verify
from beam_jobs import snapshots as snapshots_command
from beam_jobs.pipeline.summary import PreprocessSummary
from beam_jobs.storage.files import AlreadyExistsError, create_exclusive
from beam_jobs.table import snapshots
from beam_jobs.table.layout import SPAN_ERRORS_NAME, SPAN_FILES_NAME, SPAN_MANIFEST_NAME
from beam_jobs.table.manifest import DatasetManifest

BUCKET = "soundsight-test"
REGION = "us-east-1"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
RATE = 8000
START_GUARD_S = 60  # only so that a server that never answers fails the fixture instead of hanging it
# Fields that name where or when a run happened, not what it wrote: everything else must be equal.
RUN_FIELDS = ("created", "input_roots", "run_id", "spans")


@dataclasses.dataclass(frozen=True)
class ObjectStore:
    endpoint: str
    client: object  # a boto3 S3 client, for the tests' own uploads and reads

    @property
    def flags(self) -> list[str]:
        """The pipeline options that point Beam's S3 file system, and so the whole run, at this server."""
        return [f"--s3_endpoint_url={self.endpoint}", f"--s3_access_key_id={KEYS['AWS_ACCESS_KEY_ID']}",
                f"--s3_secret_access_key={KEYS['AWS_SECRET_ACCESS_KEY']}", f"--s3_region_name={REGION}"]

    def upload_tree(self, local_root: pathlib.Path, prefix: str) -> str:
        """Copies every file under `local_root` to s3://BUCKET/prefix/...; returns that URL."""
        for path in sorted(local_root.rglob("*")):
            if path.is_file():
                self.client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(local_root).as_posix()}",
                                       Body=path.read_bytes())
        return f"s3://{BUCKET}/{prefix}"

    def files(self, url: str) -> dict[str, bytes]:
        """{path relative to `url`: bytes} of every object under the folder `url`."""
        prefix = url[len(f"s3://{BUCKET}/"):].rstrip("/") + "/"
        keys = [item["Key"] for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix) for item in page.get("Contents", [])]
        return {key[len(prefix):]: self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A moto S3 server in its own process, with one bucket; dummy keys in the environment, so that nothing
    here can reach real AWS with a developer's own."""
    port = free_port()
    # Its log goes to a file: moto logs every request, and a pipe nobody reads would fill and stall it.
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log_path, "wb") as log, pytest.MonkeyPatch.context() as environment:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
        for name, value in {**KEYS, "AWS_EC2_METADATA_DISABLED": "true"}.items():
            environment.setenv(name, value)
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        try:
            deadline = time.monotonic() + START_GUARD_S
            while True:
                if server.poll() is not None:
                    pytest.fail(f"moto exited ({server.returncode}): {log_path.read_text()}")
                try:
                    client.create_bucket(Bucket=BUCKET)
                    break
                except botocore.exceptions.EndpointConnectionError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"moto did not answer on {endpoint}: {log_path.read_text()}")
                    time.sleep(0.1)
            yield ObjectStore(endpoint, client)
        finally:
            server.terminate()
            server.wait()
            FileSystems.set_options(None)  # the runs pointed FileSystems at this server, which is gone


@contextlib.contextmanager
def pointed_at(store: ObjectStore):
    """Beam's FileSystems, in this process, talk to `store`, as they do during a run."""
    FileSystems.set_options(PipelineOptions(store.flags))
    try:
        yield
    finally:
        FileSystems.set_options(None)


@pytest.fixture(scope="module")
def write_inputs(make_sine, make_wav, make_image):
    """write_inputs(root, audio_names, image_names, broken=True): wavs in root/speech/<label>/ and PNGs in
    root/pictures/<label>/, each name at its own pitch or shade, and an empty wav, an error row, if `broken`."""
    def write(root: pathlib.Path, audio_names, image_names, *, broken: bool = True) -> None:
        for label, frequency in (("low", 300), ("high", 2000)):
            for offset, name in enumerate(audio_names):
                path = root / "speech" / label / f"{name}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(make_wav(make_sine(frequency + 7 * offset, rate=RATE, seconds=0.5), rate=RATE))
        if broken:
            (root / "speech" / "low" / "broken_empty.wav").write_bytes(b"")
        for label, shade in (("cat", 40), ("dog", 200)):
            for offset, name in enumerate(image_names):
                path = root / "pictures" / label / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(make_image(Image.new("L", (12, 10), shade + offset), "PNG"))
    return write


def ingest(output_dir: str, *flags, **roots):
    """preprocess.run on `roots` (audio_root=..., image_root=...)."""
    return preprocess.run([*(f"--{name}={root}" for name, root in roots.items()), f"--output_dir={output_dir}",
                           *flags], save_main_session=False)


@dataclasses.dataclass(frozen=True)
class Ingested:
    raw: pathlib.Path  # the raw trees on this machine, as uploaded
    audio_url: str
    image_url: str
    out_url: str
    summary: PreprocessSummary


@pytest.fixture(scope="module")
def ingested(store, tmp_path_factory, write_inputs, runner_flags) -> Ingested:
    """Snapshot 1 of both modalities, written into the bucket from raw trees in the bucket by FnApiRunner's
    worker processes, which get the endpoint and keys from the pipeline options alone."""
    raw = tmp_path_factory.mktemp("raw")
    write_inputs(raw, ["a0", "a1"], ["p0"])
    audio_url, image_url = (store.upload_tree(raw / folder, f"first/raw/{folder}") for folder in ("speech", "pictures"))
    out_url = f"s3://{BUCKET}/first/out"
    summary = ingest(out_url, *runner_flags["multi_processing"], *store.flags,
                     audio_root=audio_url, image_root=image_url)
    return Ingested(raw, audio_url, image_url, out_url, summary)


def without(row: dict, *fields) -> dict:
    return {name: value for name, value in row.items() if name not in fields}


def contents(manifest: dict) -> dict:
    """A manifest's fields but RUN_FIELDS, its shards named without their span's folder, which is the run's."""
    fields = without(manifest, *RUN_FIELDS)
    for split in fields["splits"].values():
        for shard in split["shards"]:
            shard["path"] = shard["path"].rsplit("/", 1)[-1]
    return fields


def jsonl_rows(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def local_files(folder: pathlib.Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_run_from_bucket_to_bucket_writes_what_a_local_run_writes(store, ingested, tmp_path):
    local = ingest(str(tmp_path / "out"), audio_root=ingested.raw / "speech", image_root=ingested.raw / "pictures")

    for modality, root_url in (("audio", ingested.audio_url), ("image", ingested.image_url)):
        manifest, expected = ingested.summary.manifests[modality], local.manifests[modality]
        assert manifest.snapshot_id == 1 and manifest.input_roots == [root_url]
        assert contents(dataclasses.asdict(manifest)) == contents(dataclasses.asdict(expected)), modality
        written = store.files(f"{ingested.out_url}/{modality}")
        assert DatasetManifest.from_json(written["snapshots/00000001.json"]) == manifest
        remote_span = {name.split("/", 2)[2]: data for name, data in written.items()
                       if name.startswith(f"spans/{manifest.spans[0]}/")}
        local_span = local_files(tmp_path / "out" / modality / "spans" / expected.spans[0])
        assert sorted(remote_span) == sorted(local_span), modality
        for name in sorted(local_span):
            if name in (SPAN_FILES_NAME, SPAN_ERRORS_NAME):
                # The mtime is the store's Last-Modified (whole seconds) there, the file's own here.
                assert ([without(row, "mtime") for row in jsonl_rows(remote_span[name])]
                        == [without(row, "mtime") for row in jsonl_rows(local_span[name])]), name
            elif name == SPAN_MANIFEST_NAME:
                assert contents(json.loads(remote_span[name])) == contents(json.loads(local_span[name])), modality
            else:
                assert remote_span[name] == local_span[name], f"{modality}: {name} differs"
        if modality == "image":
            assert remote_span[SPAN_ERRORS_NAME] == b"", "no error rows: an empty object, which S3 must store too"
    everything = store.files(ingested.out_url)
    assert [row["path"] for row in jsonl_rows(everything["errors.jsonl"])] == [
        f"{ingested.audio_url}/low/broken_empty.wav"]
    assert not [name for name in everything if ".tmp-" in name or name.startswith(".runs/")], "debris left"


def test_a_second_run_commits_snapshot_2_in_the_bucket_copying_unchanged_records_out_of_its_shards(
        store, ingested, tmp_path, write_inputs, capsys):
    first = ingested.summary.manifests["audio"]
    write_inputs(tmp_path, ["b0"], [], broken=False)
    store.upload_tree(tmp_path / "speech", "first/raw/speech")
    dead_run = "20200101T000000Z-0000dead"  # its temporary folder and span, and no lease: it died
    for key in (f".tmp-{dead_run}/work-audio.jsonl", f"audio/spans/{dead_run}/{SPAN_MANIFEST_NAME}"):
        store.client.put_object(Bucket=BUCKET, Key=f"first/out/{key}", Body=b"{}")

    # --compact: the unchanged files' records are read out of snapshot 1's shards in the bucket, by offset.
    second = ingest(ingested.out_url, "--compact", *store.flags, audio_root=ingested.audio_url).manifests["audio"]

    assert (second.snapshot_id, second.parent_snapshot, len(second.spans)) == (2, 1, 1)
    # Reused: the store's Last-Modified, recorded as the mtime in snapshot 1, is listed the same again.
    assert second.changes == {"new": 2, "changed": 0, "removed": 0, "reused": 5}
    written = store.files(f"{ingested.out_url}/audio")
    assert DatasetManifest.from_json(written["dataset.json"]) == second
    assert DatasetManifest.from_json(written["snapshots/00000002.json"]) == second
    assert DatasetManifest.from_json(written["snapshots/00000001.json"]) == first
    assert sum(split.num_examples for split in second.splits.values()) == 6 and second.num_errors == 1
    assert not [name for name in store.files(ingested.out_url) if dead_run in name], "a dead run's debris is left"
    capsys.readouterr()
    assert verify.main([f"{ingested.out_url}/audio", *store.flags]) == 0
    assert capsys.readouterr().out.startswith("OK: "), "python -m beam_jobs.verify on the bucket"


def test_create_exclusive_on_s3_creates_once_and_then_refuses_leaving_the_first_object(store):
    path = f"s3://{BUCKET}/exclusive/commit.json"
    with pointed_at(store):
        create_exclusive(path, b"first")
        with pytest.raises(AlreadyExistsError):
            create_exclusive(path, b"second")
    assert store.files(f"s3://{BUCKET}/exclusive") == {"commit.json": b"first"}


def test_of_two_commits_on_one_base_in_the_bucket_the_second_gets_a_conflict_and_changes_nothing(
        store, ingested, capsys):
    dataset = f"s3://{BUCKET}/conflict/audio"
    for name in ("dataset.json", "snapshots/00000001.json"):  # snapshot 1 alone: a commit reads no span
        store.client.copy_object(Bucket=BUCKET, Key=f"conflict/audio/{name}", CopySource={
            "Bucket": BUCKET, "Key": "first/out/audio/snapshots/00000001.json"})
    with pointed_at(store):
        base = snapshots.latest(dataset)
        winner, loser = (dataclasses.replace(base, snapshot_id=2, parent_snapshot=1, run_id=run_id)
                         for run_id in ("run-a", "run-b"))
        snapshots.commit(dataset, winner)
        with pytest.raises(snapshots.SnapshotConflictError, match=r"another run \(run-a\) committed snapshot 2"):
            snapshots.commit(dataset, loser)
        assert snapshots.snapshot_ids(dataset) == ([1, 2], set())
        assert snapshots.load(dataset) == winner
        assert snapshots.load(dataset, 2) == winner
    capsys.readouterr()
    assert snapshots_command.main([dataset, *store.flags]) == 0
    assert [line[:6] for line in capsys.readouterr().out.splitlines()] == ["     1", "*    2"], "the listing's *"
