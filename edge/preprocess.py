"""The one definition of how a picture becomes model input.

The trainer caches images with :func:`resize_uint8` and scales them with :func:`scale`;
the device applies exactly the same two functions to raw PNG/JPEG/DICOM pixels. The
parameters travel in the model manifest (``PreprocessSpec.to_dict``), so a model and its
preprocessing cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

_INTERPOLATIONS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How to turn an 8-bit picture into a float tensor for the model.

    ``resize="stretch"`` resizes to ``size`` without keeping the aspect ratio (what the
    paper and Keras' ``image_dataset_from_directory`` do). Grayscale pictures are
    replicated into three channels; colour pictures are kept as RGB. The result is
    ``pixel * scale + offset``: with the defaults, [0, 1].
    """

    height: int = 224
    width: int = 224
    resize: str = "stretch"
    interpolation: str = "bilinear"
    color: str = "rgb"
    grayscale_to_rgb: str = "replicate"
    scale: float = 1.0 / 255.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"preprocess size must be positive, got {self.height}x{self.width}")
        if self.resize != "stretch":
            raise ValueError(f"unknown resize mode {self.resize!r}; supported: 'stretch'")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; "
                f"supported: {', '.join(sorted(_INTERPOLATIONS))}"
            )
        if self.color != "rgb" or self.grayscale_to_rgb != "replicate":
            raise ValueError("only color='rgb' with grayscale_to_rgb='replicate' is supported")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocess keys: {', '.join(sorted(unknown))}")
        return cls(**data)


DEFAULT_SPEC = PreprocessSpec()


def to_8bit_picture(image: Image.Image) -> Image.Image:
    """Return ``image`` as an 8-bit 'L' or 'RGB' picture.

    16-bit and 32-bit grayscale (PNG 'I;16', 'I', 'F') are stretched linearly from their
    minimum to their maximum; palette, alpha and CMYK pictures are converted to RGB.
    """
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        low, high = image.getextrema()
        return _stretch_to_8bit(image, float(low), float(high))
    if image.mode in ("1", "LA"):
        return image.convert("L")
    return image.convert("RGB")


_CHUNK_PIXELS = 1 << 20  # pixels converted at a time: bounds the float temporaries (8 MB)


def _stretch_to_8bit(image: Image.Image, low: float, high: float) -> Image.Image:
    """``window_to_uint8`` of a wide grayscale picture, a band of rows at a time, so the
    float copies cost a few MB whatever the picture's size (a 7000x7000 16-bit PNG would
    otherwise take gigabytes)."""
    width, height = image.size
    out = np.empty((height, width), dtype=np.uint8)
    step = max(1, _CHUNK_PIXELS // max(1, width))
    for top in range(0, height, step):
        band = np.asarray(image.crop((0, top, width, min(height, top + step))))
        out[top:top + step] = window_to_uint8(band, low, high)
    return Image.frombuffer("L", (width, height), out, "raw", "L", 0, 1)  # no copy


def window_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly to [0, 255], clipping outside; a flat window gives 0."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)



def resize_uint8(image: Image.Image, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """Resize an 8-bit picture to ``spec``'s size: uint8 array of shape (H, W, 3).

    Grayscale is resized in one channel and then replicated (identical to resizing the
    replicated picture, three times cheaper).
    """
    image = to_8bit_picture(image)
    resized = image.resize((spec.width, spec.height), _INTERPOLATIONS[spec.interpolation])
    array = np.asarray(resized, dtype=np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return array


def scale(pixels: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """uint8 pixels (any leading shape, last axis RGB) to the model's float32 input."""
    out = np.asarray(pixels, dtype=np.float32) * np.float32(spec.scale)
    if spec.offset:
        out += np.float32(spec.offset)
    return out


def preprocess(image: Image.Image, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """A picture to one float32 model input of shape (H, W, 3)."""
    return scale(resize_uint8(image, spec), spec)
