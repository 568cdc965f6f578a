"""What the ``lesion`` recipe draws: a contact sheet of synthetic lesions in no-tumour slices.

    python docs/results/issue12/lesion_sheet.py ../shared/data/brain-tumor-mri OUT.png \
        [--pictures 24] [--seed 0]

Takes N random ``Training/notumor`` pictures (fixed generator), as the trainer holds them
(224 x 224, from its cache), and draws one lesion into each with ``trainer.lesions`` exactly
as training does before the strong policy's warps (``synthetic_lesion`` on the grey picture);
writes each pair side by side, the drawn one on the right with its kind in the corner, and
prints how many pictures had room for a lesion and which kinds were drawn. Judge by eye
whether the lesions look like lesions and lie in the brain; the images are the data set's,
never commit the sheet.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from edge.preprocess import DEFAULT_SPEC  # noqa: E402
from trainer.data import load_split  # noqa: E402
from trainer.lesions import synthetic_lesion  # noqa: E402

COLUMNS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pictures", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    training = load_split(args.data, "Training", DEFAULT_SPEC)
    notumor = np.flatnonzero(training.labels == training.class_names.index("notumor"))
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(notumor, size=min(args.pictures, len(notumor)), replace=False)
    kinds: Counter[str] = Counter()
    tiles = []
    for i in picks:
        grey = training.images[i].mean(axis=2).astype(np.float32) / 255
        drawn = synthetic_lesion(grey, rng)
        painted = grey if drawn is None else drawn[0]
        kinds[drawn[1].kind if drawn else "no room"] += 1
        pair = np.concatenate([grey, painted], axis=1)
        tile = Image.fromarray((pair * 255 + 0.5).astype(np.uint8)).convert("RGB")
        ImageDraw.Draw(tile).text((grey.shape[1] + 3, 3), drawn[1].kind if drawn else "no room",
                                  fill=(255, 64, 64))
        tiles.append(tile)
    width, height = tiles[0].size
    rows = -(-len(tiles) // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * width, rows * height))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % COLUMNS) * width, (k // COLUMNS) * height))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"{len(picks)} notumor pictures, {len(picks) - kinds['no room']} with a lesion: "
          + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())))
    print(f"sheet: {args.out} (the data set's images: do not commit it)")


if __name__ == "__main__":
    main()
