"""The few file operations the commit protocol needs beyond Beam's `FileSystems`: local paths, s3:// and gs://.

  write_atomically  a whole file that readers see whole or not at all: the old file or the new one
  create_exclusive  creates a file only if no file has that name, in one step: the commit of a snapshot
  delete_tree       a folder and everything in it
  list_names        the names in a folder
  use_pipeline_options  hands Beam's FileSystems the pipeline options naming a store's endpoint and keys

A local file is written under a temporary name unique to the writer, then
renamed (POSIX rename replaces atomically), so two writers never share a
temporary file. On object stores an object becomes visible only when its upload
completes, so it is written in place: Beam's "rename" there is a copy and a
delete, which would only add a window. On s3:// it is one PutObject, since
Beam's multipart upload cannot store an empty object (S3 answers MalformedXML).
Exclusive creation is a hard link locally (link fails when the name exists,
and the linked file is already whole), a PutObject with `If-None-Match: *` on
s3:// (S3 answers 412 PreconditionFailed while an object has that name) and an
upload with `if_generation_match=0` on gs://. Other schemes have no exclusive
create here. s3:// calls reach the endpoint with the keys of the pipeline
options (--s3_endpoint_url, --s3_access_key_id, ...) that Beam's S3 file system
uses, so the commit lands where the pipeline wrote.
"""
import contextlib
import fnmatch
import functools
import logging
import os
import shutil
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions


# The S3Options that Beam's S3 client is built from (apache_beam.io.aws.clients.s3.boto3_client).
_S3_OPTION_NAMES = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token", "s3_endpoint_url",
                    "s3_region_name", "s3_api_version", "s3_verify", "s3_disable_ssl")


# The --help of a command that takes them (beam_jobs.table.snapshots, beam_jobs.verify).
PIPELINE_OPTIONS_HELP = ("Flags this command does not know are Beam pipeline options: those of an object store, "
                         "e.g. --s3_endpoint_url, --s3_access_key_id, --s3_secret_access_key, --s3_region_name "
                         "for s3:// on an S3-compatible server.")


class AlreadyExistsError(FileExistsError):
    """create_exclusive found the name taken."""


def use_pipeline_options(pipeline_args: list[str]) -> None:
    """Hands Beam's FileSystems, in this process, the pipeline options `pipeline_args` (flags).

    Without any, Beam cannot build its S3 file system at all ("Must provide one of client or options").
    """
    FileSystems.set_options(PipelineOptions(pipeline_args))


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def unique_temp_name(path: str) -> str:
    return f"{path}.tmp-{uuid.uuid4().hex}"


@contextlib.contextmanager
def naming_the_file(path: str):
    """Within the block, an OSError that names no file (a buffered write's ENOSPC) is raised again naming
    `path`, so that the run's one line says where the disk filled."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno is not None:
            raise OSError(error.errno, error.strerror, path) from error
        raise


def _write(path: str, data: bytes) -> None:
    with naming_the_file(path), FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def write_atomically(path: str, data: bytes) -> None:
    """Writes `data` to `path`, replacing any file there, so that readers never see half a file."""
    scheme = FileSystems.get_scheme(path)
    if scheme == "s3":
        _put_s3(path, data)
        return
    if scheme == "gs":
        _write(path, data)
        return
    temp_path = unique_temp_name(path)
    try:
        _write(temp_path, data)
        if scheme is None:
            os.replace(temp_path, path)  # FileSystems.rename refuses to replace an existing file
        else:
            FileSystems.rename([temp_path], [path])
    except OSError:
        _remove_if_there(temp_path)  # a full disk, a read-only folder: nothing half-written stays
        raise


def _remove_if_there(path: str) -> None:
    try:
        if is_local(path):
            os.remove(path)
        elif FileSystems.exists(path):
            FileSystems.delete([path])
    except FileNotFoundError:
        pass  # never created
    except OSError as error:
        logging.warning("could not remove the temporary file %s (%s); a vacuum removes it", path, error)


def create_exclusive(path: str, data: bytes) -> None:
    """Creates `path` holding `data`, whole, unless it exists: then AlreadyExistsError, and nothing changed."""
    if is_local(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp_path = unique_temp_name(path)
        try:
            with naming_the_file(path), open(temp_path, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temp_path, path)
        except FileExistsError as error:
            raise AlreadyExistsError(path) from error
        finally:
            _remove_if_there(temp_path)
        return
    if FileSystems.get_scheme(path) == "s3":
        _create_exclusive_s3(path, data)
        return
    if FileSystems.get_scheme(path) == "gs":
        _create_exclusive_gcs(path, data)
        return
    raise NotImplementedError(f"{path}: committing a snapshot needs an exclusive create, which soundsight does "
                              f"for local paths, s3:// and gs:// only")


def open_for_reading(path: str):
    """A binary read handle of the file at `path`, as `FileSystems.open` gives, uncompressed.

    On s3:// through one S3 client per process: Beam 2.77's S3 file system builds a client for every
    file it opens, which costs more than featurizing the file.
    """
    if FileSystems.get_scheme(path) == "s3":
        from apache_beam.io.aws import s3io
        return s3io.S3IO(client=_beam_s3_client(path)).open(path, "rb")
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _s3_settings(path: str) -> tuple:
    """The S3 options `FileSystems` hands its S3 file system, as a hashable tuple."""
    options = FileSystems.get_filesystem(path)._options or {}  # Beam exposes them no other way
    if isinstance(options, PipelineOptions):
        options = options.get_all_options()
    return tuple((name, options.get(name)) for name in _S3_OPTION_NAMES)


def _beam_s3_client(path: str):
    """Beam's S3 client (a wrapper of boto3's), built from the options `FileSystems` hands its S3 file system."""
    return _cached_s3_client(_s3_settings(path))


def _s3_client(path: str):
    """A boto3 S3 client for the launcher's own small reads and writes (leases, manifests, the commit), with the
    endpoint and keys of Beam's, and bounded retries: Beam's S3 IO retries each call 7 times from 5 s on, about
    10 minutes before a run could say that the store is gone; this client gives up after S3_MAX_ATTEMPTS tries
    with botocore's standard backoff (connection errors, 5xx, throttling), within seconds."""
    return _cached_bounded_s3_client(_s3_settings(path))


