"""The external check in the converter's report: float and converted model on outside folders.

The gate decides on fidelity to the float model; this part says whether the pair is any
good on pictures from sources never seen in training (``trainer.external``: class folders,
or ``tumour`` for any tumour class). It is reported and recorded in the manifest
(``metrics.external``), not gated: a conversion cannot fix what training learned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.evaluate import predict_batched
from edge.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]


def load_sets(given: Sequence[Path], use_default: bool, labels: Sequence[str],
              spec: PreprocessSpec) -> list[Any]:
    """The external folders, decoded; a bad folder is trainer's DataError (exit 65) before
    any conversion starts."""
    from trainer.external import load_external, resolve_external_dirs

    return [load_external(d, labels, spec)
            for d in resolve_external_dirs([str(p) for p in given], use_default)]


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * float(value), 3)


def in_percent(metrics: dict[str, Any]) -> dict[str, Any]:
    """``trainer.external.external_metrics`` (fractions) in the report's units (percent)."""
    return {
        "n": metrics["n"],
        "accuracy_pct": _pct(metrics["accuracy"]),
        "tumour_images": metrics["tumour_images"],
        "tumour_sensitivity_pct": _pct(metrics["tumour_sensitivity"]),
        "tumour_sensitivity_ci95_pct": ([_pct(v) for v in metrics["tumour_sensitivity_ci95"]]
                                        if metrics.get("tumour_sensitivity_ci95") else None),
        "mean_top_probability": round(metrics["mean_top_probability"], 4),
        "predicted": metrics["predicted"],
        "folders": {name: {"n": f["n"], "correct": f["correct"],
                           "accuracy_pct": _pct(f["accuracy"]), "predicted": f["predicted"]}
                    for name, f in metrics["folders"].items()},
    }


def score(sets: Sequence[Any], labels: Sequence[str], spec: PreprocessSpec,
          predictors: dict[str, Predict]) -> list[dict[str, Any]]:
    """Each external set scored by each predictor (``{"float": ..., "int8": ...}``)."""
    from trainer.external import external_metrics

    results = []
    for ext in sets:
        entry: dict[str, Any] = {"name": ext.name, "dir": str(ext.root), "n": len(ext)}
        for role, predict in predictors.items():
            probs = predict_batched(predict, ext.images, spec, f"{role} model on {ext.name}")
            entry[role] = in_percent(external_metrics(ext.targets, ext.folders, probs,
                                                      list(labels)))
        results.append(entry)
    return results


def table_lines(results: Sequence[dict[str, Any]], mode: str) -> list[str]:
    """Terminal lines: per folder accuracy and tumour sensitivity, float beside converted."""
    if not results:
        return ["External check: none (no --external folder given and "
                "../shared/data/br35h-tumour not found)"]
    lines = []
    for r in results:
        roles = [role for role in ("float", "quantized") if role in r]
        heads = "".join(f"{mode if role == 'quantized' else role:>10}" for role in roles)
        lines.append(f"External check {r['name']} ({r['dir']}): {r['n']} images, not gated")
        lines.append(f"  {'':26}{heads}")
        first = r[roles[0]]
        for folder, f in first["folders"].items():
            cells = "".join(f"{r[role]['folders'][folder]['accuracy_pct']:>9.2f}%"
                            for role in roles)
            name = f"accuracy {folder} (n={f['n']})"
            lines.append(f"  {name:26}{cells}")
        if first["tumour_sensitivity_pct"] is not None:
            cells = "".join(f"{r[role]['tumour_sensitivity_pct']:>9.2f}%" for role in roles)
            ci = r[roles[-1]].get("tumour_sensitivity_ci95_pct")
            where = (f"; {mode if roles[-1] == 'quantized' else roles[-1]} 95% CI "
                     f"{ci[0]:.1f}-{ci[1]:.1f}%" if ci else "")
            lines.append(f"  {'tumour sensitivity':26}{cells}   (tumour pictures not called "
                         f"no-tumour, n={first['tumour_images']}{where})")
    return lines


def manifest_entries(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The compact record kept in ``model.json`` → ``metrics.external``."""
    entries = []
    for r in results:
        quant, flt = r["quantized"], r.get("float")  # no float model: scored as converted
        entry = {"name": r["name"], "n": r["n"],
                 "float_accuracy_pct": flt["accuracy_pct"] if flt else None,
                 "quantized_accuracy_pct": quant["accuracy_pct"],
                 "tumour_images": quant["tumour_images"],
                 "float_tumour_sensitivity_pct": flt["tumour_sensitivity_pct"] if flt else None,
                 "quantized_tumour_sensitivity_pct": quant["tumour_sensitivity_pct"],
                 "folders": {name: {"n": f["n"], "quantized_accuracy_pct": f["accuracy_pct"]}
                             for name, f in quant["folders"].items()}}
        entries.append(entry)
    return entries
