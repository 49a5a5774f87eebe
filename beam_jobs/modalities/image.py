"""The image modality: encoded bytes to a fixed-size uint8 array, its settings and its spec (`IMAGE`).

Pure Pillow/numpy, no Beam, no TensorFlow: the pipeline, `trainer.predict`,
the app and the report share it.
"""
import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from beam_jobs.modalities.config import option, require
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.modalities.spec import DemoCorpus, Modality, ModelInput, PreviewPanel

@dataclasses.dataclass(frozen=True)
class ImageConfig:
    height: int = option(28, "images are resized to this height", flag="image_height")
    width: int = option(28, "images are resized to this width", flag="image_width")
    channels: int = option(1, "1 (grayscale) or 3 (RGB)", flag="image_channels")
    max_file_bytes: int = option(64 * 1024 * 1024, "larger image files become error rows", flag="max_image_bytes")
    # Checked before decoding, so a decompression bomb is never expanded.
    max_pixels: int = option(40_000_000, "images with more pixels become error rows before they are decoded")

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape of one image: [height, width, channels]."""
        return (self.height, self.width, self.channels)

    def validate(self) -> "ImageConfig":
        require(self.height >= 1, "height", self.height, ">= 1")
        require(self.width >= 1, "width", self.width, ">= 1")
        require(self.channels in (1, 3), "channels", self.channels, "1 (grayscale) or 3 (RGB)")
        require(self.max_file_bytes > 0, "max_file_bytes", self.max_file_bytes, "> 0")
        require(self.max_pixels >= self.height * self.width, "max_pixels", self.max_pixels,
                "at least height * width")
        return self


_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")


def decode_image(data: bytes, *, config: ImageConfig) -> Image.Image:
    """Decodes PNG/JPEG/BMP/GIF/WEBP bytes fully (first frame of an animation).

    Raises:
      InvalidInputError: empty, not an image, unsupported format, truncated or
        corrupt, over the byte or pixel limit (checked before any pixel is decoded).
    """
    if not data:
        raise InvalidInputError("empty file")
    if len(data) > config.max_file_bytes:
        raise InvalidInputError(f"file is {len(data)} bytes, over the limit of {config.max_file_bytes}")
    with warnings.catch_warnings():
        # Pillow only warns about a bomb below twice its own limit; ours is checked explicitly below.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
        except UnidentifiedImageError as error:
            raise InvalidInputError(f"not a {'/'.join(_FORMATS)} image") from error
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise InvalidInputError(f"decompression bomb: {error}") from error
        except (OSError, ValueError, SyntaxError) as error:
            raise InvalidInputError(f"corrupt or truncated image header: {error}") from error
        width, height = image.size
        if width * height > config.max_pixels:
            raise InvalidInputError(
                f"image is {width}x{height} = {width * height} pixels, over the limit of {config.max_pixels}")
        try:
            # Pillow decodes lazily: truncated or corrupt pixel data only fails here.
            image.load()
            if image.format == "PNG":
                # A PNG cut after its last pixel row still decodes; verify() checks every chunk's CRC.
                Image.open(io.BytesIO(data), formats=("PNG",)).verify()
        except (OSError, ValueError, SyntaxError) as error:
            raise InvalidInputError(f"corrupt or truncated {image.format} image: {error}") from error
    return image


def to_array(image: Image.Image, *, config: ImageConfig) -> np.ndarray:
    """Converts any mode (1, L, LA, P, RGB, RGBA, CMYK, I;16, I, F) and resizes.

    Returns uint8 [height, width, channels]; transparency is composited onto black.
    """
    image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "RGBA", "La", "RGBa"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = image.convert("L" if config.channels == 1 else "RGB")
    if image.size != (config.width, config.height):
        image = image.resize((config.width, config.height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array.reshape(config.feature_shape)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Maps 16-bit and 32-bit integer or float grayscale onto 0..255 by their full range."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    full_scale = 1.0 if image.mode == "F" else (65535.0 if image.mode.startswith("I;16") else values.max() or 1.0)
    return Image.fromarray(np.clip(values / full_scale * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def featurize_image(data: bytes, *, config: ImageConfig) -> np.ndarray:
    """Image bytes to the model's input: uint8 [height, width, channels]. Raises InvalidInputError."""
    return to_array(decode_image(data, config=config), config=config)


def preview_image(data: bytes, *, config: ImageConfig) -> list[PreviewPanel]:
    """The pixels the model sees."""
    pixels = featurize_image(data, config=config)
    return [PreviewPanel("pixels", f"what the model sees ({'x'.join(map(str, pixels.shape))})", pixels)]


IMAGE = Modality(
    name="image", extensions=(".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"), config_class=ImageConfig,
    tensor_dtype="uint8", featurize=featurize_image, preview=preview_image,
    model_input=ModelInput(name="image", normalization="unit_range", add_channel_axis=False),
    media="image", title="Images", nouns=("class", "classes"), upload=("Upload an image", "image/*"),
    demo_corpus=DemoCorpus(folder="fashion", command="fashion-mnist"))
