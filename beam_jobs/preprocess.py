"""Folder-per-class wavs and images to sharded TFRecords, one manifest per modality, and an errors file.

  python -m beam_jobs.preprocess --audio_root data/speech --image_root data/fashion --output_dir out \
      --runner=FnApiRunner --direct_running_mode=multi_processing --direct_num_workers=0

Writes OUT/<modality>/<split>-NNNNN-of-MMMMM.tfrecord[.gz], then OUT/<modality>/dataset.json
last, and OUT/errors.jsonl with one row per input file that could not be used. Flags this
module does not know are Beam pipeline options: the same command runs on Dataflow with
--runner=DataflowRunner and gs:// roots and output.
"""
import argparse
import dataclasses
import datetime
import json
import logging
import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
from apache_beam.runners.runner import PipelineResult

import beam_jobs
from beam_jobs import features
from beam_jobs.config import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, AudioConfig, ConfigError, ImageConfig, SplitConfig
from beam_jobs.manifest import MANIFEST_NAME, DatasetManifest
from beam_jobs.sharding import PublishDataset, WriteShards, record_bytes
from beam_jobs.splits import SPLITS
from beam_jobs.transforms import (ERRORS_NAME, METRICS_NAMESPACE, AssignShards, ComputeVocabulary, FeaturizePart,
                                  MatchInputFiles, ReadSplitLists, WriteErrorRows, index_labels, read_text)

EXTENSIONS = {"audio": AUDIO_EXTENSIONS, "image": IMAGE_EXTENSIONS}
SUMMARY_ERROR_ROWS = 10  # error rows printed in the summary; all of them are in errors.jsonl

