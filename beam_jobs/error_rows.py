"""OUT/errors.jsonl: one JSON row per input file that could not become an example (`WriteErrorRows`)."""
import apache_beam as beam

from beam_jobs.records import ErrorRow
from beam_jobs.sharding import write_atomically


def write_error_rows(error_rows: list[ErrorRow], *, path: str) -> None:
    """Writes one JSON object per line, sorted by modality and path; an empty file for none."""
    lines = sorted((row.modality, row.path, row.to_json()) for row in error_rows)
    write_atomically(path, "".join(line + "\n" for _, _, line in lines).encode("utf-8"))


class WriteErrorRows(beam.PTransform):
    """ErrorRow -> OUT/errors.jsonl (written even when there is no error)."""

    def __init__(self, *, path: str):
        super().__init__()
        self._path = path

    def expand(self, error_rows):
        return (error_rows
                | "CollectErrorRows" >> beam.combiners.ToList()
                | "WriteErrorsFile" >> beam.Map(write_error_rows, path=self._path))
