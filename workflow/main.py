"""The main job: raw data to trained models and a visual report, on this machine.

    python -m workflow.main [--quick]

Each stage is the command a user could run by hand (it is printed before it
runs), in its own process, so that what the job does is exactly what the README
tells a user to do. A stage whose outputs are newer than its inputs and that
ran with the same command is skipped, so a second run only redoes what changed.
Once the data stages have run, the job pins the snapshot of each dataset that
preprocessing committed and names it in every training and evaluation command
(--snapshot ID), so that they read the same data whatever is committed meanwhile.
Folders follow `beam_jobs.table.layout.DataFolder` and `trainer.model_dir`.
"""
import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from beam_jobs.datasets import SPEECH_COMMANDS_WORDS
from beam_jobs.modalities import MODALITIES
from beam_jobs.modalities.config import SILENCE_LABEL, UNKNOWN_LABEL
from beam_jobs.table.layout import ERRORS_NAME, DataFolder, manifest_path
from beam_jobs.table.manifest import DatasetManifest, resolve_manifest
from trainer.model_dir import ModelDir, describe_snapshots


@dataclasses.dataclass(frozen=True)
class JobConfig:
    work_dir: Path  # data/, models/ and report/ are created below it
    words: str | None  # comma-separated subset of the 30 Speech Commands words; None means all
    speakers_per_word: int  # synthetic espeak-ng voices, each saying all 30 words once
    festival_per_voice: int  # rate/pitch/volume settings of each installed festival voice
    noise_clips_per_kind: int  # one-second test clips of each noise type never used in training
    fashion_per_class: int | None  # None exports all 70,000 Fashion-MNIST images
    audio_epochs: int
    image_epochs: int
    predict_samples: int  # held-out files per modality shown with their predictions

    @property
    def word_list(self) -> list[str]:
        return self.words.split(",") if self.words else list(SPEECH_COMMANDS_WORDS)

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def data(self) -> DataFolder:
        return DataFolder(self.data_dir)

    @property
    def festival_records(self) -> Path:
        """The festival voices' preprocessing output, beside the main one."""
        return self.data_dir / "tfrecords-festival"

    @property
    def festival_dataset(self) -> Path:
        return self.festival_records / "audio"

    @property
    def noise_records(self) -> Path:
        """The noise-only test clips' preprocessing output, beside the main one."""
        return self.data_dir / "tfrecords-noise"

    @property
    def noise_dataset(self) -> Path:
        return self.noise_records / "audio"

    def datasets(self) -> list[Path]:
        """Every dataset folder the job trains or evaluates on."""
        return [self.data.dataset(modality) for modality in MODALITIES] + [self.festival_dataset, self.noise_dataset]

    def epochs(self, modality: str) -> int:
        return getattr(self, f"{modality}_epochs")

    def model_dir(self, modality: str) -> ModelDir:
        return ModelDir(str(self.models_dir / modality))

    @property
    def models_dir(self) -> Path:
        return self.work_dir / "models"

    @property
    def report_dir(self) -> Path:
        return self.work_dir / "report"


FULL = JobConfig(work_dir=Path("."), words=None, speakers_per_word=300, festival_per_voice=5,
                 noise_clips_per_kind=40, fashion_per_class=None, audio_epochs=40, image_epochs=40, predict_samples=8)
QUICK = JobConfig(work_dir=Path("quick"), words=None, speakers_per_word=60, festival_per_voice=2,
                  noise_clips_per_kind=10, fashion_per_class=300, audio_epochs=30, image_epochs=10, predict_samples=4)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    description: str
    command: list[str]
    inputs: list[Path]  # files whose change makes the stage run again
    outputs: list[Path]  # files the stage writes; all must exist for it to be skipped
    stamp: Path  # records the command the outputs were made with


