"""How far to trust one answer: calibrated probabilities, an "unlike the training data"
score, and the review rule that never lets a tumour be missed silently.

Everything comes from the model's manifest (``trust``, format 2) and the statistics file
beside it; the device only does NumPy arithmetic on the model's own extra outputs:

- **temperature**: probabilities are ``softmax(logits / T)``, T fitted on the training
  run's validation split (``converters.trust``), so that "80 %" means right about 80 % of
  the time on images like the training data;
- **unlike the training data** ("out of distribution", OOD): the Mahalanobis distance of
  the image's pooled feature descriptors to the nearest class mean of the training images
  (one covariance shared by the classes), compared with a threshold that a chosen share of
  the validation images (95 % by default) stay under. The covariance is stored in a
  compact form (statistics format 2): features standardised, the ``k`` leading principal
  directions with their variances, and one variance for everything outside them
  (probabilistic PCA). Format 1 (a full precision matrix) is still read;
- **the rule** (``review_reasons``): an answer is flagged for review when its calibrated
  confidence is below ``[review] threshold``, its margin below ``[review] min_margin``, or
  the image is unlike the training data; and a "no tumour" answer (``negative_label``) is
  given unflagged only when it is also at least ``[review] no_tumour_threshold`` confident
  and the image was checked and found like the training data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelIntegrityError
from .manifest import ModelManifest

STATISTICS_FORMAT = "neuroedge.trust-statistics/2"
FULL_PRECISION_FORMAT = "neuroedge.trust-statistics/1"  # still read: models fitted before
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
    """Distance of each row of ``features`` (N, D) to the nearest of ``means`` (K, D), with a
    full precision matrix (D, D): statistics format 1."""
    x = np.atleast_2d(np.asarray(features, dtype=np.float64))
    best = np.full(len(x), np.inf)
    for mean in means:
        d = x - mean
        best = np.minimum(best, ((d @ precision) * d).sum(axis=1))  # BLAS, not einsum
    return np.sqrt(np.maximum(best, 0.0))


def subspace_distances(features: np.ndarray, means: np.ndarray, scale: np.ndarray,
                       components: np.ndarray, variances: np.ndarray,
                       residual_variance: float) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``features`` (N, D) to each of ``means``
    (K, D), (N, K), under the covariance ``V diag(variances) V^T + residual_variance (I - V
    V^T)`` of the standardised features ``z = (x - mean) / scale``; ``V`` is ``components``
    (D, k, orthonormal columns). With ``k == D`` (``residual_variance`` 0) it is the full
    distance. Statistics format 2."""
    x = np.atleast_2d(np.asarray(features, dtype=np.float64))
    out = np.empty((len(x), len(means)))
    for j, mean in enumerate(means):
        z = (x - mean) / scale
        p = z @ components
        inside = (p * p).sum(axis=1)
        q = (p * p / variances).sum(axis=1)
        if residual_variance > 0:
            q += np.maximum((z * z).sum(axis=1) - inside, 0.0) / residual_variance
        out[:, j] = q
    return out


def subspace_mahalanobis(features: np.ndarray, means: np.ndarray, scale: np.ndarray,
                         components: np.ndarray, variances: np.ndarray,
                         residual_variance: float) -> np.ndarray:
    """Distance to the nearest class mean (see ``subspace_distances``)."""
    return np.sqrt(subspace_distances(features, means, scale, components, variances,
                                      residual_variance).min(axis=1))


@dataclass(frozen=True)
class OodStatistics:
    """The training images' class means and shared covariance (format 2: standardised, ``k``
    principal directions and a residual variance; format 1: a full precision matrix), and the
    sorted validation scores."""

    inputs: tuple[str, ...]
    means: np.ndarray
    validation_scores: np.ndarray  # sorted
    threshold: float
    precision: np.ndarray | None = None  # format 1
    scale: np.ndarray | None = None  # format 2 from here on
    components: np.ndarray | None = None
    variances: np.ndarray | None = None
    residual_variance: float = 0.0

    def distances(self, features: np.ndarray) -> np.ndarray:
        """The score of each row of ``features`` (N, D)."""
        if self.precision is not None:
            return mahalanobis(features, self.means, self.precision)
        return subspace_mahalanobis(features, self.means, self.scale, self.components,
                                    self.variances, self.residual_variance)

    def score(self, outputs: dict[str, np.ndarray]) -> float:
        return float(self.distances(feature_vector(outputs, self.inputs))[0])

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
                if fmt not in (STATISTICS_FORMAT, FULL_PRECISION_FORMAT):
                    raise ModelIntegrityError(f"{path} is {fmt!r}, this agent reads "
                                              f"{STATISTICS_FORMAT!r}: upgrade neuroedge")
                arrays = {key: data[key] for key in data.files if key != "format"}
                stored_inputs = tuple(str(x) for x in arrays.pop("inputs"))
                means = np.asarray(arrays["means"], dtype=np.float64)
                validation = np.sort(np.asarray(arrays["validation_scores"], dtype=np.float64))
                if fmt == FULL_PRECISION_FORMAT:
                    fields = {"precision": np.asarray(arrays["precision"], dtype=np.float64)}
                else:
                    fields = {"scale": np.asarray(arrays["scale"], dtype=np.float64),
                              "components": np.asarray(arrays["components"], dtype=np.float64),
                              "variances": np.asarray(arrays["variances"], dtype=np.float64),
                              "residual_variance": float(arrays["residual_variance"])}
        except (OSError, ValueError, KeyError) as exc:
            raise ModelIntegrityError(f"cannot read the trust statistics {path}: {exc}; "
                                      "reinstall the model folder") from None
        if stored_inputs != tuple(inputs):
            raise ModelIntegrityError(f"{path} was fitted on outputs {stored_inputs}, the "
                                      f"manifest says {tuple(inputs)}: refit the model's trust")
        problem = _shape_problem(means, fields)
        if problem:
            raise ModelIntegrityError(f"{path} holds {problem}, which do not fit together")
        return cls(tuple(inputs), means, validation, float(threshold), **fields)


