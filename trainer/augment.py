"""Optional training-time augmentation (off by default, as in the paper).

Pure numpy on float batches, drawn from a generator seeded by (seed, epoch, batch), so an
augmented run is as reproducible, and as resumable, as a plain one. The transforms are the
mild ones that keep an axial MR slice plausible: left-right flip, a shift of up to 8% of
the side, brightness/contrast jitter of up to 10%. No rotation: it would need
interpolation code that the device does not share.
"""

from __future__ import annotations

import numpy as np

MAX_SHIFT = 0.08
MAX_JITTER = 0.10


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate with zero fill (the background of a skull-stripped slice is black)."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    src_y, dst_y = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h),
                                                                       slice(0, h + dy))
    src_x, dst_x = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w),
                                                                       slice(0, w + dx))
    out[dst_y, dst_x] = image[src_y, src_x]
    return out


def augment_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomly flipped, shifted and intensity-jittered copies of float images in [0, 1]."""
    out = np.empty_like(images)
    h, w = images.shape[1:3]
    for i, image in enumerate(images):
        if rng.random() < 0.5:
            image = image[:, ::-1]
        dy = int(rng.integers(-int(MAX_SHIFT * h), int(MAX_SHIFT * h) + 1))
        dx = int(rng.integers(-int(MAX_SHIFT * w), int(MAX_SHIFT * w) + 1))
        image = _shift(image, dy, dx)
        contrast = 1.0 + rng.uniform(-MAX_JITTER, MAX_JITTER)
        brightness = rng.uniform(-MAX_JITTER, MAX_JITTER)
        out[i] = np.clip(image * contrast + brightness, 0.0, 1.0)
    return out
