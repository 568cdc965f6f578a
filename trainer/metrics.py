"""The paper's classification metrics, in plain numpy.

One implementation serves ``python -m trainer evaluate``, the int8 converter's float-vs-int8
check and the benchmarks, so a number means the same thing everywhere. No scikit-learn:
the formulas are short and the device-side tools must not pull in a large dependency.

Conventions (scikit-learn's, with ``zero_division=0``), stated once:

- Per class k of the confusion matrix C (rows = true class, columns = predicted):
  TP = C[k, k], FP = column sum - TP, FN = row sum - TP, TN = N - TP - FP - FN;
  precision = TP / (TP + FP), recall (sensitivity) = TP / (TP + FN),
  specificity = TN / (TN + FP), F1 = 2 P R / (P + R). A ratio with a zero denominator
  (a class never predicted, or absent) is 0.0, without a warning.
- Macro average: unweighted mean over classes (macro F1 is the mean of the per-class F1s,
  not the F1 of macro precision and recall); weighted: weighted by support. Weighted
  recall equals accuracy.
- ROC AUC per class, one-vs-rest: the probability that a picture of the class scores
  higher for it than a picture of another class, ties counting one half (Mann-Whitney U
  from average ranks: exact). None when the class or the rest is absent; macro and
  weighted AUC average the classes where it is defined.
- Cohen's kappa = (p_o - p_e) / (1 - p_e); 0.0 when p_e = 1 (a single class on both
  sides, where kappa is undefined).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _class_indices(values: Any, name: str) -> np.ndarray:
    """1-D int64 class indices; floats are accepted only when they are whole numbers."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one class index per image, shape (N,); got shape "
                         f"{array.shape} (one-hot labels? pass their argmax)")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.number) or not np.all(np.mod(array, 1) == 0):
            raise ValueError(f"{name} must hold integer class indices, got {array.dtype}")
    return array.astype(np.int64)


def _scores(values: Any, n: int, k: int, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape != (n, k):
        raise ValueError(f"{name} must have shape ({n}, {k}) (one row of class scores per "
                         f"image), got {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise ValueError(f"{name} holds NaN or infinite scores in {bad} row(s): the model "
                         "output is broken (diverged training, or a bad conversion)")
    return array


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    y_true = _class_indices(y_true, "y_true")
    y_pred = _class_indices(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape}, y_pred {y_pred.shape}")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = int(values.min()) if values.min() < 0 else int(values.max())
            raise ValueError(f"{name} holds class index {bad}, outside 0..{num_classes - 1} "
                             f"({num_classes} classes)")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2.

    Computed from average ranks (the Mann-Whitney U statistic), exact with ties. None when
    one of the two groups is empty, where AUC is undefined.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = int(positive.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average rank (1-based) for each run of tied scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def cohen_kappa(cm: np.ndarray) -> float:
    """Agreement between truth and prediction beyond chance: (p_o - p_e) / (1 - p_e)."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    if total == 0:
        return 0.0
    p_o = np.trace(cm) / total
    p_e = float((cm.sum(axis=0) * cm.sum(axis=1)).sum()) / (total * total)
    return 0.0 if p_e == 1.0 else float((p_o - p_e) / (1.0 - p_e))


def compute_metrics(y_true: np.ndarray, y_prob: np.ndarray,
                    labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class and averaged precision/recall/F1/specificity/AUC, kappa, matrix.

    ``y_prob`` holds one row of class probabilities (or any scores) per image; the
    prediction is the arg-max. Precision of a class nobody predicted is 0 (not NaN), AUC of
    a class absent from ``y_true`` is None and left out of the macro AUC.
    """
    labels = list(labels)
    k = len(labels)
    y_true = _class_indices(y_true, "y_true")
    y_prob = _scores(y_prob, y_true.size, k, "y_prob")
    y_pred = y_prob.argmax(axis=1) if y_true.size else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred, k)
    n = int(cm.sum())
    per_class: dict[str, dict[str, Any]] = {}
    for i, label in enumerate(labels):
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = n - tp - fn - fp
        precision = _safe_div(tp, tp + fp)
        recall = _safe_div(tp, tp + fn)
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1": _safe_div(2 * precision * recall, precision + recall),
            "specificity": _safe_div(tn, tn + fp),
            "support": int(tp + fn),
            "auc": roc_auc(y_prob[:, i], y_true == i) if n else None,
        }
    supports = np.array([per_class[c]["support"] for c in labels], dtype=np.float64)
    macro: dict[str, Any] = {}
    weighted: dict[str, Any] = {}
    for key in ("precision", "recall", "f1", "specificity"):
        values = np.array([per_class[c][key] for c in labels])
        macro[key] = float(values.mean())
        weighted[key] = float((values * supports).sum() / supports.sum()) if n else 0.0
    aucs = [(per_class[c]["auc"], per_class[c]["support"]) for c in labels
            if per_class[c]["auc"] is not None]
    macro["auc"] = float(np.mean([a for a, _ in aucs])) if aucs else None
    weighted["auc"] = (float(sum(a * s for a, s in aucs) / sum(s for _, s in aucs))
                       if aucs else None)
    return {
        "n": n,
        "accuracy": _safe_div(np.trace(cm), n),
        "kappa": cohen_kappa(cm),
        "confusion_matrix": cm.tolist(),
        "labels": labels,
        "per_class": per_class,
        "macro": macro,
        "weighted": weighted,
    }


