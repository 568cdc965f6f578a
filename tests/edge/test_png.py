"""``edge.png``: the report pictures' encoder, and the table-driven heat-map blend."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edge import heatmap, png


@pytest.mark.parametrize("shape", [(224, 224), (224, 224, 1), (37, 5, 3), (1, 1, 3), (9, 4, 2),
                                   (6, 7, 4), (1, 300)])
def test_any_png_reader_gets_the_same_pixels_back(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = png.encode(pixels)
    assert data.startswith(png.SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # checks every chunk's CRC and the zlib stream
        decoded = np.asarray(image)
    assert decoded.shape == (shape[:2] if shape[-1] == 1 and len(shape) == 3 else shape)
    assert (decoded.reshape(shape) == pixels).all()


def test_a_picture_it_cannot_write_is_refused_with_what_it_got():
    with pytest.raises(ValueError, match="uint8"):
        png.encode(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="1 to 4 channels, got 5"):
        png.encode(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        png.encode(np.zeros((0, 4), np.uint8))


def _blend_by_formula(picture, heat, strength=0.55):
    """The blend as plain arithmetic (how the tables are defined)."""
    level = np.rint(np.clip(heatmap.resize_map(heat, *picture.shape[:2]), 0, 1) * 255)
    level = level.astype(np.uint8)
    alpha = np.rint(256 * strength * np.linspace(0.0, 1.0, 256) ** 2).astype(np.uint16)
    a = alpha[level][..., None]
    return ((picture.astype(np.uint16) * (256 - a) + heatmap._LUT[level] * a) >> 8).astype(
        np.uint8)


@pytest.mark.parametrize("grey", [True, False])
def test_the_blend_tables_give_exactly_the_arithmetic_blend(grey):
    rng = np.random.default_rng(7)
    picture = rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)
    if grey:
        picture[..., 1] = picture[..., 2] = picture[..., 0]
    heat = rng.random((7, 7))
    for strength in (0.55, 0.2):
        assert (heatmap.overlay(picture, heat, strength)
                == _blend_by_formula(picture, heat, strength)).all()
    if grey:  # a one-channel picture is drawn as its RGB copy is
        assert (heatmap.overlay(picture[..., 0], heat)
                == heatmap.overlay(picture, heat)).all()
