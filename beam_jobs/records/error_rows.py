"""OUT/errors.jsonl: one JSON row per input file of the current snapshots that could not become an example."""
from beam_jobs.records.from_file import ErrorRow
from beam_jobs.storage.files import write_atomically


def write_error_rows(error_rows: list[ErrorRow], *, path: str) -> None:
    """Writes one JSON object per line, sorted by modality and path; an empty file for none."""
    lines = sorted((row.modality, row.path, row.to_json()) for row in error_rows)
    write_atomically(path, "".join(line + "\n" for _, _, line in lines).encode("utf-8"))
