"""Image size declared inside a compressed DICOM frame, read without decoding it.

A compressed frame carries its own width and height (JPEG's SOF segment, JPEG-LS's SOF55,
JPEG 2000's SIZ marker). Decoders allocate from those, not from the DICOM Rows/Columns, so
a small DICOM header can hide a gigantic frame: a decompression bomb. Comparing the two
before decoding closes that hole.
"""

from __future__ import annotations

# JPEG start-of-frame markers (not DHT C4, JPG C8, DAC CC), plus JPEG-LS SOF55 (F7).
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF,
                0xF7}
_SCAN_LIMIT = 1 << 20


def first_fragment(pixel_data: bytes) -> bytes:
    """The first fragment of encapsulated pixel data (after the Basic Offset Table item).

    Encapsulated data is a sequence of items, each ``FFFE,E000`` + 32-bit little-endian
    length + bytes. The frame's header (SOF / SIZ) sits at the start of its first fragment.
    """
    pos, items = 0, 0
    while pos + 8 <= len(pixel_data):
        tag = pixel_data[pos:pos + 4]
        length = int.from_bytes(pixel_data[pos + 4:pos + 8], "little")
        if tag != b"\xfe\xff\x00\xe0" or length == 0xFFFFFFFF:
            break
        if items == 1:  # item 0 is the offset table
            return pixel_data[pos + 8:pos + 8 + length]
        items += 1
        pos += 8 + length
    return pixel_data


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the first JPEG, JPEG-LS or JPEG 2000 frame in ``data``, if found."""
    head = data[:_SCAN_LIMIT]
    soi = head.find(b"\xff\xd8\xff")
    soc = head.find(b"\xff\x4f\xff\x51")
    if soc >= 0 and (soi < 0 or soc < soi):
        return _j2k_size(head, soc + 4)
    if soi >= 0:
        return _jpeg_size(head, soi + 2)
    return None


def _jpeg_size(data: bytes, pos: int) -> tuple[int, int] | None:
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF_MARKERS:
            if pos + 9 > n:
                return None
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return width, height
        if marker == 0xDA or length < 2:  # start of scan before any SOF: give up
            return None
        pos += 2 + length
    return None


def _j2k_size(data: bytes, pos: int) -> tuple[int, int] | None:
    # SIZ: Lsiz(2) Rsiz(2) Xsiz(4) Ysiz(4) XOsiz(4) YOsiz(4)
    if pos + 20 > len(data):
        return None
    x = int.from_bytes(data[pos + 4:pos + 8], "big")
    y = int.from_bytes(data[pos + 8:pos + 12], "big")
    xo = int.from_bytes(data[pos + 12:pos + 16], "big")
    yo = int.from_bytes(data[pos + 16:pos + 20], "big")
    return max(0, x - xo), max(0, y - yo)
