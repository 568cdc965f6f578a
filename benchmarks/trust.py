"""``python -m benchmarks trust``: how far the agent's answers can be trusted, measured.

Every image goes through the agent's own path (``edge.inputs.decode_file`` then
``edge.classifier.Classifier`` with the default configuration, the review rule included),
via the same functions ``edge-agent validate`` uses:

- the data set's official **Testing** split: accuracy, calibration error before and after
  the temperature, share flagged, accuracy of the unflagged answers;
- an **external** tumour folder (``../shared/data/br35h-tumour``, a source the model never
  saw a tumour from): tumours answered "no tumour" and not flagged;
- **non-brain pictures** built by ``benchmarks.nonbrain`` (CT, ultrasound, nuclear medicine,
  segmentation and colour DICOMs from pydicom as PNG and JPEG; real and synthetic
  photographs): share flagged;
- the AUROC of the "unlike the training data" score between Testing and each of the other
  two, and how the flags move with ``[review] threshold`` and ``no_tumour_threshold``.

Nothing is tuned here: the model's trust section was fitted on its training split alone.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import table

log = logging.getLogger(__name__)

TARGETS = {"external_silently_missed": 0.05, "testing_flagged": 0.10,
           "testing_unflagged_accuracy": 0.99, "nonbrain_flagged": 0.95}
SWEEP_REVIEW = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
SWEEP_NEGATIVE = (0.6, 0.8, 0.9, 0.95, 0.99, 0.999)


def _auroc(negatives: list[float], positives: list[float]) -> float | None:
    from trainer.metrics import roc_auc

    scores = np.asarray(list(negatives) + list(positives), dtype=np.float64)
    positive = np.r_[np.zeros(len(negatives), bool), np.ones(len(positives), bool)]
    return roc_auc(scores, positive)


def _flag(record: Any, review: float, negative_threshold: float, negative: str | None) -> bool:
    """The agent's rule (edge.trust.review_reasons) at other thresholds, from a record."""
    from edge.trust import Assessment, review_reasons

    assessment = Assessment(np.zeros(0), calibrated=True, ood_score=record.ood_score,
                            ood_threshold=None if record.in_distribution is None else (
                                np.inf if record.in_distribution else -np.inf))
    return bool(review_reasons(label=record.label, confidence=record.confidence, margin=1.0,
                               runner_up="", assessment=assessment, threshold=review,
                               min_margin=0.0, no_tumour_threshold=negative_threshold,
                               negative_label=negative))


