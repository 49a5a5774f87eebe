"""Training on several workers: the shard plan, the data each worker reads, real multi-process clusters on
loopback ports (`--workers 2`), a kill -9 of one worker and the resume, and the precision and XLA flags."""
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from toy_data import REPO, TOY_CONFIG, run_python
from trainer import distribute
from trainer.data import load_manifest, make_dataset, make_worker_dataset
from trainer.model import build_model
from trainer.sharding import epoch_ranges, sharing_note, steps_per_epoch
from trainer.train import train


@pytest.mark.parametrize("counts, num_workers", [([5, 7, 3, 9], 2), ([5, 7, 3, 9], 3), ([40], 2), ([3, 4], 5),
                                                 ([10, 10], 2)])
def test_each_epoch_splits_every_record_once_into_runs_of_equal_length(counts, num_workers):
    shards = [(f"shard-{index}", count) for index, count in enumerate(counts)]
    plans = [epoch_ranges(shards, num_workers=num_workers, seed=7, epoch=epoch) for epoch in range(4)]

    for plan in plans:
        assert len(plan) == num_workers
        read = sorted((r.path, record) for ranges in plan for r in ranges for record in range(r.start, r.start + r.count))
        assert read == sorted((path, record) for path, count in shards for record in range(count))
        sizes = [sum(r.count for r in ranges) for ranges in plan]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) == sum(counts) // num_workers
    assert plans == [epoch_ranges(shards, num_workers=num_workers, seed=7, epoch=epoch) for epoch in range(4)]
    if len(counts) > 1 and sum(counts) > num_workers:
        assert len({str(plan) for plan in plans}) > 1, "the shards should be dealt anew each epoch"


def test_a_split_with_fewer_shards_than_workers_gets_a_note_naming_the_fix():
    assert sharing_note(split="train", num_shards=4, num_workers=2) is None
    note = sharing_note(split="train", num_shards=1, num_workers=2)
    assert note.startswith("the train split has 1 shard for 2 workers: workers share shards")
    assert "--num_shards 8" in note
    assert steps_per_epoch(num_examples=149, num_workers=2, worker_batch=4) == 18


@pytest.mark.parametrize("tf_config, role", [
    (None, distribute.Role(worker=0, num_workers=1)),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}', distribute.Role(1, 2)),
    ('{"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:2"]}, "task": {"type": "chief", "index": 0}}',
     distribute.Role(0, 3)),
    ('{"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}',
     distribute.Role(2, 3)),
])
def test_tf_config_gives_the_worker_index_and_count(tf_config, role):
    assert distribute.cluster_role(tf_config) == role
    assert role.is_chief == (role.worker == 0)


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not a cluster description"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "this task as type 'chief' or 'worker'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "task index 3 is not in its cluster"),
])
def test_a_bad_tf_config_is_named(tf_config, message):
    with pytest.raises(ValueError, match=message):
        distribute.cluster_role(tf_config)


def example_keys(dataset: tf.data.Dataset) -> list[bytes]:
    """The stored tensor bytes of every example of (tensor, one-hot label) batches: distinct per toy example."""
    return [example.tobytes() for tensors, _ in dataset.as_numpy_iterator() for example in tensors]


@pytest.mark.parametrize("num_workers", [2, 3])
def test_the_workers_read_every_training_example_once_per_epoch(data_dirs, num_workers):
    """Batches of one example, so nothing is dropped but the odd remainder; 3 workers share the 2 shards."""
    data_dir = str(data_dirs["image"])
    manifest = load_manifest(data_dir)
    everything = example_keys(make_dataset(manifest=manifest, data_dir=data_dir, splits=["train"], batch_size=64,
                                           training=False))
    steps = steps_per_epoch(num_examples=len(everything), num_workers=num_workers, worker_batch=1)
    epochs = [[] for _ in range(3)]
    for worker in range(num_workers):
        keys = example_keys(make_worker_dataset(
            manifest=manifest, data_dir=data_dir, worker=worker, num_workers=num_workers, batch_size=1,
            batches_per_epoch=steps, first_epoch=0, epochs=3, seed=0, shuffle_buffer=1000))
        assert len(keys) == 3 * steps, "every worker must take the same number of steps each epoch"
        for epoch in range(3):
            epochs[epoch].append(set(keys[epoch * steps:(epoch + 1) * steps]))

    for workers_keys in epochs:
        seen = set().union(*workers_keys)
        assert sum(len(keys) for keys in workers_keys) == len(seen) == num_workers * steps, "an example was read twice"
        assert seen <= set(everything) and len(everything) - len(seen) < num_workers


