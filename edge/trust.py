"""How far to trust one answer: calibrated probabilities, an "unlike the training data"
score, and the review rule that never lets a tumour be missed silently.

Everything comes from the model's manifest (``trust``, format 2) and the statistics file
beside it; the device only does NumPy arithmetic on the model's own extra outputs:

- **temperature**: probabilities are ``softmax(logits / T)``, T fitted on the training
  run's validation split (``converters.trust``), so that "80 %" means right about 80 % of
  the time on images like the training data;
- **unlike the training data** ("out of distribution", OOD): the Mahalanobis distance of
  the image's pooled feature descriptors to the nearest class mean of the training images
  (shared covariance), compared with a threshold that a chosen share of the validation
  images (95 % by default) stay under;
- **the rule** (``review_reasons``): an answer is flagged for review when its calibrated
  confidence is below ``[review] threshold``, its margin below ``[review] min_margin``, or
  the image is unlike the training data; and a "no tumour" answer (``negative_label``) is
  given unflagged only when it is also at least ``[review] no_tumour_threshold`` confident
  and the image was checked and found like the training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelIntegrityError
from .manifest import ModelManifest

STATISTICS_FORMAT = "neuroedge.trust-statistics/1"
DEFAULT_NEGATIVE_LABELS = ("notumor", "no_tumor", "no_tumour", "notumour")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def pooled(value: np.ndarray) -> np.ndarray:
    """One output as a descriptor vector: a map (H, W, C) by its mean and max per channel,
    anything else flattened."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == 3:
        return np.concatenate([value.mean(axis=(0, 1)), value.max(axis=(0, 1))])
    return value.reshape(-1)


def feature_vector(outputs: dict[str, np.ndarray], inputs: tuple[str, ...]) -> np.ndarray:
    """The OOD score's input: the named outputs pooled and concatenated, in ``inputs`` order."""
    return np.concatenate([pooled(outputs[key]) for key in inputs])


def mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Distance of each row of ``features`` (N, D) to the nearest of ``means`` (K, D)."""
    x = np.atleast_2d(np.asarray(features, dtype=np.float64))
    best = np.full(len(x), np.inf)
    for mean in means:
        d = x - mean
        best = np.minimum(best, ((d @ precision) * d).sum(axis=1))  # BLAS, not einsum
    return np.sqrt(np.maximum(best, 0.0))


@dataclass(frozen=True)
class OodStatistics:
    """The training images' class means and shared precision, and the validation scores."""

    inputs: tuple[str, ...]
    means: np.ndarray
    precision: np.ndarray
    validation_scores: np.ndarray  # sorted
    threshold: float

    def score(self, outputs: dict[str, np.ndarray]) -> float:
        return float(mahalanobis(feature_vector(outputs, self.inputs), self.means,
                                 self.precision)[0])

    def share_below(self, score: float) -> float:
        """Share of the validation images that scored lower: how unusual this image is."""
        if not len(self.validation_scores):
            return float("nan")
        return float(np.searchsorted(self.validation_scores, score) / len(self.validation_scores))

    @classmethod
    def load(cls, path: Path, inputs: tuple[str, ...], threshold: float) -> OodStatistics:
        try:
            with np.load(path, allow_pickle=False) as data:
                fmt = str(data["format"])
                means, precision = data["means"], data["precision"]
                validation = np.sort(np.asarray(data["validation_scores"], dtype=np.float64))
                stored_inputs = tuple(str(x) for x in data["inputs"])
        except (OSError, ValueError, KeyError) as exc:
            raise ModelIntegrityError(f"cannot read the trust statistics {path}: {exc}; "
                                      "reinstall the model folder") from None
        if fmt != STATISTICS_FORMAT:
            raise ModelIntegrityError(f"{path} is {fmt!r}, this agent reads "
                                      f"{STATISTICS_FORMAT!r}: upgrade neuroedge")
        if stored_inputs != tuple(inputs):
            raise ModelIntegrityError(f"{path} was fitted on outputs {stored_inputs}, the "
                                      f"manifest says {tuple(inputs)}: refit the model's trust")
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise ModelIntegrityError(f"{path} holds means {means.shape} and precision "
                                      f"{precision.shape}, which do not fit together")
        return cls(tuple(inputs), means.astype(np.float64), precision.astype(np.float64),
                   validation, float(threshold))


