"""``edge-agent validate DIR --out OUT``: the site acceptance test a clinic runs first.

The clinic's own labelled images, one sub-folder per label (the model's labels; a folder
named ``tumour`` or ``tumor`` holds tumours of unknown type, and any tumour class counts as
right for them), go through exactly what the agent does with an input: the installed
model, the configured review rule, the agent's decoding. ``OUT/validation.json`` (schema
``neuroedge.validation/1``, documented in docs/schemas/validation.md) holds the figures a
clinic needs to decide whether to trust the box, ``OUT/validation.html`` shows them with the
worst mistakes.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import trust as trust_rule
from .classifier import Classifier, Prediction
from .config import AgentConfig
from .durable import writable_folder
from .errors import EX_DATAERR, EdgeError, UnsupportedInputError
from .inputs import decode_file
from .report import now_iso
from .trust import Assessment, calibration_error, reliability

log = logging.getLogger(__name__)

SCHEMA = "neuroedge.validation/1"
TUMOUR_FOLDERS = ("tumour", "tumor")
DEFAULT_TARGET_ACCURACY = 0.99
WORST_SHOWN = 12


class ValidationDataError(EdgeError):
    """The folder to validate on is missing, empty, or not laid out by label."""

    exit_code = EX_DATAERR


@dataclass
class Record:
    """One image's result (``truth`` is a label, or ``"tumour"`` for a tumour folder)."""

    file: str
    truth: str
    label: str
    confidence: float
    probabilities: list[float]
    needs_review: bool
    reasons: list[str]
    other_flag: bool  # flagged by something other than the confidence threshold
    in_distribution: bool | None = None
    ood_score: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def scan(folder: Path, labels: list[str]) -> list[tuple[Path, str]]:
    """The images to validate on, with their true label; a clear error for a bad layout."""
    folder = Path(folder)
    if not folder.exists():
        raise ValidationDataError(f"{folder} does not exist: give the folder that holds one "
                                  f"sub-folder per label ({', '.join(labels)})")
    if not folder.is_dir():
        raise ValidationDataError(f"{folder} is not a folder: give the folder that holds one "
                                  f"sub-folder per label ({', '.join(labels)})")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    known = list(labels) + list(TUMOUR_FOLDERS)
    unknown = [p.name for p in subfolders if p.name not in known]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValidationDataError(
            f"{folder} has sub-folders that are not labels of the model: {', '.join(hints)}. "
            f"Name each sub-folder after a label ({', '.join(labels)}), or 'tumour' for "
            "tumours of unknown type")
    if not subfolders:
        loose = [p for p in folder.iterdir() if p.is_file()]
        more = (f" It holds {len(loose)} file(s) directly: put them in sub-folders named by "
                "their true label." if loose else "")
        raise ValidationDataError(f"{folder} has no sub-folders.{more} Expected one per label "
                                  f"({', '.join(labels)}) or 'tumour'")
    items = []
    for sub in subfolders:
        files = sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValidationDataError(f"{sub} is empty: remove it or add that label's images")
        truth = "tumour" if sub.name in TUMOUR_FOLDERS else sub.name
        items.extend((p, truth) for p in files)
    return items


def _assessment(prediction: Prediction) -> Assessment:
    trust = prediction.trust or {}
    return Assessment(probabilities=np.asarray(list(prediction.probabilities.values())),
                      calibrated=bool(trust.get("calibrated")),
                      ood_score=trust.get("ood_score"), ood_threshold=trust.get("ood_threshold"),
                      ood_share_below=trust.get("ood_validation_share_below"))


