"""The model, its manifest, and the decision whether a prediction needs a human's review.

``Classifier`` loads a model only after its sha256 matches its manifest, preprocesses with
the manifest's ``PreprocessSpec`` (the very functions the trainer used), and turns the
interpreter's output into a ``Prediction``. With a manifest of format 2 the
probabilities are calibrated, the image gets an "unlike the training data" score and a
heat-map (``edge.trust``, ``edge.heatmap``). A prediction is flagged ``needs_review`` with
the reason spelled out by the rule in ``edge.trust.review_reasons``: confidence below
``[review] threshold``, margin below ``[review] min_margin``, an image unlike the training
data, or a "no tumour" answer that is not confident and checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import trust as trust_rule
from .config import AgentConfig, ReviewConfig
from .decoded import DecodedImage
from .errors import ConfigError, ModelOutputError
from .heatmap import answer_margin, occlusion_map, spatial_map
from .manifest import MANIFEST_NAME, ModelManifest, default_model_dir, load_verified
from .preprocess import resize_uint8, scale
from .runtime import TFLiteClassifier
from .trust import Assessment, TrustModel
from .views import views


@dataclass
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]
    needs_review: bool
    review_reasons: list[str]
    model_input: np.ndarray  # the uint8 (H, W, 3) picture the model saw, for the thumbnail
    timings_ms: dict[str, float] = field(default_factory=dict)
    trust: dict[str, Any] | None = None  # the report's ``trust`` section
    heatmap: np.ndarray | None = None  # (h, w) map in 0..1 over the model input
    heatmap_kind: str | None = None
    heatmap_effect: float | None = None  # occlusion: the largest fall of the answer's margin


def resolve_model_path(configured: str) -> Path:
    """The model folder/file to use: the configured one, else the one shipped with the package."""
    if configured:
        path = Path(configured).expanduser()
        if not path.exists():
            raise ConfigError(f"model {path} does not exist; pass --model with a folder holding "
                              f"model.tflite and {MANIFEST_NAME}")
        if not path.is_dir() and path.suffix not in (".tflite", ".json"):
            raise ConfigError(f"model {path} is a file, not a model: pass --model with the "
                              f"folder holding model.tflite and {MANIFEST_NAME}")
        return path
    shipped = default_model_dir()
    if shipped is None:
        raise ConfigError(
            "no model is shipped with this version of neuroedge yet: pass --model DIR (a folder "
            f"holding model.tflite and the {MANIFEST_NAME} written by `python -m "
            "converters.tflite`), or set [paths] model in the config file")
    return shipped


class Classifier:
    """A verified model plus the review policy; ``classify`` turns a picture into a Prediction."""

    def __init__(self, config: AgentConfig, model_path: Path | None = None) -> None:
        path = model_path if model_path is not None else resolve_model_path(config.paths.model)
        if path.is_file() and path.name == MANIFEST_NAME:
            path = path.parent
        self.manifest, self.model_path = load_verified(path)
        self.model_sha256 = self.manifest.model_sha256
        threads = config.runtime.threads or None
        self._model = TFLiteClassifier(self.model_path, self.manifest, num_threads=threads,
                                       runtime=config.runtime.name or None)
        self.runtime_name = f"{self._model.runtime.name} {self._model.runtime.version}"
        self.review = config.review
        self.heatmap = config.report.heatmap
        self.trust = TrustModel(self.manifest, self.model_path.parent)
        self.body_parts = tuple(p.strip().upper() for p in config.dicom.body_parts)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    def describe(self) -> dict[str, Any]:
        """The report's ``model`` section."""
        m: ModelManifest = self.manifest
        return {"name": m.name, "version": m.version, "architecture": m.architecture,
                "sha256": m.model_sha256, "quantization": m.quantization,
                "labels": list(m.labels), "runtime": self.runtime_name,
                "file": self.model_path.name, "test_time": m.test_time}

    def self_test(self) -> np.ndarray:
        """Run the model once on a blank picture: proves the runtime can execute it."""
        blank = np.zeros(self.manifest.preprocess.shape, dtype=np.uint8)
        probs = self._model.predict(scale(blank, self.manifest.preprocess))
        if probs.shape != (len(self.manifest.labels),) or not np.all(np.isfinite(probs)):
            raise ConfigError(f"the model returned {probs!r} for a blank picture; it is broken")
        return probs

    def classify(self, decoded: DecodedImage, heatmap: str | None = None) -> Prediction:
        """``heatmap``: this call's ``[report] heatmap`` ("none" where only the answer counts,
        as when a whole folder is validated); None: the configured one."""
        heatmap = self.heatmap if heatmap is None else heatmap
        spec = self.manifest.preprocess
        t0 = time.perf_counter()
        pixels = resize_uint8(decoded.picture, spec)
        model_input = scale(pixels, spec)
        t1 = time.perf_counter()
        probs, outputs = self._model.predict_with_outputs(model_input)
        # the manifest's test-time views (edge.views): the answer is their mean; the trust
        # score and the heat-map are the picture's own
        others = [self.trust.assess(*self._model.predict_with_outputs(view), ood=False)
                  for view in views(model_input, self.manifest.test_time)[1:]]
        t2 = time.perf_counter()
        assessment = self.trust.assess(probs, outputs).averaged_with(others)
        prediction = self._decide(assessment, pixels, {"preprocess": (t1 - t0) * 1000,
                                                       "inference": (t2 - t1) * 1000})
        index = self.labels.index(prediction.label)
        if heatmap == "model" and self.trust.heatmap_output is not None:
            prediction.heatmap = spatial_map(
                outputs[self.trust.heatmap_output], self.trust.heatmap_kind or "spatial_attention",
                self.trust.heatmap_weights(index))
            prediction.heatmap_kind = self.trust.heatmap_kind
        t3 = time.perf_counter()
        if heatmap == "occlusion":
            prediction.heatmap, prediction.heatmap_effect = occlusion_map(
                pixels, lambda changed: answer_margin(
                    *self._model.predict_with_outputs(scale(changed, spec)), index))
            prediction.heatmap_kind = "occlusion"
            prediction.timings_ms["heatmap"] = (time.perf_counter() - t3) * 1000
        prediction.timings_ms["trust"] = (t3 - t2) * 1000
        body_part = decoded.details.get("body_part_examined") if decoded.kind == "dicom" else None
        if body_part and self.body_parts and body_part not in self.body_parts:
            prediction.review_reasons.append(
                f"Body Part Examined is {body_part}: the model was trained on brain MR only")
            prediction.needs_review = True
        return prediction

    def _decide(self, assessment: Assessment, pixels: np.ndarray,
                timings: dict[str, float]) -> Prediction:
        labels = self.labels
        probs = assessment.probabilities
        if not np.all(np.isfinite(probs)):
            raise ModelOutputError(
                "the model's output for this input is not a number (NaN or infinite), so there "
                "is no answer to give; the input is set aside. If this happens for ordinary "
                "scans, the model file is broken: reinstall it")
        probs = np.clip(probs, 0.0, 1.0)
        order = np.argsort(-probs, kind="stable")
        top = int(order[0])
        confidence = float(probs[top])
        margin = confidence - float(probs[order[1]]) if len(order) > 1 else confidence
        reasons = review_reasons(labels[top], confidence, margin, labels[int(order[1])],
                                 self.review, assessment, self.trust.negative_label)
        return Prediction(
            label=labels[top], confidence=round(confidence, 6),
            probabilities={label: round(float(p), 6) for label, p in zip(labels, probs)},
            needs_review=bool(reasons), review_reasons=reasons, model_input=pixels,
            timings_ms=timings, trust=assessment.to_report())


def review_reasons(label: str, confidence: float, margin: float, runner_up: str,
                   review: ReviewConfig, assessment: Assessment | None = None,
                   negative_label: str | None = None) -> list[str]:
    """The review rule (``edge.trust.review_reasons``) with the configured thresholds."""
    if assessment is None:
        assessment = Assessment(probabilities=np.zeros(0), calibrated=False)
    return trust_rule.review_reasons(
        label=label, confidence=confidence, margin=margin, runner_up=runner_up,
        assessment=assessment, threshold=review.threshold, min_margin=review.min_margin,
        no_tumour_threshold=review.no_tumour_threshold, negative_label=negative_label)