@dataclass
class Assessment:
    """What the trust checks say about one answer (goes into the report's ``trust``)."""

    probabilities: np.ndarray
    calibrated: bool
    temperature: float | None = None
    uncalibrated: np.ndarray | None = None  # the model's own probabilities
    ood_score: float | None = None
    ood_threshold: float | None = None
    ood_share_below: float | None = None

    @property
    def in_distribution(self) -> bool | None:
        if self.ood_score is None or self.ood_threshold is None:
            return None
        return self.ood_score <= self.ood_threshold

    def to_report(self) -> dict[str, Any]:
        share = self.ood_share_below
        return {
            "calibrated": self.calibrated,
            "temperature": self.temperature,
            "uncalibrated_probabilities": None if self.uncalibrated is None or not self.calibrated
            else [round(float(p), 6) for p in self.uncalibrated],
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
            "ood_threshold": None if self.ood_threshold is None else round(self.ood_threshold, 4),
            "ood_validation_share_below": None if share is None or share != share
            else round(share, 4),
            "in_distribution": self.in_distribution,
        }


class TrustModel:
    """The trust section of one model's manifest, loaded and ready to apply."""

    def __init__(self, manifest: ModelManifest, folder: Path) -> None:
        trust = manifest.trust
        self.temperature: float | None = (float(trust["temperature"])
                                          if "temperature" in trust else None)
        negative = trust.get("negative_label")
        if negative is None:
            negative = next((x for x in manifest.labels if x.lower() in DEFAULT_NEGATIVE_LABELS),
                            None)
        self.negative_label: str | None = negative
        self.ood: OodStatistics | None = None
        ood = trust.get("ood")
        if ood is not None:
            self.ood = OodStatistics.load(Path(folder) / ood["statistics"],
                                          tuple(ood["inputs"]), float(ood["threshold"]))
        heatmap = trust.get("heatmap")
        self.heatmap_output: str | None = heatmap["output"] if heatmap else None
        self.heatmap_kind: str | None = heatmap["kind"] if heatmap else None

    def assess(self, probabilities: np.ndarray, outputs: dict[str, np.ndarray]) -> Assessment:
        probs = np.asarray(probabilities, dtype=np.float64)
        result = Assessment(probabilities=probs, calibrated=False, uncalibrated=probs)
        if self.temperature is not None and "logits" in outputs:
            result.probabilities = softmax(outputs["logits"], self.temperature)
            result.calibrated = True
            result.temperature = self.temperature
        if self.ood is not None:
            result.ood_score = self.ood.score(outputs)
            result.ood_threshold = self.ood.threshold
            result.ood_share_below = self.ood.share_below(result.ood_score)
        return result


def review_reasons(*, label: str, confidence: float, margin: float, runner_up: str,
                   assessment: Assessment, threshold: float, min_margin: float,
                   no_tumour_threshold: float, negative_label: str | None) -> list[str]:
    """Why an answer needs a human's review, in words; empty when it may stand alone."""
    reasons = []
    if confidence < threshold:
        reasons.append(f"confidence {confidence:.2f} is below the review threshold "
                       f"{threshold:.2f}")
    if min_margin > 0 and margin < min_margin:
        reasons.append(f"the runner-up ({runner_up}) is only {margin:.2f} behind (minimum "
                       f"margin {min_margin:.2f})")
    if assessment.in_distribution is False:
        share = assessment.ood_share_below
        unusual = (f"; more unusual than {share:.1%} of the validation images"
                   if share is not None and share == share else "")
        reasons.append(
            f"the image is unlike the images the model was trained on (score "
            f"{assessment.ood_score:.2f}, threshold {assessment.ood_threshold:.2f}{unusual}): "
            "it may not be a brain MR slice like those, or come from a different scanner or "
            "preparation")
    if negative_label is not None and label == negative_label:
        if assessment.in_distribution is None:
            reasons.append(f"a '{label}' answer is only given unreviewed when the image is "
                           "checked to be like the training images, and this model has no "
                           "such check")
        if confidence < no_tumour_threshold:
            reasons.append(f"a '{label}' answer is only given unreviewed at a confidence of "
                           f"{no_tumour_threshold:.2f} or more (this one: {confidence:.2f}), "
                           "so that a tumour is never missed silently")
    return reasons


def reliability(probabilities: np.ndarray, labels: np.ndarray,
                bins: int = 15) -> list[dict[str, float]]:
    """Equal-width confidence bins: how many answers, their mean confidence and accuracy."""
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    confidence = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    table = []
    for k, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        inside = (confidence > low) & (confidence <= high) if k else (
            (confidence >= low) & (confidence <= high))
        n = int(inside.sum())
        table.append({"low": float(low), "high": float(high), "n": n,
                      "confidence": float(confidence[inside].mean()) if n else None,
                      "accuracy": float(right[inside].mean()) if n else None})
    return table


def calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: the answers' share-weighted gap between confidence and
    accuracy over equal-width bins (Guo et al., 2017), 0..1."""
    total = len(labels)
    if not total:
        return float("nan")
    return float(sum(b["n"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in reliability(probabilities, labels, bins) if b["n"]))
