"""The preprocessing command line: its flags, and the validated `Settings` the pipeline is built from.

Every modality of `beam_jobs.modalities` gets --<name>_root, --<name>_labels
and the flags its config class declares; bad values stop the run at start-up
with one line naming the flag.
"""
import argparse
import dataclasses
import os

from apache_beam.io.filesystems import FileSystems

from beam_jobs.console import logs
from beam_jobs.modalities import config as config_lib
from beam_jobs.modalities import MODALITIES
from beam_jobs.modalities.config import SILENCE_LABEL, UNKNOWN_LABEL, ConfigError, KeywordConfig, SplitConfig
from beam_jobs.modalities.spec import Modality
from beam_jobs.runners.default import IN_PROCESS_BELOW_FILES, with_streaming_runner
from beam_jobs.storage.files import use_pipeline_options
from beam_jobs.table.layout import dataset_dir
from beam_jobs.table.runs import DEFAULT_LEASE_SECONDS
from beam_jobs.table.snapshots import DEFAULT_KEEP_SNAPSHOTS

DEFAULT_MAX_SPANS = 16

CLUSTER_HELP = """Flags this command does not know are Beam pipeline options. Those that matter beyond one machine:
  --runner                       FnApiRunner (the default here), PrismRunner, PortableRunner, DataflowRunner,
                                 apache_beam.runners.dask.dask_runner.DaskRunner, ...
  --direct_num_workers           worker processes of the local runner (0: one per core)
  --prism_location               the Prism binary (default: the one scripts/bootstrap.sh built)
  --job_endpoint, --environment_type=EXTERNAL, --environment_config=HOST:PORT
                                 a job service (Prism, Flink) and an SDK worker pool
  --dask_client_address tcp://HOST:8786    a dask.distributed scheduler
  --setup_file ./setup.py        ships beam_jobs to remote workers (Dataflow, Flink, Spark)
  --project, --region, --temp_location gs://...    Dataflow"""


