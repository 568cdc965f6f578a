"""PNG and JPEG inputs, decoded with Pillow exactly as the trainer decodes its data set.

The header is read first and the size checked against the limits before a single pixel is
decoded. Truncated files are errors (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off), never
silently padded with grey. No EXIF rotation is applied: the trainer applies none either.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .config import LimitsConfig
from .errors import DecodeError, InputLimitError
from .inputs import DecodedImage, check_dimensions
from .preprocess import to_8bit_picture

_FORMATS = {"png": "PNG", "jpeg": "JPEG"}


def decode_picture(path: Path, kind: str, limits: LimitsConfig) -> DecodedImage:
    fmt = _FORMATS[kind]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(str(path), formats=[fmt]) as image:
                width, height = image.size
                frames = getattr(image, "n_frames", 1)
                check_dimensions(width, height, limits, f"{fmt} image")
                mode = image.mode
                image.load()
                picture = to_8bit_picture(image)
                if picture is image:
                    picture = image.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputLimitError(
            f"the {fmt} image is refused as a decompression bomb: {exc}") from None
    except (InputLimitError, DecodeError):
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError...
        text = str(exc) or exc.__class__.__name__
        if "truncated" in text.lower():
            raise DecodeError(f"the {fmt} file is truncated ({text}): the copy is incomplete; "
                              "copy the file again") from None
        raise DecodeError(f"the {fmt} file cannot be decoded ({exc.__class__.__name__}: {text}); "
                          "it is damaged or not really a " + fmt) from None
    details = {"format": fmt, "width": width, "height": height, "mode": mode}
    notes = []
    if frames > 1:
        notes.append(f"the {fmt} holds {frames} frames; only the first was classified")
    if picture.mode == "RGB" and not is_effectively_gray(picture):
        notes.append("colour picture: the model was trained on grayscale MR slices")
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append("16-bit picture: stretched linearly from its minimum to its maximum")
    return DecodedImage(kind=kind, picture=picture, details=details, notes=notes)


def is_effectively_gray(picture: Image.Image, tolerance: int = 8) -> bool:
    """True for an RGB picture whose channels agree (a grayscale scan saved as colour)."""
    if picture.mode != "RGB":
        return True
    small = np.asarray(picture.resize((64, 64)), dtype=np.int16)
    spread = small.max(axis=2) - small.min(axis=2)
    return bool(np.percentile(spread, 99) <= tolerance)
