"""Would averaging several trained models find more of the external tumours? A measurement.

    python docs/results/issue12/ensemble_probe.py ../shared/data/brain-tumor-mri MODEL_DIR ...

Each MODEL_DIR is a converted model (model.tflite + model.json, e.g. earlier shipped
versions: ``git show 1cf057c:edge/models/model.tflite``). Every model classifies the
official Testing split, its deduplicated subset (docs/leakage/dedup_test.txt) and the
external check (``../shared/data/br35h-tumour`` by default) through the device's runtime
(``edge.runtime.TFLiteClassifier``, the converter's scoring code); then the same for the
mean of their probabilities ("ensemble"). Nothing is fitted: the ensemble is a plain mean,
so the external check stays a check.

A table in Markdown goes to stdout, then how many external tumour pictures every model
misses (systematic misses, which averaging cannot fix) and how many at least one misses.
The ensemble's runtime cost is the sum of its members'.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

from converters import datasets, external_check
from converters.evaluate import predict_batched
from edge.manifest import load_verified
from edge.runtime import TFLiteClassifier
from trainer.external import external_metrics
from trainer.metrics import compute_metrics

DEDUP = Path(__file__).resolve().parents[2] / "leakage" / "dedup_test.txt"


def main(data: Path, model_dirs: list[Path]) -> None:
    loaded = [load_verified(d) for d in model_dirs]
    labels = tuple(loaded[0][0].labels)
    spec = loaded[0][0].preprocess
    for manifest, _ in loaded[1:]:
        if tuple(manifest.labels) != labels or manifest.preprocess != spec:
            sys.exit(f"{manifest.name} has other labels or preprocessing than "
                     f"{loaded[0][0].name}: they cannot be averaged")
    test = datasets.evaluation_set(data, "Testing", labels, spec, None, 0)
    dedup = datasets.dedup_indices(test, DEDUP, True)
    ext = external_check.load_sets((), True, labels, spec)[0]
    quant = loaded[0][0].quantization
    official, external = [], []
    for manifest, path in loaded:
        classifier = TFLiteClassifier(path, manifest)
        official.append(predict_batched(classifier.predict, test.images, spec, quant))
        external.append(predict_batched(classifier.predict, ext.images, spec, quant))

    def row(name: str, p_test: np.ndarray, p_ext: np.ndarray) -> str:
        acc = compute_metrics(test.labels, p_test, list(labels))["accuracy"]
        dd = compute_metrics(test.labels[dedup], p_test[dedup], list(labels))["accuracy"]
        ex = external_metrics(ext.targets, ext.folders, p_ext, list(labels))
        found = round(ex["tumour_sensitivity"] * ex["tumour_images"])
        lo, hi = ex["tumour_sensitivity_ci95"]
        sensitivity = 100 * ex["tumour_sensitivity"]
        return (f"| {name} | {100 * acc:.2f} | {100 * dd:.2f} | {sensitivity:.2f}"
                f" ({found} of {ex['tumour_images']}; CI {100 * lo:.1f}-{100 * hi:.1f}) |")

    names = [f"{m.name} {m.version}" for m, _ in loaded]
    print(f"| model | official ({len(test.labels)}) | deduplicated ({len(dedup)}) | "
          f"{ext.name} tumour sensitivity |")
    print("|---|---:|---:|---:|")
    for name, p_test, p_ext in zip(names, official, external, strict=True):
        print(row(name, p_test, p_ext))
    for k in range(2, len(loaded) + 1):
        for members in itertools.combinations(range(len(loaded)), k):
            label = "mean of " + " + ".join(names[i].split()[-1] for i in members)
            print(row(label, np.mean([official[i] for i in members], axis=0),
                      np.mean([external[i] for i in members], axis=0)))
    negative = labels.index("notumor")
    tumour = ext.targets != negative
    missed = np.stack([p.argmax(axis=1) == negative for p in external])[:, tumour]
    print(f"\n{ext.name}: of {int(tumour.sum())} tumour pictures, "
          f"{int(missed.all(axis=0).sum())} are called notumor by every model, "
          f"{int(missed.any(axis=0).sum())} by at least one "
          f"(per model: {', '.join(str(int(m.sum())) for m in missed)}).")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]])