@dataclasses.dataclass(frozen=True)
class WatchConfig:
    """How a watch (`beam_jobs.pipeline.watch`) polls and commits. The defaults commit a file within a minute of its
    landing: seen within a poll, stable at the next, committed within --commit_seconds of the last commit."""
    poll_seconds: float = 5.0  # how often the roots are listed
    commit_seconds: float = 30.0  # the least time between two commits of a modality
    commit_files: int = 1000  # ... unless this many files wait


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the pipeline needs, built and validated from the flags at start-up."""
    roots: dict[str, tuple[str, ...]]  # modality -> its input roots, sorted; only the modalities asked for
    output_dir: str
    configs: dict[str, object]  # modality -> its featurization config
    split_config: SplitConfig
    fixed_labels: dict[str, tuple[str, ...] | None]
    shard_bytes: int
    num_shards: int | None
    compression: str | None  # None or "GZIP", as in the manifest and tf.data
    full: bool = False  # featurize every file, reusing nothing of the base snapshot
    compact: bool = False  # rewrite all the records into one evenly sharded span
    keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS  # committed snapshots whose files are kept
    max_spans: int = DEFAULT_MAX_SPANS  # a re-ingest that would leave more spans compacts instead
    in_process_below: int = IN_PROCESS_BELOW_FILES  # FnApiRunner runs fewer files in the launching process
    watch: WatchConfig | None = None  # keep running, committing files as they land; None: one batch run
    keywords: KeywordConfig = KeywordConfig()  # _silence_ and _unknown_, for the modalities with background noise
    lease_seconds: float = DEFAULT_LEASE_SECONDS  # a run's lease not renewed for this long is dead
    max_run_minutes: float | None = None  # a batch run still short of its commit then stops; None: no limit

    @property
    def specs(self) -> dict[str, Modality]:
        """The specs of the modalities asked for, in registry order."""
        return {name: MODALITIES[name] for name in self.roots}

    def takes_background_noise(self, modality: str) -> bool:
        """Whether the modality takes background noise (ROOT/_background_noise_), and so --silence_percentage."""
        return MODALITIES[modality].featurize_noise is not None

    def keywords_of(self, modality: str) -> KeywordConfig | None:
        """The keyword classes of `modality`: --wanted_words and the rest apply to modalities with noise."""
        return self.keywords if self.takes_background_noise(modality) else None

    def dataset_dir(self, modality: str) -> str:
        return dataset_dir(self.output_dir, modality)


def keyword_fields(keywords: KeywordConfig | None) -> dict:
    """What a manifest records of the keyword classes: their fields when any is made, else nothing."""
    return dataclasses.asdict(keywords) if keywords is not None and keywords.active else {}


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.preprocess",
                                     description="Folder-per-class inputs to sharded TFRecords and a manifest.",
                                     epilog=CLUSTER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = parser.add_argument_group("inputs")
    output = parser.add_argument_group("output and snapshots")
    streaming = parser.add_argument_group("streaming (--watch)")
    unattended = parser.add_argument_group("running unattended")
    for spec in MODALITIES.values():
        inputs.add_argument(
            f"--{spec.name}_root", action="append", default=[],
            help=f"folder-per-class tree ROOT/<label>/.../<file> of {'/'.join(spec.extensions)} files; "
                 "repeat for several roots. Folders named _* are skipped. A modality whose files all "
                 "fail still gets a manifest, with zero examples and no shards, so an older dataset "
                 "never survives a re-ingest looking current.")
        inputs.add_argument(
            f"--{spec.name}_labels",
            help="comma-separated label vocabulary fixing the label indices across re-ingests; files "
                 "of other classes become error rows. Default: the sorted class folders found.")
    output.add_argument("--output_dir", required=True, help="local path or URL (gs://, s3://) for the outputs")
    output.add_argument("--shard_size_mb", type=float, default=64.0,
                        help="target uncompressed shard size: a split gets ceil(its bytes / target) shards, "
                             "its bytes being its listed files times the size of one record")
    output.add_argument("--num_shards", type=int,
                        help="fixed number of hash buckets per split instead of --shard_size_mb; "
                             "buckets that receive no example write no shard")
    output.add_argument("--compression", choices=("none", "gzip"), default="none",
                        help="gzip writes .tfrecord.gz shards")
    output.add_argument("--full", action="store_true",
                        help="featurize every file again instead of reusing the current snapshot's records "
                             "of unchanged files (a changed featurization config does this by itself)")
    output.add_argument("--compact", action="store_true",
                        help="rewrite all the records into one new, evenly sharded span, as a full ingest "
                             "would shard them, copying unchanged records instead of featurizing them")
    output.add_argument("--keep_snapshots", type=int, default=DEFAULT_KEEP_SNAPSHOTS,
                        help="after a commit, delete the files of snapshots older than the newest N "
                             "(never the current one); readers that pinned one are told it was removed")
    output.add_argument("--max_spans", type=int, default=DEFAULT_MAX_SPANS,
                        help="compact when a re-ingest would leave a snapshot of more spans than this")
    streaming.add_argument("--watch", action="store_true",
                           help="keep running on a streaming runner (Prism unless --runner names another), "
                                "committing a new snapshot as files land; Ctrl-C or SIGTERM commits what is "
                                "stable and stops. A file is taken once its size and modification time hold "
                                "for two polls")
    streaming.add_argument("--poll_seconds", type=float, default=WatchConfig.poll_seconds,
                           help="--watch: how often the roots are listed")
    streaming.add_argument("--commit_seconds", type=float, default=WatchConfig.commit_seconds,
                           help="--watch: the least time between two commits of a modality")
    streaming.add_argument("--commit_files", type=int, default=WatchConfig.commit_files,
                           help="--watch: commit sooner when this many new, changed or removed files wait")
    unattended.add_argument("--max_run_minutes", type=float,
                            help="a batch run that has not started its commit after this many minutes stops, "
                                 "commits nothing and exits with status 124, so that a scheduler never stacks "
                                 "runs. Default: no limit")
    unattended.add_argument("--lease_seconds", type=float, default=DEFAULT_LEASE_SECONDS,
                            help="a run renews its lease OUT/.runs/<run id>.json every tenth of this; a lease not "
                                 "renewed for this long is a dead run's, whatever host wrote it, and the next run "
                                 "removes its files. Hosts' clocks must agree to well within it")
    for spec in MODALITIES.values():
        config_lib.add_flags(parser, spec.config_class, title=f"{spec.name} featurization")
    config_lib.add_flags(parser, SplitConfig, title="splits")
    config_lib.add_flags(parser, KeywordConfig,
                         title="keyword spotting (audio): _unknown_ and _silence_ classes, as Speech Commands has them")
    runner = parser.add_argument_group("runner (flags this command does not know are Beam pipeline options: below)")
    runner.add_argument("--in_process_below", type=int, default=IN_PROCESS_BELOW_FILES, metavar="FILES",
                        help="on FnApiRunner, run a work list of fewer files in this process instead of "
                             "starting worker processes, each of which costs about 2 CPU s; 0: never")
    logs.add_verbose_flag(runner)
    return parser


def parse_labels(text: str | None, *, flag: str, parser: argparse.ArgumentParser):
    if text is None:
        return None
    labels = tuple(label.strip() for label in text.split(","))
    if not all(labels) or len(set(labels)) != len(labels):
        parser.error(f"--{flag}={text!r}: labels must be non-empty and distinct")
    if any((label.startswith("_") and label not in (SILENCE_LABEL, UNKNOWN_LABEL)) or "/" in label
           for label in labels):
        parser.error(f"--{flag}={text!r}: a label is a class folder name, so no '/' and no leading '_' (but for "
                     f"{SILENCE_LABEL} and {UNKNOWN_LABEL})")
    return labels


def normalize_root(root: str, *, flag: str, parser: argparse.ArgumentParser) -> str:
    """An absolute local path or a URL without a trailing slash; it must hold at least one file."""
    if FileSystems.get_scheme(root) is None:
        root = os.path.abspath(root)
    root = root.rstrip("/")
    if not FileSystems.match([f"{root}/**"], limits=[1])[0].metadata_list:
        parser.error(f"--{flag} {root}: no files found")
    return root


def normalize_output_dir(output_dir: str, *, parser: argparse.ArgumentParser) -> str:
    """An absolute local path or a URL without a trailing slash; a local one must not be a file."""
    output_dir = output_dir.rstrip("/")
    if FileSystems.get_scheme(output_dir) is None:
        output_dir = os.path.abspath(output_dir)
        # Checked here, not when the first worker writes into it: a folder is needed.
        existing = output_dir
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            parser.error(f"--output_dir {output_dir}: {existing} is a file, not a folder")
    return output_dir


def build_config(config_class, args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The validated config from the flags; a bad value exits at once naming its flag."""
    try:
        return config_lib.from_flags(config_class, args)
    except ConfigError as error:
        parser.error(config_lib.flag_error(config_class, error))


