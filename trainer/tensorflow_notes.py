"""TensorFlow's C++ start-up notes, kept off a user's terminal; TF_CPP_MIN_LOG_LEVEL=0 shows them.

TF_CPP_MIN_LOG_LEVEL=2 (set by `trainer/__init__.py`) silences most of them. On CPUs where TensorFlow
turns its oneDNN operations on by default (those with AMX or AVX512-VNNI, such as recent Xeons),
TensorFlow 2.21 still prints two notes, twice, while it is imported, through absl before that setting
applies:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:... port.cc:153] oneDNN custom operations are on. You may see slightly different ...

So the first import of TensorFlow runs with the process's stderr (file descriptor 2) filtered
(`beam_jobs.console.logs.stderr_filtered`, which also keeps Beam's worker chatter off the terminal):
all it writes but those notes passes. oneDNN stays on.
"""
import contextlib
import importlib.abc
import importlib.util
import os
import sys

from beam_jobs.console import logs

_NOTES = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
          "] oneDNN custom operations are on.")


def _is_start_up_note(line: str) -> bool:
    return any(note in line for note in _NOTES)


@contextlib.contextmanager
def notes_dropped():
    """Within the block, what the process writes to file descriptor 2 reaches stderr, less TensorFlow's
    start-up notes."""
    real_stderr = None
    try:
        with logs.stderr_filtered(_is_start_up_note) as real_stderr:
            yield
    finally:
        if real_stderr is not None:
            real_stderr.close()  # the filter's own duplicate of stderr, which no logging handler holds here


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, with its module executed within notes_dropped()."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with notes_dropped():
            self._loader.exec_module(module)

    def __getattr__(self, name):  # get_data, get_resource_reader, ...: TensorFlow's loader answers
        return getattr(self._loader, name)


class _FirstImportOfTensorFlow(importlib.abc.MetaPathFinder):
    """Finds nothing of its own: hands the first import of `tensorflow` the usual spec with _QuietLoader,
    then leaves sys.meta_path."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def drop_on_first_import() -> None:
    """Makes the first import of TensorFlow in this process drop its start-up notes, unless it has happened
    or TF_CPP_MIN_LOG_LEVEL=0 asks for them."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    if not any(isinstance(finder, _FirstImportOfTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FirstImportOfTensorFlow())
