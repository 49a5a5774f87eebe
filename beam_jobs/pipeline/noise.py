"""Background noise, stored once per snapshot: each ROOT/_background_noise_ recording featurized whole.

The trainer mixes stretches of these into training clips (`trainer.noise`), in the power domain, so it needs
them as the stored tensors are made but at full length. The launcher featurizes the few recordings itself,
before the commit, into content-addressed `noise/<hash>.npy` files under the dataset folder, which the
manifest's `background_noise` lists; a recording unchanged since the base snapshot keeps its file. The files
are small (a minute of noise is 1.5 MB) and retention does not delete them. A recording that cannot be read
is listed with its reason instead, and the summary says so.
"""
import hashlib
import io

import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_jobs.inputs.reading import read_at_most
from beam_jobs.inputs.tree import join_root
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.storage.files import write_atomically
from beam_jobs.table.layout import NOISE_FOLDER_NAME



def store_background_noise(plan, *, spec, config, roots: tuple[str, ...], dataset_dir: str) -> list[dict]:
    """The `background_noise` entries of the snapshot `plan` commits, writing the files it lacks."""
    earlier = {} if plan.base is None or plan.full_reason is not None else {
        _identity(entry): entry for entry in plan.base.background_noise}
    entries = []
    for file in plan.noise:
        entry = {"root": file.root_index, "path": file.relative_path, "size": file.size_bytes, "mtime": file.mtime}
        if _identity(entry) in earlier:
            entries.append(earlier[_identity(entry)])
            continue
        try:
            spectrogram = _featurize(join_root(roots[file.root_index], file.relative_path), spec=spec, config=config,
                                     size_bytes=file.size_bytes)
        except InvalidInputError as error:
            entries.append({**entry, "error": str(error)})
            continue
        buffer = io.BytesIO()
        np.save(buffer, spectrogram, allow_pickle=False)
        payload = buffer.getvalue()
        relative = f"{NOISE_FOLDER_NAME}/{hashlib.sha256(payload).hexdigest()[:24]}.npy"
        if not FileSystems.exists(f"{dataset_dir}/{relative}"):
            write_atomically(f"{dataset_dir}/{relative}", payload)
        entries.append({**entry, "file": relative, "frames": int(spectrogram.shape[0])})
    return entries


def _identity(entry: dict) -> tuple:
    return entry["root"], entry["path"], entry["size"], entry["mtime"]


def _featurize(path: str, *, spec, config, size_bytes: int) -> np.ndarray:
    if size_bytes > config.max_file_bytes:
        raise InvalidInputError(f"file is {size_bytes} bytes, over the limit of {config.max_file_bytes}")
    return spec.featurize_noise(read_at_most(path, limit=config.max_file_bytes + 1, expected_bytes=size_bytes),
                                config=config)


def describe_noise(entries: list[dict]) -> str | None:
    """One line on the stored background noise: how much, and which recordings were left out and why."""
    if not entries:
        return None
    stored = [entry for entry in entries if "file" in entry]
    line = f"background noise: {len(stored)} recordings stored ({sum(entry['frames'] for entry in stored)} frames)"
    failed = [entry for entry in entries if "error" in entry]
    if failed:
        line += f"; left out {len(failed)}: " + "; ".join(f"{entry['path']}: {entry['error']}" for entry in failed)
    return line
