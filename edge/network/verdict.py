"""The study verdict: one answer for a whole study from its per-slice reports.

Most slices of a brain MR study show no tumour even when the patient has one, so a majority
vote over slices would call nearly every study normal. The rule instead asks whether enough
slices *confidently* show a tumour, and whether they agree on its type. In order:

1. Slices are counted once per SOP Instance UID. A *confident* slice is one whose report is
   not ``needs_review`` (``[review] threshold`` / ``min_margin`` / body part). A *tumour
   slice* is a confident slice whose label is not ``[studies] normal_label``.
2. Fewer than ``min_slices`` slices in the study: ``needs_review`` (too few to judge).
3. At least ``min_slices`` tumour slices: if one label holds at least ``agreement`` of them,
   that label is the verdict; otherwise ``needs_review`` (the slices disagree on the type).
4. Between 1 and ``min_slices - 1`` tumour slices: ``needs_review`` (something is seen on a
   few slices: a person should look at them).
5. No tumour slice: ``needs_review`` if at least ``min_slices`` of the slices that need
   review lean to a tumour (their top label is not the normal one), or if more than
   ``max_review_share`` of all slices need review (too little of the study could be
   judged); else ``normal_label``.

Per-class probabilities summarise every slice: the highest and the mean probability a slice
gave each class. The *most suspicious* slices are those with the lowest probability of the
normal label.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .settings import StudiesConfig

NEEDS_REVIEW = "needs_review"


@dataclass(frozen=True)
class Slice:
    """What the verdict needs from one per-slice report (``reports/<id>.json``)."""

    report_id: str
    sop_instance_uid: str
    series_instance_uid: str
    series_description: str | None
    label: str
    confidence: float
    probabilities: dict[str, float]
    needs_review: bool
    archived_as: str | None = None
    sop_class_uid: str | None = None
    offloaded_to: str | None = None  # the folder ``edge-agent offload`` moved its report to

    @classmethod
    def from_report(cls, report: dict[str, Any], archived_as: str | None = None,
                    offloaded_to: str | None = None) -> Slice:
        dicom = report.get("dicom") or {}
        pred = report["prediction"]
        return cls(report_id=str(report["id"]),
                   sop_instance_uid=str(dicom.get("sop_instance_uid") or report["id"]),
                   series_instance_uid=str(dicom.get("series_instance_uid") or "unknown"),
                   series_description=dicom.get("series_description"),
                   label=str(pred["label"]), confidence=float(pred["confidence"]),
                   probabilities={str(k): float(v) for k, v in pred["probabilities"].items()},
                   needs_review=bool(report["needs_review"]), archived_as=archived_as,
                   sop_class_uid=dicom.get("sop_class_uid"), offloaded_to=offloaded_to)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> Slice | None:
        """The slice an offloaded instance entry of a study report describes, once its
        report is off the box: the entry plus ``kept()``. None if it lacks them (marked
        before they were kept, or edited by hand)."""
        try:
            moved, probs = entry["offloaded_to"], entry["probabilities"]
            if not (isinstance(moved, str) and moved and isinstance(probs, dict)
                    and isinstance(entry["needs_review"], bool)):
                return None
            return cls(report_id=str(entry["report"]),
                       sop_instance_uid=str(entry["sop_instance_uid"]),
                       series_instance_uid=str(entry["series_instance_uid"]),
                       series_description=_text(entry["series_description"]),
                       label=str(entry["label"]), confidence=float(entry["confidence"]),
                       probabilities={str(k): float(v) for k, v in probs.items()},
                       needs_review=entry["needs_review"], archived_as=entry.get("archived_as"),
                       sop_class_uid=_text(entry["sop_class_uid"]), offloaded_to=moved)
        except (KeyError, TypeError, ValueError):
            return None

    def kept(self) -> dict[str, Any]:
        """What a study report's instance entry keeps of an offloaded slice beyond its usual
        fields, so that ``from_entry`` rebuilds it without the disk its report went to."""
        return {"probabilities": dict(self.probabilities),
                "series_description": self.series_description,
                "sop_class_uid": self.sop_class_uid}


def instances_hash(slices: list[Slice]) -> str:
    """Identifies the set of reports a verdict was made from: a new instance, a new hash."""
    text = "\n".join(sorted({s.report_id for s in slices}))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def distinct(slices: list[Slice]) -> list[Slice]:
    """One slice per SOP Instance UID (an instance sent twice with other bytes counts once:
    the first report, by report id, so the choice does not depend on arrival order)."""
    seen: dict[str, Slice] = {}
    for s in sorted(slices, key=lambda s: s.report_id):
        seen.setdefault(s.sop_instance_uid, s)
    return sorted(seen.values(), key=lambda s: (s.series_instance_uid, s.sop_instance_uid))


def judge(slices: list[Slice], rule: StudiesConfig, labels: list[str]) -> dict[str, Any]:
    """The verdict and everything the study report shows about how it was reached."""
    slices = distinct(slices)
    normal = rule.normal_label
    confident = [s for s in slices if not s.needs_review]
    tumour = [s for s in confident if s.label != normal]
    leaning = [s for s in slices if s.needs_review and s.label != normal]
    by_label = Counter(s.label for s in confident)
    tumour_labels = Counter(s.label for s in tumour)
    review_share = (len(slices) - len(confident)) / len(slices) if slices else 0.0
    n = len(slices)
    if n < rule.min_slices:
        verdict = NEEDS_REVIEW
        reason = (f"only {n} slice(s) in the study; at least {rule.min_slices} are needed to "
                  "judge a study")
    elif len(tumour) >= rule.min_slices:
        top, count = sorted(tumour_labels.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        share = count / len(tumour)
        if share >= rule.agreement:
            verdict = top
            reason = (f"{len(tumour)} of {n} slices confidently show a tumour, {count} of them "
                      f"({share:.0%}) {top} (at least {rule.min_slices} tumour slices and "
                      f"{rule.agreement:.0%} agreement are required)")
        else:
            verdict = NEEDS_REVIEW
            reason = (f"{len(tumour)} slices confidently show a tumour but disagree on its type "
                      f"({_counts(tumour_labels)}); the most common, {top}, holds {share:.0%}, "
                      f"below the {rule.agreement:.0%} required")
    elif tumour:
        verdict = NEEDS_REVIEW
        reason = (f"{len(tumour)} slice(s) confidently show a tumour ({_counts(tumour_labels)}), "
                  f"fewer than the {rule.min_slices} required for a verdict: look at them")
    elif len(leaning) >= rule.min_slices:
        verdict = NEEDS_REVIEW
        reason = (f"no slice confidently shows a tumour, but {len(leaning)} uncertain slices "
                  f"lean to one ({_counts(Counter(s.label for s in leaning))}): look at them")
    elif review_share > rule.max_review_share:
        verdict = NEEDS_REVIEW
        reason = (f"no slice confidently shows a tumour, but {n - len(confident)} of {n} slices "
                  f"({review_share:.0%}) need review, more than the {rule.max_review_share:.0%} "
                  "allowed")
    else:
        verdict = normal
        reason = (f"none of the {len(confident)} confidently judged slices (of {n}) shows a "
                  "tumour")
    return {
        "verdict": verdict,
        "verdict_reason": reason,
        "counts": {"instances": n, "confident": len(confident),
                   "needs_review": n - len(confident), "tumour_slices": len(tumour),
                   "by_label": {label: by_label.get(label, 0) for label in labels}},
        "probabilities": _probabilities(slices, labels),
        "series": _series(slices, labels),
    }


def suspicious(slices: list[Slice], rule: StudiesConfig, count: int) -> list[Slice]:
    """The ``count`` slices least likely to be normal (ties: the more confident first)."""
    ranked = sorted(distinct(slices),
                    key=lambda s: (s.probabilities.get(rule.normal_label, 0.0), -s.confidence,
                                   s.sop_instance_uid))
    return ranked[:count]


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("not a text")
    return value


def _counts(counter: Counter) -> str:
    return ", ".join(f"{label} {n}" for label, n in sorted(counter.items(),
                                                          key=lambda kv: (-kv[1], kv[0])))


def _probabilities(slices: list[Slice], labels: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for label in labels:
        values = [s.probabilities.get(label, 0.0) for s in slices]
        out[label] = {"max": round(max(values), 4) if values else 0.0,
                      "mean": round(sum(values) / len(values), 4) if values else 0.0}
    return out


def _series(slices: list[Slice], labels: list[str]) -> list[dict[str, Any]]:
    groups: dict[str, list[Slice]] = {}
    for s in slices:
        groups.setdefault(s.series_instance_uid, []).append(s)
    out = []
    for uid, members in sorted(groups.items()):
        confident = Counter(s.label for s in members if not s.needs_review)
        out.append({"series_instance_uid": uid,
                    "series_description": members[0].series_description,
                    "instances": len(members),
                    "needs_review": sum(1 for s in members if s.needs_review),
                    "by_label": {label: confident.get(label, 0) for label in labels}})
    return out
