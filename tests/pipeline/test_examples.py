"""beam_jobs.records.examples writes, by hand, exactly the bytes TensorFlow's own tf.train.Example serializes."""
import numpy as np
import pytest
import tensorflow as tf

from beam_jobs.records.examples import encode_example
from beam_jobs.records.features import FEATURES

CASES = [
    dict(tensor=np.arange(12, dtype=np.float32).reshape(3, 4) / 7, label=2, label_name="yes", modality="audio",
         example_id="ab" * 32, path="yes/spk_nohash_0.wav", split="validation"),
    dict(tensor=np.zeros((28, 28, 1), dtype=np.uint8), label=0, label_name="t-shirt_top", modality="image",
         example_id="cd" * 32, path="t-shirt_top/caf\u00e9 \u00fc.png", split="test"),
    # A negative label is a ten-byte varint; a long tensor has a multi-byte length.
    dict(tensor=np.full((98, 64), -1e-30, dtype=np.float32), label=-3, label_name="", modality="audio",
         example_id="", path="a/" + "x" * 300 + ".wav", split="train"),
    dict(tensor=np.zeros((0,), dtype=np.uint8), label=2**40, label_name="\u4e2d", modality="frames",
         example_id="0" * 64, path="\u4e2d/1.npy", split="train"),
]


def tensorflow_example(*, tensor, label, label_name, modality, example_id, path, split) -> bytes:
    """The same Example built with TensorFlow's protobuf and its deterministic serialization."""
    def text(value: str):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))

    feature = {
        "tensor": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tensor.astype(tensor.dtype.newbyteorder("<"))
                                                                         .tobytes()])),
        "dtype": text(tensor.dtype.name),
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(tensor.shape))),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "label_name": text(label_name), "modality": text(modality), "id": text(example_id), "path": text(path),
        "split": text(split),
    }
    assert set(feature) == {f.name for f in FEATURES}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case["path"][:12])
def test_hand_written_example_is_byte_identical_to_tensorflows(case):
    ours = encode_example(tensor_dtype=case["tensor"].dtype.name, **case)
    assert ours == tensorflow_example(**case)
    parsed = tf.train.Example.FromString(ours).features.feature
    assert parsed["path"].bytes_list.value[0].decode("utf-8") == case["path"]
    assert list(parsed["shape"].int64_list.value) == list(case["tensor"].shape)