def build_data_stages(job: JobConfig) -> list[Stage]:
    """Raw corpora to datasets: the stages that commit snapshots."""
    python = sys.executable
    data = job.data
    speech, fashion, festival = data.demo_raw("audio"), data.demo_raw("image"), data.raw("festival")
    noise = data.raw("noise")
    # Speech Commands' trainer's shares: silence and unknown each 10% of the wanted words' examples.
    keywords = ["--wanted_words", ",".join(job.word_list), "--unknown_percentage", "10", "--silence_percentage", "10"]
    manifests = {modality: Path(manifest_path(str(data.dataset(modality)))) for modality in MODALITIES}
    fashion_limit = [] if job.fashion_per_class is None else ["--limit_per_class", str(job.fashion_per_class)]
    words = [] if job.words is None else ["--words", job.words]
    stages = [
        Stage("speech-corpus", "Synthesizing the speech-commands corpus with espeak-ng",
              [python, "-m", "beam_jobs.datasets", "speech-commands", "--out", str(speech),
               "--per_word", str(job.speakers_per_word), *words],
              [], [speech / "corpus.json"], speech.parent / ".speech-corpus.stamp"),
        Stage("festival-corpus", "Synthesizing the unseen-voices test set with festival",
              [python, "-m", "beam_jobs.datasets", "festival-commands", "--out", str(festival),
               "--per_voice", str(job.festival_per_voice), *words],
              [], [festival / "corpus.json"], festival.parent / ".festival-corpus.stamp"),
        Stage("noise-corpus", "Generating noise-only test clips of noise types the training never mixes in",
              [python, "-m", "beam_jobs.datasets", "noise-clips", "--out", str(noise),
               "--per_kind", str(job.noise_clips_per_kind)],
              [], [noise / "corpus.json"], noise.parent / ".noise-corpus.stamp"),
        Stage("fashion-corpus", "Exporting Fashion-MNIST to per-class PNG folders",
              [python, "-m", "beam_jobs.datasets", "fashion-mnist", "--out", str(fashion), *fashion_limit],
              [], [fashion / "corpus.json"], fashion.parent / ".fashion-corpus.stamp"),
        Stage("preprocess", "Beam pipeline: wavs and images to sharded TFRecords",
              [python, "-m", "beam_jobs.preprocess", "--audio_root", str(speech), "--image_root", str(fashion),
               "--output_dir", str(data.records), *keywords],
              [speech / "corpus.json", fashion / "corpus.json"], list(manifests.values()),
              data.records / ".preprocess.stamp"),
    ]
    return stages


def build_test_set_stages(job: JobConfig, *, audio_labels: list[str]) -> list[Stage]:
    """The test sets of the speech model (voices, noise types), preprocessed with its vocabulary `audio_labels`,
    which the main dataset's manifest holds once it is there."""
    python = sys.executable
    data = job.data
    festival, noise = data.raw("festival"), data.raw("noise")
    festival_manifest = Path(manifest_path(str(job.festival_dataset)))
    noise_manifest = Path(manifest_path(str(job.noise_dataset)))
    speech_manifest = Path(manifest_path(str(data.dataset("audio"))))
    labels = ["--audio_labels", ",".join(audio_labels)]
    return [
        Stage("preprocess-festival", "Beam pipeline: the festival voices to TFRecords, with the speech vocabulary",
              [python, "-m", "beam_jobs.preprocess", "--audio_root", str(festival),
               "--output_dir", str(job.festival_records), *labels, "--wanted_words", ",".join(job.word_list),
               "--unknown_percentage", "100"],
              [festival / "corpus.json", speech_manifest], [festival_manifest],
              job.festival_records / ".preprocess.stamp"),
        Stage("preprocess-noise", "Beam pipeline: the noise-only test clips to TFRecords, with the speech vocabulary",
              [python, "-m", "beam_jobs.preprocess", "--audio_root", str(noise),
               "--output_dir", str(job.noise_records), *labels],
              [noise / "corpus.json", speech_manifest], [noise_manifest], job.noise_records / ".preprocess.stamp"),
    ]


