"""The slice plane of every training picture: axial, or not (coronal, sagittal).

Looked at by eye, the data set's ``notumor`` pictures are axial slices (96 % of a random
sample), its tumour pictures mostly coronal and sagittal (about 30 % axial): the figshare
collection behind the tumour classes has all three planes, the no-tumour sources only
axial slices. A network can read "axial" as "no tumour", and every Br35H tumour picture is
axial. ``--reweight planes`` (``trainer.reweight``) takes that cue away from the training
stream; it needs the plane of each picture, which the data set does not record:

1. an engineer labels a random sample by eye (``docs/planes/hand_labels.csv``: path and
   ``axial``, ``coronal`` or ``sagittal``);
2. a logistic regression on the shipped model's 512 image features (its ``features``
   output, through the device's own runtime) learns "axial or not" from that sample, and
   labels every other training picture; its leave-one-out accuracy on the sample is
   reported;
3. ``docs/planes/training_planes.csv`` keeps the result (path, probability of axial, plane,
   and whether it came from the hand or the model), so that training reads a file, not a
   model.

``python -m trainer planes DATA_DIR``; no Keras (the device runtime runs the model).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.errors import DataError

log = logging.getLogger(__name__)

PLANES = ("axial", "coronal", "sagittal")
CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_HAND_LABELS = CHECKOUT / "docs" / "planes" / "hand_labels.csv"
DEFAULT_PLANES = CHECKOUT / "docs" / "planes" / "training_planes.csv"
L2 = 0.01  # chosen by leave-one-out accuracy on the first 192 hand labels (0.003-0.03 tried)


@dataclass(frozen=True)
class PlaneTable:
    """Per training picture (relative path as in run folders): P(axial), and its source."""

    paths: list[str]
    p_axial: np.ndarray
    source: list[str]  # "hand" or "model"

    @property
    def axial(self) -> np.ndarray:
        return self.p_axial >= 0.5

    def lookup(self, paths: Sequence[str], where: str) -> np.ndarray:
        """P(axial) of ``paths``; a DataError naming the first few this table lacks.

        A path matches with or without its suffix: a training pack's copies
        (``python -m trainer pack``) are ``.png`` files of the original ``.jpg`` ones."""
        index = {p: i for i, p in enumerate(self.paths)}
        index.update({_stem(p): i for i, p in enumerate(self.paths)})
        missing = [p for p in paths if p not in index and _stem(p) not in index]
        if missing:
            raise DataError(f"{where} has no plane for {len(missing)} training picture(s) "
                            f"(e.g. {', '.join(missing[:3])}); make it again for this data "
                            "with: python -m trainer planes DATA_DIR")
        return self.p_axial[[index.get(p, index.get(_stem(p))) for p in paths]]


def _stem(path: str) -> str:
    """``Training/glioma/x.jpg`` -> ``Training/glioma/x``."""
    return str(Path(path).with_suffix("").as_posix())


def read_hand_labels(path: str | os.PathLike) -> dict[str, str]:
    """``path,plane`` rows (a header line first); planes as in ``PLANES``."""
    path = Path(path)
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except OSError as exc:
        raise DataError(f"cannot read the hand labels {path} ({exc.strerror or exc})") from None
    if not rows or rows[0][:2] != ["path", "plane"]:
        raise DataError(f"{path} must start with the header line 'path,plane'")
    labels: dict[str, str] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 2 or row[1] not in PLANES:
            raise DataError(f"{path} line {n}: expected 'path,plane' with plane one of "
                            f"{', '.join(PLANES)}, got {','.join(row)!r}")
        labels[row[0]] = row[1]
    if len({p == "axial" for p in labels.values()}) < 2:
        raise DataError(f"{path} needs axial and non-axial examples, it has "
                        f"{len(labels)} label(s) of one kind")
    return labels


def fit_axial(x: np.ndarray, axial: np.ndarray, l2: float = L2) -> tuple[np.ndarray, float]:
    """(P(axial) for every row of ``x`` from a fit on the labelled rows, leave-one-out
    accuracy on them). ``axial``: 1 / 0 for labelled rows, -1 for the rest."""
    from trainer.shortcuts import logistic_fit, logistic_predict, standardize

    labelled = np.flatnonzero(axial >= 0)
    y = axial[labelled].astype(np.int64)

    def fit_predict(train: np.ndarray, rows: np.ndarray) -> np.ndarray:
        fitted, wanted = standardize(x[train], x[rows])
        w = logistic_fit(fitted, axial[train].astype(np.int64), 2, l2=l2, steps=600)
        return logistic_predict(w, wanted)[:, 1]

    hits = [(fit_predict(np.delete(labelled, i), labelled[i:i + 1])[0] >= 0.5) == y[i]
            for i in range(len(labelled))]
    return fit_predict(labelled, np.arange(len(x))), float(np.mean(hits))


def model_features(model_dir: str | os.PathLike, data_dir: str | os.PathLike,
                   progress: bool = False) -> tuple[list[str], np.ndarray]:
    """(Training paths, the model's ``features`` output for each), through the device's
    runtime and preprocessing."""
    from edge.classifier import resolve_model_path
    from edge.errors import EdgeError
    from edge.manifest import load_verified
    from edge.preprocess import scale
    from edge.runtime import TFLiteClassifier
    from trainer.data import load_split, scan_split

    scan_split(data_dir, "Training")  # a wrong data folder fails before the model loads
    try:
        manifest, model_path = load_verified(resolve_model_path(str(model_dir)))
        classifier = TFLiteClassifier(model_path, manifest)
    except EdgeError as exc:
        raise DataError(f"cannot use the model {model_dir or '(the shipped one)'}: {exc}") \
            from None
    if "features" not in manifest.outputs:
        raise DataError(f"the model in {model_dir or '(the shipped one)'} has no 'features' "
                        "output (manifest format 2 models have it); pass --model with such a "
                        "model")
    data = load_split(data_dir, "Training", manifest.preprocess, progress=progress)
    features = np.empty((len(data.paths), manifest.outputs["features"].spec.shape[-1]))
    for i, image in enumerate(data.images):
        _, outputs = classifier.predict_with_outputs(scale(image, manifest.preprocess))
        features[i] = outputs["features"].reshape(-1)
    return data.paths, features


def label_planes(paths: list[str], features: np.ndarray,
                 hand: dict[str, str]) -> tuple[PlaneTable, dict[str, float]]:
    """Every picture's P(axial): hand labels where given, the fitted model elsewhere."""
    known = [p for p in hand if p in set(paths)]
    if len(known) < len(hand):
        absent = [p for p in hand if p not in set(paths)]
        raise DataError(f"{len(absent)} hand-labelled picture(s) are not in this data set's "
                        f"Training split (e.g. {', '.join(absent[:3])}): wrong data folder?")
    index = {p: i for i, p in enumerate(paths)}
    axial = np.full(len(paths), -1)
    for p, plane in hand.items():
        axial[index[p]] = int(plane == "axial")
    p_axial, loo = fit_axial(features, axial)
    source = ["model"] * len(paths)
    for p, plane in hand.items():
        p_axial[index[p]] = 1.0 if plane == "axial" else 0.0
        source[index[p]] = "hand"
    return PlaneTable(list(paths), p_axial, source), {"hand_labels": len(hand),
                                                      "leave_one_out_accuracy": loo}


def write_planes(path: str | os.PathLike, table: PlaneTable) -> None:
    from edge.durable import write_bytes_atomic

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "p_axial", "plane", "source"])
    for p, prob, src in zip(table.paths, table.p_axial, table.source, strict=True):
        writer.writerow([p, f"{prob:.4f}", "axial" if prob >= 0.5 else "other", src])
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, buffer.getvalue().encode("utf-8"))


def read_planes(path: str | os.PathLike) -> PlaneTable:
    path = Path(path)
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except OSError as exc:
        raise DataError(f"cannot read the plane table {path} ({exc.strerror or exc}); make it "
                        "with: python -m trainer planes DATA_DIR") from None
    if not rows or rows[0][:2] != ["path", "p_axial"]:
        raise DataError(f"{path} is not a plane table (its first line must be "
                        "'path,p_axial,plane,source')")
    try:
        body = [r for r in rows[1:] if r]
        return PlaneTable([r[0] for r in body], np.array([float(r[1]) for r in body]),
                          [r[3] if len(r) > 3 else "model" for r in body])
    except (IndexError, ValueError) as exc:
        raise DataError(f"{path} is damaged ({exc}); make it again with: python -m trainer "
                        "planes DATA_DIR") from None
