"""Named points at which a run can be held, so that the crash tests can kill -9 it exactly there.

    SOUNDSIGHT_PAUSE_AT=committed SOUNDSIGHT_PAUSE_FILE=/tmp/paused python -m beam_jobs.preprocess ...

When SOUNDSIGHT_PAUSE_AT names a point the run reaches, the process (the
launcher, or a worker for "featurizing") writes SOUNDSIGHT_PAUSE_FILE and then
sleeps until it is killed: a test waits for the file and kills the run at that
exact moment (the failpoints of etcd's gofail, reduced to one action). With
SOUNDSIGHT_RESUME_FILE it goes on once that file exists instead, so that a test
can let another run act in between. Runs that do not set the variables pass
every point at the cost of one lookup.

  planned        the launcher has planned a modality on its base; the base is not in its lease yet
  featurizing    a worker has written the first record of a part
  span_written   the pipeline has written the new span; nothing is committed yet
  committed      the snapshot's manifest is created; the pointer still names the base
  pointer_moved  the pointer names the new snapshot; retention and clean-up have not run
  predictions_written  trainer.batch_predict has written and checked its output; nothing is committed yet

`fail_if_asked` stands in for a file system the fault tests cannot make where
they may not mount one (a full disk, a read-only folder: a tmpfs needs root):
with SOUNDSIGHT_FAIL_AT=POINT:ERRNO it raises that OSError about the path, as
the file system would.

  writing        a worker creates a temporary part of a shard
  committing     the launcher creates the new snapshot's manifest
"""
import errno
import os
import time

POINTS = ("planned", "featurizing", "span_written", "committed", "pointer_moved", "predictions_written")


def pause_if_asked(point: str) -> None:
    if os.environ.get("SOUNDSIGHT_PAUSE_AT") != point:
        return
    marker = os.environ.get("SOUNDSIGHT_PAUSE_FILE")
    if marker:
        with open(marker, "w") as handle:
            handle.write(f"{os.getpid()} {point}\n")
    resume = os.environ.get("SOUNDSIGHT_RESUME_FILE")
    while not (resume and os.path.exists(resume)):
        time.sleep(0.1 if resume else 60)


def fail_if_asked(point: str, path: str) -> None:
    name, _, code = os.environ.get("SOUNDSIGHT_FAIL_AT", "").partition(":")
    if name == point:
        number = getattr(errno, code)
        raise OSError(number, os.strerror(number), path)
