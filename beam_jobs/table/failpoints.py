"""Named points at which a run can be held, so that the crash tests can kill -9 it exactly there.

    SOUNDSIGHT_PAUSE_AT=committed SOUNDSIGHT_PAUSE_FILE=/tmp/paused python -m beam_jobs.preprocess ...

When SOUNDSIGHT_PAUSE_AT names a point the run reaches, the process (the
launcher, or a worker for "featurizing") writes SOUNDSIGHT_PAUSE_FILE and then
sleeps until it is killed: a test waits for the file and kills the run at that
exact moment (the failpoints of etcd's gofail, reduced to one action). Runs
that do not set the variable pass every point at the cost of one lookup.

  featurizing    a worker has written the first record of a part
  span_written   the pipeline has written the new span; nothing is committed yet
  committed      the snapshot's manifest is created; the pointer still names the base
  pointer_moved  the pointer names the new snapshot; retention and clean-up have not run
  predictions_written  trainer.batch_predict has written and checked its output; nothing is committed yet
"""
import os
import time

POINTS = ("featurizing", "span_written", "committed", "pointer_moved", "predictions_written")


def pause_if_asked(point: str) -> None:
    if os.environ.get("SOUNDSIGHT_PAUSE_AT") != point:
        return
    marker = os.environ.get("SOUNDSIGHT_PAUSE_FILE")
    if marker:
        with open(marker, "w") as handle:
            handle.write(f"{os.getpid()} {point}\n")
    while True:
        time.sleep(60)
