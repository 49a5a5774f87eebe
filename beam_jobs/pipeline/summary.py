"""What a preprocessing run did, per modality, and its printout: one block per modality, then the errors."""
import dataclasses

from beam_jobs.inputs.splits import SPLITS
from beam_jobs.pipeline.noise import describe_noise
from beam_jobs.pipeline.plan import ModalityPlan
from beam_jobs.table.layout import manifest_path
from beam_jobs.table.manifest import DatasetManifest

SUMMARY_ERROR_ROWS = 10  # error rows printed in the summary; all of them are in errors.jsonl


@dataclasses.dataclass
class ModalityOutcome:
    plan: ModalityPlan
    manifest: DatasetManifest | None  # the current snapshot after the run (the base when nothing was committed)
    committed: bool = False
    conflict: str | None = None  # why the commit lost to another run
    expired: list[int] = dataclasses.field(default_factory=list)  # snapshots removed by retention

    @property
    def added_labels(self) -> list[str]:
        base = self.plan.base
        if base is None or self.plan.labels[:len(base.labels)] != base.labels:
            return []
        return self.plan.labels[len(base.labels):]


@dataclasses.dataclass
class PreprocessSummary:
    output_dir: str
    outcomes: dict[str, ModalityOutcome]
    errors_path: str
    error_rows: list[dict]

    @property
    def manifests(self) -> dict[str, DatasetManifest]:
        """The current snapshot of each modality of the run."""
        return {modality: outcome.manifest for modality, outcome in self.outcomes.items() if outcome.manifest}

    @property
    def manifest_paths(self) -> dict[str, str]:
        return {modality: manifest_path(f"{self.output_dir}/{modality}") for modality in self.manifests}

    @property
    def counters(self) -> dict[str, int]:
        """The listing's counts, e.g. audio_input_files, audio_skipped_files, audio_ignored_files."""
        return {f"{modality}_{name}": count for modality, outcome in self.outcomes.items()
                for name, count in outcome.plan.listing_counts.items()}

    @property
    def added_labels(self) -> dict[str, list[str]]:
        """Per modality, the labels the base snapshot did not have; only modalities that gained some."""
        return {modality: outcome.added_labels for modality, outcome in self.outcomes.items()
                if outcome.added_labels}

    def empty_modalities(self) -> list[str]:
        """The modalities whose current snapshot holds not one example."""
        return [modality for modality, outcome in self.outcomes.items() if outcome.conflict is None and not (
            outcome.manifest and any(split.num_examples for split in outcome.manifest.splits.values()))]

    def conflicts(self) -> list[str]:
        return [outcome.conflict for outcome in self.outcomes.values() if outcome.conflict]

    def exit_code(self) -> int:
        """1 when a modality got no example at all, or another run committed first."""
        return 1 if self.empty_modalities() or self.conflicts() else 0


def _count(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[name]} {name}" for name in ("new", "changed", "removed", "reused"))


def format_outcome(modality: str, outcome: ModalityOutcome) -> list[str]:
    plan, manifest = outcome.plan, outcome.manifest
    listing = plan.listing_counts
    noise = f"{listing['noise_files']} background noise files; " if listing.get("noise_files") else ""
    files = (f"{listing['input_files']} input files; {noise}skipped {listing['skipped_files']} files in _ folders, "
             f"ignored {listing['ignored_files']} files of other types")
    if outcome.conflict:
        return [f"{modality}: {files}", f"error: {outcome.conflict}"]
    if not outcome.committed:
        return [f"{modality}: nothing to do: {listing['input_files']} input files unchanged since "
                f"{manifest.describe()}; committed nothing"]
    examples = sum(split.num_examples for split in manifest.splits.values())
    how = (f"full ingest ({plan.full_reason})" if plan.full_reason else
           "compacted into one span" if plan.compact else f"{len(plan.kept_spans)} spans kept")
    lines = [f"{modality}: committed snapshot {manifest.snapshot_id}: {examples} examples and {manifest.num_errors} "
             f"errors from {files}",
             f"  files: {_count(plan.counts)}; {how}; {len(plan.work)} files written to a new span"]
    noise_line = describe_noise(manifest.background_noise)
    if noise_line:
        lines.append(f"  {noise_line}")
    if "unknown_left_out" in listing:
        lines.append(f"  _unknown_: files of class folders outside --wanted_words, {listing['unknown_left_out']} "
                     f"left out beyond --unknown_percentage")
    if listing.get("silence_without_noise"):
        lines.append("  note: no _silence_ examples: --silence_percentage needs recordings in ROOT/_background_noise_/, "
                     "and there are none")
    if outcome.added_labels:
        first = len(plan.labels) - len(outcome.added_labels)
        lines.append(f"  new labels, after the {first} the dataset had: " + ", ".join(
            f"{label} ({index})" for index, label in enumerate(plan.labels[first:], start=first)))
    for name in SPLITS:
        split = manifest.splits[name]
        labels = ", ".join(f"{label} {count}" for label, count in split.label_counts.items())
        lines.append(f"  {name}: {split.num_examples} in {len(split.shards)} shards ({labels})")
    if outcome.expired:
        lines.append(f"  removed by retention: snapshots {', '.join(map(str, outcome.expired))}")
    return lines


def format_commit(modality: str, manifest: DatasetManifest) -> str:
    """One line for a snapshot committed by a watch."""
    examples = sum(split.num_examples for split in manifest.splits.values())
    return (f"{modality}: committed snapshot {manifest.snapshot_id} ({manifest.created}): files: "
            f"{_count(manifest.changes)}; {examples} examples and {manifest.num_errors} errors in "
            f"{len(manifest.spans)} spans")


def format_summary(summary: PreprocessSummary) -> str:
    lines = [f"soundsight preprocessing of {summary.output_dir}"]
    for modality, outcome in summary.outcomes.items():
        lines += format_outcome(modality, outcome)
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
