"""Reading files: the input files (`read_at_most`) and small text files.

Files are read through Beam's `FileSystems`, so local paths and URLs (gs://,
s3://) work alike. The listing is `beam_jobs.pipeline.plan.list_input_files`; the rules
of the tree come from `beam_jobs.inputs.tree`.
"""
from beam_jobs.storage.files import exists, open_for_reading, read_bytes

READ_CHUNK_BYTES = 1024 * 1024


def read_text(path: str) -> str:
    """A small text file (a manifest, a lease); FileNotFoundError when there is none."""
    return read_bytes(path).decode("utf-8")


def read_text_if_present(path: str) -> str | None:
    return read_text(path) if exists(path) else None


def read_at_most(path: str, *, limit: int, expected_bytes: int) -> bytes:
    """The file's first `limit` bytes, or all of it when shorter.

    Asks first for `expected_bytes` + 1 (the listed size, and one byte more to see
    the end): a buffered read allocates all it asks for, so asking for `limit`
    (64 MiB by default) would cost every small file a 64 MiB allocation. A file
    that grew since it was listed is read on, in chunks, up to `limit`.
    """
    chunks, total = [], 0
    request = min(expected_bytes + 1, limit)
    with open_for_reading(path) as handle:
        while request > 0:
            chunk = handle.read(request)
            chunks.append(chunk)
            total += len(chunk)
            if len(chunk) < request:  # a buffered read returns less only at the end of the file
                break
            request = min(READ_CHUNK_BYTES, limit - total)
    return b"".join(chunks)