def classify_all(classifier: Classifier, config: AgentConfig, items: list[tuple[Path, str]],
                 root: Path, progress: Callable[[int, int], None] | None = None,
                 ) -> tuple[list[Record], list[dict[str, str]]]:
    """Every image through the agent's decoding and classifier; refused ones listed apart.
    No heat-map is drawn: the figures do not use it, and the default occlusion map would run
    the model 49 more times per image (the worst mistakes' thumbnails draw theirs)."""
    records, refused = [], []
    review = config.review
    for i, (path, truth) in enumerate(items):
        name = path.relative_to(root).as_posix()
        try:
            decoded = decode_file(path, config.dicom, config.limits)
        except UnsupportedInputError as exc:
            refused.append({"file": name, "reason": str(exc)})
            continue
        except OSError as exc:
            refused.append({"file": name, "reason": f"cannot read the file: {exc.strerror}"})
            continue
        p = classifier.classify(decoded, heatmap="none")
        probs = list(p.probabilities.values())
        order = np.argsort(-np.asarray(probs), kind="stable")
        margin = probs[order[0]] - probs[order[1]]
        assessment = _assessment(p)
        without_confidence = trust_rule.review_reasons(
            label=p.label, confidence=p.confidence, margin=margin,
            runner_up=classifier.labels[int(order[1])], assessment=assessment, threshold=0.0,
            min_margin=review.min_margin, no_tumour_threshold=review.no_tumour_threshold,
            negative_label=classifier.trust.negative_label)
        body_part = any(r.startswith("Body Part Examined") for r in p.review_reasons)
        records.append(Record(
            file=name, truth=truth, label=p.label, confidence=p.confidence,
            probabilities=probs, needs_review=p.needs_review, reasons=list(p.review_reasons),
            other_flag=bool(without_confidence) or body_part,
            in_distribution=assessment.in_distribution, ood_score=assessment.ood_score,
            extra={"uncalibrated": (p.trust or {}).get("uncalibrated_probabilities")}))
        if progress is not None:
            progress(i + 1, len(items))
    return records, refused


def _right(record: Record, negative: str | None) -> bool:
    if record.truth == "tumour":
        return record.label != negative
    return record.label == record.truth


def recommend_threshold(records: list[Record], negative: str | None,
                        target: float) -> dict[str, Any]:
    """The lowest review threshold at which the unflagged answers reach ``target`` accuracy
    (the rest of the rule unchanged), on a grid of 0.01."""
    right = np.array([_right(r, negative) for r in records])
    confidence = np.array([r.confidence for r in records])
    other = np.array([r.other_flag for r in records])
    for t in np.round(np.arange(0.0, 1.0, 0.01), 2):
        flagged = other | (confidence < t)
        if (~flagged).sum() and right[~flagged].mean() >= target:
            return {"value": float(t), "target_accuracy": target,
                    "flagged_share": float(flagged.mean()),
                    "unflagged_accuracy": float(right[~flagged].mean()),
                    "unflagged": int((~flagged).sum())}
    return {"value": None, "target_accuracy": target,
            "why": f"no threshold below 1 leaves answers that are right {target:.0%} of the "
                   "time: review every answer, or validate a better model"}