def compare_predictions(y_true: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray,
                        labels: Sequence[str]) -> dict[str, Any]:
    """How far model B (e.g. int8) is from model A (e.g. float) on the same images.

    Top-1 agreement, the images where the top-1 class differs, mean/max absolute
    probability difference, both accuracies, per-class recall of each and B - A.
    """
    a = compute_metrics(y_true, prob_a, labels)
    b = compute_metrics(y_true, prob_b, labels)
    prob_a = np.asarray(prob_a, dtype=np.float64)
    prob_b = np.asarray(prob_b, dtype=np.float64)
    diff = np.abs(prob_a - prob_b)
    agree = prob_a.argmax(axis=1) == prob_b.argmax(axis=1)
    return {
        "disagreements": int((~agree).sum()),
        "disagreement_indices": np.flatnonzero(~agree).tolist(),
        "per_class_recall": {c: {"a": a["per_class"][c]["recall"],
                                 "b": b["per_class"][c]["recall"],
                                 "delta": b["per_class"][c]["recall"]
                                 - a["per_class"][c]["recall"]} for c in a["labels"]},
        "n": a["n"],
        "accuracy_a": a["accuracy"],
        "accuracy_b": b["accuracy"],
        "accuracy_delta": b["accuracy"] - a["accuracy"],
        "top1_agreement": float(agree.mean()) if agree.size else 0.0,
        "mean_abs_prob_diff": float(diff.mean()) if diff.size else 0.0,
        "max_abs_prob_diff": float(diff.max()) if diff.size else 0.0,
        "recall_delta": {c: b["per_class"][c]["recall"] - a["per_class"][c]["recall"]
                         for c in a["labels"]},
        "confusion_matrix_a": a["confusion_matrix"],
        "confusion_matrix_b": b["confusion_matrix"],
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def table3_markdown(results: dict[str, dict[str, Any]],
                    paper: dict[str, dict[str, float]] | None = None) -> str:
    """Results laid out like the paper's Table 3, one block per model, in percent.

    First a summary row per model (accuracy and macro precision, recall, F1; plus what the
    paper did not report: specificity, Cohen's kappa, macro ROC AUC), then per-class rows.
    ``paper`` optionally adds the paper's own figures (accuracy etc., in percent) as rows.
    """
    lines = ["| Model | Accuracy | Precision | Recall | F1-score | Specificity | Kappa | AUC |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in results.items():
        mac = m["macro"]
        lines.append(f"| {name} | {_pct(m['accuracy'])} | {_pct(mac['precision'])} | "
                     f"{_pct(mac['recall'])} | {_pct(mac['f1'])} | {_pct(mac['specificity'])} | "
                     f"{m['kappa']:.4f} | {_pct(mac.get('auc'))} |")
    for name, row in (paper or {}).items():
        cells = [row.get(key) for key in ("accuracy", "precision", "recall", "f1")]
        lines.append(f"| {name} (paper) | " + " | ".join(
            "n/a" if v is None else f"{v:.2f}" for v in cells) + " | | | |")
    for name, m in results.items():
        lines += ["", f"**{name}**: per class (n={m['n']})", "",
                  "| Class | Precision | Recall | F1-score | Specificity | AUC | Support |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for label, c in m["per_class"].items():
            lines.append(f"| {label} | {_pct(c['precision'])} | {_pct(c['recall'])} | "
                         f"{_pct(c['f1'])} | {_pct(c['specificity'])} | {_pct(c['auc'])} | "
                         f"{c['support']} |")
        w = m["weighted"]
        lines.append(f"| weighted average | {_pct(w['precision'])} | {_pct(w['recall'])} | "
                     f"{_pct(w['f1'])} | {_pct(w['specificity'])} | {_pct(w.get('auc'))} | "
                     f"{m['n']} |")
    return "\n".join(lines) + "\n"
