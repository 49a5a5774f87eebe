"""The one default Beam runner of soundsight, used when a command names none.

FnApiRunner with one SDK worker process per core: Beam's own DirectRunner
(2.77) first hands a pipeline to Prism, which it tries to download from the
internet when no binary is given, before falling back to this very runner.
Naming it directly runs the same pipeline, byte for byte, with no download.
"""

DEFAULT_RUNNER_FLAGS = ("--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=0")


def with_default_runner(pipeline_args: list[str]) -> list[str]:
    """`pipeline_args`, plus the default runner's flags when they name no --runner."""
    if any(arg == "--runner" or arg.startswith("--runner=") for arg in pipeline_args):
        return list(pipeline_args)
    return [*DEFAULT_RUNNER_FLAGS, *pipeline_args]