def summarize(records: list[Record], refused: list[dict[str, str]], labels: list[str],
              negative: str | None, config: AgentConfig, target: float) -> dict[str, Any]:
    """``validation.json`` (see docs/schemas/validation.md for every field)."""
    if not records:
        raise ValidationDataError("none of the images could be classified (every one was "
                                  "refused; see the reasons above)")
    rows = list(labels) + (["tumour"] if any(r.truth == "tumour" for r in records) else [])
    matrix = np.zeros((len(rows), len(labels)), dtype=int)
    for r in records:
        matrix[rows.index(r.truth), labels.index(r.label)] += 1
    right = np.array([_right(r, negative) for r in records])
    per_class = {}
    for label in labels:
        truth_k = np.array([r.truth == label for r in records])
        pred_k = np.array([r.label == label for r in records])
        # a tumour of unknown type cannot say whether "glioma" was wrong: left out there
        judged = np.array([r.truth != "tumour" or label == negative for r in records])
        negatives = judged & ~truth_k
        per_class[label] = {
            "n": int(truth_k.sum()),
            "sensitivity": float((truth_k & pred_k).sum() / truth_k.sum()) if truth_k.any()
            else None,
            "specificity": float((negatives & ~pred_k).sum() / negatives.sum())
            if negatives.any() else None}
    definite = [r for r in records if r.truth != "tumour"]
    probs = np.array([r.probabilities for r in definite]) if definite else np.zeros((0, 1))
    truth_idx = np.array([labels.index(r.truth) for r in definite], dtype=int)
    flagged = np.array([r.needs_review for r in records])
    tumour_truth = np.array([r.truth != negative for r in records]) if negative else None
    summary: dict[str, Any] = {
        "schema": SCHEMA, "created_at": now_iso(), "labels": labels,
        "settings": {"review_threshold": config.review.threshold,
                     "min_margin": config.review.min_margin,
                     "no_tumour_threshold": config.review.no_tumour_threshold},
        "n": len(records), "refused": refused,
        "accuracy": float(right.mean()),
        "confusion_matrix": matrix.tolist(), "confusion_rows": rows,
        "confusion_columns": labels, "per_class": per_class,
        "calibration_error": calibration_error(probs, truth_idx) if definite else None,
        "reliability": reliability(probs, truth_idx) if definite else [],
        "flagged_share": float(flagged.mean()),
        "unflagged_accuracy": float(right[~flagged].mean()) if (~flagged).any() else None,
        "unlike_training_share": (float(np.mean([r.in_distribution is False for r in records]))
                                  if any(r.in_distribution is not None for r in records)
                                  else None),
        "recommended_review_threshold": recommend_threshold(records, negative, target),
    }
    if tumour_truth is not None and tumour_truth.any():
        missed = tumour_truth & np.array([r.label == negative for r in records])
        summary["tumours"] = {
            "n": int(tumour_truth.sum()),
            "sensitivity": float(1 - missed.sum() / tumour_truth.sum()),
            "called_no_tumour": int(missed.sum()),
            "silently_missed": int((missed & ~flagged).sum()),
            "silently_missed_share": float((missed & ~flagged).sum() / tumour_truth.sum())}
    mistakes = sorted((r for r, ok in zip(records, right) if not ok),
                      key=lambda r: -r.confidence)
    summary["worst_mistakes"] = [{"file": r.file, "truth": r.truth, "label": r.label,
                                  "confidence": r.confidence, "needs_review": r.needs_review,
                                  "review_reasons": r.reasons} for r in mistakes[:WORST_SHOWN]]
    notes = []
    if len(records) < 100:
        notes.append(f"only {len(records)} images: every figure here is uncertain by several "
                     "points; validate on a few hundred for a firm recommendation")
    if refused:
        notes.append(f"{len(refused)} file(s) were refused by the agent and are not counted")
    summary["notes"] = notes
    return summary


def run_validation(folder: Path, out: Path, config: AgentConfig,
                   target: float = DEFAULT_TARGET_ACCURACY,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Validate on ``folder``; write ``out/validation.json`` and ``out/validation.html``."""
    from .durable import write_bytes_atomic, write_json_atomic
    from .validate_page import validation_page

    if not 0.5 <= target < 1.0:
        raise ValidationDataError(f"--target-accuracy must be in [0.5, 1), got {target}")
    classifier = Classifier(config)
    labels = classifier.labels
    items = scan(Path(folder), labels)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValidationDataError(f"--out {out} exists and is not a folder")
    writable_folder(out, "the --out folder")  # before the minutes of classifying
    echo(f"validating {classifier.manifest.name} {classifier.manifest.version} on "
         f"{len(items)} files in {folder}")
    records, refused = classify_all(classifier, config, items, Path(folder))
    summary = summarize(records, refused, labels, classifier.trust.negative_label, config,
                        target)
    summary["folder"] = str(folder)
    summary["model"] = classifier.describe()
    write_json_atomic(out / "validation.json", summary)
    worst = [_thumbnail(classifier, config, Path(folder) / m["file"])
             for m in summary["worst_mistakes"]]
    kinds = {kind for _, kind in worst}
    write_bytes_atomic(out / "validation.html", validation_page(
        summary, [picture for picture, _ in worst],
        heatmap_kind=kinds.pop() if len(kinds) == 1 else None))
    return summary


def _thumbnail(classifier: Classifier, config: AgentConfig, path: Path) -> tuple[Any, Any]:
    """What the model saw for one mistake, with its heat-map laid over it when the model
    draws one, and the map's kind (None: no map)."""
    from .heatmap import overlay

    prediction = classifier.classify(decode_file(path, config.dicom, config.limits))
    if prediction.heatmap is not None:
        return (overlay(prediction.model_input, prediction.heatmap),
                prediction.heatmap_kind or "model")
    return prediction.model_input, None
