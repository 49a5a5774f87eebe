"""The preprocessing pipeline's recipe: one `WriteSpan` branch per modality with work to do.

The launcher has listed the files and planned the run (`beam_jobs.pipeline.plan`); a
branch reads its modality's work list and writes one new span:

  ReadParts      the plan's work list -> ((split, shard index, part), [work item]) per part of a shard:
                 the launcher grouped the input files by part, from each one's split and path alone
                 (`beam_jobs.pipeline.assign`)
  SpreadParts    a Reshuffle: the parts go to every worker, not to the one that read the list
  FeaturizePart  ((split, shard index, part), [work item]) -> ShardPart written in one streaming pass, and
                 an error row for each file that could not be used
  WriteShards    ShardPart -> ShardFile: a shard's parts concatenated in order, read back and checked
  PublishSpan    ShardFile -> the shards renamed into spans/<run id>/, its index, then span.json, last

Nothing here commits: the launcher commits the snapshot after the pipeline
(`beam_jobs.table.snapshots`).
"""
import collections
import dataclasses
import json

import apache_beam as beam

import beam_jobs
from beam_jobs.inputs.labels import index_labels
from beam_jobs.inputs.reading import read_text
from beam_jobs.pipeline.assign import PartKey
from beam_jobs.pipeline.featurize import FeaturizePart, SplitOutputs
from beam_jobs.pipeline.plan import ModalityPlan
from beam_jobs.pipeline.settings import Settings
from beam_jobs.pipeline.sharding import ConcatenateParts, PublishSpan, PublishSpanFiles, ShardPart, WriteShards
from beam_jobs.records import features
from beam_jobs.table.manifest import DatasetManifest


def manifest_template(modality: str, settings: Settings, *, labels: list[str], created: str) -> DatasetManifest:
    """The manifest fields known at launch; the pipeline fills in the splits and errors."""
    config, spec = settings.configs[modality], settings.specs[modality]
    return DatasetManifest(
        modality=modality, labels=list(labels), tensor_dtype=spec.tensor_dtype,
        tensor_shape=list(config.feature_shape), featurization=dataclasses.asdict(config), splits={},
        features=features.describe(), compression=settings.compression, input_roots=list(settings.roots[modality]),
        split_config=dataclasses.asdict(settings.split_config), num_errors=0,
        pipeline_version=beam_jobs.PIPELINE_VERSION, created=created)


@dataclasses.dataclass(frozen=True)
class SpanJob:
    """What one branch needs: the plan, where its work list is, where the span and temporary files go."""
    plan: ModalityPlan
    work_path: str
    span_dir: str
    temp_dir: str


def read_parts(path: str) -> list[tuple[PartKey, list[dict]]]:
    """The work list written by `beam_jobs.pipeline.ingest.write_work_list`:
    [((split, shard index, part), [work item])]."""
    parts = []
    for line in read_text(path).splitlines():
        part = json.loads(line)
        parts.append((tuple(part["part"]), part["items"]))
    return parts


class WriteSpan(beam.PTransform):
    """PBegin -> the span folder of one modality, once written whole."""

    def __init__(self, *, job: SpanJob, settings: Settings, created: str, progress_dir: str):
        super().__init__()
        self._job = job
        self._settings = settings
        self._created = created
        self._progress_dir = progress_dir

    def expand(self, pipeline):
        job, settings = self._job, self._settings
        modality = job.plan.modality
        spec, config = settings.specs[modality], settings.configs[modality]
        shard_parts, error_rows = (
            pipeline
            # A file read by a plain FlatMap, not ReadFromText, whose splittable read not every runner has.
            | "WorkList" >> beam.Create([job.work_path])
            | "ReadParts" >> beam.FlatMap(read_parts)
            # Only the parts' work items are shuffled, never the records; without it the parts would stay
            # fused to the read, on one worker.
            | "SpreadParts" >> beam.Reshuffle()
            | "FeaturizeParts" >> beam.ParDo(
                FeaturizePart(spec=spec, config=config, dataset_dir=settings.dataset_dir(modality),
                              temp_dir=job.temp_dir, roots=settings.roots[modality],
                              vocabulary=index_labels(job.plan.labels), progress_dir=self._progress_dir))
            | "SplitOutputs" >> SplitOutputs())
        return (shard_parts
                | "WriteShards" >> WriteShards(temp_dir=job.temp_dir, compression=settings.compression)
                | "PublishSpan" >> PublishSpan(
                    span_dir=job.span_dir,
                    template=manifest_template(modality, settings, labels=job.plan.labels, created=self._created),
                    error_rows=error_rows))


def check_spans(span_dirs: list[str], *, expected: list[str]) -> None:
    if sorted(span_dirs) != sorted(expected):
        raise RuntimeError(f"the pipeline published the spans {sorted(span_dirs)}, not {sorted(expected)}")


def build_pipeline(pipeline: beam.Pipeline, settings: Settings, *, jobs: list[SpanJob], created: str,
                   progress_dir: str) -> None:
    """Adds one branch per job to `pipeline`, in parallel, and one last step that needs them all.

    The last step checks that every span was published: with one sink, a runner
    that computes only what a sink needs (Beam's DaskRunner) computes every branch.
    """
    spans = [pipeline | f"Write{job.plan.modality.capitalize()}Span" >> WriteSpan(
                 job=job, settings=settings, created=created, progress_dir=progress_dir)
             for job in jobs]
    _ = (spans
         | "FlattenSpans" >> beam.Flatten()
         | "CollectSpans" >> beam.combiners.ToList()
         | "CheckSpans" >> beam.Map(check_spans, expected=[job.span_dir for job in jobs]))


def write_span_in_process(job: SpanJob, *, settings: Settings, created: str, progress_dir: str) -> str:
    """WriteSpan's steps as a plain loop in this process, through the same DoFns: the same span, byte for byte.

    For small work lists (`beam_jobs.runners.default.runs_in_process`), where building and
    running a pipeline costs more than the work. Returns the span's folder.
    """
    modality = job.plan.modality
    spec, config = settings.specs[modality], settings.configs[modality]
    featurize = FeaturizePart(spec=spec, config=config, dataset_dir=settings.dataset_dir(modality),
                              temp_dir=job.temp_dir, roots=settings.roots[modality],
                              vocabulary=index_labels(job.plan.labels), progress_dir=progress_dir)
    featurize.setup()
    parts_by_shard, error_lines = collections.defaultdict(list), []
    for part in read_parts(job.work_path):
        for output in featurize.process(part):
            if isinstance(output, ShardPart):
                parts_by_shard[(output.split, output.index)].append(output)
            else:
                error_lines.append(output)
    featurize.finish_bundle()
    concatenate = ConcatenateParts(temp_dir=job.temp_dir, compression=settings.compression)
    shard_files = [shard_file for shard in sorted(parts_by_shard)
                   for shard_file in concatenate.process((shard, parts_by_shard[shard]))]
    publish = PublishSpanFiles(
        span_dir=job.span_dir,
        template=manifest_template(modality, settings, labels=job.plan.labels, created=created))
    [span_dir] = publish.process(shard_files, error_lines)
    return span_dir
