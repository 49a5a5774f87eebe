"""The rules of a folder-per-class input tree, shared by the pipeline, the app and the report.

  ROOT/<label>/.../<file>   an input file, labelled by its top folder
  ROOT/_background_noise_/<file>   background noise: recordings to mix into training clips and to cut
                            silence examples from (`excerpt_path`), for the modalities that have it
  ROOT/_silence_/..., ROOT/_unknown_/...   class folders of keyword spotting's two extra labels
  ROOT/_*/..., .../_*/...   skipped: other folders named `_...` hold no examples
  ROOT/validation_list.txt  optional lists of relative paths that fix those files' splits
  ROOT/testing_list.txt

Pure Python: no Beam, no TensorFlow.
"""
from typing import Callable

from beam_jobs.inputs.splits import LIST_FILES
from beam_jobs.modalities.config import SILENCE_LABEL, UNKNOWN_LABEL


def relative_to_root(path: str, root: str) -> str:
    """`path` relative to `root` with forward slashes, for local paths and URLs alike."""
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"matched path {path!r} is not under its root {root!r}")
    return path[len(prefix):].replace("\\", "/")


def join_root(root: str, relative_path: str) -> str:
    """The inverse of relative_to_root: the path that `relative_path` was taken from."""
    return root.rstrip("/") + "/" + relative_path


NOISE_FOLDER = "_background_noise_"  # the Speech Commands convention
_EXCERPT = "#"  # NOISE_FOLDER/<file>#<name>: a clip cut from a noise file, named by the plan


def classify(relative_path: str, *, extensions: tuple[str, ...], noise: bool = False) -> str:
    """'noise' for a file of the modality in ROOT/_background_noise_/ when `noise` (the modality has
    background noise), 'skipped' inside any other folder named `_...`, 'ignored' for other extensions,
    else 'input'."""
    folders = relative_path.split("/")[:-1]
    if noise and folders == [NOISE_FOLDER] and relative_path.lower().endswith(extensions):
        return "noise"
    # _silence_/ and _unknown_/ at the top are class folders: a test set of noise clips, of other words.
    if any(folder.startswith("_") for folder in folders[1:]) or (
            folders and folders[0].startswith("_") and folders[0] not in (SILENCE_LABEL, UNKNOWN_LABEL)):
        return "skipped"
    if not relative_path.lower().endswith(extensions):
        return "ignored"
    return "input"


def excerpt_path(noise_path: str, name: str) -> str:
    """The relative path that names excerpt `name` of the noise file at `noise_path`."""
    return f"{noise_path}{_EXCERPT}{name}"


def excerpt_source(relative_path: str) -> str | None:
    """The noise file an excerpt path was cut from; None for the path of a file."""
    source, separator, _ = relative_path.partition(_EXCERPT)
    return source if separator and source.startswith(NOISE_FOLDER + "/") else None


def class_folder(relative_path: str) -> str | None:
    """The label of a file: its top folder under the root; None for a file directly in the root."""
    folder, separator, _ = relative_path.partition("/")
    return folder if separator else None


def read_split_lists(root: str, *, read_text: Callable[[str], str | None]) -> dict[str, str]:
    """{relative path: split} from the root's validation_list.txt / testing_list.txt.

    `read_text(path)` returns a file's text, or None when it does not exist: the
    lists are optional, and hashing assigns the splits of unlisted files. Raises
    ValueError when a file is listed in both, since no split would be right.
    """
    listed = {}
    for split, list_name in LIST_FILES.items():
        text = read_text(f"{root}/{list_name}")
        for relative_path in filter(None, (line.strip() for line in (text or "").splitlines())):
            if listed.setdefault(relative_path, split) != split:
                raise ValueError(f"{relative_path} is listed in more than one split list under {root}")
    return listed
