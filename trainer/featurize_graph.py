"""The pipeline's featurizers as TensorFlow ops, for the serving model (`trainer.export`).

Op for op what `beam_jobs.modalities.audio` and `beam_jobs.modalities.image` do
in NumPy/Pillow, with the settings of the training snapshot's manifest:

  audio  16-bit PCM WAV bytes (or a float waveform at the model's rate) -> mix-down
         -> the clip centred on its voiced region -> frames -> periodic Hann
         window -> FFT -> power -> mel matrix -> ln(power + LOG_FLOOR)
  image  PNG/JPEG/GIF/BMP bytes -> decode -> alpha composited onto black ->
         grayscale or RGB (Pillow's integer formulas) -> bilinear resize

`precision="float64"` computes the spectrum as NumPy does (a float64 FFT of the
float32 windowed frames), so the serving model's log-mel matches the stored
tensor to float32 rounding; "float32" is what LiteRT runs (it has no float64).
The constants (Hann window, mel matrix) are the pipeline's own arrays.
"""
import numpy as np
import tensorflow as tf

from beam_jobs.modalities import audio as audio_lib
from beam_jobs.modalities.audio import AudioConfig
from beam_jobs.modalities.image import ImageConfig

WAV_ACCEPTED = "16-bit PCM WAV"  # what tf.audio.decode_wav reads; other encodings go through `waveform`


def _dtype(precision: str) -> tf.DType:
    return {"float64": tf.float64, "float32": tf.float32}[precision]


