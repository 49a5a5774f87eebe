"""trainer.data: the parse spec from the schema, parse/decode eagerly and in Dataset.map, the whole chain."""

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs.records.examples import encode_example
from beam_jobs.records.features import FEATURES
from trainer.data import load_manifest, make_dataset, make_decode, make_parse, parse_spec


@pytest.fixture(scope="module")
def encoded() -> list[bytes]:
    """Two Examples serialized by beam_jobs.records.examples.encode_example (an audio and an image one)."""
    audio = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    audio[0, 0] = -1e-30
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10
    return [
        encode_example(tensor=audio, label=2, label_name="yes", modality="audio", tensor_dtype="float32",
                       example_id="ab" * 32, path="yes/spk_nohash_0.wav", split="train"),
        encode_example(tensor=image, label=0, label_name="t-shirt_top", modality="image", tensor_dtype="uint8",
                       example_id="cd" * 32, path="t-shirt_top/caf\u00e9 1.png", split="test"),
    ]


def test_parse_spec_follows_the_schema():
    spec = parse_spec([feature.name for feature in FEATURES])
    assert sorted(spec) == sorted(feature.name for feature in FEATURES)
    assert isinstance(spec["shape"], tf.io.RaggedFeature), "shape has variable length in FEATURES"
    assert spec["tensor"].dtype == tf.string and spec["label"].dtype == tf.int64
    assert spec["label"].shape == [], "single values parse to scalars"
    assert sorted(parse_spec()) == ["label", "tensor"], "training parses only what it uses"


def test_parser_round_trips_values_encoded_by_beam_jobs(encoded):
    parsed = make_parse([feature.name for feature in FEATURES])(tf.constant(encoded))
    text = lambda name: [value.decode("utf-8") for value in parsed[name].numpy()]  # noqa: E731
    assert text("label_name") == ["yes", "t-shirt_top"]
    assert text("path") == ["yes/spk_nohash_0.wav", "t-shirt_top/caf\u00e9 1.png"]
    assert text("modality") == ["audio", "image"]
    assert text("split") == ["train", "test"]
    assert text("id") == ["ab" * 32, "cd" * 32]
    assert text("dtype") == ["float32", "uint8"]
    assert parsed["label"].numpy().tolist() == [2, 0]
    assert parsed["shape"].to_list() == [[3, 4], [2, 4, 3]]
    audio, _ = make_decode(dtype="float32", shape=[3, 4], num_classes=3)(
        {"tensor": parsed["tensor"][:1], "label": parsed["label"][:1]})
    expected_audio = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    expected_audio[0, 0] = -1e-30
    np.testing.assert_array_equal(audio.numpy()[0], expected_audio)  # bit-exact, tiny values included
    image, _ = make_decode(dtype="uint8", shape=[2, 4, 3], num_classes=3)(
        {"tensor": parsed["tensor"][1:], "label": parsed["label"][1:]})
    np.testing.assert_array_equal(image.numpy()[0], np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10)


def test_parse_and_decode_inside_dataset_map_match_eager(encoded):
    parse, decode = make_parse(), make_decode(dtype="float32", shape=[3, 4], num_classes=3)
    eager_tensor, eager_label = decode(parse(tf.constant(encoded[:1])))
    mapped = tf.data.Dataset.from_tensors(tf.constant(encoded[:1])).map(parse).map(decode)
    (tensor, label), = list(mapped)
    np.testing.assert_array_equal(tensor.numpy(), eager_tensor.numpy())
    assert tensor.shape == (1, 3, 4) and tensor.dtype == tf.float32
    np.testing.assert_array_equal(label.numpy(), [[0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(eager_label.numpy(), label.numpy())


def test_evaluation_dataset_yields_every_example_once_in_order(data_dirs):
    manifest = load_manifest(str(data_dirs["audio"]))
    dataset = make_dataset(manifest=manifest, data_dir=str(data_dirs["audio"]), splits=["train"], batch_size=7,
                           training=False)
    batches = list(dataset)
    assert sum(len(labels) for _, labels in batches) == manifest.splits["train"].num_examples
    assert batches[0][0].shape[1:] == tuple(manifest.tensor_shape) and batches[0][0].dtype == tf.float32
    labels = np.concatenate([np.argmax(labels, axis=1) for _, labels in batches])
    counts = {manifest.labels[i]: int(n) for i, n in enumerate(np.bincount(labels, minlength=3))}
    assert counts == manifest.splits["train"].label_counts
    again = np.concatenate([np.argmax(labels, axis=1) for _, labels in dataset])
    np.testing.assert_array_equal(labels, again)


def test_training_dataset_shuffles_and_keeps_static_batches(data_dirs):
    manifest = load_manifest(str(data_dirs["image"]))
    dataset = make_dataset(manifest=manifest, data_dir=str(data_dirs["image"]), splits=["train"], batch_size=8,
                           training=True, shuffle_buffer=1000, seed=1)
    assert dataset.element_spec[0].shape == (8, 28, 28, 1) and dataset.element_spec[0].dtype == tf.uint8
    assert dataset.cardinality().numpy() == manifest.splits["train"].num_examples // 8
    epochs = [np.concatenate([tensors.numpy().reshape(8, -1).sum(axis=1) for tensors, _ in dataset])
              for _ in range(2)]
    assert not np.array_equal(epochs[0], epochs[1]), "each epoch should come in a new order"


def test_gzip_shards_and_cache(gzip_audio_dir):
    manifest = load_manifest(str(gzip_audio_dir))
    assert manifest.compression == "GZIP"
    dataset = make_dataset(manifest=manifest, data_dir=str(gzip_audio_dir), splits=["train", "test"],
                           batch_size=4, training=False, cache=True)
    total = manifest.splits["train"].num_examples + manifest.splits["test"].num_examples
    for _ in range(2):
        assert sum(len(labels) for _, labels in dataset) == total


def test_missing_manifest_and_unknown_split_are_named(tmp_path, data_dirs):
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        load_manifest(str(tmp_path))
    manifest = load_manifest(str(data_dirs["audio"]))
    with pytest.raises(ValueError, match="'dev'"):
        make_dataset(manifest=manifest, data_dir=str(data_dirs["audio"]), splits=["dev"], batch_size=4,
                     training=False)
