"""Where training runs: the tf.distribute strategy, this process' role in it, and N local workers.

  TF_CONFIG naming a cluster of 2+ tasks  MultiWorkerMirroredStrategy: one replica per local device on
                                          every worker, gradients all-reduced each step
  otherwise, 2+ local GPUs                MirroredStrategy over them
  otherwise                               TensorFlow's default strategy (one device)

`python -m trainer.train ... --workers N` runs `run_local_workers`: N copies of
the same command on this machine, each with the TF_CONFIG of one worker of a
loopback cluster. On a real cluster each machine sets its own TF_CONFIG (README,
"Training on several workers").

Keras 3 supports MultiWorkerMirroredStrategy only partly (keras-team/keras#20585):
`fit()` fails twice on it, and `work_around_keras_multi_worker` mends both.
"""
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Role:
    """This process' place in the training cluster."""
    worker: int  # 0-based index among the workers that read data; the chief is 0
    num_workers: int

    @property
    def is_chief(self) -> bool:
        """The chief writes the model folder; the other workers write nothing there."""
        return self.worker == 0


def cluster_role(tf_config: str | None) -> Role:
    """The Role that a TF_CONFIG value (JSON, or None when unset) gives this process.

    A "chief" task, when the cluster has one, is worker 0 and the "worker" tasks follow it,
    as MultiWorkerMirroredStrategy numbers them. ValueError names what is wrong.
    """
    if not tf_config:
        return Role(worker=0, num_workers=1)
    try:
        config = json.loads(tf_config)
        cluster, task = config.get("cluster", {}), config.get("task", {})
        chiefs, workers = cluster.get("chief", []), cluster.get("worker", [])
        task_type, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as error:
        raise ValueError(f"TF_CONFIG is not a cluster description ({error}): {tf_config!r}") from error
    if len(chiefs) > 1 or not chiefs + workers or task_type not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG must name at most one chief, at least one worker task in all, and this "
                         f"task as type 'chief' or 'worker': {tf_config!r}")
    worker = index if task_type == "chief" else len(chiefs) + index
    if worker >= len(chiefs) + len(workers):
        raise ValueError(f"TF_CONFIG's task index {index} is not in its cluster of {len(workers)} workers")
    return Role(worker=worker, num_workers=len(chiefs) + len(workers))


def make_strategy() -> tuple[tf.distribute.Strategy, Role]:
    """The strategy for this process and its role; call it before TensorFlow runs anything else."""
    role = cluster_role(os.environ.get("TF_CONFIG"))
    if role.num_workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy(), role
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy(), role
    return tf.distribute.get_strategy(), role


