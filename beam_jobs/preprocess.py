"""Folder-per-class inputs to sharded TFRecords, one manifest per modality, and an errors file.

    python -m beam_jobs.preprocess --audio_root data/raw/speech --image_root data/raw/fashion \\
        --output_dir data/tfrecords

Owns the command: flags to Settings (`beam_jobs.settings`), the pipeline
(`beam_jobs.pipeline`) on the default runner (`beam_jobs.runners`) unless
--runner names another, a live progress line, and the summary
(`beam_jobs.summary`). Writes the layout of `beam_jobs.dataset_layout`. Flags
this module does not know are Beam pipeline options: the same command runs on
Dataflow with --runner=DataflowRunner and gs:// roots and output. Exits 1 when a
modality got no example at all.
"""
import datetime
import logging
import sys

from beam_jobs import console

console.quiet_beam_import()  # before the first import of Beam, below: see beam_jobs.console

import apache_beam as beam  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions  # noqa: E402

from beam_jobs.dataset_layout import manifest_path  # noqa: E402
from beam_jobs.input_files import read_text  # noqa: E402
from beam_jobs.manifest import DatasetManifest  # noqa: E402
from beam_jobs.pipeline import build_pipeline  # noqa: E402
from beam_jobs.progress import ProgressLine, new_progress_dir  # noqa: E402
from beam_jobs.runners import with_default_runner  # noqa: E402
from beam_jobs.settings import parse_settings  # noqa: E402
from beam_jobs.summary import PreprocessSummary, format_summary, summarize  # noqa: E402


def run(argv=None, save_main_session=True, *, progress_stream=None) -> PreprocessSummary:
    """Runs the pipeline to completion, prints the summary and returns it.

    With a `progress_stream` (a terminal or log), a progress line is shown on it while the pipeline runs.
    """
    settings, pipeline_args = parse_settings(argv)
    options = PipelineOptions(with_default_runner(pipeline_args))
    options.view_as(SetupOptions).save_main_session = save_main_session
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    previous_labels = {}
    for modality, roots in settings.roots.items():
        logging.info("%s: reading %s into %s", modality, ", ".join(roots), settings.dataset_dir(modality))
        previous = delete_previous_manifest(settings.dataset_dir(modality))
        # A fixed vocabulary replaces the previous one; otherwise the dataset's labels only grow.
        keeps_labels = previous is not None and settings.fixed_labels[modality] is None
        previous_labels[modality] = tuple(previous.labels) if keeps_labels else ()
    progress_dir = new_progress_dir(settings.output_dir)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, settings, created=created, progress_dir=progress_dir, previous_labels=previous_labels)
    with ProgressLine(progress_dir, modalities=list(settings.roots), stream=progress_stream):
        result = pipeline.run()
        result.wait_until_finish()
    summary = summarize(settings, result, previous_labels=previous_labels)
    print(format_summary(summary))
    return summary


def delete_previous_manifest(dataset_dir: str) -> DatasetManifest | None:
    """Makes the dataset unpublished while it is rewritten: a reader finds no manifest or a complete one.

    Returns the manifest it deleted, whose labels the new one keeps, or None.
    """
    path = manifest_path(dataset_dir)
    if not FileSystems.exists(path):
        return None
    previous = DatasetManifest.from_json(read_text(path))
    logging.info("deleting the previous manifest %s", path)
    FileSystems.delete([path])
    return previous


def main(argv=None) -> int:
    verbose = console.wants_verbose(sys.argv[1:] if argv is None else argv)
    with console.worker_output_filtered(verbose=verbose) as stderr:
        console.configure_logging(verbose=verbose, stream=stderr)
        summary = run(argv, progress_stream=stderr)
    return 1 if summary.empty_modalities() else 0


if __name__ == "__main__":
    sys.exit(main())
