"""Where the shipped model's heat-map peaks, by answered class, over the official Testing split.

    python docs/results/issue13/heatmap_peaks.py ../shared/data/brain-tumor-mri [MODEL_DIR] [KIND]

Runs every picture through the agent's own path (``edge.inputs.decode_file``, then
``edge.classifier.Classifier`` with the default configuration, heat-map ``KIND``: "model",
the model's own class activation map, by default, as in the recorded tables; "occlusion",
the agent's default since 2026-12-05, 49 more runs a picture) and counts, per answered
class, how often the heat-map's highest cell lies on the map's outer ring (the picture's
margin: for a 7 x 7 map, 24 of the 49 cells) and in the left-most column, and the most
common peak cell; then what the pictures hold in the glioma answers' most common peak cell,
by true class (mean grey level and its spread inside the cell). Prints Markdown tables.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from edge.classifier import Classifier
from edge.config import AgentConfig


def main(data: Path, model: str | None, kind: str = "model") -> None:
    from edge.inputs import decode_file

    config = AgentConfig() if model is None else AgentConfig().override("paths", model=model)
    classifier = Classifier(config)
    from edge.preprocess import resize_uint8

    cells: dict[str, list[tuple[int, int]]] = defaultdict(list)
    pictures: dict[str, list[np.ndarray]] = defaultdict(list)
    size = None
    for path in sorted((data / "Testing").glob("*/*")):
        decoded = decode_file(path, config.dicom, config.limits)
        pictures[path.parent.name].append(
            resize_uint8(decoded.picture, classifier.manifest.preprocess).mean(axis=2))
        prediction = classifier.classify(decoded, heatmap=kind)
        heat = prediction.heatmap
        size = heat.shape
        r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
        cells[prediction.label].append((int(r), int(c)))
    rows, cols = size
    print(f"Model {classifier.manifest.name} {classifier.manifest.version}, heat-map "
          f"{classifier.trust.heatmap_kind}, {rows} x {cols} cells\n")
    print("| answered | pictures | peak on the outer ring | peak in the left-most column "
          "| most common peak cell (row, column), share |")
    print("|---|---:|---:|---:|---|")
    for label in classifier.labels:
        found = cells.get(label, [])
        if not found:
            continue
        ring = sum(r in (0, rows - 1) or c in (0, cols - 1) for r, c in found) / len(found)
        left = sum(c == 0 for _, c in found) / len(found)
        (cell, count), = Counter(found).most_common(1)
        print(f"| {label} | {len(found)} | {ring:.0%} | {left:.0%} | {cell}, "
              f"{count / len(found):.0%} |")
    print(f"\n(The outer ring is {(2 * rows + 2 * cols - 4) / (rows * cols):.0%} of the cells.)")
    if "glioma" not in cells:
        return
    (r, c), _ = Counter(cells["glioma"]).most_common(1)[0]
    height, width = pictures[next(iter(pictures))][0].shape
    top, left = r * height // rows, c * width // cols
    bottom, right = (r + 1) * height // rows, (c + 1) * width // cols
    print(f"\nPixels {top}-{bottom - 1} (rows) x {left}-{right - 1} (columns) of the "
          f"{height} x {width} picture, cell {(r, c)}, by true class:\n")
    print("| true class | pictures | mean grey level (0-255) | spread inside the cell (std) |")
    print("|---|---:|---:|---:|")
    for label in classifier.labels:
        if label in pictures:
            patch = np.stack(pictures[label])[:, top:bottom, left:right]
            print(f"| {label} | {len(patch)} | {patch.mean():.1f} | "
                  f"{patch.std(axis=(1, 2)).mean():.1f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None,
         sys.argv[3] if len(sys.argv) > 3 else "model")