# (flag, config field, help); each default is the config dataclass's own.
AUDIO_FLAGS = (
    ("sample_rate", "sample_rate", "every clip is resampled to this rate (Hz)"),
    ("clip_seconds", "clip_seconds", "clips are padded or trimmed to this length"),
    ("align", "align", "'center' centres the loudest stretch in the clip, 'start' keeps its start"),
    ("window_ms", "window_ms", "spectrogram window length"),
    ("hop_ms", "hop_ms", "spectrogram hop between windows"),
    ("fft_size", "fft_size", "FFT length in samples, at least one window"),
    ("num_mel_bins", "num_mel_bins", "mel bands; 0 keeps the linear-frequency spectrogram"),
    ("max_audio_bytes", "max_file_bytes", "larger wav files become error rows"),
    ("max_seconds", "max_seconds", "longer recordings become error rows"),
)
IMAGE_FLAGS = (
    ("image_height", "height", "images are resized to this height"),
    ("image_width", "width", "images are resized to this width"),
    ("image_channels", "channels", "1 (grayscale) or 3 (RGB)"),
    ("max_image_bytes", "max_file_bytes", "larger image files become error rows"),
    ("max_pixels", "max_pixels", "images with more pixels become error rows before they are decoded"),
)
SPLIT_FLAGS = (
    ("validation_percent", "validation_percent", "share of files hashed into validation"),
    ("test_percent", "test_percent", "share of files hashed into test"),
)
CONFIG_FLAGS = ((AudioConfig, AUDIO_FLAGS), (ImageConfig, IMAGE_FLAGS), (SplitConfig, SPLIT_FLAGS))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the pipeline needs, built and validated from the flags at start-up."""
    roots: dict[str, tuple[str, ...]]  # modality -> its input roots, sorted; only the modalities asked for
    output_dir: str
    configs: dict[str, AudioConfig | ImageConfig]
    split_config: SplitConfig
    fixed_labels: dict[str, tuple[str, ...] | None]
    shard_bytes: int
    num_shards: int | None
    compression: str | None  # None or "GZIP", as in the manifest and tf.data

    def dataset_dir(self, modality: str) -> str:
        return f"{self.output_dir}/{modality}"


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for modality in EXTENSIONS:
        parser.add_argument(
            f"--{modality}_root", action="append", default=[],
            help=f"folder-per-class tree ROOT/<label>/.../<file> of {'/'.join(EXTENSIONS[modality])} files; "
                 "repeat for several roots. Folders named _* are skipped. A modality whose files all "
                 "fail still gets a manifest, with zero examples and no shards, so an older dataset "
                 "never survives a re-ingest looking current.")
        parser.add_argument(
            f"--{modality}_labels",
            help="comma-separated label vocabulary fixing the label indices across re-ingests; files "
                 "of other classes become error rows. Default: the sorted class folders found.")
    parser.add_argument("--output_dir", required=True, help="local path or URL (gs://, s3://) for the outputs")
    parser.add_argument("--shard_size_mb", type=float, default=64.0,
                        help="target uncompressed shard size: a split gets ceil(its bytes / target) shards, "
                             "its bytes being its listed files times the size of one record")
    parser.add_argument("--num_shards", type=int,
                        help="fixed number of hash buckets per split instead of --shard_size_mb; "
                             "buckets that receive no example write no shard")
    parser.add_argument("--compression", choices=("none", "gzip"), default="none",
                        help="gzip writes .tfrecord.gz shards")
    for config_class, flags in CONFIG_FLAGS:
        fields = {field.name: field for field in dataclasses.fields(config_class)}
        for flag, field_name, help_text in flags:
            field = fields[field_name]
            parser.add_argument(f"--{flag}", type=field.type, default=field.default,
                                help=f"{help_text} (default: {field.default})")
    return parser


def build_config(config_class, flags, args, parser: argparse.ArgumentParser):
    """The validated config from the flags; a bad value exits at once naming its flag."""
    values = {field_name: getattr(args, flag) for flag, field_name, _ in flags}
    try:
        return config_class(**values).validate()
    except ConfigError as error:
        # ConfigError messages start with the field name(s): "name=value is invalid: ...".
        field_to_flag = {field_name: flag for flag, field_name, _ in flags}
        names = str(error).split("=", 1)[0].split("+")
        flag_names = " + ".join(f"--{field_to_flag.get(name.strip(), name.strip())}" for name in names)
        parser.error(f"{flag_names}: {error}")


def parse_labels(text: str | None, *, flag: str, parser: argparse.ArgumentParser):
    if text is None:
        return None
    labels = tuple(label.strip() for label in text.split(","))
    if not all(labels) or len(set(labels)) != len(labels):
        parser.error(f"--{flag}={text!r}: labels must be non-empty and distinct")
    if any(label.startswith("_") or "/" in label for label in labels):
        parser.error(f"--{flag}={text!r}: a label is a class folder name, so no '/' and no leading '_'")
    return labels


def normalize_root(root: str, *, flag: str, parser: argparse.ArgumentParser) -> str:
    """An absolute local path or a URL without a trailing slash; it must hold at least one file."""
    if FileSystems.get_scheme(root) is None:
        root = os.path.abspath(root)
    root = root.rstrip("/")
    if not FileSystems.match([f"{root}/**"], limits=[1])[0].metadata_list:
        parser.error(f"--{flag} {root}: no files found")
    return root


def parse_settings(argv=None) -> tuple[Settings, list[str]]:
    """(Settings, the remaining arguments for PipelineOptions)."""
    parser = build_arg_parser()
    args, pipeline_args = parser.parse_known_args(argv)
    # Sorted: a file's reference holds the index of its root, which must not depend on the flags' order.
    roots = {modality: tuple(sorted(normalize_root(root, flag=f"{modality}_root", parser=parser)
                                    for root in getattr(args, f"{modality}_root")))
             for modality in EXTENSIONS if getattr(args, f"{modality}_root")}
    if not roots:
        parser.error("give at least one --audio_root or --image_root")
    if args.num_shards is not None and args.num_shards < 1:
        parser.error(f"--num_shards={args.num_shards}: must be >= 1")
    if args.shard_size_mb <= 0:
        parser.error(f"--shard_size_mb={args.shard_size_mb}: must be > 0")
    audio_config, image_config, split_config = (
        build_config(config_class, flags, args, parser) for config_class, flags in CONFIG_FLAGS)
    output_dir = args.output_dir.rstrip("/")
    if FileSystems.get_scheme(output_dir) is None:
        output_dir = os.path.abspath(output_dir)
    settings = Settings(
        roots=roots, output_dir=output_dir, configs={"audio": audio_config, "image": image_config},
        split_config=split_config,
        fixed_labels={modality: parse_labels(getattr(args, f"{modality}_labels"), flag=f"{modality}_labels",
                                             parser=parser) for modality in EXTENSIONS},
        shard_bytes=int(args.shard_size_mb * 1024 * 1024), num_shards=args.num_shards,
        compression="GZIP" if args.compression == "gzip" else None)
    return settings, pipeline_args


def manifest_template(modality: str, settings: Settings, *, created: str) -> DatasetManifest:
    """The manifest fields known at launch; the pipeline fills in labels, splits and errors."""
    config = settings.configs[modality]
    return DatasetManifest(
        modality=modality, labels=[], tensor_dtype=features.TENSOR_DTYPES[modality],
        tensor_shape=list(config.feature_shape), featurization=dataclasses.asdict(config), splits={},
        features=features.describe(), compression=settings.compression, input_roots=list(settings.roots[modality]),
        split_config=dataclasses.asdict(settings.split_config), num_errors=0,
        pipeline_version=beam_jobs.PIPELINE_VERSION, created=created)


def log_matched_files(count: int, *, modality: str) -> None:
    logging.info("%s: matched %d input files; featurizing them now", modality, count)


class IngestModality(beam.PTransform):
    """PBegin -> ErrorRow of one modality; writes its shards and, last, its manifest."""

    def __init__(self, *, modality: str, settings: Settings, created: str):
        super().__init__()
        self._modality = modality
        self._settings = settings
        self._created = created

    def expand(self, pipeline):
        modality, settings = self._modality, self._settings
        roots, fixed_labels = settings.roots[modality], settings.fixed_labels[modality]
        input_files = pipeline | "MatchInputFiles" >> MatchInputFiles(
            modality=modality, roots=roots, extensions=EXTENSIONS[modality])
        _ = (input_files
             | "CountInputFiles" >> beam.combiners.Count.Globally()
             | "LogInputFiles" >> beam.Map(log_matched_files, modality=modality))
        if fixed_labels:
            vocabulary = pipeline | "FixedVocabulary" >> beam.Create([index_labels(fixed_labels)])
        else:
            vocabulary = input_files | "ComputeVocabulary" >> ComputeVocabulary()
        split_lists = pipeline | "ReadSplitLists" >> ReadSplitLists(roots=roots)
        files_by_part = input_files | "AssignShards" >> AssignShards(
            split_config=settings.split_config, split_lists=split_lists,
            record_bytes=record_bytes(modality, feature_shape=settings.configs[modality].feature_shape),
            shard_bytes=settings.shard_bytes, fixed_num_shards=settings.num_shards)
        featurized = (
            files_by_part
            # Only these small file references are shuffled, never the records. Grouping also breaks
            # fusion after matching, which yields every file from one bundle, and spreads the parts
            # over the workers as a separate Reshuffle would.
            | "GroupByPart" >> beam.GroupByKey()
            | "FeaturizeParts" >> beam.ParDo(
                FeaturizePart(modality=modality, config=settings.configs[modality],
                              dataset_dir=settings.dataset_dir(modality), roots=roots),
                vocabulary=beam.pvalue.AsSingleton(vocabulary),
            ).with_outputs(FeaturizePart.ERRORS, main="shard_parts"))
        error_rows = featurized[FeaturizePart.ERRORS]
        num_errors = error_rows | "CountErrors" >> beam.combiners.Count.Globally()
        _ = (featurized.shard_parts
             | "WriteShards" >> WriteShards(dataset_dir=settings.dataset_dir(modality),
                                            compression=settings.compression)
             | "PublishDataset" >> PublishDataset(
                 dataset_dir=settings.dataset_dir(modality),
                 template=manifest_template(modality, settings, created=self._created),
                 vocabulary=vocabulary, num_errors=num_errors))
        return error_rows


def build_pipeline(pipeline: beam.Pipeline, settings: Settings, *, created: str) -> None:
    """Adds both modalities' branches (in parallel) and the shared errors file to `pipeline`."""
    error_rows = [pipeline | f"Ingest{modality.capitalize()}" >> IngestModality(
                      modality=modality, settings=settings, created=created)
                  for modality in settings.roots]
    _ = (error_rows
         | "FlattenErrorRows" >> beam.Flatten()
         | "WriteErrorRows" >> WriteErrorRows(path=f"{settings.output_dir}/{ERRORS_NAME}"))