def describe(strategy: tf.distribute.Strategy, role: Role) -> str:
    """E.g. "worker 0 (chief) of 2, MultiWorkerMirroredStrategy, 2 replicas in sync, on CPU (2 cores)"."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
        devices = f"{len(gpus)} GPU{'s' * (len(gpus) > 1)}: {', '.join(names)}"
    else:
        devices = f"CPU ({os.cpu_count()} cores)"
    if is_multi_worker(strategy):
        return (f"worker {role.worker}{' (chief)' if role.is_chief else ''} of {role.num_workers}, "
                f"MultiWorkerMirroredStrategy, {strategy.num_replicas_in_sync} replicas in sync, on {devices}")
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return f"MirroredStrategy, {strategy.num_replicas_in_sync} replicas in sync, on {devices}"
    return f"one device, on {devices}"


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has called it: a collective all-reduce of a constant, in a graph
    (eagerly, the collective strategy warns of its overhead)."""
    def one():
        return tf.constant(1.0)

    @tf.function(autograph=False)
    def all_reduce():
        return strategy.reduce("SUM", strategy.run(one), axis=None)

    all_reduce()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def work_around_keras_multi_worker(model: keras.Model, *, strategy: tf.distribute.Strategy,
                                   batch_spec: tuple) -> None:
    """Lets `model.fit()` run under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    Keras 3 (checked with 3.15) fails twice there: before the first step it reduces a data
    batch of the distributed dataset with `strategy.reduce`, which the collective strategy
    cannot do for a structure ("Attempt to convert a value (PerReplica...) to a Tensor"); and
    each step it averages the scalar logs across workers along axis 0, which scalars lack
    ("Invalid reduction dimension 0 for input with 0 dimensions"). Here the model is built
    from `batch_spec` ((x spec, y spec) of one replica's batch: only shapes and dtypes are
    used), and the logs are averaged as scalars. Two workers then train to the same weights
    and logs as one process on the same global batches (tests/trainer/test_multi_worker.py).
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer  # the module that holds both faults

    if not (hasattr(model, "_maybe_symbolic_build") and hasattr(tf_trainer, "reduce_per_replica")
            and hasattr(tf_trainer, "_collective_all_reduce_multi_worker")):
        raise RuntimeError(f"Keras {keras.__version__} changed what soundsight's fix for multi-worker training "
                           f"(keras-team/keras#20585) replaces; train with one worker, or use Keras 3.15")
    build = model._maybe_symbolic_build
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: build(data_batch=batch_spec)
    if not getattr(tf_trainer.reduce_per_replica, "soundsight_fix", False):
        keras_reduce = tf_trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction="auto"):
            if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
                return keras.tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
            return keras_reduce(values, strategy, reduction)

        reduce_per_replica.soundsight_fix = True
        tf_trainer.reduce_per_replica = reduce_per_replica


def free_loopback_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now (the OS picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_cluster_configs(num_workers: int) -> list[str]:
    """The TF_CONFIG of each worker of a cluster of `num_workers` processes on loopback ports."""
    cluster = {"worker": [f"localhost:{port}" for port in free_loopback_ports(num_workers)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            for index in range(num_workers)]


def run_local_workers(module_args: list[str], *, num_workers: int) -> int:
    """Runs `python -m <module_args>` as `num_workers` workers of a loopback cluster; returns an exit status.

    Each worker's output is copied to stdout, its lines prefixed "[worker i]". When one worker
    fails or is killed, the others are stopped (they would wait for it forever) and 1 is
    returned; after a kill or a stop, a rerun of the same command resumes from the last
    finished epoch. SIGINT or SIGTERM to this process stops every worker.
    """
    workers, copiers = [], []
    for index, tf_config in enumerate(local_cluster_configs(num_workers)):
        process = subprocess.Popen([sys.executable, "-u", "-m", *module_args], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace",
                                   env={**os.environ, "TF_CONFIG": tf_config})
        copiers.append(threading.Thread(target=_copy_lines, args=(process.stdout, f"[worker {index}] "),
                                        daemon=True))
        copiers[-1].start()
        workers.append(process)
    print(f"Started {num_workers} local workers, pids {', '.join(str(p.pid) for p in workers)} "
          f"(worker 0 is the chief)", flush=True)
    stop_requested = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stop_requested.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            codes = [process.poll() for process in workers]
            failed = [(index, code) for index, code in enumerate(codes) if code not in (None, 0)]
            if stop_requested or failed:
                _stop(workers)
                if stop_requested:
                    print(f"error: stopped the {num_workers} workers on {signal.Signals(stop_requested[0]).name}; "
                          f"rerun the same command to resume from the last finished epoch", file=sys.stderr)
                    return 1
                index, code = failed[0]
                if code < 0:
                    print(f"error: worker {index} was killed by {signal.Signals(-code).name}, so the other workers "
                          f"were stopped; rerun the same command to resume from the last finished epoch",
                          file=sys.stderr)
                else:
                    print(f"error: worker {index} exited with status {code} (its last lines above say why), so the "
                          f"other workers were stopped", file=sys.stderr)
                return 1
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for copier in copiers:
            copier.join(timeout=5)  # the workers' last lines, the reason they failed among them


def _copy_lines(stream, prefix: str) -> None:
    for line in stream:
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def _stop(workers: list[subprocess.Popen], grace_seconds: float = 10.0) -> None:
    """SIGTERM to the workers still running, SIGKILL to those still there after `grace_seconds`."""
    for process in workers:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace_seconds
    for process in workers:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
