"""Tiny generated inputs, an Example parser and runner flags shared by the pipeline tests.

Helpers are handed out as fixtures because test folders have no __init__.py
and so cannot import each other. Examples are parsed with TensorFlow's own
`tf.train.Example`, the reader the trainer relies on.
"""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

# Explicit runner variants for the tests that compare them; the default lives in beam_jobs.runners.default.
IN_MEMORY = ["--runner=FnApiRunner", "--direct_running_mode=in_memory"]
# Worker processes even for the tests' small trees, which the launcher would otherwise run in-process.
MULTI_PROCESSING = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2",
                    "--in_process_below=0"]


def sine(frequency: float, *, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    """float64 [rate * seconds] samples of a sine in [-amplitude, amplitude]."""
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate)


def wav_bytes(samples: np.ndarray, *, rate: int, encoding: str = "i16") -> bytes:
    """A WAV file of float samples [n] or [n, channels] in [-1, 1].

    encoding: u8, i16, i24, i32 (PCM) or f32, f64 (IEEE float). scipy writes
    int32 arrays as 32-bit, so 24-bit files are assembled here by hand.
    """
    if encoding == "i24":
        return _pcm24_wav_bytes(samples, rate=rate)
    converted = {
        "u8": lambda x: np.round(x * 127 + 128).astype(np.uint8),
        "i16": lambda x: np.round(x * 32767).astype(np.int16),
        "i32": lambda x: np.round(x * 2147483647).astype(np.int32),
        "f32": lambda x: x.astype(np.float32),
        "f64": lambda x: x.astype(np.float64),
    }[encoding](samples)
    buffer = io.BytesIO()
    wavfile.write(buffer, rate, converted)
    return buffer.getvalue()


def _pcm24_wav_bytes(samples: np.ndarray, *, rate: int) -> bytes:
    frames = samples.reshape(len(samples), -1)
    channels = frames.shape[1]
    as_int32 = np.round(frames * 8388607).astype("<i4")
    data = as_int32.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()  # the low three bytes, little-endian
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 3, channels * 3, 24)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write_tone_tree(root, *, per_class: int):
    """root/{low,high}/s<i>_nohash_0.wav: 16 kHz tones, a little apart within each class. Returns root."""
    for label, frequency in (("low", 300), ("high", 2000)):
        (root / label).mkdir(parents=True)
        for take in range(per_class):
            (root / label / f"s{take}_nohash_0.wav").write_bytes(
                wav_bytes(sine(frequency + 10 * take, rate=16000), rate=16000))
    return root


def image_bytes(image: Image.Image, image_format: str, **save_options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **save_options)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height: a decompression bomb's calling card."""
    data = bytearray(image_bytes(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # the IHDR payload follows the signature and the chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


@pytest.fixture(scope="session")
def make_sine():
    return sine


@pytest.fixture(scope="session")
def make_wav():
    return wav_bytes


@pytest.fixture(scope="session")
def make_tone_tree():
    return write_tone_tree


@pytest.fixture(scope="session")
def make_image():
    return image_bytes


@pytest.fixture(scope="session")
def make_bomb_png():
    return png_claiming_size


@pytest.fixture(scope="session")
def runner_flags():
    return {"in_memory": IN_MEMORY, "multi_processing": MULTI_PROCESSING}


def parse_example(serialized: bytes) -> dict:
    """{feature name: bytes for a bytes feature, list[int] for an int64 one}, parsed by TensorFlow."""
    import tensorflow as tf

    features = tf.train.Example.FromString(serialized).features.feature
    return {name: (feature.bytes_list.value[0] if feature.WhichOneof("kind") == "bytes_list"
                   else list(feature.int64_list.value))
            for name, feature in features.items()}


def decode_example(serialized: bytes) -> dict:
    """The features as Python values: str for bytes (the tensor stays bytes), int for a scalar, list for shape."""
    decoded = {}
    for name, value in parse_example(serialized).items():
        if name == "tensor":
            decoded[name] = value
        elif isinstance(value, bytes):
            decoded[name] = value.decode("utf-8")
        else:
            decoded[name] = value if name == "shape" else value[0]
    return decoded


def tensor_from_bytes(data: bytes, *, dtype: str, shape) -> np.ndarray:
    """The inverse of beam_jobs.records.features.tensor_to_bytes."""
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


@pytest.fixture(scope="session")
def example_parser():
    return parse_example


@pytest.fixture(scope="session")
def example_decoder():
    return decode_example


@pytest.fixture(scope="session")
def bytes_to_tensor():
    return tensor_from_bytes


@pytest.fixture(scope="session")
def write_wav():
    """write_wav(path, frequency, seconds=0.5): a 16-bit 8 kHz tone, its folders created."""
    def write(path, frequency: float, *, seconds: float = 0.5):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wav_bytes(sine(frequency, rate=8000, seconds=seconds), rate=8000))
        return path
    return write