def fit_to_clip(waveform: tf.Tensor, *, config: AudioConfig, lengths: tf.Tensor | None = None,
                precision: str = "float64") -> tf.Tensor:
    """float32 [batch, n] at the model's rate -> float32 [batch, clip_samples], as `audio.fit_to_clip`.

    `lengths` (int32 [batch], default n) are the samples of each row that are its recording; the rest
    is padding, ignored. With align="center" the stretch of frames within 40 dB of the loudest frame
    (energies in float64, as the pipeline computes them) is centred in the clip; "start" keeps the start.
    """
    length = config.clip_samples
    batch, width = tf.shape(waveform)[0], tf.shape(waveform)[1]
    lengths = tf.fill([batch], width) if lengths is None else tf.minimum(tf.cast(lengths, tf.int32), width)
    if config.align == "center":
        frame = config.hop_samples
        count = lengths // frame  # whole frames of each recording
        frames = tf.reshape(waveform[:, :width // frame * frame], [batch, width // frame, frame])
        frames = tf.cast(frames, _dtype(precision))
        energy_db = 10.0 * tf.math.log(tf.reduce_mean(frames * frames, axis=2) + 1e-12) / float(np.log(10.0))
        own = tf.range(width // frame)[None, :] < count[:, None]
        energy_db = tf.where(own, energy_db, tf.cast(-np.inf, energy_db.dtype))
        loud = own & (energy_db > tf.reduce_max(energy_db, axis=1, keepdims=True) - audio_lib._SILENCE_DB)
        first = tf.argmax(tf.cast(loud, tf.int32), axis=1, output_type=tf.int32)
        last = tf.shape(loud)[1] - 1 - tf.argmax(tf.cast(loud[:, ::-1], tf.int32), axis=1, output_type=tf.int32)
        start = tf.where(count > 0, first * frame, 0)
        end = tf.where(count > 0, (last + 1) * frame, lengths)
        offset = (start + end) // 2 - length // 2
    else:
        offset = tf.zeros([batch], tf.int32)
    indices = offset[:, None] + tf.range(length)[None, :]
    inside = (indices >= 0) & (indices < lengths[:, None])
    values = tf.gather(waveform, tf.clip_by_value(indices, 0, tf.maximum(width - 1, 0)), batch_dims=1)
    return tf.where(inside, values, tf.zeros_like(values))


def log_spectrogram(clip: tf.Tensor, *, config: AudioConfig, precision: str = "float64") -> tf.Tensor:
    """float32 [batch, clip_samples] -> float32 [batch, num_frames, num_bins], as `audio.compute_log_spectrogram`."""
    frames = tf.signal.frame(clip, config.window_samples, config.hop_samples, pad_end=False)
    frames = frames[:, :config.num_frames] * tf.constant(audio_lib._hann(config.window_samples))
    dtype = _dtype(precision)
    spectrum = tf.signal.rfft(tf.cast(frames, dtype), fft_length=[config.fft_size])
    power = tf.math.square(tf.math.real(spectrum)) + tf.math.square(tf.math.imag(spectrum))
    if config.num_mel_bins:
        mel = audio_lib._mel_matrix(config.sample_rate, config.fft_size, config.num_mel_bins)
        power = tf.tensordot(power, tf.constant(mel, dtype=dtype), axes=[[2], [0]])
    return tf.cast(tf.math.log(power + audio_lib.LOG_FLOOR), tf.float32)


def waveform_to_features(waveform: tf.Tensor, *, config: AudioConfig, lengths: tf.Tensor | None = None,
                         precision: str = "float64") -> tf.Tensor:
    """float32 [batch, any length] at the model's rate -> the stored tensor, float32 [batch, frames, bins].

    `lengths` (int32 [batch]) for a batch of recordings of unequal length, zero-padded to one width.
    """
    clips = fit_to_clip(waveform, config=config, lengths=lengths, precision=precision)
    return log_spectrogram(clips, config=config, precision=precision)


def decode_wav_clip(data: tf.Tensor, *, config: AudioConfig) -> tf.Tensor:
    """One WAV file's bytes (scalar tf.string) -> float32 [clip_samples]: decoded, mixed down, fitted.

    Fails (InvalidArgumentError) with a message that says what is accepted for anything but 16-bit PCM
    at the model's sample rate.
    """
    accepted = f"the bytes signature accepts {WAV_ACCEPTED} at {config.sample_rate} Hz"
    header_ok = (tf.strings.length(data) >= 44) & tf.equal(tf.strings.substr(data, 0, 4), "RIFF") & tf.equal(
        tf.strings.substr(data, 8, 4), "WAVE")
    header_checked = tf.debugging.Assert(header_ok, [f"not a WAV file: {accepted}; decode other files yourself "
                                                     f"and call the waveform signature"])
    # The fmt chunk is the first one in every WAV writer's output; check its encoding before decode_wav does,
    # whose own message ("Can only read 16-bit WAV files") does not say what to do instead.
    fmt_first = tf.equal(tf.strings.substr(data, 12, 4), "fmt ")
    fields = tf.io.decode_raw(tf.strings.substr(data, 20, 16), tf.uint16, little_endian=True)
    encoding, bits = fields[0], fields[7]
    encoding_checked = tf.debugging.Assert(
        ~fmt_first | ((encoding == 1) & (bits == 16)),
        [f"unsupported WAV encoding: {accepted}, not format", encoding, "with bits per sample", bits,
         "(decode it yourself and call the waveform signature)"])
    # decode_wav is stateless, so nothing orders it after the checks but this: without it, which error an
    # 8-bit file gets depends on which op the executor runs first.
    with tf.control_dependencies([header_checked, encoding_checked]):
        data = tf.identity(data)
    samples, rate = tf.audio.decode_wav(data)
    tf.debugging.Assert(tf.equal(rate, config.sample_rate),
                        [f"wrong sample rate: {accepted}, not", rate, "Hz (resample it and call the waveform "
                                                                       "signature)"])
    tf.debugging.Assert(tf.shape(samples)[0] > 0, ["WAV file holds no samples"])
    mono = tf.reduce_mean(samples, axis=1)
    return fit_to_clip(mono[None], config=config)[0]


def wav_bytes_to_features(data: tf.Tensor, *, config: AudioConfig, precision: str = "float64") -> tf.Tensor:
    """tf.string [batch] of WAV files -> the stored tensor, float32 [batch, frames, bins]."""
    clips = tf.map_fn(lambda one: decode_wav_clip(one, config=config), data,
                      fn_output_signature=tf.TensorSpec([config.clip_samples], tf.float32))
    return log_spectrogram(clips, config=config, precision=precision)


def _div255(value: tf.Tensor) -> tf.Tensor:
    """Pillow's SHIFTFORDIV255 (value / 255 rounded down, exact for the values below)."""
    shift = tf.bitwise.right_shift
    return shift(shift(value, 8) + value, 8)


def _composite_on_black(color: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """Pillow's alpha_composite of int32 colour channels [..., c] with alpha [..., 1] over opaque black."""
    blended = tf.bitwise.right_shift(_div255(color * alpha * 128 + (0x80 << 7)), 7)
    return tf.where(alpha == 0, tf.zeros_like(color), blended)


def decode_image(data: tf.Tensor, *, config: ImageConfig) -> tf.Tensor:
    """One image file's bytes (scalar tf.string) -> uint8 [height, width, channels], as `image.featurize_image`."""
    # JPEG with the accurate integer DCT that Pillow's libjpeg uses (decode_image's default is the fast one).
    pixels = tf.cond(tf.io.is_jpeg(data),
                     lambda: tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE"),
                     lambda: tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False))
    pixels = tf.cast(pixels, tf.int32)
    channels = tf.shape(pixels)[-1]
    # Everything to RGB(A) int32 [h, w, 3] first: gray L/LA replicated, alpha composited onto black.
    color = tf.case([
        (channels == 1, lambda: tf.tile(pixels, [1, 1, 3])),
        (channels == 2, lambda: tf.tile(_composite_on_black(pixels[..., :1], pixels[..., 1:]), [1, 1, 3])),
        (channels == 4, lambda: _composite_on_black(pixels[..., :3], pixels[..., 3:])),
    ], default=lambda: pixels[..., :3], exclusive=True)
    if config.channels == 1:
        # Pillow's "L" conversion: ITU-R 601-2 luma in 16-bit fixed point, rounded.
        gray = tf.bitwise.right_shift(color[..., 0] * 19595 + color[..., 1] * 38470 + color[..., 2] * 7471 + 0x8000,
                                      16)
        # A gray file stays exactly its own values (L24 of R=G=B rounds back to the value).
        color = gray[..., None]
    height, width = tf.shape(color)[0], tf.shape(color)[1]
    needs_resize = (height != config.height) | (width != config.width)
    resized = tf.cond(
        needs_resize,
        lambda: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
            tf.cast(color, tf.float32), [config.height, config.width], method="bilinear", antialias=True)), 0, 255),
            tf.int32),
        lambda: color)
    return tf.cast(tf.reshape(resized, config.feature_shape), tf.uint8)


def image_bytes_to_features(data: tf.Tensor, *, config: ImageConfig) -> tf.Tensor:
    """tf.string [batch] of image files -> the stored tensor, uint8 [batch, height, width, channels]."""
    return tf.map_fn(lambda one: decode_image(one, config=config), data,
                     fn_output_signature=tf.TensorSpec(config.feature_shape, tf.uint8))
