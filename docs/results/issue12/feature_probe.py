"""What the shipped model's image features say about the Br35H tumours it misses.

    python docs/results/issue12/feature_probe.py ../shared/data/brain-tumor-mri [MODEL_DIR]

Through the device's runtime, the model's 512 ``features`` (the pooled image features its
last layer reads) for every Training and Testing picture and every Br35H tumour picture.

1. **Neighbours**: for each Br35H tumour picture, the 10 training pictures with the most
   similar features (cosine); their classes, for the pictures the model calls "notumor"
   and for those it finds, and whether those neighbours are stored at 256 x 256 (the
   figshare collection's 512-pixel originals, shrunk) or at another size (the web-collected
   sources: Br35H, SARTAJ).
2. **Last-layer re-training** (Kirichenko et al., "Last layer re-training is sufficient for
   robustness to spurious correlations", 2023): a new 4-class logistic head on the frozen
   features, fitted on the run's validation pictures (features never trained on them) or
   its training pictures, uniform or with every (plane, class) group given the same total
   weight (planes from docs/planes/training_planes.csv). Each head is scored on Testing,
   its deduplicated subset and Br35H. A diagnostic: if no head finds the missed tumours,
   the features do not hold what would tell them apart, and only training the features
   can help. No head is chosen by its Br35H figure, and none is shipped.

The run's split is recomputed (trainer.data.stratified_split) with the seed and validation
share its run used, from the manifest's provenance (else seed 0, 10 %).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from edge.classifier import resolve_model_path  # noqa: E402
from edge.manifest import load_verified  # noqa: E402
from edge.preprocess import scale  # noqa: E402
from edge.runtime import TFLiteClassifier  # noqa: E402
from trainer.data import load_split, stratified_split  # noqa: E402
from trainer.external import default_external_dirs, load_external  # noqa: E402
from trainer.planes import DEFAULT_PLANES, read_planes  # noqa: E402


def features_of(classifier, images, spec):
    feats, probs = [], []
    for image in images:
        p, outputs = classifier.predict_with_outputs(scale(image, spec))
        feats.append(outputs["features"].reshape(-1))
        probs.append(p)
    return np.array(feats, dtype=np.float64), np.array(probs)


def fit_head(x, y, weights, l2, classes=4, steps=800):
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xb = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    w = np.zeros((xb.shape[1], classes))
    target = np.eye(classes)[y]
    sw = weights / weights.mean()
    for _ in range(steps):
        z = xb @ w
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        grad = xb.T @ ((p - target) * sw[:, None]) / len(xb)
        grad += l2 * np.vstack([w[:-1], np.zeros((1, classes))])
        w -= 0.5 * grad

    def predict(f):
        return (np.hstack([(f - mean) / std, np.ones((len(f), 1))]) @ w).argmax(axis=1)
    return predict


def main() -> None:
    data_dir = Path(sys.argv[1])
    manifest, model_path = load_verified(resolve_model_path(sys.argv[2] if len(sys.argv) > 2
                                                            else ""))
    classifier = TFLiteClassifier(model_path, manifest)
    spec = manifest.preprocess
    train = load_split(data_dir, "Training", spec)
    test = load_split(data_dir, "Testing", spec)
    (external_dir,) = default_external_dirs()
    ext = load_external(external_dir, train.class_names, spec)
    f_train, p_train = features_of(classifier, train.images, spec)
    f_test, p_test = features_of(classifier, test.images, spec)
    f_ext, p_ext = features_of(classifier, ext.images, spec)
    names = train.class_names
    negative = names.index("notumor")
    missed = p_ext.argmax(axis=1) == negative
    print(f"model {manifest.name} {manifest.version}; {len(ext)} Br35H tumour pictures, "
          f"{missed.sum()} called notumor\n")

    unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)  # noqa: E731
    nearest = np.argsort(-(unit(f_ext) @ unit(f_train).T), axis=1)[:, :10]
    square = np.array([Image.open(data_dir / p).size == (256, 256) for p in train.paths])
    print("| Br35H tumour pictures | n | their 10 nearest training pictures: "
          + " | ".join(names) + " | of them stored 256 x 256 |")
    print("|---|---:|" + "---:|" * (len(names) + 1))
    for label, mask in (("called notumor", missed), ("found", ~missed)):
        ids = nearest[mask].ravel()
        counts = np.bincount(train.labels[ids], minlength=len(names)) / len(ids)
        print(f"| {label} | {mask.sum()} | " + " | ".join(f"{100 * c:.0f}%" for c in counts)
              + f" | {100 * square[ids].mean():.0f}% |")

    run = (manifest.provenance.get("source") or {}).get("run") or {}
    train_idx, val_idx = stratified_split(train.labels, float(run.get("val_fraction", 0.1)),
                                          int(run.get("seed", 0)))
    axial = read_planes(DEFAULT_PLANES).lookup(train.paths, str(DEFAULT_PLANES)) >= 0.5
    dedup = {line.strip() for line in (ROOT / "docs/leakage/dedup_test.txt").read_text()
             .splitlines() if line.strip() and not line.startswith("#")}
    in_dedup = np.array([Path(p).name in {Path(d).name for d in dedup} for p in test.paths])
    print("\n| head fitted on | weights | L2 | validation | official | deduplicated | "
          "Br35H tumour sensitivity |\n|---|---|---:|---:|---:|---:|---:|")
    print_row = lambda where, how, l2, pv, pt, pe: print(  # noqa: E731
        f"| {where} | {how} | {l2} | {100 * np.mean(pv == train.labels[val_idx]):.2f}% | "
        f"{100 * np.mean(pt == test.labels):.2f}% | "
        f"{100 * np.mean((pt == test.labels)[in_dedup]):.2f}% | "
        f"{100 * np.mean(pe != negative):.2f}% |")
    print_row("(the model's own head)", "", "", p_train[val_idx].argmax(axis=1),
              p_test.argmax(axis=1), p_ext.argmax(axis=1))
    for where, idx in (("validation", val_idx), ("training", train_idx)):
        groups = axial[idx].astype(int) * len(names) + train.labels[idx]
        balanced = 1.0 / np.bincount(groups, minlength=2 * len(names))[groups]
        for how, weights in (("uniform", np.ones(len(idx))), ("plane x class balanced",
                                                              balanced)):
            for l2 in (0.001, 0.01, 0.1):
                head = fit_head(f_train[idx], train.labels[idx], weights, l2)
                print_row(where, how, l2, head(f_train[val_idx]), head(f_test), head(f_ext))


if __name__ == "__main__":
    main()