def delete_previous_manifest(dataset_dir: str) -> None:
    """Makes the dataset unpublished while it is rewritten: a reader finds no manifest or a complete one."""
    manifest_path = f"{dataset_dir}/{MANIFEST_NAME}"
    if FileSystems.exists(manifest_path):
        logging.info("deleting the previous manifest %s", manifest_path)
        FileSystems.delete([manifest_path])


@dataclasses.dataclass
class PreprocessSummary:
    """What a run wrote, read back from its manifests, errors file and metrics."""
    output_dir: str
    manifests: dict[str, DatasetManifest]
    manifest_paths: dict[str, str]
    errors_path: str
    error_rows: list[dict]
    counters: dict[str, int]  # the "soundsight" metrics, e.g. audio_input_files, audio_skipped_files
    result: PipelineResult


def summarize(settings: Settings, result) -> PreprocessSummary:
    manifest_paths = {modality: f"{settings.dataset_dir(modality)}/{MANIFEST_NAME}" for modality in settings.roots}
    errors_path = f"{settings.output_dir}/{ERRORS_NAME}"
    counters = {
        counter.key.metric.name: counter.committed if counter.committed is not None else counter.attempted
        for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}
    return PreprocessSummary(
        output_dir=settings.output_dir,
        manifests={modality: DatasetManifest.from_json(read_text(path))
                   for modality, path in manifest_paths.items()},
        manifest_paths=manifest_paths, errors_path=errors_path,
        error_rows=[json.loads(line) for line in read_text(errors_path).splitlines()],
        counters=counters, result=result)


