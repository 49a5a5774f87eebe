"""TensorFlow trainer for soundsight: streams the pipeline's TFRecords into a small convnet.

`data` (tf.data), `augment` (training-only spectrogram ops), `model`, `train`,
`evaluate`, `predict` (CLI and the `Predictor` API), `plots`. It reads only the
shards and the manifest the Beam pipeline wrote, and never imports `tfrecord`
or Beam (their protobufs clash with TensorFlow's in one process).
"""
