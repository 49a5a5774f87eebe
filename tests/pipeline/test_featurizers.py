"""Unit tests of the pure featurizers, the split assignment and the example round trip."""
import numpy as np
import pytest
from PIL import Image
from scipy import signal

from beam_jobs.inputs.splits import SPLITS, SplitRule
from beam_jobs.modalities import audio, image
from beam_jobs.modalities.audio import AudioConfig
from beam_jobs.modalities.config import SplitConfig
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.modalities.image import ImageConfig
from beam_jobs.records.examples import encode_example

LINEAR = AudioConfig(num_mel_bins=0)  # linear bins make the expected peak bin a plain division
TONE_HZ = 1000.0
ENCODINGS = ("u8", "i16", "i24", "i32", "f32", "f64")


def peak_frequency(spectrogram: np.ndarray, *, config: AudioConfig) -> float:
    return float(spectrogram.mean(axis=0).argmax()) * config.sample_rate / config.fft_size


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_wav_of_every_rate_and_encoding_gives_the_spectrogram_of_its_tone(rate, encoding, make_sine, make_wav):
    data = make_wav(make_sine(TONE_HZ, rate=rate), rate=rate, encoding=encoding)

    spectrogram = audio.featurize_wav(data, config=LINEAR)

    assert spectrogram.dtype == np.float32
    assert spectrogram.shape == LINEAR.feature_shape == (98, 257)
    assert abs(peak_frequency(spectrogram, config=LINEAR) - TONE_HZ) <= LINEAR.sample_rate / LINEAR.fft_size


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_decode_wav_scales_every_encoding_to_unit_range(encoding, make_sine, make_wav):
    tone = make_sine(TONE_HZ, rate=16000, amplitude=0.5)

    samples, rate = audio.decode_wav(make_wav(tone, rate=16000, encoding=encoding), config=AudioConfig())

    assert rate == 16000 and samples.dtype == np.float32
    np.testing.assert_allclose(samples, tone, atol=1 / 100 if encoding == "u8" else 1e-4)


@pytest.mark.parametrize("channels", [2, 4])
def test_multichannel_wav_is_mixed_to_mono(channels, make_sine, make_wav):
    frames = np.zeros((16000, channels))
    frames[:, 0] = make_sine(TONE_HZ, rate=16000)  # the other channels are silent

    spectrogram = audio.featurize_wav(make_wav(frames, rate=16000, encoding="i24"), config=LINEAR)

    assert spectrogram.shape == LINEAR.feature_shape
    assert abs(peak_frequency(spectrogram, config=LINEAR) - TONE_HZ) <= LINEAR.sample_rate / LINEAR.fft_size


def test_mel_spectrogram_has_the_configured_shape(make_sine, make_wav):
    config = AudioConfig(num_mel_bins=40, clip_seconds=0.5, hop_ms=20.0)

    spectrogram = audio.featurize_wav(make_wav(make_sine(440, rate=22050), rate=22050), config=config)

    assert spectrogram.shape == config.feature_shape == (24, 40)
    assert np.all(np.isfinite(spectrogram))


@pytest.mark.parametrize("length", [16, 400, 441, 512])
def test_hann_window_is_scipys_bit_for_bit(length):
    np.testing.assert_array_equal(audio._hann(length), signal.get_window("hann", length).astype(np.float32))


