"""A tiny class-folder data set the trainer tests make themselves (PNG and JPEG).

Four classes, each a bright square in its own quadrant of a noisy dark picture: easy for
any working model, impossible for a collapsed one (chance is 25%).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def picture(label: int, rng: np.random.Generator, size: tuple[int, int] = (40, 48)) -> Image.Image:
    height, width = size
    pixels = rng.integers(0, 70, size=(height, width)).astype(np.uint8)
    row, col = divmod(label, 2)
    top, left = row * height // 2, col * width // 2
    pixels[top + 3:top + height // 2 - 3, left + 3:left + width // 2 - 3] += 150
    return Image.fromarray(pixels, mode="L")


def make_dataset(root: Path, train_per_class: int = 24, test_per_class: int = 8,
                 seed: int = 0) -> Path:
    """Write DIR/Training/<class>/ and DIR/Testing/<class>/; every third picture is RGB,
    every other one a JPEG."""
    from converters.testing import write_class_folders

    def save(stem: Path, label: int, i: int, rng: np.random.Generator) -> None:
        image = picture(label, rng)
        if i % 3 == 2:
            image = image.convert("RGB")
        if i % 2:
            image.save(f"{stem}.png")
        else:
            image.save(f"{stem}.jpg", quality=95)

    return write_class_folders(root, CLASSES, train_per_class, test_per_class, seed, save)
