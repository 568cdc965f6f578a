"""Weights against a shortcut (``python -m trainer train --reweight shortcuts|planes|
shortcuts+planes``).

The data set's "no tumour" pictures differ from its tumour pictures in things that are not
the disease: visible picture properties (``trainer.shortcuts``, the audit) and the slice
plane (``trainer.planes``). Re-weighting the training draws by the inverse of how well such
a cue predicts each picture's "no tumour or tumour" answer (inverse propensity weighting)
leaves the cue saying nothing about that answer in the weighted training set, so a network
gains nothing by learning it. docs/training.md, "Weights against a shortcut".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import DataError
from trainer.shortcuts import (
    FEATURES,
    VISIBLE,
    logistic_fit,
    logistic_predict,
    measure_properties,
    standardize,
    stratified_folds,
)

REWEIGHT_METHODS = ("none", "shortcuts", "planes", "shortcuts+planes")
# The methods that read the plane table (--planes FILE).
PLANE_METHODS = ("planes", "shortcuts+planes")
# A picture's weight is 1 / P(its own no-tumour-or-tumour answer | properties), capped by
# this floor at 1 / 0.1 = 10 before each class is scaled back to its own count.
REWEIGHT_FLOOR = 0.1
NEGATIVE_CLASS = "notumor"


@dataclass(frozen=True)
class ShortcutWeights:
    """Per training picture: what a property-only classifier gives its true answer, and the
    sampling weight that makes the properties say nothing about that answer."""

    paths: list[str]
    p_true: np.ndarray
    weights: np.ndarray
    floor: float
    method: str = "shortcuts"
    basis: str = "visible properties"  # what the propensity was predicted from

    def summary(self, labels: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
        w = self.weights
        per_class = {}
        for c, name in enumerate(names):
            m = labels == c
            heavy = m & (w > 2.0)
            per_class[name] = {"n": int(m.sum()), "over_2x": int(heavy.sum()),
                               "max": round(float(w[m].max()), 2) if m.any() else None}
        return {"method": self.method, "basis": self.basis, "floor": self.floor,
                "effective_samples": round(float(w.sum() ** 2 / np.sum(w ** 2)), 1),
                "per_class": per_class}

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, "method": self.method, "basis": self.basis, "floor": self.floor,
                "paths": self.paths,
                "p_true": [round(float(v), 6) for v in self.p_true],
                "weights": [round(float(v), 6) for v in self.weights]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> ShortcutWeights:
        try:
            paths, p_true, weights = data["paths"], data["p_true"], data["weights"]
            if not len(paths) == len(p_true) == len(weights):
                raise ValueError("paths, p_true and weights differ in length")
            w = np.asarray(weights, dtype=np.float64)
            if not np.all(np.isfinite(w)) or np.any(w <= 0):
                raise ValueError("weights must be positive numbers")
            return cls(list(paths), np.asarray(p_true, dtype=np.float64), w,
                       float(data["floor"]), str(data.get("method", "shortcuts")),
                       str(data.get("basis", "visible properties")))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where} is not a sample-weights file this version can read "
                            f"({exc}); start the run again") from None


def inverse_propensity_weights(x: np.ndarray, labels: np.ndarray, names: Sequence[str], *,
                               floor: float = REWEIGHT_FLOOR, folds: int = 5,
                               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(p_true, weights) against the "no tumour vs tumour" shortcut in properties ``x``.

    A logistic regression on the properties alone predicts, out of fold, whether each
    picture is ``notumor``; p_true is what it gives the picture's real answer. Weighting each
    picture by 1 / max(p_true, floor) makes the properties uninformative of that answer in
    the weighted training set (inverse propensity weighting): a tumour picture that looks
    like the no-tumour source and a no-tumour picture that looks like a tumour source count
    more, the typical pictures of each less. Each class's weights are then scaled to mean 1,
    so the classes keep their shares.
    """
    if NEGATIVE_CLASS not in names:
        raise DataError(f"--reweight shortcuts weighs the '{NEGATIVE_CLASS}' class against "
                        f"the tumour classes, and this data set has none (classes: "
                        f"{', '.join(names)}); train without --reweight")
    if not 0 < floor <= 1:
        raise DataError(f"the weight floor must be in (0, 1], got {floor}")
    labels = np.asarray(labels)
    negative = (labels == list(names).index(NEGATIVE_CLASS)).astype(np.int64)
    if negative.min() == negative.max():
        raise DataError("--reweight shortcuts needs both no-tumour and tumour pictures in "
                        "the training split")
    fold = stratified_folds(negative, min(folds, int(np.bincount(negative).min())), seed)
    p_negative = np.zeros(len(labels))
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        xt, xv = standardize(x[train], x[test])
        p_negative[test] = logistic_predict(logistic_fit(xt, negative[train], 2), xv)[:, 1]
    p_true = np.where(negative == 1, p_negative, 1.0 - p_negative)
    weights = 1.0 / np.maximum(p_true, floor)
    for c in np.unique(labels):
        members = labels == c
        weights[members] /= weights[members].mean()
    return p_true, weights


