"""What an input file is (by content, never by name) and how it becomes a picture.

The agent accepts PNG, JPEG and DICOM. The file name's extension is ignored: scanners export
DICOM files without one (``IM0001``), and a ``.jpg`` may really be a PNG. Everything else
is refused with a message that says what the file is and what to send instead.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .config import DicomConfig, LimitsConfig
from .decoded import DecodedImage, read_head
from .errors import InputLimitError, UnsupportedInputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DICOM_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO",
              b"LT", b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ",
              b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT",
              b"UV"}
# Formats we recognise only to refuse them with a precise message.
_OTHER_FORMATS = (
    (b"GIF8", "a GIF image"), (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"), (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
)
SUPPORTED = "PNG, JPEG or DICOM"


def sniff(head: bytes) -> str | None:
    """'png', 'jpeg', 'dicom' (with the DICM preamble), 'dicom-raw' (without) or None."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if _looks_like_raw_dicom(head):
        return "dicom-raw"
    return None


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM data set without preamble: its first element is from group 0002 or 0008."""
    if len(head) < 12:
        return False
    for order in ("little", "big"):
        group = int.from_bytes(head[0:2], order)
        element = int.from_bytes(head[2:4], order)
        if group not in (0x0002, 0x0008) or element > 0x00FF:
            continue
        if head[4:6] in _DICOM_VRS:  # explicit VR
            return True
        if order == "little" and int.from_bytes(head[4:8], "little") < 0x10000:  # implicit VR
            return True
    return False


def describe_unknown(head: bytes) -> str:
    for magic, what in _OTHER_FORMATS:
        if head.startswith(magic):
            return what
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    sample = head[:512]
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return "a text file"
    return "not a recognised image format"


def check_regular_file(path: Path) -> None:
    """Refuse what is not a regular file: reading a FIFO blocks until someone writes to it,
    and a device such as /dev/zero never ends."""
    mode = os.stat(str(path)).st_mode
    if not stat.S_ISREG(mode):
        what = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
                "a socket" if stat.S_ISSOCK(mode) else
                "a folder" if stat.S_ISDIR(mode) else "a special file")
        raise UnsupportedInputError(f"not a regular file: this is {what}; only image files "
                                    "are read")


def decode_file(path: Path, dicom: DicomConfig, limits: LimitsConfig) -> DecodedImage:
    """Decode any accepted input; raise ``UnsupportedInputError`` (or a subclass) otherwise."""
    size = os.lstat(str(path)).st_size
    if size == 0:
        raise UnsupportedInputError(
            "the file is empty (0 bytes): the copy probably failed; copy the scan again")
    if size > limits.max_file_mb * 1024 * 1024:
        raise InputLimitError.file_too_large(size, limits.max_file_mb)
    head = read_head(path)
    kind = sniff(head)
    if kind in ("png", "jpeg"):
        from .images import decode_picture
        return decode_picture(path, kind, limits)
    if kind in ("dicom", "dicom-raw"):
        if kind == "dicom-raw" and not dicom.allow_no_preamble:
            raise UnsupportedInputError(
                "the file looks like a DICOM data set without the 128-byte preamble and 'DICM' "
                "marker, and [dicom] allow_no_preamble is false; re-export it as a DICOM Part 10 "
                "file")
        from .dicom import decode_dicom
        return decode_dicom(path, preamble=(kind == "dicom"), dicom=dicom, limits=limits)
    raise UnsupportedInputError(
        f"the file is {describe_unknown(head)}, not a {SUPPORTED} file (recognised by content, "
        f"not by name); export the scan as {SUPPORTED}")
