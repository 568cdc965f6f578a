"""PNG/JPEG decoding, recognition by content, and every kind of bad file."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import gray_png, pydicom_file
from PIL import Image

from edge.config import DicomConfig, LimitsConfig
from edge.errors import DecodeError, InputLimitError, UnsupportedInputError
from edge.inputs import decode_file, sniff

DEFAULT_LIMITS = LimitsConfig()


def decode(path: Path, limits: LimitsConfig = DEFAULT_LIMITS):
    return decode_file(path, DicomConfig(), limits)


def test_png_gray_and_16bit(tmp_path):
    result = decode(gray_png(tmp_path / "a.png", 77))
    assert result.kind == "png" and result.picture.mode == "L"
    assert np.asarray(result.picture).max() == 77
    values = np.linspace(1000, 5000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(values).save(str(tmp_path / "b.png"))
    wide = decode(tmp_path / "b.png")
    assert np.asarray(wide.picture).min() == 0 and np.asarray(wide.picture).max() == 255
    assert any("16-bit" in n for n in wide.notes)


def test_jpeg_and_rgba_png(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 2] = 255
    Image.fromarray(rgb).save(str(tmp_path / "c.jpg"), quality=95)
    result = decode(tmp_path / "c.jpg")
    assert result.kind == "jpeg" and result.picture.mode == "RGB"
    assert any("colour" in n for n in result.notes)
    gray_rgb = np.repeat(np.full((64, 64, 1), 90, np.uint8), 3, axis=2)
    Image.fromarray(gray_rgb).save(str(tmp_path / "g.jpg"))
    assert not decode(tmp_path / "g.jpg").notes  # grayscale saved as RGB: no colour note
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(str(tmp_path / "d.png"))
    assert decode(tmp_path / "d.png").picture.mode == "RGB"


def test_extension_is_ignored_content_decides(tmp_path):
    png_named_jpg = gray_png(tmp_path / "really_a_png.jpg", 10)
    assert decode(png_named_jpg).kind == "png"
    dicom_named_png = tmp_path / "scan.png"
    dicom_named_png.write_bytes(pydicom_file("MR_small.dcm").read_bytes())
    assert decode(dicom_named_png).kind == "dicom"
    no_ext = tmp_path / "IM0001"
    no_ext.write_bytes(pydicom_file("MR_small.dcm").read_bytes())
    assert decode(no_ext).kind == "dicom"


def test_sniff():
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff(b"\0" * 128 + b"DICM" + b"\0" * 8) == "dicom"
    assert sniff(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100") == "dicom-raw"
    assert sniff(b"hello world, this is text") is None


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(UnsupportedInputError, match="empty"):
        decode(tmp_path / "empty.dcm")


@pytest.mark.parametrize("content, what", [
    (b"Patient notes: not an image\n" * 10, "text file"),
    (b"%PDF-1.4\n%binary", "PDF document"),
    (b"PK\x03\x04" + b"\0" * 100, "ZIP archive"),
    (b"GIF89a" + b"\0" * 100, "GIF image"),
    (bytes(range(256)) * 4, "not a recognised image format"),
])
def test_non_images_are_refused_with_what_they_are(tmp_path, content, what):
    path = tmp_path / "file.dcm"
    path.write_bytes(content)
    with pytest.raises(UnsupportedInputError, match=what):
        decode(path)


def test_dcm_named_file_with_garbage_after_dicm_is_a_decode_error(tmp_path):
    path = tmp_path / "bad.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 200)
    with pytest.raises(DecodeError):
        decode(path)


def test_truncated_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (128, 128), dtype=np.uint8)
    for name, fmt in (("t.png", "PNG"), ("t.jpg", "JPEG")):
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format=fmt)
        data = buffer.getvalue()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(DecodeError, match="(?i)truncated|cannot be decoded"):
            decode(tmp_path / name)


def test_corrupt_png_checksum(tmp_path):
    path = gray_png(tmp_path / "c.png", 50)
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # flip compressed bits: CRC and zlib both break
    path.write_bytes(bytes(data))
    with pytest.raises(DecodeError):
        decode(path)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_png_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(100000, 100000))  # 10 gigapixels in ~100 bytes
    with pytest.raises(InputLimitError, match="decompression bomb"):
        decode(bomb)
    small_limit = LimitsConfig(max_pixels=1000)
    with pytest.raises(InputLimitError, match="max_pixels"):
        decode(gray_png(tmp_path / "ok.png", 1, size=64), small_limit)


def test_absurd_png_dimensions(tmp_path):
    Image.fromarray(np.zeros((4, 400), np.uint8)).save(str(tmp_path / "line.png"))
    with pytest.raises(UnsupportedInputError, match="at least 16|aspect"):
        decode(tmp_path / "line.png")


def test_file_size_limit(tmp_path):
    path = gray_png(tmp_path / "big.png", 3, size=256)
    with pytest.raises(InputLimitError, match="max_file_mb"):
        decode(path, LimitsConfig(max_file_mb=0.0001))
