"""Where the app finds its models and raw data, and what is missing with the command that makes it.

`app.serve` prints these checks before it starts Voila and the page shows the
same ones, so the two never disagree. The layouts are the pipeline's
(`beam_jobs.table.layout.DataFolder`) and the trainer's
(`trainer.model_dir.ModelDir`). Imports neither TensorFlow nor Beam.
"""
import dataclasses
import shlex
from collections.abc import Mapping
from pathlib import Path

from beam_jobs.modalities import MODALITIES
from beam_jobs.table.layout import DataFolder, manifest_path
from beam_jobs.table.manifest import DatasetManifest
from trainer.model_dir import ModelDir

# The environment variables through which app.serve hands its paths to the notebook's kernel.
ENV_MODELS_DIR = "SOUNDSIGHT_MODELS_DIR"
ENV_DATA_DIR = "SOUNDSIGHT_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class AppPaths:
    models_dir: Path  # holds a model folder per modality: MODELS/<modality>
    data_dir: Path  # DATA: holds raw/ and tfrecords/ (beam_jobs.table.layout.DataFolder)

    def model_dir(self, modality: str) -> Path:
        return self.models_dir / modality

    def to_environment(self) -> dict[str, str]:
        """Absolute paths, since the notebook's kernel runs in another directory."""
        return {ENV_MODELS_DIR: str(self.models_dir.resolve()), ENV_DATA_DIR: str(self.data_dir.resolve())}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], *, default_base: Path) -> "AppPaths":
        """The paths app.serve set, else `default_base`/models and `default_base`/data."""
        return cls(models_dir=Path(environ.get(ENV_MODELS_DIR, default_base / "models")),
                   data_dir=Path(environ.get(ENV_DATA_DIR, default_base / "data")))


@dataclasses.dataclass(frozen=True)
class Missing:
    what: str
    path: str  # a local path or a URL (a manifest may name gs:// roots)
    command: str  # the command that produces it


def find_missing_model(paths: AppPaths, *, modality: str) -> list[Missing]:
    """What is missing for the model of `modality`, upstream first; empty when the model can be loaded."""
    model_dir = ModelDir(str(paths.model_dir(modality)))
    if model_dir.is_trained():
        return []
    data = DataFolder(paths.data_dir)
    raw_root, dataset = data.demo_raw(modality), data.dataset(modality)
    records_manifest = Path(manifest_path(str(dataset)))
    chain = [
        (f"raw {modality} files", raw_root, raw_root.is_dir(), corpus_command(modality, out=raw_root)),
        (f"preprocessed {modality} dataset", records_manifest, records_manifest.is_file(),
         ["python", "-m", "beam_jobs.preprocess", f"--{modality}_root", str(raw_root),
          "--output_dir", str(data.records)]),
        (f"trained {modality} model", model_dir.saved_model, False,
         ["python", "-m", "trainer.train", "--data_dir", str(dataset), "--model_dir", model_dir.path]),
    ]
    return [Missing(what=what, path=str(path), command=shlex.join(command))
            for what, path, present, command in chain if not present]


def find_missing_test_files(manifest: DatasetManifest) -> list[Missing]:
    """The input roots of `manifest` that are not on this machine: their test files cannot be offered."""
    return [Missing(what=f"held-out {manifest.modality} test files (uploads still work)", path=root,
                    command=shlex.join(corpus_command(manifest.modality, out=root)))
            for root in manifest.input_roots if not Path(root).is_dir()]


def corpus_command(modality: str, *, out: Path | str) -> list[str]:
    """The command that builds the demo corpus of `modality` in `out`."""
    return ["python", "-m", "beam_jobs.datasets", MODALITIES[modality].demo_corpus.command, "--out", str(out)]
