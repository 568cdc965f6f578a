"""A picture and its mirror image: does averaging the two answers find more Br35H tumours?

    python docs/results/issue12/flip_probe.py ../shared/data/brain-tumor-mri [MODEL_DIR]

MODEL_DIR is a converted model (model.tflite + model.json; the shipped ``edge/models`` by
default). It classifies the official Testing split, its deduplicated subset
(docs/leakage/dedup_test.txt) and the external check (``../shared/data/br35h-tumour``)
through the device's runtime (``edge.runtime.TFLiteClassifier``, the converter's scoring
code), once as the agent does and once more with every preprocessed 224x224 input mirrored
left-right; the "mirror mean" is the mean of the two probabilities. One view, fixed before
it was measured (docs/results.md): nothing is fitted or chosen, so Br35H stays a check.

Prints a Markdown table: official, deduplicated and Br35H accuracy at the argmax answer, then
the ranking of ``matched_specificity.py`` (AUC; Br35H tumours found at 1, 3 and 10 false
alarms among the official no-tumour slices). Takes a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matched_specificity import FALSE_ALARMS, NEGATIVE, auc, found_at

from converters import datasets, external_check
from converters.evaluate import predict_batched
from edge.manifest import load_verified
from edge.runtime import TFLiteClassifier
from trainer.external import external_metrics
from trainer.metrics import compute_metrics

ROOT = Path(__file__).resolve().parents[3]
DEDUP = ROOT / "docs" / "leakage" / "dedup_test.txt"


def main(data: Path, model_dir: Path) -> None:
    manifest, path = load_verified(model_dir)
    labels = list(manifest.labels)
    spec = manifest.preprocess
    test = datasets.evaluation_set(data, "Testing", tuple(labels), spec, None, 0)
    dedup = datasets.dedup_indices(test, DEDUP, True)
    ext = external_check.load_sets((), True, labels, spec)[0]
    classifier = TFLiteClassifier(path, manifest)

    def probabilities(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        plain = predict_batched(classifier.predict, images, spec, "as is")
        mirrored = predict_batched(classifier.predict, images[:, :, ::-1], spec, "mirrored")
        return plain, (plain + mirrored) / 2

    official = probabilities(test.images)
    external = probabilities(ext.images)
    negative = labels.index(NEGATIVE)
    no_tumour = test.labels == negative
    tumour = np.asarray(ext.folders) == "tumour"
    print(f"| {manifest.name} {manifest.version}, int8 | official ({len(test.labels)}) "
          f"| deduplicated ({len(dedup)}) | {ext.name}: tumours found | AUC | "
          + " | ".join(f"found at {k} false alarm{'s' if k > 1 else ''}" for k in FALSE_ALARMS)
          + " | official no-tumour slices called a tumour |")
    print("|---|" + "---:|" * (5 + len(FALSE_ALARMS)))
    for name, p_test, p_ext in zip(("as the agent runs it", "mirror mean"),
                                   official, external, strict=True):
        acc = compute_metrics(test.labels, p_test, labels)["accuracy"]
        dd = compute_metrics(test.labels[dedup], p_test[dedup], labels)["accuracy"]
        ex = external_metrics(ext.targets, ext.folders, p_ext, labels)
        found = round(ex["tumour_sensitivity"] * ex["tumour_images"])
        neg, pos = p_test[no_tumour, negative], p_ext[tumour, negative]
        alarms = int((p_test[no_tumour].argmax(axis=1) != negative).sum())
        cells = " | ".join(str(found_at(neg, pos, k)) for k in FALSE_ALARMS)
        print(f"| {name} | {100 * acc:.2f} % | {100 * dd:.2f} % | {found} of "
              f"{ex['tumour_images']} ({100 * ex['tumour_sensitivity']:.1f} %) | "
              f"{auc(neg, pos):.4f} | {cells} | {alarms} of {int(no_tumour.sum())} |")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) == 3 else ROOT / "edge" / "models"))