def build_model_stages(job: JobConfig, *, snapshots: dict[Path, int | None]) -> list[Stage]:
    """Training, evaluation and the report, on the snapshot of each dataset in `snapshots` (None: the current one)."""
    python = sys.executable
    data, models = job.data, job.models_dir
    festival_manifest = Path(manifest_path(str(job.festival_dataset)))
    manifests = {modality: Path(manifest_path(str(data.dataset(modality)))) for modality in MODALITIES}
    stages = []
    for modality in MODALITIES:
        model_dir = job.model_dir(modality)
        stages += [
            Stage(f"train-{modality}", f"Training the seed CNN on the {modality} shards",
                  [python, "-m", "trainer.train", "--data_dir", str(data.dataset(modality)),
                   *_snapshot_flag(snapshots, data.dataset(modality)),
                   "--model_dir", model_dir.path, "--epochs", str(job.epochs(modality))],
                  [manifests[modality]], [Path(model_dir.model)], models / modality / ".train.stamp"),
            Stage(f"evaluate-{modality}", f"Evaluating the {modality} model on its test split",
                  [python, "-m", "trainer.evaluate", "--model_dir", model_dir.path,
                   "--data_dir", str(data.dataset(modality)), *_snapshot_flag(snapshots, data.dataset(modality)),
                   "--split", "test"],
                  [Path(model_dir.model)], [Path(model_dir.metrics("test"))], models / modality / ".evaluate.stamp"),
        ]
    audio_model = job.model_dir("audio")
    stages += [
        Stage("evaluate-festival", "Evaluating the speech model on voices it never heard (festival)",
              [python, "-m", "trainer.evaluate", "--model_dir", audio_model.path,
               "--data_dir", str(job.festival_dataset), *_snapshot_flag(snapshots, job.festival_dataset),
               "--split", "test", "--tag", "festival"],
              [Path(audio_model.model), festival_manifest],
              [Path(audio_model.metrics("festival-test"))], models / "audio" / ".evaluate-festival.stamp"),
        Stage("evaluate-noise", "Evaluating the speech model on noise types it never heard (all should be _silence_)",
              [python, "-m", "trainer.evaluate", "--model_dir", audio_model.path,
               "--data_dir", str(job.noise_dataset), *_snapshot_flag(snapshots, job.noise_dataset),
               "--split", "test", "--tag", "noise"],
              [Path(audio_model.model), Path(manifest_path(str(job.noise_dataset)))],
              [Path(audio_model.metrics("noise-test"))], models / "audio" / ".evaluate-noise.stamp"),
        Stage("report", "Writing the HTML report",
              [python, "-m", "workflow.report", "--data_dir", str(job.data_dir), "--models_dir", str(models),
               "--out", str(job.report_dir),
               "--predict_samples", str(job.predict_samples)],
              [Path(job.model_dir(modality).metrics("test")) for modality in MODALITIES]
              + [Path(audio_model.metrics("festival-test")), Path(audio_model.metrics("noise-test"))],
              [job.report_dir / "index.html"], job.report_dir / ".report.stamp"),
    ]
    return stages


def _snapshot_flag(snapshots: dict[Path, int | None], dataset: Path) -> list[str]:
    snapshot_id = snapshots.get(dataset)
    return [] if snapshot_id is None else ["--snapshot", str(snapshot_id)]


def current_snapshots(job: JobConfig) -> dict[Path, int | None]:
    """{dataset folder: its current snapshot's id}, read once after preprocessing: the snapshots the job pins."""
    return {dataset: read_manifest(dataset).snapshot_id for dataset in job.datasets()}


def read_manifest(dataset: Path, snapshot_id: int | None = None) -> DatasetManifest:
    """The manifest of snapshot `snapshot_id` of a local dataset folder, or of its current one when None."""
    return resolve_manifest(str(dataset), snapshot_id, read_text=lambda path: Path(path).read_text(),
                            exists=lambda path: Path(path).exists())


def is_up_to_date(stage: Stage) -> bool:
    """True when every output exists, is newer than every input, and was made by the same command."""
    if not stage.stamp.exists() or json.loads(stage.stamp.read_text()) != stage.command:
        return False
    if not all(output.exists() for output in stage.outputs):
        return False
    newest_input = max((path.stat().st_mtime for path in stage.inputs if path.exists()), default=0.0)
    return min(output.stat().st_mtime for output in stage.outputs) >= newest_input


def run_stage(stage: Stage, *, number: int, total: int) -> float:
    """Runs one stage with its output streamed to this terminal; returns seconds taken."""
    print(f"\n[{number}/{total}] {stage.description}\n  $ {shlex.join(stage.command)}", flush=True)
    if is_up_to_date(stage):
        print("  up to date: skipped", flush=True)
        return 0.0
    started = time.monotonic()
    completed = subprocess.run(stage.command, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"stage {stage.name!r} failed with exit status {completed.returncode}; "
                         f"run its command above on its own to investigate")
    stage.stamp.parent.mkdir(parents=True, exist_ok=True)
    stage.stamp.write_text(json.dumps(stage.command))
    elapsed = time.monotonic() - started
    print(f"  done in {elapsed:.0f} s", flush=True)
    return elapsed


