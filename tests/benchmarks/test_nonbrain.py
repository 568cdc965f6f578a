"""The non-brain pictures of ``python -m benchmarks trust``: distinct pictures, not files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmarks.nonbrain import _seen_before, _thumbnail


def _picture(seed: int, dark: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4 if dark else 255, (96, 96), dtype=np.uint8)
    return Image.fromarray(values).resize((192, 192), Image.BILINEAR)


def test_a_lossy_copy_is_the_same_picture_and_two_dark_pictures_are_not():
    original = _picture(0)
    noisy = np.asarray(original, dtype=np.int16) + np.random.default_rng(1).integers(
        -2, 3, (192, 192))
    copy = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))  # a lossy re-encoding
    seen = [_thumbnail(original)]
    assert _seen_before(_thumbnail(copy), seen)
    assert not _seen_before(_thumbnail(_picture(2)), seen)
    # two nearly black pictures (segmentation masks) are close in grey levels, not the same
    dark = [_thumbnail(_picture(3, dark=True))]
    assert not _seen_before(_thumbnail(_picture(4, dark=True)), dark)
    assert _seen_before(_thumbnail(_picture(3, dark=True)), dark)


def test_pydicom_data_brings_x_rays_into_the_set():
    pytest.importorskip("data_store", reason="pydicom-data (the dev extra) is not installed")
    from benchmarks.nonbrain import pydicom_pictures

    groups = {group for group, _, _ in pydicom_pictures()}
    assert {"X-ray", "CT", "ultrasound"} <= groups
