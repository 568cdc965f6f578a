"""Can the shipped model say where the tumour is, well enough to cut it out and paste it?

    python docs/results/issue12/lesion_localisation_probe.py ../shared/data/brain-tumor-mri \
        OUT_DIR [MODEL_DIR] [--per-class N]

A "copy-paste" recipe (a tumour cut from a tumour picture and pasted into a no-tumour
slice of another collection, labelled as the tumour) would give the network tumours in the
look, plane and sequence of the ``notumor`` collections, which is what it lacks
(docs/shortcuts.md). The data set has no lesion masks, so the paste would need the tumour's
place from somewhere; the only candidate here is the model itself, by occlusion.

For N random ``Training`` pictures of each tumour class (fixed generator), the model input
(224 x 224) is shown to the model again with a 48 x 48 black square at every 16-pixel step
(13 x 13 places); the place where the square weakens the "tumour, not notumor" margin most
(best tumour logit less the ``notumor`` logit) is drawn as a red square. Writes one contact
sheet per class (``OUT_DIR/<class>.png``: judge by eye whether each square lies on the
tumour; the images are the data set's, never commit them) and prints, per class, where the
squares lie (share in the lower third of the picture, where sagittal and coronal slices
show the skull base, the sella and the neck).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from edge.classifier import resolve_model_path  # noqa: E402
from edge.heatmap import answer_margin  # noqa: E402
from edge.manifest import load_verified  # noqa: E402
from edge.preprocess import scale  # noqa: E402
from edge.runtime import TFLiteClassifier  # noqa: E402
from trainer.data import load_split  # noqa: E402

SQUARE, STEP = 48, 16
TUMOURS = ("glioma", "meningioma", "pituitary")


def strongest_square(pixels: np.ndarray, margin) -> tuple[float, int, int]:
    """(margin fall, top, left) of the square whose blacking-out weakens ``margin`` most."""
    base = margin(pixels)
    best = (-np.inf, 0, 0)
    height, width = pixels.shape[:2]
    for top in range(0, height - SQUARE + 1, STEP):
        for left in range(0, width - SQUARE + 1, STEP):
            covered = pixels.copy()
            covered[top:top + SQUARE, left:left + SQUARE] = 0
            fall = base - margin(covered)
            if fall > best[0]:
                best = (fall, top, left)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--per-class", type=int, default=24)
    args = parser.parse_args()

    manifest, model_path = load_verified(resolve_model_path(args.model))
    classifier = TFLiteClassifier(model_path, manifest)
    spec, labels = manifest.preprocess, list(manifest.labels)
    negative = labels.index("notumor")
    data = load_split(args.data, "Training", spec)
    classes = np.array([path.split("/")[1] for path in data.paths])
    rng = np.random.default_rng(0)

    def margin(pixels: np.ndarray) -> float:  # "tumour, not notumor": the notumor margin, negated
        probabilities, outputs = classifier.predict_with_outputs(scale(pixels, spec))
        return -answer_margin(probabilities, outputs, negative)

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{manifest.name} {manifest.version}: where a {SQUARE}-pixel black square weakens "
          f"'tumour, not notumor' most ({args.per_class} Training pictures a class)")
    print("| class | squares in the lower third | median centre height (0 top, 1 bottom) |")
    print("|---|---:|---:|")
    for name in TUMOURS:
        picks = rng.choice(np.flatnonzero(classes == name), args.per_class, replace=False)
        tiles, heights = [], []
        for i in picks:
            pixels = data.images[i]
            fall, top, left = strongest_square(pixels, margin)
            heights.append((top + SQUARE / 2) / pixels.shape[0])
            tile = Image.fromarray(pixels).convert("RGB")
            draw = ImageDraw.Draw(tile)
            draw.rectangle([left, top, left + SQUARE, top + SQUARE], outline=(255, 0, 0),
                           width=2)
            draw.text((3, 3), f"{Path(data.paths[i]).name} {fall:.1f}", fill=(255, 255, 0))
            tiles.append(tile)
        columns = 8
        sheet = Image.new("RGB", (224 * columns, 224 * -(-len(tiles) // columns)))
        for k, tile in enumerate(tiles):
            sheet.paste(tile, ((k % columns) * 224, (k // columns) * 224))
        sheet.save(args.out / f"{name}.png")
        heights = np.array(heights)
        print(f"| {name} | {np.mean(heights > 2 / 3):.0%} | {np.median(heights):.2f} |")


if __name__ == "__main__":
    main()