def measure(model: str, data: Path, external: Path | None, work: Path,
            seed: int = 0) -> dict[str, Any]:
    from benchmarks.nonbrain import build_nonbrain_set
    from edge.classifier import Classifier
    from edge.config import AgentConfig
    from edge.errors import UnsupportedInputError
    from edge.inputs import decode_file
    from edge.trust import calibration_error
    from edge.validate import classify_all, scan, summarize

    config = AgentConfig().override("paths", model=str(model))
    classifier = Classifier(config)
    labels, negative = classifier.labels, classifier.trust.negative_label
    result: dict[str, Any] = {"model": classifier.describe(),
                              "trust": classifier.manifest.trust.get("fit", {}),
                              "settings": {"review_threshold": config.review.threshold,
                                           "no_tumour_threshold":
                                           config.review.no_tumour_threshold}}

    log.info("classifying %s/Testing", data)
    root = Path(data) / "Testing"
    test_records, refused = classify_all(classifier, config, scan(root, labels), root)
    test = summarize(test_records, refused, labels, negative, config, 0.99)
    truth = np.array([labels.index(r.truth) for r in test_records])
    raw = np.array([r.extra["uncalibrated"] or r.probabilities for r in test_records])
    test["calibration_error_uncalibrated"] = calibration_error(raw, truth)
    test["reasons"] = _reason_counts(test_records)
    test["sweep"] = [{"review_threshold": t, **_shares(test_records, t,
                                                       config.review.no_tumour_threshold,
                                                       negative)} for t in SWEEP_REVIEW]
    result["testing"] = {k: v for k, v in test.items() if k not in ("worst_mistakes",)}
    test_scores = [r.ood_score for r in test_records if r.ood_score is not None]

    if external is not None:
        log.info("classifying %s", external)
        ext_records, ext_refused = classify_all(classifier, config, scan(external, labels),
                                                Path(external))
        ext = summarize(ext_records, ext_refused, labels, negative, config, 0.99)
        ext["reasons"] = _reason_counts(ext_records)
        ext["sweep"] = [{"no_tumour_threshold": t, **_shares(
            ext_records, config.review.threshold, t, negative),
            "testing": _shares(test_records, config.review.threshold, t, negative)}
            for t in SWEEP_NEGATIVE]
        ext["auroc_vs_testing"] = _auroc(test_scores, [r.ood_score for r in ext_records
                                                       if r.ood_score is not None])
        ext["unflagged_no_tumour_confidence"] = sorted(
            round(r.confidence, 4) for r in ext_records
            if r.label == negative and not r.needs_review)
        result["external"] = {k: v for k, v in ext.items() if k != "worst_mistakes"}
        result["external"]["folder"] = str(external)

    log.info("building and classifying the non-brain pictures")
    pictures = build_nonbrain_set(work / "nonbrain", seed=seed)
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in pictures:
        try:
            decoded = decode_file(item.path, config.dicom, config.limits)
        except UnsupportedInputError as exc:
            groups.setdefault(item.group, []).append({"refused": str(exc)})
            continue
        p = classifier.classify(decoded, heatmap="none")  # the figures do not use the map
        groups.setdefault(item.group, []).append({
            "file": item.path.name, "source": item.source, "label": p.label,
            "confidence": p.confidence, "needs_review": p.needs_review,
            "ood_score": (p.trust or {}).get("ood_score"),
            "in_distribution": (p.trust or {}).get("in_distribution")})
    rows, every = [], []
    for group, entries in sorted(groups.items()):
        done = [e for e in entries if "refused" not in e]
        every.extend(done)
        rows.append({"group": group, "n": len(done), "refused": len(entries) - len(done),
                     "flagged": float(np.mean([e["needs_review"] for e in done])) if done else None,
                     "unlike_training": float(np.mean([e["in_distribution"] is False
                                                       for e in done])) if done else None})
    result["nonbrain"] = {
        "groups": rows, "n": len(every),
        "flagged": float(np.mean([e["needs_review"] for e in every])),
        "unlike_training": float(np.mean([e["in_distribution"] is False for e in every])),
        "auroc_vs_testing": _auroc(test_scores, [e["ood_score"] for e in every
                                                 if e["ood_score"] is not None]),
        "not_flagged": [{k: e[k] for k in ("file", "source", "label", "confidence")}
                        for e in every if not e["needs_review"]]}
    result["targets"] = targets(result)
    return result


