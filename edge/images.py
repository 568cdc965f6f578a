"""PNG and JPEG inputs, decoded with Pillow exactly as the trainer decodes its data set.

The header is read first and the size checked against the limits (pixels, and the memory
decoding would take: ``[limits] max_decode_mb``) before a single pixel is decoded. Truncated
files are errors (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off), and so are JPEGs whose
compressed data stops early but which decoders fill with grey instead of failing
(``edge.jpeg``): never silently padded with grey. No EXIF rotation is applied: the trainer
applies none either.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from . import jpeg
from .codestream import declared_size
from .config import LimitsConfig
from .decoded import (
    DecodedImage,
    check_decode_budget,
    check_dimensions,
    raise_if_passing,
    read_head,
)
from .errors import DecodeError, InputLimitError, UnsupportedInputError
from .preprocess import to_8bit_picture

_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
# Bytes per pixel Pillow holds for a mode (multi-band modes use 32-bit pixels), and what
# turning it into an 8-bit "L" or "RGB" picture adds (edge.preprocess.to_8bit_picture).
_STORAGE = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4}
# For wide grayscale the decoder's own buffers count too: a 4000x4000 16-bit PNG measured
# 5.8 bytes per pixel at the peak (decode, stretch and resize).
_CONVERSION = {"L": 0, "RGB": 0, "1": 1, "LA": 1, "I;16": 4, "I;16B": 4, "I;16L": 4, "I": 4,
               "F": 4}


def decode_picture(path: Path, kind: str, limits: LimitsConfig) -> DecodedImage:
    fmt = _FORMATS[kind]
    _check_declared_size(path, kind, fmt, limits)
    info = _check_scan_count(path) if kind == "jpeg" else None
    try:
        with warnings.catch_warnings(), open(str(path), "rb") as handle:
            # our own limit was checked above; Pillow's milder one would only speak of itself
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle, formats=[fmt])
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
            check_dimensions(width, height, limits, f"{fmt} image")
            mode = image.mode
            check_decode_budget(width * height * (_STORAGE.get(mode, 4) + _CONVERSION.get(
                mode, 4)), limits, f"{fmt} image ({width}x{height}, {mode})")
            image.load()  # the pixels stay in memory once the file is closed: no copy needed
    except Image.DecompressionBombError:
        raise InputLimitError(
            f"the {fmt} image is larger than Pillow, the image library, will ever decode; "
            f"the limit is [limits] max_pixels ({limits.max_pixels:,}) pixels") from None
    except UnsupportedInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError...
        raise_if_passing(exc)  # the disk failed the read, not the file
        text = str(exc) or exc.__class__.__name__
        if isinstance(exc, Image.UnidentifiedImageError):
            # Pillow names the open file: the agent's working copy in .state, not the input
            text = "Pillow does not recognise it"
        if "truncated" in text.lower():
            raise DecodeError(f"the {fmt} file is truncated ({text}): the copy is incomplete; "
                              "copy the file again") from None
        raise DecodeError(f"the {fmt} file cannot be decoded ({exc.__class__.__name__}: {text}); "
                          "it is damaged or not really a " + fmt) from None
    if info is not None:
        _check_jpeg_is_whole(info, image)
    picture = to_8bit_picture(image)
    details = {"format": fmt, "width": width, "height": height, "mode": mode}
    notes = []
    if frames > 1:
        notes.append(f"the {fmt} holds {frames} frames; only the first was classified")
    if picture.mode == "RGB" and not is_effectively_gray(picture):
        notes.append("colour picture: the model was trained on grayscale MR slices")
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append("16-bit picture: stretched linearly from its minimum to its maximum")
    return DecodedImage(kind=kind, picture=picture, details=details, notes=notes)


def _check_declared_size(path: Path, kind: str, fmt: str, limits: LimitsConfig) -> None:
    """The size the header declares, checked before Pillow reads anything (so a refusal
    quotes our limits, not the library's)."""
    head = read_head(path, 1 << 18)  # a JPEG's SOF can follow 64 kB APP segments
    if kind == "png":
        size = (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) if (
            head[12:16] == b"IHDR") else None
    else:
        size = declared_size(head)
    if size is not None and size[0] > 0 and size[1] > 0:
        check_dimensions(size[0], size[1], limits, f"{fmt} image")


def _check_scan_count(path: Path) -> jpeg.Structure:
    """The JPEG's structure, read before decoding; a file with more scans than any encoder
    writes is refused (``edge.jpeg.too_many_scans``: each scan costs a pass over the whole
    picture)."""
    info = jpeg.read_structure(path)
    problem = jpeg.too_many_scans(info)
    if problem:
        raise InputLimitError(problem)
    return info


def _check_jpeg_is_whole(info: jpeg.Structure, image: Image.Image) -> None:
    missing = jpeg.missing_scans(info)
    if missing:
        raise DecodeError(
            "the progressive JPEG ends before its last scans (the passes that bring in the "
            f"fine detail): {missing} of {64 * len(info.components)} coefficients were never "
            "completed, so the picture is a blurred version of the scan. The copy is "
            "incomplete or damaged; copy the file again")
    if not info.progressive:
        share = jpeg.flat_tail_share(image, info)
        if share > 0:
            raise DecodeError(
                f"the JPEG's compressed data ends early: the last {share:.0%} of the picture "
                "(its bottom) is missing and would be decoded as flat grey. The copy is "
                "incomplete or the header claims more pixels than the file holds; copy the "
                "file again")


def is_effectively_gray(picture: Image.Image, tolerance: int = 8) -> bool:
    """True for an RGB picture whose channels agree (a grayscale scan saved as colour)."""
    if picture.mode != "RGB":
        return True
    small = np.asarray(picture.resize((64, 64)), dtype=np.int16)
    spread = small.max(axis=2) - small.min(axis=2)
    return bool(np.percentile(spread, 99) <= tolerance)
