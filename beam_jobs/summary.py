"""What a preprocessing run wrote, read back from its manifests, errors file and metrics, and its printout."""
import dataclasses
import json

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from beam_jobs.counters import METRICS_NAMESPACE
from beam_jobs.dataset_layout import errors_path, manifest_path
from beam_jobs.input_files import read_text
from beam_jobs.manifest import DatasetManifest
from beam_jobs.settings import Settings
from beam_jobs.splits import SPLITS

SUMMARY_ERROR_ROWS = 10  # error rows printed in the summary; all of them are in errors.jsonl


@dataclasses.dataclass
class PreprocessSummary:
    output_dir: str
    manifests: dict[str, DatasetManifest]
    manifest_paths: dict[str, str]
    errors_path: str
    error_rows: list[dict]
    counters: dict[str, int]  # the "soundsight" metrics, e.g. audio_input_files, audio_skipped_files
    result: PipelineResult
    added_labels: dict[str, list[str]]  # per modality, labels the re-ingested dataset did not have

    def empty_modalities(self) -> list[str]:
        """The modalities of which not one file became an example."""
        return [modality for modality, manifest in self.manifests.items()
                if not any(split.num_examples for split in manifest.splits.values())]


def summarize(settings: Settings, result, *, previous_labels: dict[str, tuple[str, ...]]) -> PreprocessSummary:
    manifest_paths = {modality: manifest_path(settings.dataset_dir(modality)) for modality in settings.roots}
    errors_file = errors_path(settings.output_dir)
    counters = {
        counter.key.metric.name: counter.committed if counter.committed is not None else counter.attempted
        for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}
    manifests = {modality: DatasetManifest.from_json(read_text(path)) for modality, path in manifest_paths.items()}
    return PreprocessSummary(
        output_dir=settings.output_dir, manifests=manifests, manifest_paths=manifest_paths, errors_path=errors_file,
        error_rows=[json.loads(line) for line in read_text(errors_file).splitlines()],
        counters=counters, result=result,
        added_labels={modality: manifest.labels[len(previous_labels[modality]):]
                      for modality, manifest in manifests.items() if previous_labels.get(modality)})


def format_summary(summary: PreprocessSummary) -> str:
    lines = [f"soundsight preprocessing wrote {summary.output_dir}"]
    for modality, manifest in summary.manifests.items():
        examples = sum(split.num_examples for split in manifest.splits.values())
        lines.append(
            f"{modality}: {examples} examples and {manifest.num_errors} errors from "
            f"{summary.counters.get(f'{modality}_input_files', 0)} input files; "
            f"skipped {summary.counters.get(f'{modality}_skipped_files', 0)} files in _ folders, "
            f"ignored {summary.counters.get(f'{modality}_ignored_files', 0)} files of other types")
        if summary.added_labels.get(modality):
            first = len(manifest.labels) - len(summary.added_labels[modality])
            lines.append(f"  new labels, after the {first} the dataset had: " + ", ".join(
                f"{label} ({index})" for index, label in enumerate(manifest.labels[first:], start=first)))
        for name in SPLITS:
            split = manifest.splits[name]
            labels = ", ".join(f"{label} {count}" for label, count in split.label_counts.items())
            lines.append(f"  {name}: {split.num_examples} in {len(split.shards)} shards ({labels})")
        lines.append(f"  manifest: {summary.manifest_paths[modality]}")
    lines.append(f"errors: {len(summary.error_rows)} rows in {summary.errors_path}")
    lines += [f"  {row['path']}: {row['reason']}" for row in summary.error_rows[:SUMMARY_ERROR_ROWS]]
    if len(summary.error_rows) > SUMMARY_ERROR_ROWS:
        lines.append(f"  ... and {len(summary.error_rows) - SUMMARY_ERROR_ROWS} more")
    for modality in summary.empty_modalities():
        lines.append(f"error: {modality}: no input file became an example{_why_empty(summary, modality)}")
    return "\n".join(lines)


def _why_empty(summary: PreprocessSummary, modality: str) -> str:
    input_files = summary.counters.get(f"{modality}_input_files", 0)
    if not input_files:
        others = summary.counters.get(f"{modality}_ignored_files", 0) + summary.counters.get(
            f"{modality}_skipped_files", 0)
        return f": none of the {others} files under its roots has a {modality} extension outside _ folders"
    unlabelled = sum("directly in the input root" in row["reason"] for row in summary.error_rows
                     if row["modality"] == modality)
    if unlabelled == input_files:
        return f": all {input_files} files lie directly in the root, and inputs go in ROOT/<label>/"
    return f": all {input_files} files failed (see {summary.errors_path})"