def _shape_problem(means: np.ndarray, fields: dict[str, Any]) -> str | None:
    if means.ndim != 2:
        return f"means {means.shape}"
    d = means.shape[1]
    if "precision" in fields:
        precision = fields["precision"]
        return None if precision.shape == (d, d) else (
            f"means {means.shape} and precision {precision.shape}")
    scale, components, variances = fields["scale"], fields["components"], fields["variances"]
    k = components.shape[1] if components.ndim == 2 else -1
    if (scale.shape != (d,) or components.shape != (d, k) or variances.shape != (k,)
            or not (variances > 0).all() or not (scale > 0).all()
            or fields["residual_variance"] < 0 or (k < d and fields["residual_variance"] <= 0)):
        return (f"means {means.shape}, scale {scale.shape}, components {components.shape}, "
                f"variances {variances.shape} and residual variance "
                f"{fields['residual_variance']}")
    return None


def load_class_activation(path: Path, channels: int, map_shape: tuple[int, int],
                          classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The final classifier's weights (channels x classes) and the class activation map's
    mean over the training images (H x W x classes), kept in the statistics file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = np.asarray(data["class_weights"], dtype=np.float64)
            baseline = np.asarray(data["class_activation_baseline"], dtype=np.float64)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelIntegrityError(f"cannot read the class activation map's weights from "
                                  f"{path}: {exc}; refit the model's trust") from None
    for name, value, shape in (("classifier weights", weights, (channels, classes)),
                               ("class activation baseline", baseline, (*map_shape, classes))):
        if value.shape != shape or not np.all(np.isfinite(value)):
            raise ModelIntegrityError(f"{path} holds {name} of shape {value.shape}, the model "
                                      f"needs {shape}: refit the model's trust")
    return weights, baseline


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

    def averaged_with(self, others: list[Assessment]) -> Assessment:
        """This assessment with the probabilities averaged over it and ``others``, the other
        test-time views of the same picture (``edge.views``). The "unlike the training data"
        score stays this one's, the picture as it is, which its threshold was fitted on."""
        if not others:
            return self
        every = [self, *others]
        uncalibrated = (None if any(a.uncalibrated is None for a in every)
                        else np.mean([a.uncalibrated for a in every], axis=0))
        return replace(self, probabilities=np.mean([a.probabilities for a in every], axis=0),
                       uncalibrated=uncalibrated)

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
        self.class_activation: tuple[np.ndarray, np.ndarray] | None = None
        if self.heatmap_kind == "class_activation":
            shape = manifest.outputs[self.heatmap_output].spec.shape  # [1, H, W, C]
            self.class_activation = load_class_activation(
                Path(folder) / ood["statistics"], int(shape[-1]), (int(shape[1]), int(shape[2])),
                len(manifest.labels))

    def heatmap_weights(self, label_index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """For a class activation map: the classifier's weights of one class and that class's
        mean map over the training images; else None."""
        if self.class_activation is None:
            return None
        weights, baseline = self.class_activation
        return weights[:, label_index], baseline[..., label_index]

    def assess(self, probabilities: np.ndarray, outputs: dict[str, np.ndarray],
               ood: bool = True) -> Assessment:
        """``ood=False``: the probabilities only (another test-time view of a picture)."""
        probs = np.asarray(probabilities, dtype=np.float64)
        result = Assessment(probabilities=probs, calibrated=False, uncalibrated=probs)
        if self.temperature is not None and "logits" in outputs:
            result.probabilities = softmax(outputs["logits"], self.temperature)
            result.calibrated = True
            result.temperature = self.temperature
        if ood and self.ood is not None:
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
        reasons.append(f"confidence {_below(confidence, threshold)} is below the review "
                       f"threshold {threshold:.2f}")
    if min_margin > 0 and margin < min_margin:
        reasons.append(f"the runner-up ({runner_up}) is only {_below(margin, min_margin)} "
                       f"behind (minimum margin {min_margin:.2f})")
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
        if assessment.in_distribution is False:
            # the dangerous case: the confidence means nothing here (docs/trust.md: the
            # shipped models call tumour slices of another source "notumor" at 0.9 and above)
            reasons.append(f"a '{label}' answer does not rule out a tumour on an image unlike "
                           "the training images: the confidence is calibrated only for images "
                           "like those, and on tumour slices from another source models like "
                           f"this one have answered '{label}' with high confidence")
        if assessment.in_distribution is None:
            reasons.append(f"a '{label}' answer is only given unreviewed when the image is "
                           "checked to be like the training images, and this model has no "
                           "such check")
        if confidence < no_tumour_threshold:
            reasons.append(f"a '{label}' answer is only given unreviewed at a confidence of "
                           f"{no_tumour_threshold:.2f} or more (this one: "
                           f"{_below(confidence, no_tumour_threshold)}), "
                           "so that a tumour is never missed silently")
    return reasons


def _below(value: float, limit: float) -> str:
    """``value`` to 2 decimals, or as many more as show it below ``limit`` (0.94959 against
    0.95 is "0.9496": "0.95 is below 0.95" read as a contradiction on the report page)."""
    for places in range(2, 7):
        text = f"{value:.{places}f}"
        if float(text) < limit:
            return text
    return text


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
