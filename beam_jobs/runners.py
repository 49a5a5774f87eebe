"""The one default Beam runner of soundsight, used when a command names none, and when it runs in-process.

FnApiRunner with one SDK worker process per core: Beam's own DirectRunner
(2.77) first hands a pipeline to Prism, which it tries to download from the
internet when no binary is given, before falling back to this very runner.
Naming it directly runs the same pipeline, byte for byte, with no download.

A small work list runs in the launching process instead (`in_process_if_small`):
each FnApiRunner worker process costs about 2 CPU seconds to start (Python and
Beam's imports) and stop, more than featurizing a few thousand files; a nightly
re-ingest of a few hundred new files would spend most of its time on that.
The output is the same, byte for byte.
"""
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

IN_PROCESS_BELOW_FILES = 2000

DEFAULT_RUNNER_FLAGS = ("--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=0")


def with_default_runner(pipeline_args: list[str]) -> list[str]:
    """`pipeline_args`, plus the default runner's flags when they name no --runner."""
    if any(arg == "--runner" or arg.startswith("--runner=") for arg in pipeline_args):
        return list(pipeline_args)
    return [*DEFAULT_RUNNER_FLAGS, *pipeline_args]


def pipeline_options(pipeline_args: list[str], *, num_files: int, in_process_below: int) -> PipelineOptions:
    """The options of `pipeline_args` (with the default runner unless they name one), switched to
    FnApiRunner's in-process mode when they would start its worker processes for fewer than
    `in_process_below` files; other runners and larger work lists are left as they are."""
    args = with_default_runner(pipeline_args)
    options = PipelineOptions(args)
    runner = options.view_as(StandardOptions).runner
    if (runner in ("FnApiRunner", "DirectRunner") and num_files < in_process_below
            and options.view_as(DirectOptions).direct_running_mode == "multi_processing"):
        # One worker: Beam warns that more have no effect in-process.
        return PipelineOptions(args, direct_running_mode="in_memory", direct_num_workers=1)
    return options