def _reason_counts(records: list[Any]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for r in records:
        for reason in r.reasons:
            if reason.startswith("confidence"):
                counts["confidence below the review threshold"] += 1
            elif reason.startswith("the image is unlike"):
                counts["unlike the training data"] += 1
            elif "is only given unreviewed at a confidence" in reason:
                counts["'no tumour' answer not confident enough"] += 1
            elif "does not rule out a tumour" in reason:  # comes with "unlike"
                counts["'no tumour' answer on an image unlike the training data"] += 1
            elif "has no such check" in reason:
                counts["'no tumour' answer without a distribution check"] += 1
            else:
                counts["other"] += 1
    return dict(counts)


def _shares(records: list[Any], review: float, negative_threshold: float,
            negative: str | None) -> dict[str, Any]:
    flags = np.array([_flag(r, review, negative_threshold, negative) for r in records])
    right = np.array([(r.label != negative) if r.truth == "tumour" else r.label == r.truth
                      for r in records])
    missed = np.array([r.truth != negative and r.label == negative for r in records])
    return {"flagged": float(flags.mean()),
            "unflagged_accuracy": float(right[~flags].mean()) if (~flags).any() else None,
            "silently_missed": float((missed & ~flags).mean())}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    ext = result.get("external")
    if ext and ext.get("tumours"):
        share = ext["tumours"]["silently_missed_share"]
        rows.append({"target": "external tumours: silently missed (notumor, not flagged) <= 5%",
                     "value": f"{share:.1%} ({ext['tumours']['silently_missed']} of "
                              f"{ext['tumours']['n']})",
                     "met": share <= TARGETS["external_silently_missed"]})
    test = result["testing"]
    rows.append({"target": "Testing: flagged for review <= 10%",
                 "value": f"{test['flagged_share']:.1%}",
                 "met": test["flagged_share"] <= TARGETS["testing_flagged"]})
    acc = test["unflagged_accuracy"]
    rows.append({"target": "Testing: unflagged answers right >= 99%",
                 "value": f"{acc:.2%}", "met": acc >= TARGETS["testing_unflagged_accuracy"]})
    nb = result["nonbrain"]
    rows.append({"target": "non-brain pictures flagged >= 95%",
                 "value": f"{nb['flagged']:.1%} of {nb['n']}",
                 "met": nb["flagged"] >= TARGETS["nonbrain_flagged"]})
    return rows


def _pct(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def markdown(result: dict[str, Any]) -> str:
    model = result["model"]
    fit = result.get("trust") or {}
    test = result["testing"]
    lines = [f"Model {model['name']} {model['version']} ({model['sha256'][:12]}), "
             f"[review] threshold {result['settings']['review_threshold']}, "
             f"no_tumour_threshold {result['settings']['no_tumour_threshold']}; temperature "
             f"{fit.get('temperature', '-')}, OOD threshold {fit.get('ood_threshold', '-')} "
             f"({_pct(fit.get('ood_pass_rate'), 0)} of validation images pass).", ""]
    lines.append(table(
        ["set", "images", "accuracy", "ECE raw -> calibrated", "flagged", "unflagged right",
         "unlike training", "AUROC vs Testing"],
        [["official Testing", test["n"], _pct(test["accuracy"]),
          f"{_pct(test['calibration_error_uncalibrated'])} -> {_pct(test['calibration_error'])}",
          _pct(test["flagged_share"]), _pct(test["unflagged_accuracy"], 2),
          _pct(test["unlike_training_share"]), "-"]]
        + ([[f"external tumours ({Path(result['external']['folder']).name})",
             result["external"]["n"], _pct(result["external"]["accuracy"]), "-",
             _pct(result["external"]["flagged_share"]), "-",
             _pct(result["external"]["unlike_training_share"]),
             f"{result['external']['auroc_vs_testing']:.3f}"]] if "external" in result else [])
        + [["non-brain pictures", result["nonbrain"]["n"], "-", "-",
            _pct(result["nonbrain"]["flagged"]), "-",
            _pct(result["nonbrain"]["unlike_training"]),
            f"{result['nonbrain']['auroc_vs_testing']:.3f}"]]))
    if "external" in result and result["external"].get("tumours"):
        t = result["external"]["tumours"]
        lines += ["", f"External tumours: {t['called_no_tumour']} of {t['n']} answered "
                      f"'no tumour', {t['silently_missed']} of them not flagged "
                      f"({_pct(t['silently_missed_share'])})."]
    lines += ["", "Non-brain pictures by group:", "",
              table(["group", "files (PNG + JPEG)", "flagged", "unlike training"],
                    [[g["group"], g["n"], _pct(g["flagged"]), _pct(g["unlike_training"])]
                     for g in result["nonbrain"]["groups"]])]
    lines += ["", "Why Testing images were flagged (an image can have several reasons):", "",
              table(["reason", "images"], sorted(test["reasons"].items(), key=lambda kv: -kv[1]))]
    lines += ["", "Testing, other [review] thresholds (rest of the rule unchanged):", "",
              table(["[review] threshold", "flagged", "unflagged right"],
                    [[f"{s['review_threshold']:.2f}", _pct(s["flagged"]),
                      _pct(s["unflagged_accuracy"], 2)] for s in test["sweep"]])]
    if "external" in result:
        lines += ["", "Other no_tumour_threshold values (rest of the rule unchanged):", "",
                  table(["no_tumour_threshold", "external: silently missed",
                         "Testing: flagged", "Testing: unflagged right"],
                        [[f"{s['no_tumour_threshold']:g}", _pct(s["silently_missed"]),
                          _pct(s["testing"]["flagged"]),
                          _pct(s["testing"]["unflagged_accuracy"], 2)]
                         for s in result["external"]["sweep"]])]
    lines += ["", table(["target (issue 13)", "this run", "met"],
                        [[r["target"], r["value"], "yes" if r["met"] else "**no**"]
                         for r in result["targets"]], ["l", "r", "l"])]
    return "\n".join(lines)
