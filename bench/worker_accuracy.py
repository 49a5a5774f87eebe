"""Do two local workers reach the accuracy of one? Prints test accuracies per seed; asserts nothing.

    python -m bench.worker_accuracy --data_dir data/tfrecords/audio --data_dir data/tfrecords/image \
        [--epochs 10] [--seeds 3] [--work_dir /tmp/worker_accuracy]

For each dataset and seed, `trainer.train` with 1 and with 2 workers (`--workers 2`), the same
global batch, epochs and seed, then `trainer.evaluate` on the test split, each in its own process.
The seeds' spread within each worker count is the run-to-run noise the difference of the means is
judged against. Runs alternate between 1 and 2 workers, so a slow spell of the machine hurts both.
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time


def trained_accuracy(*, data_dir: str, model_dir: pathlib.Path, workers: int, seed: int, epochs: int) -> dict:
    """{"accuracy": test accuracy, "seconds": wall time of training}: trains into a fresh `model_dir`, evaluates."""
    start = time.perf_counter()
    _run("trainer.train", "--data_dir", data_dir, "--model_dir", str(model_dir), "--workers", str(workers),
         "--epochs", str(epochs), "--seed", str(seed), "--overwrite")
    seconds = time.perf_counter() - start
    _run("trainer.evaluate", "--model_dir", str(model_dir), "--data_dir", data_dir, "--split", "test")
    metrics = json.loads((model_dir / "metrics-test.json").read_text())
    return {"accuracy": metrics["accuracy"], "seconds": seconds}


def _run(module: str, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"python -m {module} {' '.join(args)} exited {result.returncode}:\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def summary(accuracies: list[float]) -> str:
    return (f"mean {statistics.mean(accuracies):.4f}, range {min(accuracies):.4f}-{max(accuracies):.4f} "
            f"({', '.join(f'{a:.4f}' for a in accuracies)})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", action="append", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work_dir", default="/tmp/worker_accuracy")
    flags = parser.parse_args(argv)
    for data_dir in flags.data_dir:
        name = pathlib.Path(data_dir).name
        results = {1: [], 2: []}
        for seed in range(flags.seeds):
            for workers in (1, 2):
                model_dir = pathlib.Path(flags.work_dir) / f"{name}-{workers}w-seed{seed}"
                results[workers].append(trained_accuracy(data_dir=data_dir, model_dir=model_dir, workers=workers,
                                                         seed=seed, epochs=flags.epochs))
                print(f"{name} seed {seed}, {workers} worker(s): test accuracy "
                      f"{results[workers][-1]['accuracy']:.4f}, {results[workers][-1]['seconds']:.0f} s", flush=True)
        print(f"{name}, {flags.epochs} epochs, global batch of the default, {flags.seeds} seeds:")
        for workers, runs in results.items():
            print(f"  {workers} worker(s): {summary([run['accuracy'] for run in runs])}; "
                  f"training {statistics.mean(run['seconds'] for run in runs):.0f} s on average")
        difference = (statistics.mean(run["accuracy"] for run in results[2])
                      - statistics.mean(run["accuracy"] for run in results[1]))
        spread = max(max(a) - min(a) for a in ([run["accuracy"] for run in runs] for runs in results.values()))
        print(f"  2 workers - 1 worker: {difference:+.4f} (largest seed-to-seed range within one count: "
              f"{spread:.4f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
