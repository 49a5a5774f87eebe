"""The layout of a model folder (--model_dir): every file name that train, evaluate and predict use.

  model.keras            the best model by validation accuracy (the checkpoint)
  saved_model/           the same model exported for serving: stored tensor batch -> probabilities
  serving/               the serving model on raw input (file bytes, waveforms), featurizer inside
                         (`trainer.export`)
  litert/                model_float32.tflite, model_int8.tflite and labels.txt: the raw-input model for
                         LiteRT (TFLite) on devices
  dataset.json           the manifest of the snapshot trained on: vocabulary and featurization for prediction
  history.json           per-epoch metrics and seconds; written last, it marks training finished
  train_config.json      the settings of the run, its snapshot among them, checked when an interrupted run
                         is resumed
  epochs.csv             the epoch log, appended epoch by epoch, so it survives resumes
  logs/                  TensorBoard
  backup/                BackupAndRestore state while training (removed when finished)
  metrics-<stem>.json    trainer.evaluate's metrics, stem = split or tag-split; they name the snapshot
                         evaluated and the one trained on (`describe_snapshots`)
  confusion-<stem>.png   its confusion matrix
  training_curves.png    loss and accuracy per epoch

Pure Python, no TensorFlow: the app and the main job read model folders too.
Paths are strings joined with "/", so gs:// model folders work.
"""
import dataclasses
import os.path

from beam_jobs.table.layout import MANIFEST_NAME


@dataclasses.dataclass(frozen=True)
class ModelDir:
    path: str  # a local folder (str or Path) or a URL

    def __post_init__(self):
        object.__setattr__(self, "path", os.fspath(self.path))

    def _join(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    @property
    def model(self) -> str:
        return self._join("model.keras")

    @property
    def saved_model(self) -> str:
        return self._join("saved_model")

    @property
    def serving(self) -> str:
        return self._join("serving")

    @property
    def litert(self) -> str:
        return self._join("litert")

    def litert_model(self, kind: str) -> str:
        """litert/model_<kind>.tflite, kind "float32" or "int8"."""
        return self._join(f"litert/model_{kind}.tflite")

    @property
    def litert_labels(self) -> str:
        return self._join("litert/labels.txt")

    @property
    def manifest(self) -> str:
        return self._join(MANIFEST_NAME)

    @property
    def history(self) -> str:
        return self._join("history.json")

    @property
    def train_config(self) -> str:
        return self._join("train_config.json")

    @property
    def epoch_log(self) -> str:
        return self._join("epochs.csv")

    @property
    def logs(self) -> str:
        return self._join("logs")

    @property
    def backup(self) -> str:
        return self._join("backup")

    @property
    def training_curves(self) -> str:
        return self._join("training_curves.png")

    def metrics(self, stem: str) -> str:
        return self._join(f"metrics-{stem}.json")

    def confusion(self, stem: str) -> str:
        return self._join(f"confusion-{stem}.png")

    def run_files(self) -> list[str]:
        """Glob patterns of everything train and evaluate write here, for --overwrite."""
        return [self.model, self.saved_model, self.serving, self.litert, self.manifest, self.history,
                self.train_config, self.epoch_log, self.backup, self.logs, self.metrics("*"), self.confusion("*"),
                self.training_curves]

    def is_trained(self) -> bool:
        """Whether a finished model can be loaded from here (local folders only)."""
        return os.path.isfile(self.manifest) and os.path.isdir(self.saved_model)


def describe_snapshots(metrics: dict) -> str:
    """Which data a metrics file (`metrics-<stem>.json`) comes from, in words: what was trained on and evaluated.

    E.g. "trained on snapshot 2; evaluated on snapshot 3 of data/tfrecords/audio". Metrics written
    before snapshots were recorded lack the ids, and data written before snapshots has none: the words say so.
    """
    trained = _snapshot_words(metrics, "training_snapshot")
    evaluated = _snapshot_words(metrics, "snapshot")
    return f"trained on {trained}; evaluated on {evaluated} of {metrics.get('data_dir', 'its data')}"


def _snapshot_words(metrics: dict, key: str) -> str:
    if key not in metrics:
        return "an unrecorded snapshot"
    return "data written before snapshots" if metrics[key] is None else f"snapshot {metrics[key]}"
