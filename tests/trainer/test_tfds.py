"""A snapshot is also a TensorFlow Datasets dataset: `tfds.builder_from_directories` reads its spans."""
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from beam_jobs.table.layout import TFDS_INFO_NAME, span_dir
from trainer.data import load_manifest, make_dataset


@pytest.mark.parametrize("modality", ["audio", "image"])
def test_tfds_reads_every_split_with_the_tensor_and_the_named_label(data_dirs, modality):
    data_dir = str(data_dirs[modality])
    manifest = load_manifest(data_dir)
    builder = tfds.builder_from_directories([span_dir(data_dir, span) for span in manifest.spans])

    assert builder.info.features["label"].names == manifest.labels
    assert builder.info.supervised_keys == ("tensor", "label")
    for split, info in manifest.splits.items():
        if not info.num_examples:
            continue
        by_tfds = sorted((int(label), tensor.tobytes())
                         for tensor, label in tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True)))
        ours = sorted((int(np.argmax(label)), tensor.tobytes())
                      for tensors, labels in make_dataset(manifest=manifest, data_dir=data_dir, splits=[split],
                                                          batch_size=64, training=False).as_numpy_iterator()
                      for tensor, label in zip(tensors, labels))
        assert len(by_tfds) == info.num_examples and by_tfds == ours, split


def test_gzip_shards_get_no_tfds_metadata(gzip_audio_dir):
    # TFDS reads uncompressed TFRecord only (core/file_adapters.py), so it is not told otherwise.
    spans = load_manifest(str(gzip_audio_dir)).spans
    assert spans and not any(pathlib.Path(span_dir(str(gzip_audio_dir), span), TFDS_INFO_NAME).exists()
                             for span in spans)
