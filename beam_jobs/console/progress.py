"""One live progress line per modality while the pipeline runs: files featurized, rate, time left.

Workers report through small files in the run's progress folder
(OUT/.tmp-<run id>/progress/), not through logs: every runner relays worker
logs differently (or not at all), and a log line per worker per thousand files
is what buried the progress before. `ProgressFile` is the worker side: each
featurizing DoFn instance rewrites its own `<modality>-<id>.json` with its
count every few seconds and at the end of each bundle; the match step writes
`<modality>-matched.json` with how many files there are. `ProgressLine` is the
launching side: a thread that sums those files and redraws one line (in place
on a terminal, every `LOG_EVERY_SECONDS` otherwise), and deletes the folder at
the end.
"""
import json
import sys
import threading
import time
import uuid

from apache_beam.io.filesystems import FileSystems

from beam_jobs.storage.files import write_atomically

REPORT_EVERY_SECONDS = 2.0  # how often a worker rewrites its progress file
POLL_EVERY_SECONDS = 1.0
LOG_EVERY_SECONDS = 15.0  # a line this often when the output is not a terminal


def write_matched_count(count: int, *, progress_dir: str, modality: str) -> None:
    """Records how many input files the run matched, for the progress line's total."""
    write_atomically(f"{progress_dir}/{modality}-matched.json", json.dumps({"matched": count}).encode("utf-8"))


class ProgressFile:
    """A worker's count of featurized files, rewritten to its own file now and then."""

    def __init__(self, *, progress_dir: str, modality: str):
        self._path = f"{progress_dir}/{modality}-{uuid.uuid4().hex}.json"
        self._count = 0
        self._written_at = time.monotonic()

    def add(self, count: int = 1) -> None:
        self._count += count
        if time.monotonic() - self._written_at >= REPORT_EVERY_SECONDS:
            self.write()

    def write(self) -> None:
        write_atomically(self._path, json.dumps({"featurized": self._count}).encode("utf-8"))
        self._written_at = time.monotonic()


def read_progress(progress_dir: str, *, modality: str) -> tuple[int, int | None]:
    """(files featurized so far, files matched or None while the match runs), summed over the workers."""
    featurized, matched = 0, None
    for metadata in FileSystems.match([f"{progress_dir}/{modality}-*"])[0].metadata_list:
        try:
            with FileSystems.open(metadata.path) as handle:
                values = json.loads(handle.read())
        except (OSError, ValueError):
            continue  # replaced while we looked: the next poll sees it
        featurized += values.get("featurized", 0)
        matched = values.get("matched", matched)
    return featurized, matched


def format_progress(modality: str, *, featurized: int, matched: int | None, seconds: float) -> str:
    """e.g. "audio: 3,000 of 9,000 files (33%), 850 files/s, about 7 s left"."""
    if matched is None:
        return f"{modality}: listing the input files"
    featurized = min(featurized, matched)  # a retried bundle counts its files again
    rate = featurized / seconds if seconds > 0 else 0.0
    line = f"{modality}: {featurized:,} of {matched:,} files ({featurized / max(matched, 1):.0%}), {rate:,.0f} files/s"
    if 0 < featurized < matched and rate > 0:
        line += f", about {(matched - featurized) / rate:,.0f} s left"
    return line


class ProgressLine:
    """While in the `with` block, shows the progress of `modalities` in `progress_dir` on `stream`.

    With `stream` None it shows nothing. Deletes `progress_dir` on the way out.
    """

    def __init__(self, progress_dir: str, *, modalities: list[str], stream=sys.stderr):
        self._progress_dir = progress_dir
        self._modalities = modalities
        self._stream = stream
        self._live = stream is not None and stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-line", daemon=True)
        self._started = time.monotonic()
        self._best = {modality: (0, None) for modality in modalities}
        self._shown = ""
        self._logged_at = time.monotonic()

    def __enter__(self):
        if self._stream is not None:
            self._thread.start()
        return self

    def __exit__(self, exc_type, *_):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            if exc_type is None:
                self._show(self._line(), final=True)
        if FileSystems.exists(self._progress_dir):
            FileSystems.delete([self._progress_dir])

    def _run(self) -> None:
        while not self._stop.wait(POLL_EVERY_SECONDS):
            self._show(self._line())

    def _show(self, line: str, *, final: bool = False) -> None:
        """Redraws the line on a terminal; elsewhere writes it now and then, and the final one."""
        if self._live:
            self._stream.write("\r" + line.ljust(len(self._shown)) + ("\n" if final else ""))
        elif final or time.monotonic() - self._logged_at >= LOG_EVERY_SECONDS:
            self._stream.write(line + "\n")
            self._logged_at = time.monotonic()
        self._stream.flush()
        self._shown = line

    def _line(self) -> str:
        seconds = time.monotonic() - self._started
        parts = []
        for modality in self._modalities:
            featurized, matched = read_progress(self._progress_dir, modality=modality)
            best_featurized, best_matched = self._best[modality]
            self._best[modality] = (max(featurized, best_featurized), matched if matched is not None else best_matched)
            parts.append(format_progress(modality, featurized=self._best[modality][0],
                                         matched=self._best[modality][1], seconds=seconds))
        return "; ".join(parts)