def test_two_workers_train_to_the_weights_and_logs_of_one_process_on_the_same_batches():
    """Checks trainer.distribute's fix of Keras' multi-worker fit() (keras-team/keras#20585) numerically."""
    script = str(pathlib.Path(__file__).with_name("multi_worker_fit.py"))
    workers = [subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "TF_CONFIG": tf_config})
               for tf_config in distribute.local_cluster_configs(2)]
    single = json.loads(run_python(script).stdout.strip().splitlines()[-1])
    results = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=180)
        assert worker.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))

    assert results[0]["weights"] == results[1]["weights"] and results[0]["history"] == results[1]["history"]
    np.testing.assert_allclose(results[0]["weights"], single["weights"], atol=1e-5)
    assert set(single["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key in single["history"]:
        np.testing.assert_allclose(results[0]["history"][key], single["history"][key], rtol=1e-5)


def train_command(data_dir, model_dir, *, epochs: int, workers: int = 2) -> list[str]:
    return ["-m", "trainer.train", "--data_dir", str(data_dir), "--model_dir", str(model_dir), "--workers",
            str(workers), "--epochs", str(epochs), "--batch_size", "8", "--patience", str(epochs)]


CHIEF_FILES = {"model.keras", "saved_model", "serving", "litert", "dataset.json", "history.json", "train_config.json",
               "epochs.csv", "logs"}


def test_two_local_workers_train_and_only_the_chief_writes(data_dirs, tmp_path):
    model_dir, scratch = tmp_path / "model", tmp_path / "scratch"
    scratch.mkdir()
    result = subprocess.run([sys.executable, *train_command(data_dirs["image"], model_dir, epochs=3)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    train_examples = load_manifest(str(data_dirs["image"])).splits["train"].num_examples

    assert "[worker 0] Training on worker 0 (chief) of 2, MultiWorkerMirroredStrategy, 2 replicas" in result.stdout
    assert "[worker 1] Training on worker 1 of 2, MultiWorkerMirroredStrategy" in result.stdout
    assert f"up to 3 epochs of {(train_examples // 2) // 4} batches of 8 (4 on each of 2 replicas)" in result.stdout
    assert {path.name for path in model_dir.iterdir()} == CHIEF_FILES
    assert json.loads((model_dir / "train_config.json").read_text())["workers"] == 2
    assert json.loads((model_dir / "history.json").read_text())["epoch"] == [1, 2, 3]
    assert list(scratch.iterdir()) == [], "worker 1's scratch folder should be gone"
    assert keras.saving.load_model(model_dir / "model.keras").output_shape == (None, 3)


def test_a_worker_killed_stops_the_job_and_the_same_command_resumes_every_worker(data_dirs, tmp_path):
    model_dir = tmp_path / "model"
    command = [sys.executable, *train_command(data_dirs["image"], model_dir, epochs=8)]
    launcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(launcher.stdout), daemon=True)
    reader.start()
    metadata = model_dir / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 240
    while not (metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= 2):
        assert launcher.poll() is None, "".join(lines)[-3000:]
        assert time.monotonic() < deadline, "no two epochs finished in time"
        time.sleep(0.05)
    started = next(line for line in lines if line.startswith("Started 2 local workers"))
    worker_1 = int(started.split("pids ")[1].split(",")[1].split()[0])
    os.kill(worker_1, signal.SIGKILL)
    launcher.wait(timeout=60)
    reader.join(timeout=10)

    assert launcher.returncode == 1
    assert launcher.stderr.read().strip().splitlines()[-1] == (
        "error: worker 1 was killed by SIGKILL, so the other workers were stopped; rerun the same command to "
        "resume from the last finished epoch")
    assert not (model_dir / "history.json").exists()
    resumed_after = json.loads(metadata.read_text())["epoch"]

    output = run_python(*command[1:]).stdout

    assert f"[worker 0] Resuming {model_dir} after epoch {resumed_after} " in output
    assert json.loads((model_dir / "history.json").read_text())["epoch"] == list(range(1, 9))
    assert {path.name for path in model_dir.iterdir()} == CHIEF_FILES


def test_fewer_shards_than_workers_trains_with_the_note(raw_roots, tmp_path):
    out = tmp_path / "out"
    run_python("-m", "beam_jobs.preprocess", "--image_root", str(raw_roots["image"]), "--output_dir", str(out),
               "--num_shards", "1")

    output = run_python(*train_command(out / "image", tmp_path / "model", epochs=2)).stdout

    assert ("[worker 0] Note: the train split has 1 shard for 2 workers: workers share shards, each reading its own "
            "records and skipping the others'") in output
    assert json.loads((tmp_path / "model" / "history.json").read_text())["epoch"] == [1, 2]


def test_workers_flag_refuses_to_start_a_cluster_inside_one(data_dirs, tmp_path):
    result = subprocess.run([sys.executable, *train_command(data_dirs["image"], tmp_path / "model", epochs=1)],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CONFIG": distribute.local_cluster_configs(2)[0]})
    assert result.returncode == 2
    assert "--workers starts a cluster on this machine, but TF_CONFIG already names one" in result.stderr


def test_xla_on_several_cpu_workers_is_refused_in_one_line(data_dirs, tmp_path):
    command = [*train_command(data_dirs["image"], tmp_path / "model", epochs=1), "--jit_compile", "on"]
    result = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=180)

    assert result.returncode == 1
    assert ("[worker 0] error: jit_compile='on' is invalid with several workers on CPUs: TensorFlow cannot compile "
            "their all-reduce with XLA") in result.stdout
    assert result.stderr.strip().splitlines()[-1].endswith("so the other workers were stopped")


def predictions(model_dir: pathlib.Path, batch: np.ndarray, *, mixed: bool, jit_compile: bool) -> np.ndarray:
    """Probabilities of the trained model's weights in a network built with the given precision and XLA."""
    manifest = load_manifest(str(model_dir))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if mixed else "float32")
    try:
        model = build_model(name="seed", modality=manifest.modality, shape=manifest.tensor_shape,
                            num_classes=len(manifest.labels), learning_rate=1e-3, jit_compile=jit_compile)
    finally:
        keras.config.set_dtype_policy(previous)
    model.set_weights(keras.saving.load_model(model_dir / "model.keras").get_weights())
    return model.predict(batch, verbose=0)


def test_mixed_precision_and_xla_predict_within_tolerance_of_float32(model_dirs, data_dirs):
    data_dir = str(data_dirs["audio"])
    manifest = load_manifest(data_dir)
    batch, _ = next(iter(make_dataset(manifest=manifest, data_dir=data_dir, splits=["test"], batch_size=16,
                                      training=False)))
    reference = predictions(model_dirs["audio"], batch, mixed=False, jit_compile=False)

    mixed = predictions(model_dirs["audio"], batch, mixed=True, jit_compile=False)
    xla = predictions(model_dirs["audio"], batch, mixed=False, jit_compile=True)

    assert mixed.dtype == np.float32, "the output layer stays float32"
    np.testing.assert_allclose(mixed, reference, atol=2e-2)
    np.testing.assert_allclose(xla, reference, atol=1e-5)
    assert (mixed.argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.9


def test_training_with_mixed_precision_and_xla_runs_on_cpu(data_dirs, tmp_path, capsys):
    config = dataclasses.replace(TOY_CONFIG, epochs=2, mixed_precision=True, jit_compile="on")
    history = train(data_dir=str(data_dirs["image"]), model_dir=str(tmp_path / "model"), config=config)

    output = capsys.readouterr().out
    assert "Training on one device, on CPU (" in output and "; mixed float16 precision; XLA on." in output
    assert history["epoch"] == [1, 2] and np.isfinite(history["loss"]).all()
    assert keras.config.dtype_policy().name == "float32", "the mixed policy must not outlive the run"
    model = keras.saving.load_model(tmp_path / "model" / "model.keras")
    convolution = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert model.layers[-1].dtype_policy.name == "float32" and convolution.dtype_policy.name == "mixed_float16"