def format_summary(summary: PreprocessSummary) -> str:
    lines = [f"soundsight preprocessing wrote {summary.output_dir}"]
    for modality, manifest in summary.manifests.items():
        examples = sum(split.num_examples for split in manifest.splits.values())
        lines.append(
            f"{modality}: {examples} examples and {manifest.num_errors} errors from "
            f"{summary.counters.get(f'{modality}_input_files', 0)} input files; "
            f"skipped {summary.counters.get(f'{modality}_skipped_files', 0)} files in _ folders, "
            f"ignored {summary.counters.get(f'{modality}_ignored_files', 0)} files of other types")
        for name in SPLITS:
            split = manifest.splits[name]
            labels = ", ".join(f"{label} {count}" for label, count in split.label_counts.items())
            lines.append(f"  {name}: {split.num_examples} in {len(split.shards)} shards ({labels})")
        lines.append(f"  manifest: {summary.manifest_paths[modality]}")
    lines.append(f"errors: {len(summary.error_rows)} rows in {summary.errors_path}")
    lines += [f"  {row['path']}: {row['reason']}" for row in summary.error_rows[:SUMMARY_ERROR_ROWS]]
    if len(summary.error_rows) > SUMMARY_ERROR_ROWS:
        lines.append(f"  ... and {len(summary.error_rows) - SUMMARY_ERROR_ROWS} more")
    return "\n".join(lines)


def run(argv=None, save_main_session=True) -> PreprocessSummary:
    """Runs the pipeline to completion, prints the summary and returns it."""
    settings, pipeline_args = parse_settings(argv)
    options = PipelineOptions(pipeline_args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for modality, roots in settings.roots.items():
        logging.info("%s: reading %s into %s", modality, ", ".join(roots), settings.dataset_dir(modality))
        delete_previous_manifest(settings.dataset_dir(modality))
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, settings, created=created)
    result = pipeline.run()
    result.wait_until_finish()
    summary = summarize(settings, result)
    print(format_summary(summary))
    return summary


class _ProgressOfOwnCode(logging.Filter):
    """Passes warnings, and the info lines that beam_jobs code logged in a worker.

    Beam relays every line its local workers log, at INFO, which would bury the
    progress a person wants to follow (files matched, files featurized).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "beam_jobs" in record.getMessage()


def show_progress_only() -> None:
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    relay = logging.getLogger("apache_beam.runners.portability.local_job_service")
    relay.setLevel(logging.INFO)
    relay.addFilter(_ProgressOfOwnCode())


if __name__ == "__main__":
    show_progress_only()
    run()
