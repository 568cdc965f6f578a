"""The manifest a converted model ships with, and the provenance recorded in it.

``model.json`` is the one contract with the device (``edge.manifest``). Besides what the
device needs to run the model (labels, tensor specs, preprocessing, sha256), it records
what the model was accepted with (metrics and thresholds), where it was verified to run,
and where it came from, so a clinic can answer "which model produced this report, and why
was it trusted?" from the file alone.
"""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import converters
from converters.source import SourceModel
from edge.manifest import ModelManifest, TensorSpec, sha256_file

PACKAGES = ("neuroedge", "tensorflow", "keras", "numpy", "ai-edge-litert", "tflite-runtime",
            "pillow")
RUN_KEYS = ("seed", "epochs", "batch_size", "optimizer", "data_dir", "val_fraction", "backend",
            "deviations", "no_imagenet_weights", "limit")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def provenance(source: SourceModel, mode: str, created: datetime, ops: dict[str, Any],
               calibration: dict[str, Any] | None, tflite_bytes: int,
               command: tuple[str, ...],
               kept_float: dict[str, Any] | None = None) -> dict[str, Any]:
    """Creation time, tool and package versions, the source run, how it was converted.

    ``kept_float`` (``--keep-float``: ``keep_float_ops`` asked for, ``float_ops`` found in the
    model) goes into the conversion block, so the manifest tells a mixed int8 model apart.
    """
    run = {k: source.run_info[k] for k in RUN_KEYS if k in source.run_info}
    return {
        "created_utc": created.isoformat().replace("+00:00", "Z"),
        "tool": f"neuroedge converters.tflite {converters.__version__}",
        "packages": package_versions(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "source": {
            "model_file": source.keras_path.name,
            "run_dir": str(source.run_dir) if source.run_dir is not None else None,
            "run": run,
            "preprocess_from": source.preprocess_source,
        },
        "conversion": {
            "mode": mode,
            "batch_size": 1,
            "ops": ops["count"],
            "op_types": ops["by_type"],
            "op_versions": ops["max_versions"],
            "tflite_bytes": tflite_bytes,
            "calibration": calibration,
            **(kept_float or {}),
        },
        "command": " ".join(command) if command else " ".join(sys.argv),
    }


def default_version(created: datetime) -> str:
    return created.strftime("%Y%m%d-%H%M%S")


def build_manifest(*, source: SourceModel, mode: str, model_path: Path, input_spec: TensorSpec,
                   output_spec: TensorSpec, output_kind: str, version: str,
                   metrics: dict[str, Any] | None = None,
                   thresholds: dict[str, Any] | None = None,
                   verified_runtimes: list[dict[str, Any]] | None = None,
                   provenance_info: dict[str, Any] | None = None,
                   test_time: str = "none") -> ModelManifest:
    """A manifest for ``model_path`` (hashed now); validated when written."""
    return ModelManifest(
        name=source.name,
        version=version,
        architecture=source.architecture or "unknown",
        labels=tuple(source.labels),
        model_file=model_path.name,
        model_sha256=sha256_file(model_path),
        quantization=mode,
        input=input_spec,
        output=output_spec,
        preprocess=source.preprocess,
        output_kind=output_kind,
        source_model_sha256=source.sha256,
        metrics=dict(metrics or {}),
        thresholds=dict(thresholds or {}),
        verified_runtimes=tuple(verified_runtimes or ()),
        provenance=dict(provenance_info or {}),
        test_time=test_time,
    )


def manifest_metrics(evaluation: dict[str, Any], dedup: dict[str, Any] | None,
                     eval_name: str, eval_dir: Path) -> dict[str, Any]:
    """The numbers the model passed the gate with (a compact copy of the report's)."""
    keys = ("n", "float_accuracy_pct", "quantized_accuracy_pct", "accuracy_drop_pp",
            "top1_agreement_pct", "mean_abs_prob_diff", "max_abs_prob_diff")
    metrics: dict[str, Any] = {"eval_set": eval_name, "eval_data": str(eval_dir)}
    metrics.update({k: evaluation[k] for k in keys})
    metrics["per_class_recall_pct"] = {label: pc["quantized_recall_pct"]
                                       for label, pc in evaluation["per_class"].items()}
    metrics["quantized_confusion_matrix"] = evaluation["quantized_confusion_matrix"]
    if dedup is not None:
        metrics["dedup"] = {k: dedup[k] for k in keys}
        metrics["dedup"]["list"] = dedup["list"]
    return metrics
