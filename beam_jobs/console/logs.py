"""What `python -m beam_jobs.preprocess` prints: its own progress and summary, not Beam's chatter.

`quiet_beam_import()` must run before Apache Beam is first imported: Beam warns
then, through the root logger, that optional Google Cloud clients are missing
("apitools not found..."), which local runs never need and which would be a
user's first line of output, even of --help. `configure_logging(verbose=...)`
then sets what a run shows: warnings and errors from everyone, our own info
lines, and with --verbose (or SOUNDSIGHT_VERBOSE=1) everything Beam says too.
`worker_output_filtered()` does the same for the local runner's worker
processes, which write their start-up chatter straight to the terminal.
"""
import argparse
import contextlib
import logging
import os
import re
import sys
import threading
from typing import Callable

# Notices Beam prints in every local run, which no user can act on; the next two, at warning level, in
# every run that starts Prism as a subprocess; the last in every streaming run on Prism (PeriodicImpulse's
# reshuffle, which Prism drops).
_BEAM_NOTICES = ("apitools not found", "No semi_persistent_directory found", "Really starting service at",
                 "Really destroying service at", "empty transform, with payload and identical input and output")
# A worker process logs with logging's default format; its info lines are Beam's own start-up steps.
_WORKER_CHATTER_PREFIXES = ("INFO:", "DEBUG:")


class _DropBeamNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(notice in str(record.msg) for notice in _BEAM_NOTICES) and not any(
            notice in str(arg) for arg in (record.args or ()) if isinstance(arg, str) for notice in _BEAM_NOTICES)


class _DropBeamInfo(logging.Filter):
    """Drops info lines logged by Beam's code whatever the logger: the portable runners log job states
    ("running job-001[job]") through the root logger and Prism's through one named PrismRunner."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}apache_beam{os.sep}" not in record.pathname


def quiet_beam_import() -> None:
    """Drops Beam's import-time notices about optional Google Cloud clients (see the module docstring)."""
    logging.getLogger().addFilter(_DropBeamNotices())


def _is_worker_chatter(line: str) -> bool:
    return line.startswith(_WORKER_CHATTER_PREFIXES) or any(notice in line for notice in _BEAM_NOTICES)


@contextlib.contextmanager
def worker_output_filtered(*, verbose: bool):
    """Yields a stream on the real stderr; meanwhile what child processes write to stderr is filtered.

    Local worker processes inherit file descriptor 2 and log their start-up to
    it, a dozen lines each: inside the block those lines (INFO/DEBUG lines in
    logging's default format and Beam's notices) are dropped, and warnings,
    errors and tracebacks pass (`stderr_filtered`). Live output (the progress
    line) goes to the yielded stream. With `verbose`, nothing is filtered.
    """
    if verbose:
        yield sys.stderr
        return
    with stderr_filtered(_is_worker_chatter) as real_stderr:
        yield real_stderr


@contextlib.contextmanager
def stderr_filtered(drop: Callable[[str], bool]):
    """Within the block, the lines written to file descriptor 2, by this process (its native code too) or by
    the child processes that inherit it, reach the real stderr as they come, less those `drop` says to drop.

    Descriptor 2 is a pipe meanwhile, which a thread copies to the real stderr. Yields a stream on the real
    stderr, which stays open after the block (a logging handler may hold it; the caller closes it).
    """
    sys.stderr.flush()
    real_fd = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    real_stderr = os.fdopen(real_fd, "w", buffering=1)

    def copy_lines():
        with os.fdopen(read_fd, "r", errors="replace") as pipe:
            for line in pipe:
                if not drop(line):
                    real_stderr.write(line)

    copier = threading.Thread(target=copy_lines, name="stderr-filter", daemon=True)
    copier.start()
    try:
        yield real_stderr
    finally:
        sys.stderr.flush()
        os.dup2(real_fd, 2)  # the pipe closes once no process holds it any more
        copier.join(timeout=5)
        real_stderr.flush()


def one_line(error: BaseException) -> str:
    """What a failed run prints of `error` without --verbose: the last line of its message, after its type.

    A pipeline's error is often Beam's RuntimeError holding a worker's whole traceback, whose last line is the
    cause as Python printed it ("OSError: [Errno 28] No space left on device: '...' [while running '...']").
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    exception_type = r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b"
    # Beam re-raises a worker's error as "RuntimeError: OSError: ...": the wrapper says nothing.
    while re.match(rf"(RuntimeError|Exception): {exception_type}:", last):
        last = last.split(": ", 1)[1]
    if re.match(exception_type, last):
        return last
    return f"{type(error).__name__}: {last}" if last else type(error).__name__


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show Beam's own log lines too (also SOUNDSIGHT_VERBOSE=1)")


def wants_verbose(argv: list[str]) -> bool:
    """--verbose among `argv`, or SOUNDSIGHT_VERBOSE set: known before the full flags are parsed."""
    parser = argparse.ArgumentParser(add_help=False)
    add_verbose_flag(parser)
    return parser.parse_known_args(argv)[0].verbose or os.environ.get("SOUNDSIGHT_VERBOSE", "") not in ("", "0")


def configure_logging(*, verbose: bool, stream=None) -> None:
    """Plain lines on `stream` (stderr): our info and everyone's warnings, or everything when verbose."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=stream or sys.stderr, force=True)
    if not verbose:
        # Beam logs every stage, bundle and worker start at INFO; its warnings still show.
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_DropBeamNotices())
            handler.addFilter(_DropBeamInfo())
