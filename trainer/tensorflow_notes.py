"""TensorFlow's C++ start-up notes, kept off a user's terminal; TF_CPP_MIN_LOG_LEVEL=0 shows them.

TF_CPP_MIN_LOG_LEVEL=2 (set by `trainer/__init__.py`) silences most of them. On CPUs where TensorFlow
turns its oneDNN operations on by default (those with AMX or AVX512-VNNI, such as recent Xeons),
TensorFlow 2.21 still prints two notes, twice, while it is imported, through absl before that setting
applies:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:... port.cc:153] oneDNN custom operations are on. You may see slightly different ...

So the first import of TensorFlow runs with the process's stderr (file descriptor 2) captured, and what
it wrote there, less those notes, is written back as soon as the import ends. oneDNN stays on.
"""
import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile

_NOTES = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
          "] oneDNN custom operations are on.")


@contextlib.contextmanager
def notes_dropped():
    """Within the block, what the process writes to file descriptor 2 is held back; when the block ends,
    all of it but TensorFlow's start-up notes reaches stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not any(note in line for note in _NOTES)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


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
