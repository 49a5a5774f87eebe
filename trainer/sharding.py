"""Which records of the training split each of N workers reads in each epoch. Pure Python, no TensorFlow.

Every epoch the split's shards are put in a new order, the same on every
worker (seeded by the run's seed and the epoch), and that sequence of records
is cut into N contiguous runs of equal length: worker i reads run i. A run is
whole shards except where it starts or ends inside one, so every example is
read by exactly one worker per epoch, and every worker gets the same number of
examples (give or take one) and so runs the same number of steps, which the
workers' collective all-reduce needs: a worker with an extra batch would wait
forever for the others (tensorflow/tensorflow#36846, #35878 are users hitting
tf.distribute's own file sharding with fewer files than workers).

With at least as many shards as workers, a worker reads whole shards but for
the one or two it shares with a neighbour. With fewer shards than workers,
workers share shards: each reads its own records of a shard and skips over
those before them (reading them from storage, not parsing them), which is
correct but reads up to N-1 times the data. `--num_shards` of at least the
number of workers (better 4x, for even runs and parallel reads) avoids it.
"""
import dataclasses
import random
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class RecordRange:
    """Records [start, start + count) of one shard, by position in the file."""
    path: str
    start: int
    count: int


def epoch_ranges(shards: Sequence[tuple[str, int]], *, num_workers: int, seed: int,
                 epoch: int) -> list[list[RecordRange]]:
    """[worker] -> the ranges it reads in `epoch` (0-based), given (path, record count) per shard.

    The same arguments give the same plan in every process; the workers' record counts
    differ by at most one, and the ranges of all workers cover every record exactly once.
    """
    order = list(shards)
    # A str seed is hashed with SHA-512, the same in every process (hash() of a str is not).
    random.Random(f"{seed}:{epoch}").shuffle(order)
    total = sum(count for _, count in order)
    bounds = [worker * total // num_workers for worker in range(num_workers + 1)]
    plan: list[list[RecordRange]] = [[] for _ in range(num_workers)]
    offset = 0  # of the current shard's first record in the epoch's sequence
    for path, count in order:
        for worker in range(num_workers):
            start, end = max(bounds[worker], offset), min(bounds[worker + 1], offset + count)
            if start < end:
                plan[worker].append(RecordRange(path, start - offset, end - start))
        offset += count
    return plan


def steps_per_epoch(*, num_examples: int, num_workers: int, worker_batch: int) -> int:
    """Full batches every worker can take each epoch: the least-served worker's examples // its batch."""
    return (num_examples // num_workers) // worker_batch


def sharing_note(*, split: str, num_shards: int, num_workers: int) -> str | None:
    """One line when `split` has fewer shards than workers (how they are shared and what to do); else None."""
    if num_shards >= num_workers:
        return None
    return (f"the {split} split has {num_shards} shard{'s' * (num_shards != 1)} for {num_workers} workers: workers "
            f"share shards, each reading its own records and skipping the others'; write the dataset with "
            f"--num_shards {4 * num_workers} (at least {num_workers}) for whole-shard reads")
