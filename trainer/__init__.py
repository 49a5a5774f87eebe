"""TensorFlow trainer for soundsight: streams the pipeline's TFRecords into a small convnet.

`data` (tf.data), `augment` (training-only spectrogram ops), `model`, `train`,
`evaluate`, `predict` (CLI and the `Predictor` API), `plots`, and `model_dir`
(the model folder's layout, importable without TensorFlow). It reads only the
shards and the manifest the Beam pipeline wrote.
"""
import os

from trainer import tensorflow_notes

# TensorFlow's C++ start-up notes (oneDNN, CPU instructions, absl) are not for our users; set
# TF_CPP_MIN_LOG_LEVEL=0 to see them. Set before any trainer module imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tensorflow_notes.drop_on_first_import()  # the notes that setting does not reach, on some CPUs
