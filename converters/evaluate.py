"""Float model vs converted model on the same images: accuracy, agreement, where they differ.

Both models see exactly the same preprocessed pixels. The converted model runs through the
device's own code (``edge.runtime.TFLiteClassifier``: quantize the input with the
interpreter's scale and zero point, dequantize the output), so what is measured here is what
a clinic's device will do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.preprocess import PreprocessSpec, scale

log = logging.getLogger(__name__)

CHUNK = 64


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=None, leave=False)


def predict_batched(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                    spec: PreprocessSpec, desc: str) -> np.ndarray:
    """Scale uint8 ``images`` chunk by chunk (float32 of the full test set is ~0.8 GB)."""
    outputs = []
    with _progress(len(images), desc) as bar:
        for start in range(0, len(images), CHUNK):
            chunk = scale(images[start:start + CHUNK], spec)
            outputs.append(np.asarray(predict(chunk), dtype=np.float32))
            bar.update(len(chunk))
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def keras_predictor(model: Any, output_kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """The float Keras model as a function: float images -> probabilities."""
    def predict(batch: np.ndarray) -> np.ndarray:
        out = np.asarray(model.predict(batch, batch_size=32, verbose=0), dtype=np.float32)
        return softmax(out) if output_kind == "logits" else out
    return predict


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def output_kind_of(outputs: np.ndarray) -> str:
    """'probabilities' when every row is a distribution (a softmax head), else 'logits'."""
    outputs = np.asarray(outputs, dtype=np.float64)
    is_prob = (outputs.min() >= -1e-6 and outputs.max() <= 1 + 1e-6
               and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))
    return "probabilities" if is_prob else "logits"


def compare(y_true: np.ndarray, float_probs: np.ndarray, quant_probs: np.ndarray,
            labels: list[str], quant_name: str = "quantized") -> dict[str, Any]:
    """Everything the gate and the report need about one evaluation set.

    The numbers come from ``trainer.metrics`` (the trainer's own definitions); here they are
    put in the gate's units: percent (``_pct``) and percentage points (``_pp``); probability
    differences stay absolute on [0, 1]. Added: how sure the float model was (the gap
    between its two highest probabilities) overall and on the images whose answer changed.
    """
    from trainer.metrics import compare_predictions, compute_metrics

    y_true = np.asarray(y_true, dtype=np.int64)
    n = int(len(y_true))
    cmp = compare_predictions(y_true, float_probs, quant_probs, labels)
    float_m = compute_metrics(y_true, float_probs, labels)
    quant_m = compute_metrics(y_true, quant_probs, labels)
    changed = float_probs.argmax(axis=1) != quant_probs.argmax(axis=1)
    top2 = np.sort(np.asarray(float_probs, dtype=np.float64), axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    per_class = {
        label: {
            "support": int(float_m["per_class"][label]["support"]),
            "float_recall_pct": _pct(float_m["per_class"][label]["recall"]),
            "quantized_recall_pct": _pct(quant_m["per_class"][label]["recall"]),
            "recall_delta_pp": _pct(cmp["recall_delta"][label]),
        }
        for label in labels
    }
    return {
        "n": n,
        "float_accuracy_pct": _pct(cmp["accuracy_a"]),
        "quantized_accuracy_pct": _pct(cmp["accuracy_b"]),
        "accuracy_drop_pp": _pct(-cmp["accuracy_delta"]),
        "top1_agreement_pct": _pct(cmp["top1_agreement"]),
        "disagreements": int(changed.sum()),
        "mean_abs_prob_diff": _round(cmp["mean_abs_prob_diff"], 6),
        "max_abs_prob_diff": _round(cmp["max_abs_prob_diff"], 6),
        "float_margin_median": _round(np.median(margin), 4) if n else None,
        "float_margin_median_disagreeing": (_round(np.median(margin[changed]), 4)
                                            if changed.any() else None),
        "per_class": per_class,
        "float_confusion_matrix": cmp["confusion_matrix_a"],
        "quantized_confusion_matrix": cmp["confusion_matrix_b"],
        "float_macro_f1": _round(float_m["macro"]["f1"], 4),
        "quantized_macro_f1": _round(quant_m["macro"]["f1"], 4),
        "quantized_name": quant_name,
    }


def _pct(value: Any) -> float:
    return _round(100.0 * float(value))


def _round(value: Any, digits: int = 3) -> float:
    return round(float(value), digits)