def print_summary(job: JobConfig, *, snapshots: dict[Path, int | None], seconds: float) -> None:
    data = job.data
    print("\n=== soundsight: summary")
    for modality in MODALITIES:
        manifest = read_manifest(data.dataset(modality), snapshots[data.dataset(modality)])
        counts = ", ".join(f"{name} {split.num_examples}" for name, split in sorted(manifest.splits.items()))
        print(f"{modality}, {manifest.describe()}: {len(manifest.labels)} classes; examples: {counts}")
    errors_path = data.records / ERRORS_NAME
    error_rows = [line for line in errors_path.read_text().splitlines() if line.strip()]
    print(f"pipeline errors: {len(error_rows)} (listed in {errors_path})")
    for name, modality, stem in (("speech commands, test split", "audio", "test"),
                                 ("speech commands, unseen festival voices", "audio", "festival-test"),
                                 ("Fashion-MNIST, official test split", "image", "test")):
        metrics = json.loads(Path(job.model_dir(modality).metrics(stem)).read_text())
        print(f"accuracy, {name}: {metrics['accuracy']:.4f} ({describe_snapshots(metrics)})")
        if keyword_line(metrics):
            print(f"  {keyword_line(metrics)}")
    noise = json.loads(Path(job.model_dir("audio").metrics("noise-test")).read_text())
    print(f"noise types never trained on, classified {SILENCE_LABEL}: "
          f"{noise['per_class'][SILENCE_LABEL]['recall']:.4f} of {noise['num_examples']} clips")
    print(f"models: {', '.join(job.model_dir(modality).path for modality in MODALITIES)}")
    print(f"report: {(job.report_dir / 'index.html').resolve()}")
    print(f"total time: {seconds / 60:.1f} min")


def keyword_line(metrics: dict) -> str:
    """The words' accuracy and the recall of _unknown_ and _silence_, from a metrics JSON."""
    parts = [f"the words {metrics['words_accuracy']:.4f} ({metrics['words_support']})"] \
        if metrics.get("words_support") else []
    for label in (UNKNOWN_LABEL, SILENCE_LABEL):
        support = metrics["per_class"].get(label, {}).get("support", 0)
        if support:
            parts.append(f"{label} recall {metrics['per_class'][label]['recall']:.4f} ({support})")
    return "; ".join(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small corpora and few epochs, under ./quick: a first look in about 5 minutes")
    overrides = parser.add_argument_group("overrides of the preset (full or --quick)")
    overrides.add_argument("--work_dir", type=Path, help="where data/, models/ and report/ go")
    overrides.add_argument("--words", help="comma-separated subset of the 30 words")
    for field in ("speakers_per_word", "festival_per_voice", "noise_clips_per_kind", "fashion_per_class",
                  "audio_epochs", "image_epochs", "predict_samples"):
        overrides.add_argument(f"--{field}", type=int)
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    job = dataclasses.replace(preset, **{field.name: getattr(args, field.name) for field in dataclasses.fields(preset)
                                         if getattr(args, field.name) is not None})
    started = time.monotonic()
    data_stages = build_data_stages(job)
    # The later stages are built once the data is there, to take its vocabulary and name its snapshots;
    # built here only to count them.
    total = (len(data_stages) + len(build_test_set_stages(job, audio_labels=[]))
             + len(build_model_stages(job, snapshots={})))
    for number, stage in enumerate(data_stages, start=1):
        run_stage(stage, number=number, total=total)
    done = len(data_stages)
    test_set_stages = build_test_set_stages(job, audio_labels=read_manifest(job.data.dataset("audio")).labels)
    for number, stage in enumerate(test_set_stages, start=done + 1):
        run_stage(stage, number=number, total=total)
    done += len(test_set_stages)
    snapshots = current_snapshots(job)
    for number, stage in enumerate(build_model_stages(job, snapshots=snapshots), start=done + 1):
        run_stage(stage, number=number, total=total)
    print_summary(job, snapshots=snapshots, seconds=time.monotonic() - started)


if __name__ == "__main__":
    main()
