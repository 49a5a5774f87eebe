"""A fixed little fit() under `trainer.distribute`'s strategy, for test_multi_worker.py; prints a JSON line.

    TF_CONFIG=... python tests/trainer/multi_worker_fit.py   (once per worker, or once without TF_CONFIG)

Every run trains on the same 4 global batches of 16 examples: with N workers, worker i takes
rows i, i+N, ... of each global batch, so N workers and one process see the same batches,
and their weights and logs must agree; validation on 20 examples (batches of 16 and 4) is split
between the workers as the trainer splits it, every Nth batch.
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from trainer import distribute  # noqa: E402  (before TensorFlow runs anything: the strategy comes first)

strategy, role = distribute.make_strategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH, STEPS = 16, 4
features = np.random.default_rng(0).random((GLOBAL_BATCH * STEPS, 8), dtype=np.float32)
targets = keras.utils.to_categorical((features.sum(axis=1) > 4).astype(int), 2)


def worker_batches(context: tf.distribute.InputContext) -> tf.data.Dataset:
    rows = np.concatenate([np.arange(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)[context.input_pipeline_id::
                                                                                    context.num_input_pipelines]
                           for step in range(STEPS)])
    batch = context.get_per_replica_batch_size(GLOBAL_BATCH)
    return tf.data.Dataset.from_tensor_slices((features[rows], targets[rows])).batch(batch).repeat()


with strategy.scope():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.RMSprop(0.01), loss="categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=False)
if distribute.is_multi_worker(strategy):
    per_replica = GLOBAL_BATCH // strategy.num_replicas_in_sync
    distribute.work_around_keras_multi_worker(model, strategy=strategy, batch_spec=(
        tf.TensorSpec([per_replica, 8], tf.float32), tf.TensorSpec([per_replica, 2], tf.float32)))
    data = strategy.distribute_datasets_from_function(worker_batches)
else:
    data = worker_batches(tf.distribute.InputContext())
validation = tf.data.Dataset.from_tensor_slices((features[:20] * 0.9, targets[:20])).batch(GLOBAL_BATCH)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
history = model.fit(data, epochs=2, steps_per_epoch=STEPS, validation_data=validation.with_options(options),
                    verbose=0).history
print(json.dumps({"worker": role.worker, "history": history,
                  "weights": [float(np.sum(weights)) for weights in model.get_weights()]}))