def shortcut_weights(data_dir: str | os.PathLike, paths: Sequence[str], labels: np.ndarray,
                     names: Sequence[str], *, floor: float = REWEIGHT_FLOOR,
                     workers: int | None = None) -> ShortcutWeights:
    """Weights for training pictures ``paths`` (relative to ``data_dir``, as in run folders),
    from their visible properties (those that survive the device's preprocessing)."""
    p_true, weights = inverse_propensity_weights(_visible(data_dir, paths, workers), labels,
                                                 names, floor=floor)
    return ShortcutWeights(list(paths), p_true, weights, floor)


def _visible(data_dir: str | os.PathLike, paths: Sequence[str],
             workers: int | None) -> np.ndarray:
    """The shortcut audit's visible properties of each picture, measured from its file."""
    features = measure_properties(Path(data_dir).expanduser(), list(paths), workers)
    return features[:, [FEATURES.index(c) for c in VISIBLE]]


def _axial(paths: Sequence[str], planes_file: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Per picture 1.0 if the plane table calls it axial, else 0.0; and how to cite the table."""
    from edge.manifest import sha256_file
    from trainer.planes import read_planes

    axial = read_planes(planes_file).lookup(list(paths), str(planes_file)) >= 0.5
    cited = f"{Path(planes_file).name}, sha256 {sha256_file(planes_file)[:12]}"
    return axial.astype(np.float64), cited


def plane_weights(paths: Sequence[str], labels: np.ndarray, names: Sequence[str],
                  planes_file: str | os.PathLike, *,
                  floor: float = REWEIGHT_FLOOR) -> ShortcutWeights:
    """Weights against the slice plane as a cue (``trainer.planes``): the propensity of
    "no tumour" given "axial or not", from the plane table ``planes_file``."""
    axial, cited = _axial(paths, planes_file)
    p_true, weights = inverse_propensity_weights(axial[:, None], labels, names, floor=floor)
    return ShortcutWeights(list(paths), p_true, weights, floor, "planes",
                           f"axial or not ({cited})")


def combined_weights(data_dir: str | os.PathLike, paths: Sequence[str], labels: np.ndarray,
                     names: Sequence[str], planes_file: str | os.PathLike, *,
                     floor: float = REWEIGHT_FLOOR,
                     workers: int | None = None) -> ShortcutWeights:
    """Weights against both cues at once (``--reweight shortcuts+planes``): one propensity
    model sees the visible picture properties and the slice plane together, so a picture's
    weight reflects what the two cues say jointly (weighting by one and then the other
    would not: each product term ignores the cue the other already covers)."""
    axial, cited = _axial(paths, planes_file)  # first: a bad table fails before measuring
    x = np.column_stack([_visible(data_dir, paths, workers), axial])
    p_true, weights = inverse_propensity_weights(x, labels, names, floor=floor)
    return ShortcutWeights(list(paths), p_true, weights, floor, "shortcuts+planes",
                           f"visible properties and axial or not ({cited})")
