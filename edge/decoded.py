"""What every decoder of an input shares: the decoded picture, and the checks made from a
file's header before any pixel is decoded. ``edge.inputs`` picks the decoder by content;
``edge.images`` (PNG, JPEG) and ``edge.dicom`` build on this module, not on each other's
dispatcher.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .config import LimitsConfig
from .errors import InputLimitError, UnsupportedInputError


@dataclass
class DecodedImage:
    """An input turned into the 8-bit picture the model's preprocessing starts from."""

    kind: str  # "dicom", "png" or "jpeg"
    picture: Image.Image  # mode "L" or "RGB"
    details: dict[str, Any] = field(default_factory=dict)  # goes into the report
    notes: list[str] = field(default_factory=list)  # what a reader of the report should know


# The errors of a read that are about the input itself (its permissions, its kind, its
# size): retrying cannot help. Any other error the system reports (an errno: EIO, ENOSPC,
# ENOMEM, EMFILE, ESTALE, ...) is the machine's, and the input is retried, never refused
# for it. What is wrong with a file's content, decoders report without an errno (Pillow's
# OSError "image file is truncated").
ABOUT_THE_FILE = frozenset({errno.EACCES, errno.EPERM, errno.EISDIR, errno.ELOOP,
                            errno.EINVAL, errno.EFBIG, errno.EOVERFLOW, errno.ENAMETOOLONG})


def raise_if_passing(exc: BaseException) -> None:
    """Raise ``exc`` again if the system failed the read for a reason of the machine (not
    in ``ABOUT_THE_FILE``): for the decoders' catch-alls, which turn what a library raises
    on a damaged file into a refusal."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno not in ABOUT_THE_FILE:
        raise exc


def read_head(path: Path, size: int = 1024) -> bytes:
    fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def check_decode_budget(estimate_bytes: int, limits: LimitsConfig, what: str) -> None:
    """Refuse an input whose decoding would take more memory than ``[limits] max_decode_mb``,
    from an estimate made from its header (decoded pixels plus their 8-bit copy)."""
    if estimate_bytes > limits.max_decode_mb * 2**20:
        raise InputLimitError(
            f"decoding this {what} would take about {estimate_bytes / 2**20:,.0f} MB of memory, "
            f"above the limit of {limits.max_decode_mb:g} MB ([limits] max_decode_mb); an MR "
            "slice needs a few MB. Raise the limit only if the device has the memory to spare")


def check_dimensions(width: int, height: int, limits: LimitsConfig, what: str,
                     frames: int = 1, samples: int = 1) -> None:
    """Refuse absurd or bomb-sized images from their header, before any pixel is decoded."""
    if width < 1 or height < 1:
        raise UnsupportedInputError(f"the {what} has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise InputLimitError(
            f"the {what} is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{limits.max_pixels:,} ([limits] max_pixels): refused as a possible decompression "
            "bomb")
    total = width * height * max(1, frames) * max(1, samples)
    if total > limits.max_total_pixels:
        raise InputLimitError(
            f"the {what} holds {frames} frame(s) of {width}x{height}x{samples} = {total:,} "
            f"values, above the limit of {limits.max_total_pixels:,} ([limits] "
            "max_total_pixels)")
    if min(width, height) < limits.min_side:
        raise UnsupportedInputError(
            f"the {what} is only {width}x{height} pixels; an MR slice needs at least "
            f"{limits.min_side} pixels per side ([limits] min_side)")
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        raise UnsupportedInputError(
            f"the {what} is {width}x{height} pixels (aspect ratio {aspect:.0f}:1), not an MR "
            f"slice; the limit is {limits.max_aspect:g}:1 ([limits] max_aspect)")