@pytest.mark.parametrize("corrupt, reason", [
    (lambda data: b"", "empty"),
    (lambda data: data[: len(data) // 2], "truncated"),
    (lambda data: data[:30], "not a readable"),  # cut inside the fmt chunk
    (lambda data: b"this is text saved with a .wav extension", "not a readable"),
    (lambda data: data[:20] + b"\xff" * 16 + data[36:], "not a readable"),  # nonsense fmt chunk
])
def test_bad_wav_raises_invalid_input_with_reason(corrupt, reason, make_sine, make_wav):
    data = make_wav(make_sine(TONE_HZ, rate=16000), rate=16000)

    with pytest.raises(InvalidInputError, match=reason):
        audio.featurize_wav(corrupt(data), config=AudioConfig())


def test_wav_over_the_limits_raises_invalid_input(make_sine, make_wav):
    long_recording = make_wav(make_sine(TONE_HZ, rate=8000, seconds=3), rate=8000)

    with pytest.raises(InvalidInputError, match="over the limit of 2.0 s"):
        audio.featurize_wav(long_recording, config=AudioConfig(max_seconds=2.0))
    with pytest.raises(InvalidInputError, match="over the limit of 1000"):
        audio.featurize_wav(long_recording, config=AudioConfig(max_file_bytes=1000))


def gradient(mode: str, size=(40, 30)) -> Image.Image:
    """A horizontal gray ramp converted to `mode`."""
    ramp = np.tile(np.linspace(0, 255, size[0]).astype(np.uint8), (size[1], 1))
    return Image.fromarray(ramp, mode="L").convert(mode)


def palette_with_transparency() -> Image.Image:
    picture = gradient("P")
    picture.info["transparency"] = 0
    return picture


def sixteen_bit() -> Image.Image:
    ramp = np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (30, 1))
    return Image.fromarray(ramp)  # uint16 gives mode I;16


def translucent() -> Image.Image:
    picture = gradient("RGBA")
    picture.putalpha(128)  # an alpha channel that is not all opaque, so WEBP keeps it
    return picture


IMAGES = {
    "1-png": (lambda: gradient("1"), "PNG"),
    "L-png": (lambda: gradient("L"), "PNG"),
    "LA-png": (lambda: gradient("LA"), "PNG"),
    "P-transparent-png": (palette_with_transparency, "PNG"),
    "RGB-png": (lambda: gradient("RGB"), "PNG"),
    "RGBA-png": (translucent, "PNG"),
    "I;16-png": (sixteen_bit, "PNG"),
    "L-jpg": (lambda: gradient("L"), "JPEG"),
    "RGB-jpg": (lambda: gradient("RGB"), "JPEG"),
    "CMYK-jpg": (lambda: gradient("CMYK"), "JPEG"),
    "1-bmp": (lambda: gradient("1"), "BMP"),
    "RGB-bmp": (lambda: gradient("RGB"), "BMP"),
    "P-gif": (lambda: gradient("P"), "GIF"),
    "P-transparent-gif": (palette_with_transparency, "GIF"),
    "RGB-webp": (lambda: gradient("RGB"), "WEBP"),
    "RGBA-webp": (translucent, "WEBP"),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", IMAGES)
def test_image_of_every_mode_and_format_becomes_uint8_of_the_configured_shape(name, channels, make_image):
    build, image_format = IMAGES[name]
    config = ImageConfig(height=12, width=16, channels=channels)

    array = image.featurize_image(make_image(build(), image_format), config=config)

    assert array.dtype == np.uint8
    assert array.shape == (12, 16, channels)
    # Every source is a left-to-right ramp (CMYK inverts it), so the columns must differ.
    assert array[:, 0].mean() != array[:, -1].mean()


def test_transparent_pixels_are_composited_onto_black(make_image):
    transparent = Image.new("RGBA", (8, 8), (255, 255, 255, 0))

    array = image.featurize_image(make_image(transparent, "PNG"), config=ImageConfig(height=8, width=8))

    assert array.max() == 0


def test_color_image_to_grayscale_uses_luma(make_image):
    red = Image.new("RGB", (8, 8), (255, 0, 0))

    array = image.featurize_image(make_image(red, "PNG"), config=ImageConfig(height=8, width=8))

    assert np.all(array == 76)  # 0.299 * 255, ITU-R 601 luma


@pytest.mark.parametrize("corrupt, reason", [
    (lambda data: b"", "empty"),
    (lambda data: data[: len(data) // 2], "truncated"),
    (lambda data: data[:60] + bytes(255 - b for b in data[60:]), "corrupt"),  # flipped pixel data
    (lambda data: b"plain text saved with a .png extension", "not a"),
])
def test_bad_image_raises_invalid_input_with_reason(corrupt, reason, make_image):
    data = make_image(gradient("RGB", size=(64, 64)), "PNG")

    with pytest.raises(InvalidInputError, match=reason):
        image.featurize_image(corrupt(data), config=ImageConfig())


def test_image_over_the_pixel_limit_is_rejected_before_decoding(make_bomb_png):
    with pytest.raises(InvalidInputError, match="over the limit of 1000"):
        image.featurize_image(make_bomb_png(100, 100), config=ImageConfig(max_pixels=1000))
    # Pillow's own guard fires first on a header claiming ten billion pixels.
    with pytest.raises(InvalidInputError, match="decompression bomb"):
        image.featurize_image(make_bomb_png(100_000, 100_000), config=ImageConfig())


def test_split_depends_only_on_the_path_and_follows_the_percentages():
    config = SplitConfig(validation_percent=10, test_percent=20)
    paths = [f"label/file{index}.wav" for index in range(3000)]

    splits = [SplitRule(config=config, listed={}).split_of(path) for path in paths]

    assert splits == [SplitRule(config=config, listed={}).split_of(path) for path in paths]
    shares = {split: splits.count(split) / len(paths) for split in SPLITS}
    assert shares == pytest.approx({"train": 0.7, "validation": 0.1, "test": 0.2}, abs=0.03)


def test_clips_of_one_speaker_share_a_split():
    config = SplitConfig()
    for speaker in ("0a7c2a8d", "bb05582b", "c1d39ce8", "ffd2ba2f"):
        splits = {SplitRule(config=config, listed={}).split_of(f"{word}/{speaker}_nohash_{take}.wav")
                  for word in ("yes", "no", "up") for take in range(3)}
        assert len(splits) == 1, f"speaker {speaker} is spread over {splits}"


def test_listed_files_keep_their_split_and_listed_splits_take_no_others():
    listed = {"yes/a.wav": "validation", "no/b.wav": "train"}
    config = SplitConfig(validation_percent=30, test_percent=30)

    assert SplitRule(config=config, listed=listed).split_of("yes/a.wav") == "validation"
    assert SplitRule(config=config, listed=listed).split_of("no/b.wav") == "train"
    others = {SplitRule(config=config, listed={"yes/a.wav": "validation"}).split_of(f"up/{index}.wav")
              for index in range(200)}
    assert others == {"train", "test"}


@pytest.mark.parametrize("modality, tensor", [
    ("audio", np.arange(12, dtype=np.float32).reshape(3, 4) / 7),
    ("image", np.arange(24, dtype=np.uint8).reshape(2, 4, 3)),
])
def test_example_round_trip(modality, tensor, example_decoder, bytes_to_tensor):
    serialized = encode_example(tensor=tensor, label=2, label_name="cat", modality=modality,
                                tensor_dtype=tensor.dtype.name, example_id="ab" * 32, path="cat/1.png",
                                split="validation")

    decoded = example_decoder(serialized)

    restored = bytes_to_tensor(decoded["tensor"], dtype=decoded["dtype"], shape=decoded["shape"])
    np.testing.assert_array_equal(restored, tensor)
    assert restored.dtype == tensor.dtype
    assert {key: decoded[key] for key in ("label", "label_name", "modality", "id", "path", "split")} == {
        "label": 2, "label_name": "cat", "modality": modality, "id": "ab" * 32, "path": "cat/1.png",
        "split": "validation"}


def test_encode_example_is_byte_stable_and_rejects_the_wrong_dtype():
    tensor = np.ones((2, 2), dtype=np.float32)
    fields = dict(label=0, label_name="a", modality="audio", tensor_dtype="float32", example_id="00", path="a/x.wav",
                  split="train")

    assert encode_example(tensor=tensor, **fields) == encode_example(tensor=tensor.copy(), **fields)
    with pytest.raises(TypeError, match="float32"):
        encode_example(tensor=tensor.astype(np.float64), **fields)
