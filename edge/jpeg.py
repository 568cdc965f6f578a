"""Is a decoded JPEG whole? Checks for the damage that decoders hide.

libjpeg does not fail on a file whose compressed data stops early: it warns (a warning
Pillow does not pass on) and fills the missing blocks with zero coefficients, which decode
to flat mid-grey, 128 in every channel. A JPEG cut in half with its end marker put back, or
a header that claims 7000x7000 pixels over 512x512 of data, thus decodes "successfully" to a
picture whose tail is grey, and a model answers it confidently. Two checks catch that:

- **Baseline / sequential**: blocks are coded in raster order, so missing data is a run of
  flat-128 blocks at the *end* (bottom rows, then the right of the row above). A real scan
  never ends in an exactly-128 block after non-flat content (MR backgrounds are dark).
- **Progressive**: the picture is refined over several scans, each naming the coefficients
  and bit it carries. If the file stops before the last scans, some coefficient of some
  component is never coded down to its last bit. (A cut inside the final scan loses only
  the finest refinement of part of the picture and is not caught.)
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE_SOF = {0xC2, 0xC6, 0xCA, 0xCE}
_STANDALONE = {0x01, 0xD8} | set(range(0xD0, 0xD8))  # markers without a length field
_FLAT = 128  # what a block with no coded data decodes to
# More scans than this is refused before decoding (edge.images; edge.dicom for a JPEG or
# JPEG-LS frame): libjpeg's progressive scripts write 6 (gray) or 10 (colour), mozjpeg's
# optimised ones a few dozen at most, and every scan costs a pass over the whole picture.
MAX_SCANS = 100


@dataclass
class Scan:
    components: tuple[int, ...]
    start: int  # Ss: first coefficient (0 = DC)
    end: int  # Se: last coefficient
    low_bit: int  # Al: the bit position this scan brings the coefficients down to


@dataclass
class Structure:
    """What the marker segments of a JPEG say, without decoding any pixel."""

    width: int = 0
    height: int = 0
    progressive: bool = False
    components: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (h, v)
    scans: list[Scan] = field(default_factory=list)
    ended: bool = False  # an EOI marker was found


def read_structure(path: Path) -> Structure:
    """Walk the file's markers (entropy-coded data is skipped with a byte search)."""
    with open(str(path), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return Structure()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _walk(data, size)


def structure_of(data: bytes) -> Structure:
    """The same for a JPEG held in memory (a compressed DICOM frame), read from its start of
    image marker (looked for in the first MB, as ``edge.codestream`` looks for its size)."""
    start = data.find(b"\xff\xd8\xff", 0, 1 << 20)
    return _walk(data, len(data), max(start, 0))


def too_many_scans(info: Structure, what: str = "the JPEG") -> str:
    """Why a JPEG with more than ``MAX_SCANS`` scans is refused before decoding ("" if it has
    no more): libjpeg makes a pass over every block of the picture for each scan, so a 57 kB
    progressive JPEG that repeats one scan 2,000 times took 5.6 s to decode (a DICOM frame
    holding it 16 s), and a few MB of them would stall the agent for hours."""
    if len(info.scans) <= MAX_SCANS:
        return ""
    return (f"{what} has more than {MAX_SCANS} scans, where encoders write at most a few "
            "dozen; decoding it would take minutes or hours: refused as a possible "
            "decompression bomb")


def _walk(data: mmap.mmap | bytes, size: int, start: int = 0) -> Structure:
    info = Structure()
    pos = start + 2  # after SOI
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)  # garbage between segments: resynchronise
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:
            info.ended = True
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:pos + 2 + length]
        if marker in _SOF and len(segment) >= 6:
            info.progressive = marker in _PROGRESSIVE_SOF
            info.height = int.from_bytes(segment[1:3], "big")
            info.width = int.from_bytes(segment[3:5], "big")
            for i in range(min(segment[5], (len(segment) - 6) // 3)):
                ident, sampling = segment[6 + 3 * i], segment[7 + 3 * i]
                info.components[ident] = (sampling >> 4, sampling & 0x0F)
        pos += 2 + length
        if marker == 0xDA and len(segment) >= 1:
            count = segment[0]
            if len(segment) >= 1 + 2 * count + 3:
                ids = tuple(segment[1 + 2 * i] for i in range(count))
                ss, se, approx = segment[1 + 2 * count:4 + 2 * count]
                info.scans.append(Scan(ids, ss, se, approx & 0x0F))
                if len(info.scans) > MAX_SCANS:
                    break  # refused whatever follows (edge.images): stop reading
            pos = _end_of_entropy_data(data, pos, size)
    return info


def _end_of_entropy_data(data: mmap.mmap | bytes, pos: int, size: int) -> int:
    """The next marker after a scan's data: 0xFF followed by neither a byte below 0x80 (a
    stuffed byte: 0x00 in JPEG, a 0 bit in JPEG-LS) nor a restart marker."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= size:
            return size
        following = data[pos + 1]
        if following < 0x80 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1 if following == 0xFF else 2
            continue
        return pos


def missing_scans(info: Structure) -> int:
    """For a progressive JPEG: how many (component, coefficient) pairs are never coded down
    to their last bit. 0 when complete, or for a sequential JPEG."""
    if not info.progressive or not info.components:
        return 0
    done = {ident: np.zeros(64, bool) for ident in info.components}
    for scan in info.scans:
        if scan.low_bit != 0:
            continue
        for ident in scan.components:
            if ident in done:
                done[ident][scan.start:min(scan.end, 63) + 1] = True
    return int(sum((~flags).sum() for flags in done.values()))


def flat_tail_share(picture: Image.Image, info: Structure) -> float:
    """Share of the picture's blocks (MCUs, in coding order) that form a trailing run of
    exactly flat-128 blocks after non-flat content; 0.0 if there is none.

    Walks block rows from the bottom, one at a time, and stops at the first content: a
    whole picture costs one block row to check.
    """
    h_max = max((h for h, _ in info.components.values()), default=1) or 1
    v_max = max((v for _, v in info.components.values()), default=1) or 1
    if len(info.components) == 1:  # a single component is coded in 8x8 blocks
        h_max = v_max = 1
    bw, bh = 8 * h_max, 8 * v_max
    width, height = picture.size
    rows, cols = -(-height // bh), -(-width // bw)
    tail = 0
    for row in reversed(range(rows)):
        band = np.asarray(picture.crop((0, row * bh, cols * bw, (row + 1) * bh)))
        if band.ndim == 2:
            band = band[:, :, None]
        # crop pads outside the picture with 0: count those pixels as flat
        band = band.copy()
        band[max(0, height - row * bh):, :, :] = _FLAT
        band[:, width:, :] = _FLAT
        flat = (band.reshape(bh, cols, bw, -1) == _FLAT).all(axis=(0, 2, 3))
        if flat.all():
            tail += cols
            continue
        tail += cols - 1 - int(np.flatnonzero(~flat)[-1])
        return tail / (rows * cols)
    return 0.0  # flat everywhere: no content to have been cut from