@functools.lru_cache(maxsize=4)
def _cached_s3_client(settings: tuple):
    # Kept: a client costs 0.1-0.4 CPU s to build (botocore parses its JSON service models anew).
    from apache_beam.io.aws.clients.s3 import boto3_client
    return boto3_client.Client(options=dict(settings))


S3_MAX_ATTEMPTS = 5


@functools.lru_cache(maxsize=4)
def _cached_bounded_s3_client(settings: tuple):  # kept, as above: every progress file and lease is a PutObject
    import boto3
    from botocore.config import Config
    options = dict(settings)
    return boto3.session.Session().client(
        "s3", region_name=options.get("s3_region_name"), api_version=options.get("s3_api_version"),
        use_ssl=not options.get("s3_disable_ssl"), verify=options.get("s3_verify"),
        endpoint_url=options.get("s3_endpoint_url"), aws_access_key_id=options.get("s3_access_key_id"),
        aws_secret_access_key=options.get("s3_secret_access_key"),
        aws_session_token=options.get("s3_session_token"),
        config=Config(retries={"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS}, connect_timeout=10,
                      read_timeout=60))


def _bucket_and_key(path: str) -> tuple[str, str]:
    bucket, _, key = path[len("s3://"):].partition("/")
    return bucket, key


def read_bytes(path: str) -> bytes:
    """The whole file at `path` (a small one: a manifest, a lease); FileNotFoundError when there is none."""
    if FileSystems.get_scheme(path) != "s3":
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read()
    from botocore.exceptions import ClientError
    bucket, key = _bucket_and_key(path)
    try:
        return _s3_client(path).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise FileNotFoundError(2, "No such file", path) from error
        raise


def exists(path: str) -> bool:
    if FileSystems.get_scheme(path) != "s3":
        return FileSystems.exists(path)
    from botocore.exceptions import ClientError
    bucket, key = _bucket_and_key(path)
    try:
        _s3_client(path).head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return False
        raise
    return True


def delete_files(paths: list[str]) -> None:
    """Deletes the files `paths` (on s3://, in batches of 1000, the most one request takes)."""
    s3_paths = [path for path in paths if FileSystems.get_scheme(path) == "s3"]
    if len(s3_paths) < len(paths):
        FileSystems.delete([path for path in paths if FileSystems.get_scheme(path) != "s3"])
    for start in range(0, len(s3_paths), 1000):
        batch = s3_paths[start:start + 1000]
        bucket = _bucket_and_key(batch[0])[0]
        _s3_client(batch[0]).delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": _bucket_and_key(path)[1]} for path in batch], "Quiet": True})


def _list_s3(prefix: str) -> list[str]:
    """The keys' full paths of every object whose path starts with `prefix` (s3://bucket/...)."""
    bucket, key_prefix = _bucket_and_key(prefix)
    pages = _s3_client(prefix).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix)
    return [f"s3://{bucket}/{item['Key']}" for page in pages for item in page.get("Contents", [])]


def _put_s3(path: str, data: bytes, **conditions) -> None:
    bucket, key = _bucket_and_key(path)
    _s3_client(path).put_object(Bucket=bucket, Key=key, Body=data, **conditions)


def _create_exclusive_s3(path: str, data: bytes) -> None:
    from botocore.exceptions import ClientError
    try:
        _put_s3(path, data, IfNoneMatch="*")
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "PreconditionFailed":
            raise
        raise AlreadyExistsError(path) from error


def _create_exclusive_gcs(path: str, data: bytes) -> None:
    """Not exercised by the tests, which have no Cloud Storage: the documented precondition, nothing more."""
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage
    bucket_name, _, blob_name = path[len("gs://"):].partition("/")
    blob = storage.Client().bucket(bucket_name).blob(blob_name)
    try:
        blob.upload_from_string(data, if_generation_match=0)
    except PreconditionFailed as error:
        raise AlreadyExistsError(path) from error


def delete_tree(path: str) -> None:
    """Deletes the folder `path` and all it holds; nothing when it does not exist."""
    if is_local(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        return
    if FileSystems.get_scheme(path) == "s3":
        delete_files(_list_s3(f"{path.rstrip('/')}/"))
        return
    files = [metadata.path for metadata in FileSystems.match([f"{path.rstrip('/')}/**"])[0].metadata_list]
    if files:
        FileSystems.delete(files)


def list_names(folder: str, pattern: str = "*") -> list[str]:
    """The names (not paths) of the files and folders in `folder` matching `pattern`, sorted; [] when it
    does not exist."""
    if is_local(folder):
        if not os.path.isdir(folder):
            return []
        return sorted(name for name in os.listdir(folder) if fnmatch.fnmatch(name, pattern))
    prefix = f"{folder.rstrip('/')}/"
    # An object store has no folders, only names with slashes: a folder is the first segment of the names
    # of the objects under it, which `pattern` alone (no "/" in a "*") would never match.
    if FileSystems.get_scheme(folder) == "s3":
        paths = _list_s3(prefix)
    else:
        paths = [metadata.path for metadata in FileSystems.match([f"{prefix}{pattern}**"])[0].metadata_list]
    names = {path[len(prefix):].split("/")[0] for path in paths}
    return sorted(name for name in names if fnmatch.fnmatch(name, pattern))
