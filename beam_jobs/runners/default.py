"""The one default Beam runner of soundsight, used when a command names none; the Prism binary; in-process runs.

FnApiRunner with one SDK worker process per core, forked from a zygote that
has imported Beam and the featurizers once (`beam_jobs.runners.forked_workers`, on
Linux), so a worker starts in milliseconds rather than 2 CPU s. Beam's own
DirectRunner (2.77) first hands a pipeline to Prism, which it tries to download
from the internet when no binary is given, before falling back to this very runner.
Naming it directly runs the same pipeline, byte for byte, with no download.

A run on Prism (`--runner=PrismRunner`, or DirectRunner, which tries Prism
first) gets `--prism_location` of the binary `scripts/bootstrap.sh` built from
the Go module proxy for the installed Beam (`find_prism`), so that no run ever
downloads one.

A watch (`beam_jobs.pipeline.watch`) is a streaming pipeline, which FnApiRunner does
not run: it runs on Prism unless --runner names another streaming runner.

A small work list runs in the launching process instead (`runs_in_process`),
through the pipeline's own DoFns in a plain loop (`beam_jobs.pipeline.recipe.write_span_in_process`):
starting FnApiRunner's workers (the zygote's imports, about 2 CPU s) and
building and running the pipeline cost about 2 s, more than featurizing a few
hundred files on one core; a nightly re-ingest of a few hundred new files would
spend most of its time on that. The output is the same, byte for byte.
"""
import contextlib
import os
import shutil
import sys

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

IN_PROCESS_BELOW_FILES = 2000

DEFAULT_RUNNER_FLAGS = ("--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=0")


PRISM_RUNNERS = ("PrismRunner", "DirectRunner")  # the runners that start a Prism binary


def find_prism() -> str | None:
    """The Prism binary: $SOUNDSIGHT_PRISM, else `prism` beside this Python (the venv's bin), else on PATH."""
    beside_python = os.path.join(os.path.dirname(sys.executable), "prism")
    for candidate in (os.environ.get("SOUNDSIGHT_PRISM"), beside_python, shutil.which("prism")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def with_default_runner(pipeline_args: list[str]) -> list[str]:
    """`pipeline_args`, plus the default runner's flags when they name no --runner, and the Prism
    binary's location when they name a runner that starts Prism and give none."""
    args = list(pipeline_args)
    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in args):
        return [*DEFAULT_RUNNER_FLAGS, *args]
    runner = PipelineOptions(args).view_as(StandardOptions).runner
    prism = find_prism()
    if runner in PRISM_RUNNERS and prism and not any(arg.startswith("--prism_location") for arg in args):
        args.append(f"--prism_location={prism}")
    return args


STREAMING_DEFAULT_RUNNER = "PrismRunner"
BATCH_ONLY_RUNNERS = ("FnApiRunner", "BundleBasedDirectRunner")


def with_streaming_runner(pipeline_args: list[str]) -> list[str]:
    """`pipeline_args` for a streaming pipeline: --streaming, and Prism when they name no --runner.

    Raises ValueError for a runner that runs batch pipelines only.
    """
    args = list(pipeline_args)
    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in args):
        args.insert(0, f"--runner={STREAMING_DEFAULT_RUNNER}")
    runner = PipelineOptions(args).view_as(StandardOptions).runner
    if runner in BATCH_ONLY_RUNNERS:
        raise ValueError(f"--runner={runner} runs batch pipelines only; --watch needs a streaming runner: "
                         f"PrismRunner (its default), DataflowRunner or FlinkRunner")
    if "--streaming" not in args:
        args.append("--streaming")
    return with_default_runner(args)


@contextlib.contextmanager
def runner_for(options: PipelineOptions, *, preloaded_modules: tuple[str, ...] = ()):
    """Yields the runner object for `options`, or None to let Beam make it from --runner.

    FnApiRunner gets the pipeline options handed to its worker processes, as Beam's DirectRunner does: by
    itself it starts them with none, and a worker then reads s3:// without --s3_endpoint_url and its keys.
    Its multi_processing workers are forked from a zygote (`beam_jobs.runners.forked_workers`) that lives as
    long as the block, where that is available, and imports `preloaded_modules` (the modules of the pipeline's
    DoFns) before it forks any; elsewhere they are spawned. Either way each runs under
    `beam_jobs.runners.worker_client`, which reports a worker killed by a signal to the run's supervisor.
    """
    if options.view_as(StandardOptions).runner != "FnApiRunner":
        yield None
        return
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    provision_info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(
        # The options set, not all: a default "--no_..." flag comes back under a name a worker cannot parse.
        pipeline_options=JobServiceHandle.encode_pipeline_options(options.get_all_options(drop_default=True))))
    from beam_jobs.runners import forked_workers
    if options.view_as(DirectOptions).direct_running_mode != "multi_processing":
        yield fn_runner.FnApiRunner(provision_info=provision_info)
        return
    if not forked_workers.forked_workers_available():
        yield forked_workers.WorkerClientFnApiRunner(provision_info=provision_info)
        return
    with forked_workers.WorkerZygote(preloaded_modules=preloaded_modules) as zygote:
        yield forked_workers.ForkedWorkersFnApiRunner(zygote=zygote, provision_info=provision_info)


def runs_in_process(pipeline_args: list[str], *, num_files: int, in_process_below: int) -> bool:
    """Whether a work list of `num_files` skips the runner: FnApiRunner (or DirectRunner) would start worker
    processes for fewer than `in_process_below` files. Other runners and larger work lists keep theirs."""
    options = PipelineOptions(with_default_runner(pipeline_args))
    return (options.view_as(StandardOptions).runner in ("FnApiRunner", "DirectRunner")
            and options.view_as(DirectOptions).direct_running_mode == "multi_processing"
            and num_files < in_process_below)
