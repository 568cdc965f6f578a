"""Does the heat-map show what the answer needs? An input-space check, over the Testing split.

    python docs/results/issue13/heatmap_faithfulness.py ../shared/data/brain-tumor-mri [MODEL_DIR]

For every Testing picture (the agent's own path: ``edge.inputs.decode_file``, the model's
preprocessing, default configuration) it computes four 7 x 7 maps of the answered class:

- the model's own class activation map as the agent drew it before 2026-12-05 (``[report]
  heatmap = "model"``: the feature map weighted by the answer's classifier weights, less that
  class's mean map over the training pictures);
- the same without the mean map (the raw class activation map);
- the contrastive map (weights of the answer less those of the runner-up);
- the occlusion map the agent draws now (``edge.heatmap.occlusion_map``: how much the
  answer's logit margin over the runner-up falls when each 32 x 32 cell is blacked out).

and, per answered class: how often each map peaks in the left-most column and on the outer
ring, how much the margin falls when the map's peak cell is blacked out (mean), and the rank
correlation (Spearman) of the map with the occlusion map. A map whose peak cell can be
blacked out without the answer noticing shows where the answer is not made.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from edge.classifier import Classifier
from edge.config import AgentConfig
from edge.heatmap import answer_margin, occlusion_map
from edge.inputs import decode_file
from edge.preprocess import resize_uint8, scale


def main(data: Path, model: str | None) -> None:
    config = AgentConfig().override("report", heatmap="none")
    if model is not None:
        config = config.override("paths", model=model)
    classifier = Classifier(config)
    if classifier.trust.heatmap_kind != "class_activation":
        sys.exit(f"{classifier.manifest.name} has no class activation map to compare")
    weights, baseline = classifier.trust.class_activation
    spec = classifier.manifest.preprocess
    run = classifier._model.predict_with_outputs  # noqa: SLF001 - a measurement of the model
    rows: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted((data / "Testing").glob("*/*")):
        decoded = decode_file(path, config.dicom, config.limits)
        pixels = resize_uint8(decoded.picture, spec)
        probs, outputs = run(scale(pixels, spec))
        logits = outputs["logits"].reshape(-1)
        a, b = (int(i) for i in np.argsort(-logits)[:2])
        label = classifier.labels[a]
        fmap = outputs[classifier.trust.heatmap_output].reshape(*baseline.shape[:2], -1)

        def margin(picture: np.ndarray, a: int = a) -> float:
            return answer_margin(*run(scale(picture, spec)), a)

        base = margin(pixels)
        occlusion, _ = occlusion_map(pixels, margin)
        maps = {"model's own (class activation less its training mean; before)":
                fmap @ weights[:, a] - baseline[..., a],
                "raw class activation": fmap @ weights[:, a],
                "contrastive (answer less runner-up)": fmap @ (weights[:, a] - weights[:, b]),
                "occlusion (the agent's default now)": occlusion}
        height, width = pixels.shape[:2]
        for name, heat in maps.items():
            n_rows, n_cols = heat.shape
            r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
            blacked = pixels.copy()
            blacked[r * height // n_rows:(r + 1) * height // n_rows,
                    c * width // n_cols:(c + 1) * width // n_cols] = 0
            row = rows[(label, name)]
            row["left"].append(c == 0)
            row["ring"].append(r in (0, n_rows - 1) or c in (0, n_cols - 1))
            row["fall"].append(base - margin(blacked))
            if name.startswith("occlusion"):
                row["rank"].append(1.0)
            elif np.ptp(occlusion) > 0:
                row["rank"].append(float(spearmanr(heat.ravel(), occlusion.ravel()).statistic))
    print(f"Model {classifier.manifest.name} {classifier.manifest.version}, Testing split, "
          f"margin = answer's logit less the runner-up's\n")
    print("| answered | map | pictures | peak in the left-most column | peak on the outer ring "
          "| margin fall when its peak cell is blacked out (mean) | Spearman with occlusion "
          "(mean) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (label, name), row in rows.items():
        print(f"| {label} | {name} | {len(row['left'])} | {np.mean(row['left']):.0%} | "
              f"{np.mean(row['ring']):.0%} | {np.mean(row['fall']):.3f} | "
              f"{np.mean(row['rank']):.2f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
