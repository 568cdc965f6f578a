"""How far a data pack's lossy WebP copies are from the pictures training decodes.

    python docs/results/pack_quality.py ../shared/data/brain-tumor-mri [QUALITY ...]

For 300 pictures drawn at random (seed 0) from Training and Testing, the mean absolute
difference in grey levels (of 255) between the 224x224 picture training decodes and its
WebP copy at each quality (method 6, as ``python -m trainer pack`` writes it): the mean
over pictures and the 95th percentile.
"""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from edge.preprocess import DEFAULT_SPEC, resize_uint8


def main(data: str, qualities: list[int]) -> None:
    files = sorted(Path(data).glob("*/*/*.jpg"))
    if not files:
        sys.exit(f"error: no Training/<class>/*.jpg or Testing/<class>/*.jpg under {data}")
    random.seed(0)
    files = random.sample(files, min(300, len(files)))
    pictures = []
    for path in files:
        with Image.open(path) as image:
            image.load()
            pictures.append(resize_uint8(image, DEFAULT_SPEC)[..., 0])
    print(f"{'quality':>7} {'mean error':>10} {'95th pct':>9}  ({len(pictures)} pictures)")
    for quality in qualities:
        errors = []
        for pixels in pictures:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "WEBP", quality=quality, method=6)
            back = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), np.float32)
            errors.append(float(np.abs(back - pixels.astype(np.float32)).mean()))
        print(f"{quality:>7} {np.mean(errors):>10.2f} {np.percentile(errors, 95):>9.2f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], [int(q) for q in sys.argv[2:]] or [85, 80, 75])