def parse_settings(argv=None) -> tuple[Settings, list[str]]:
    """(Settings, the remaining arguments for PipelineOptions)."""
    parser = build_arg_parser()
    args, pipeline_args = parser.parse_known_args(argv)
    # The launcher's own file operations (listing the roots, the commit) see what the workers see:
    # an object store's endpoint and credentials come from the pipeline options (--s3_endpoint_url, ...).
    use_pipeline_options(pipeline_args)
    # Sorted: a file's reference holds the index of its root, which must not depend on the flags' order.
    roots = {name: tuple(sorted(normalize_root(root, flag=f"{name}_root", parser=parser)
                                for root in getattr(args, f"{name}_root")))
             for name in MODALITIES if getattr(args, f"{name}_root")}
    if not roots:
        parser.error("give at least one --" + " or --".join(f"{name}_root" for name in MODALITIES))
    if args.num_shards is not None and args.num_shards < 1:
        parser.error(f"--num_shards={args.num_shards}: must be >= 1")
    if args.shard_size_mb <= 0:
        parser.error(f"--shard_size_mb={args.shard_size_mb}: must be > 0")
    if args.in_process_below < 0:
        parser.error(f"--in_process_below={args.in_process_below}: must be >= 0")
    for flag in ("keep_snapshots", "max_spans"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag}={getattr(args, flag)}: must be >= 1")
    for flag in ("max_run_minutes", "lease_seconds"):
        if getattr(args, flag) is not None and not getattr(args, flag) > 0:
            parser.error(f"--{flag}={getattr(args, flag):g}: must be > 0")
    watch = None
    if args.watch:
        watch = WatchConfig(poll_seconds=args.poll_seconds, commit_seconds=args.commit_seconds,
                            commit_files=args.commit_files)
        if watch.poll_seconds <= 0 or watch.commit_seconds < 0 or watch.commit_files < 1:
            parser.error(f"--poll_seconds={watch.poll_seconds:g} must be > 0, --commit_seconds="
                         f"{watch.commit_seconds:g} >= 0 and --commit_files={watch.commit_files} >= 1")
        if args.full or args.compact:
            parser.error("--watch commits incrementally: run --full or --compact as a batch run, without --watch")
        if args.max_run_minutes is not None:
            parser.error("--max_run_minutes bounds a batch run; a watch runs until it is stopped")
        try:
            with_streaming_runner(pipeline_args)
        except ValueError as error:
            parser.error(str(error))
    if args.full and args.compact:
        parser.error("--full and --compact: give one; --full already writes one evenly sharded span")
    configs = {name: build_config(spec.config_class, args, parser) for name, spec in MODALITIES.items()}
    settings = Settings(
        roots=roots, output_dir=normalize_output_dir(args.output_dir, parser=parser), configs=configs,
        split_config=build_config(SplitConfig, args, parser),
        fixed_labels={name: parse_labels(getattr(args, f"{name}_labels"), flag=f"{name}_labels", parser=parser)
                      for name in MODALITIES},
        shard_bytes=int(args.shard_size_mb * 1024 * 1024), num_shards=args.num_shards,
        compression="GZIP" if args.compression == "gzip" else None, full=args.full, compact=args.compact,
        keep_snapshots=args.keep_snapshots, max_spans=args.max_spans, in_process_below=args.in_process_below,
        watch=watch, keywords=build_config(KeywordConfig, args, parser), lease_seconds=args.lease_seconds,
        max_run_minutes=args.max_run_minutes)
    return settings, pipeline_args
