"""The one definition of how a picture becomes model input.

The trainer caches images with :func:`resize_uint8` and scales them with :func:`scale`;
the device applies exactly the same two functions to raw PNG/JPEG/DICOM pixels. The
parameters (``PreprocessSpec``, in ``edge.preprocess_spec``: standard library only, so the
manifest can be read anywhere) travel in the model manifest, so a model and its
preprocessing cannot drift apart.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .preprocess_spec import DEFAULT_SPEC, PreprocessSpec

__all__ = ["DEFAULT_SPEC", "PreprocessSpec", "preprocess", "resize_uint8", "scale",
           "to_8bit_picture", "window_to_uint8"]

# PreprocessSpec is re-exported here: trainer and converters import it with these functions.
_INTERPOLATIONS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


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
