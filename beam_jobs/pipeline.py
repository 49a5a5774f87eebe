"""The preprocessing pipeline's recipe: `IngestModality` per modality, then the shared errors file.

  MatchInputFiles    roots -> InputFile (input extensions outside `_` folders)
  ComputeVocabulary  InputFile -> {label name: index}: the previous manifest's labels, then new class
                     folders, sorted (or the fixed labels)
  ReadSplitLists     roots -> one {root index: {relative path: split}} from validation/testing lists
  AssignShards       InputFile -> ((split, shard index, part), InputFile), from the file's path alone
  FeaturizePart      ((split, shard index, part), [InputFile]) -> ShardPart written in one streaming
                     pass, and an ErrorRow for each file that could not be used
  WriteShards        ShardPart -> ShardFile: a shard's parts concatenated in order
  PublishDataset     ShardFile -> the shards renamed into place, then dataset.json, last
  WriteErrorRows     ErrorRow -> OUT/errors.jsonl
"""
import dataclasses

import apache_beam as beam

import beam_jobs
from beam_jobs import features
from beam_jobs.assign import AssignShards, ReadSplitLists
from beam_jobs.dataset_layout import errors_path
from beam_jobs.error_rows import WriteErrorRows
from beam_jobs.featurize import FeaturizePart
from beam_jobs.input_files import MatchInputFiles
from beam_jobs.labels import ComputeVocabulary, index_labels
from beam_jobs.manifest import DatasetManifest
from beam_jobs.progress import write_matched_count
from beam_jobs.settings import Settings
from beam_jobs.sharding import PublishDataset, WriteShards, record_bytes


def manifest_template(modality: str, settings: Settings, *, created: str) -> DatasetManifest:
    """The manifest fields known at launch; the pipeline fills in labels, splits and errors."""
    config, spec = settings.configs[modality], settings.specs[modality]
    return DatasetManifest(
        modality=modality, labels=[], tensor_dtype=spec.tensor_dtype, tensor_shape=list(config.feature_shape),
        featurization=dataclasses.asdict(config), splits={}, features=features.describe(),
        compression=settings.compression, input_roots=list(settings.roots[modality]),
        split_config=dataclasses.asdict(settings.split_config), num_errors=0,
        pipeline_version=beam_jobs.PIPELINE_VERSION, created=created)


class IngestModality(beam.PTransform):
    """PBegin -> ErrorRow of one modality; writes its shards and, last, its manifest."""

    def __init__(self, *, modality: str, settings: Settings, created: str, progress_dir: str,
                 previous_labels: tuple[str, ...] = ()):
        super().__init__()
        self._modality = modality
        self._settings = settings
        self._created = created
        self._progress_dir = progress_dir
        self._previous_labels = previous_labels

    def expand(self, pipeline):
        modality, settings = self._modality, self._settings
        spec, config = settings.specs[modality], settings.configs[modality]
        roots, fixed_labels = settings.roots[modality], settings.fixed_labels[modality]
        input_files = pipeline | "MatchInputFiles" >> MatchInputFiles(
            modality=modality, roots=roots, extensions=spec.extensions)
        _ = (input_files
             | "CountInputFiles" >> beam.combiners.Count.Globally()
             | "ReportInputFiles" >> beam.Map(write_matched_count, progress_dir=self._progress_dir,
                                               modality=modality))
        if fixed_labels:
            vocabulary = pipeline | "FixedVocabulary" >> beam.Create([index_labels(fixed_labels)])
        else:
            vocabulary = input_files | "ComputeVocabulary" >> ComputeVocabulary(
                previous_labels=self._previous_labels)
        split_lists = pipeline | "ReadSplitLists" >> ReadSplitLists(roots=roots)
        files_by_part = input_files | "AssignShards" >> AssignShards(
            split_config=settings.split_config, split_lists=split_lists,
            record_bytes=record_bytes(spec, feature_shape=config.feature_shape),
            shard_bytes=settings.shard_bytes, fixed_num_shards=settings.num_shards)
        featurized = (
            files_by_part
            # Only these small file references are shuffled, never the records. Grouping also breaks
            # fusion after matching, which yields every file from one bundle, and spreads the parts
            # over the workers as a separate Reshuffle would.
            | "GroupByPart" >> beam.GroupByKey()
            | "FeaturizeParts" >> beam.ParDo(
                FeaturizePart(spec=spec, config=config, dataset_dir=settings.dataset_dir(modality), roots=roots,
                              progress_dir=self._progress_dir),
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


def build_pipeline(pipeline: beam.Pipeline, settings: Settings, *, created: str, progress_dir: str,
                   previous_labels: dict[str, tuple[str, ...]]) -> None:
    """Adds every asked-for modality's branch (in parallel) and the shared errors file to `pipeline`.

    `previous_labels` holds, per modality, the vocabulary of the dataset being re-ingested, if any.
    """
    error_rows = [pipeline | f"Ingest{modality.capitalize()}" >> IngestModality(
                      modality=modality, settings=settings, created=created, progress_dir=progress_dir,
                      previous_labels=previous_labels.get(modality, ()))
                  for modality in settings.roots]
    _ = (error_rows
         | "FlattenErrorRows" >> beam.Flatten()
         | "WriteErrorRows" >> WriteErrorRows(path=errors_path(settings.output_dir)))
