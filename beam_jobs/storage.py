"""The few file operations the commit protocol needs beyond Beam's `FileSystems`: local paths and gs://.

  write_atomically  a whole file under a temporary name unique to the writer, then a rename: readers see
                    the old file or the new one, and two writers never share a temporary file
  create_exclusive  creates a file only if no file has that name, in one step: the commit of a snapshot
  delete_tree       a folder and everything in it

A rename replaces a local file atomically (POSIX rename); on Cloud Storage a
"rename" is a copy and a delete, but the copy writes the new object in one
step, which is what readers need. Exclusive creation is a hard link locally
(link fails when the name exists, and the linked file is already whole) and an
upload with `if_generation_match=0` on gs://, which Cloud Storage accepts only
while no object has that name. Other schemes have no exclusive create here.
"""
import fnmatch
import os
import shutil
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


class AlreadyExistsError(FileExistsError):
    """create_exclusive found the name taken."""


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def unique_temp_name(path: str) -> str:
    return f"{path}.tmp-{uuid.uuid4().hex}"


def write_atomically(path: str, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file of this call's own, so readers never see half a file."""
    temp_path = unique_temp_name(path)
    with FileSystems.create(temp_path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)
    if is_local(path):
        os.replace(temp_path, path)  # FileSystems.rename refuses to replace an existing file
    else:
        FileSystems.rename([temp_path], [path])


def create_exclusive(path: str, data: bytes) -> None:
    """Creates `path` holding `data`, whole, unless it exists: then AlreadyExistsError, and nothing changed."""
    if is_local(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp_path = unique_temp_name(path)
        with open(temp_path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp_path, path)
        except FileExistsError as error:
            raise AlreadyExistsError(path) from error
        finally:
            os.remove(temp_path)
        return
    if FileSystems.get_scheme(path) == "gs":
        _create_exclusive_gcs(path, data)
        return
    raise NotImplementedError(f"{path}: committing a snapshot needs an exclusive create, which soundsight does "
                              f"for local paths and gs:// only")


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
    files = [metadata.path for metadata in FileSystems.match([f"{path.rstrip('/')}/**"])[0].metadata_list]
    if files:
        FileSystems.delete(files)


def list_names(folder: str, pattern: str = "*") -> list[str]:
    """The names (not paths) of the entries of `folder` matching `pattern`, sorted; [] when it does not exist."""
    if is_local(folder):
        if not os.path.isdir(folder):
            return []
        return sorted(name for name in os.listdir(folder) if fnmatch.fnmatch(name, pattern))
    prefix = f"{folder.rstrip('/')}/"
    names = {metadata.path[len(prefix):].split("/")[0]
             for metadata in FileSystems.match([f"{prefix}{pattern}"])[0].metadata_list}
    return sorted(names)
