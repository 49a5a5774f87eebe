"""Apache Beam preprocessing for soundsight: raw wavs and images to sharded TFRecords.

Nothing in this package imports TensorFlow, so Beam workers stay light and the
featurizers can be shared with the trainer and the app.
"""

PIPELINE_VERSION = "1.0.0"
