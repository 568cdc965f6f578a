"""Why an int8 model disagrees with its float model: per-layer error and what to try next.

Run only when the gate refuses a model. TensorFlow's ``QuantizationDebugger`` runs the
float and the quantized ops side by side on a few evaluation images and reports, for every
quantized tensor, the error of the int8 result against the float one. Dividing the RMSE by
the tensor's quantization scale gives the error in quantization steps: pure rounding noise
is about 0.29 steps (1/sqrt(12)); the TensorFlow guide treats layers above about 0.7 as
suspects. The input range check catches calibration data that was preprocessed differently
from the model's real input (the commonest way to ruin a post-training quantization).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.export import make_converter, quiet_native_stderr, representative_dataset
from edge.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

SUSPECT_STEPS = 0.7
TOP_LAYERS = 10
# XNNPACK, the CPU delegate both device runtimes apply by default, refuses a quantized
# convolution or fully connected op whose requantization scale (input scale x filter scale
# / output scale) is outside [2^-32, 256): the model then fails to load ("failed to prepare").
XNNPACK_REQUANT_RANGE = (2.0 ** -32, 256.0)
_REQUANTIZED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


@dataclass
class QuantDebugReport:
    """What the per-layer comparison found and the suggestions derived from it."""

    layers: list[dict[str, Any]] = field(default_factory=list)
    first_suspect: dict[str, Any] | None = None
    calibration_range: tuple[float, float] | None = None
    expected_range: tuple[float, float] | None = None
    input_range: tuple[float, float] | None = None
    findings: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    error: str = ""
    xnnpack_refused: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        ranked = sorted(self.layers, key=lambda r: -r["rmse_steps"])[:TOP_LAYERS]
        return {"layers_analysed": len(self.layers), "worst_layers": ranked,
                "xnnpack_refused": self.xnnpack_refused,
                "first_suspect_layer": self.first_suspect,
                "calibration_range": self.calibration_range,
                "expected_input_range": self.expected_range,
                "int8_input_range": self.input_range,
                "findings": self.findings, "suggestions": self.suggestions,
                "debugger_error": self.error or None}


def expected_input_range(spec: PreprocessSpec) -> tuple[float, float]:
    """The values the preprocessing can produce: uint8 0..255 times scale, plus offset."""
    ends = (spec.offset, 255.0 * spec.scale + spec.offset)
    return (min(ends), max(ends))


def layer_statistics(saved_model: Path, calibration: np.ndarray, debug_images: np.ndarray,
                     keep_float: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Per-quantized-tensor error of the int8 model against float, in execution order.

    ``keep_float``: the op types the model kept in float (``--keep-float``), left out here too.
    """
    import tensorflow as tf

    def debug_dataset():
        for image in debug_images:
            yield [np.asarray(image, dtype=np.float32)[None]]

    with quiet_native_stderr() as captured:
        converter = make_converter(saved_model, "int8",
                                   representative_dataset(calibration, captured.terminal,
                                                          desc="debug calibration"))
        options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=list(keep_float) or None)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=debug_dataset, debug_options=options)
        debugger.run()
        buffer = io.StringIO()
        debugger.layer_statistics_dump(buffer)
    rows = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        scale = float(row["scale"])
        mse = float(row["mean_squared_error"])
        rows.append({
            "index": int(float(row["tensor_idx"])),
            "op": row["op_name"],
            "tensor": _short_name(row["tensor_name"]),
            "rmse_steps": round(math.sqrt(mse) / scale, 4) if scale > 0 else float("inf"),
            "max_abs_error": round(float(row["max_abs_error"]), 6),
            "scale": scale,
            "range": round(scale * 255.0, 6),
        })
    rows.sort(key=lambda r: r["index"])
    return rows


def _short_name(name: str) -> str:
    """'model/cbam1/mul;model/cbam1/...' -> 'cbam1/mul' (the first fused name, no prefix)."""
    first = name.split(";")[0]
    parts = first.split("/")
    return "/".join(parts[1:]) if len(parts) > 2 else first


def requantization_problems(tflite_path: Path) -> list[dict[str, Any]]:
    """The quantized ops XNNPACK will refuse: requantization scale outside
    ``XNNPACK_REQUANT_RANGE``. Read with the plain kernels (no delegate), in the runtime the
    device code picks (``edge.runtime.load_runtime``); empty when none is installed here."""
    import sys

    from edge.errors import RuntimeUnavailableError
    from edge.runtime import load_runtime

    try:
        runtime = load_runtime()
    except RuntimeUnavailableError:
        return []
    resolver = sys.modules[runtime.interpreter_class.__module__].OpResolverType
    interpreter = runtime.interpreter_class(
        model_path=str(tflite_path),
        experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    low, high = XNNPACK_REQUANT_RANGE
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] not in _REQUANTIZED_OPS or len(op["inputs"]) < 2:
            continue
        scales = [tensors[i]["quantization_parameters"]["scales"] if i >= 0 else np.zeros(0)
                  for i in (op["inputs"][0], op["inputs"][1], op["outputs"][0])]
        if not all(len(sc) for sc in scales):
            continue  # a float op (kept in float, or not quantized)
        ratio = scales[0][0] * scales[1] / scales[2][0]
        if ratio.min() < low or ratio.max() >= high:
            found.append({"index": int(op["index"]), "op": op["op_name"],
                          "tensor": tensors[op["outputs"][0]]["name"],
                          "output_scale": float(scales[2][0]),
                          "requantization_scale": float(ratio.max() if ratio.max() >= high
                                                        else ratio.min())})
    return found


def diagnose(*, saved_model: Path | None, calibration: np.ndarray, debug_images: np.ndarray,
             spec: PreprocessSpec, input_quant: tuple[float, int] | None, architecture: str,
             calibration_size: int, mode: str, comparison: dict[str, Any] | None = None,
             keep_float: tuple[str, ...] = (), tflite_path: Path | None = None) -> QuantDebugReport:
    """Per-layer statistics (int8 only) plus findings and suggestions for any mode."""
    report = QuantDebugReport()
    if mode == "int8" and tflite_path is not None and tflite_path.is_file():
        try:
            report.xnnpack_refused = requantization_problems(tflite_path)
        except Exception as exc:  # noqa: BLE001 - a diagnosis, never a crash
            log.warning("could not read the model's quantization scales: %s", exc)
        _check_requantization(report)
    hesitant = _check_margins(report, comparison)
    report.expected_range = expected_input_range(spec)
    if len(calibration):
        report.calibration_range = (float(calibration.min()), float(calibration.max()))
    if input_quant is not None and input_quant[0] > 0:
        s, zp = input_quant
        report.input_range = (round(s * (-128 - zp), 6), round(s * (127 - zp), 6))
    _check_ranges(report)
    if mode == "int8" and saved_model is not None:
        try:
            report.layers = layer_statistics(saved_model, calibration, debug_images, keep_float)
        except Exception as exc:  # noqa: BLE001 - the debugger is a diagnosis, never a crash
            text = str(exc).strip()
            report.error = text.splitlines()[0] if text else type(exc).__name__
            log.warning("the per-layer quantization debugger failed: %s", report.error)
    _check_layers(report)
    _suggest(report, architecture, calibration_size, mode, hesitant)
    return report


def _check_requantization(report: QuantDebugReport) -> None:
    if not report.xnnpack_refused:
        return
    first = report.xnnpack_refused[0]
    types = sorted({r["op"] for r in report.xnnpack_refused})
    report.findings.append(
        f"XNNPACK (the devices' default CPU delegate) cannot prepare {len(report.xnnpack_refused)}"
        f" quantized op(s) whose requantization scale (input x filter / output scale) is "
        f"outside [2^-32, 256): first {first['op']} {first['tensor']} "
        f"({first['requantization_scale']:.3g}; output scale {first['output_scale']:.3g}). "
        "An output range that narrow means the layer's output is all but constant on the "
        "calibration pictures (e.g. ReLU units that never fire); the plain kernels run it, "
        f"XNNPACK refuses the model. Op types: {', '.join(types)}.")


def _check_margins(report: QuantDebugReport, comparison: dict[str, Any] | None) -> bool:
    """Do the changed answers sit where the float model itself hesitated?"""
    if not comparison or not comparison.get("disagreements"):
        return False
    overall = comparison.get("float_margin_median")
    changed = comparison.get("float_margin_median_disagreeing")
    if overall is None or changed is None or changed >= 0.5 * overall:
        return False
    report.findings.append(
        f"The {comparison['disagreements']} changed answers sit where the float model itself "
        f"hesitates: the median gap between its two highest probabilities is {changed:.3f} on "
        f"those images, against {overall:.3f} on all images. Small rounding errors flip "
        "near-ties; a more confident model keeps its answers.")
    return True


def _check_ranges(report: QuantDebugReport) -> None:
    low, high = report.expected_range or (0.0, 1.0)
    width = high - low
    if report.calibration_range is not None:
        c_low, c_high = report.calibration_range
        if c_high - c_low > 2.0 * width or c_low < low - 0.5 * width or c_high > high + 0.5 * width:
            report.findings.append(
                f"The calibration images span [{c_low:g}, {c_high:g}], but the model's "
                f"preprocessing produces values in [{low:g}, {high:g}]: the representative data "
                "was not preprocessed like the real input (scaled twice, or not at all?).")
    if report.input_range is not None:
        i_low, i_high = report.input_range
        if i_high - i_low > 4.0 * width:
            steps = max(1, round(255 * width / (i_high - i_low)))
            report.findings.append(
                f"The int8 input tensor covers [{i_low:g}, {i_high:g}]; real inputs in "
                f"[{low:g}, {high:g}] use only about {steps} of its 256 levels, so the image "
                "is almost erased before the first layer.")


def _check_layers(report: QuantDebugReport) -> None:
    if not report.layers:
        return
    suspects = [r for r in report.layers if r["rmse_steps"] > SUSPECT_STEPS]
    if suspects:
        report.first_suspect = suspects[0]
        worst = max(report.layers, key=lambda r: r["rmse_steps"])
        report.findings.append(
            f"{len(suspects)} of {len(report.layers)} quantized tensors have an error above "
            f"{SUSPECT_STEPS} quantization steps. The error first grows at {suspects[0]['tensor']}"
            f" ({suspects[0]['op']}, {suspects[0]['rmse_steps']:.2f} steps); the worst is "
            f"{worst['tensor']} ({worst['op']}, {worst['rmse_steps']:.2f} steps).")
    else:
        report.findings.append(
            f"No single layer's error exceeds {SUSPECT_STEPS} quantization steps: the loss "
            "comes from many small rounding errors adding up along the network.")


def _suggest(report: QuantDebugReport, architecture: str, calibration_size: int,
             mode: str, hesitant: bool = False) -> None:
    out = report.suggestions
    if report.xnnpack_refused:
        types = ",".join(sorted({r["op"] for r in report.xnnpack_refused}))
        out.append(f"Keep those op types in float: --keep-float {types} (input and output stay "
                   "int8; the model grows a little). More calibration pictures rarely help a "
                   "layer that is dead on all of them.")
    if any("representative data" in f or "almost erased" in f for f in report.findings):
        out.append("Fix the calibration data first: it must be exactly what the device feeds "
                   "the model (edge.preprocess.resize_uint8 then edge.preprocess.scale, once).")
    if hesitant:
        out.append("Train the model further (python -m trainer train --resume RUN --epochs N) "
                   "and convert again: the float model is unsure on many test images, and "
                   "near-ties are what quantization flips.")
    if mode == "int8":
        more = max(1000, 2 * calibration_size)
        out.append(f"Calibrate with more images: --calibration-size {more} (this run used "
                   f"{calibration_size}); rare large activations then set the ranges.")
        if architecture == "dsconv_cbam":
            out.append("Convert a batch-normalised variant instead (train dsconv_cbam_bn or "
                       "dsconv_cbam_gap): normalised activations keep their ranges in check; "
                       "compare the variants with python -m converters.benchmark.")
        else:
            out.append("Try another architecture variant (python -m trainer summary lists them; "
                       "dsconv_cbam_gap is the compact one) and convert that run.")
        if report.first_suspect is not None and "cbam" in report.first_suspect["tensor"].lower():
            out.append("The error starts inside a CBAM attention block, where sigmoid gates "
                       "multiply the features: if more calibration data does not help, compare "
                       "the architecture variants with python -m converters.benchmark.")
    out.append("Keep activations in float: --dynamic (int8 weights, float activations) or "
               "--float16 (half-size float weights). Both track the float model closely but "
               "run slower on the device; check the runtime table: tflite-runtime 2.14 cannot "
               "load TF 2.21's dynamic-range models.")


def to_markdown(report: QuantDebugReport, reasons: list[str], mode: str) -> str:
    """``quant_debug.md``: why the model was rejected and where its error comes from."""
    lines = [f"# Why the {mode} model was rejected", ""]
    lines += [f"- {r}" for r in reasons]
    lines += ["", "## Findings", ""]
    lines += [f"- {f}" for f in report.findings] or ["- (none)"]
    if report.error:
        lines += [f"- The per-layer debugger could not run: {report.error}"]
    if report.layers:
        lines += ["", "## Per-layer quantization error", "",
                  "Error of each quantized tensor against the float model, in quantization "
                  f"steps (RMSE / scale; rounding alone gives ~0.29, above {SUSPECT_STEPS} is "
                  "suspect), in execution order.", "",
                  "| # | op | tensor | error (steps) | max abs error | range covered |",
                  "|--:|----|--------|--------------:|--------------:|--------------:|"]
        for row in report.layers:
            flag = " **!**" if row["rmse_steps"] > SUSPECT_STEPS else ""
            lines.append(f"| {row['index']} | {row['op']} | `{row['tensor']}` | "
                         f"{row['rmse_steps']:.3f}{flag} | {row['max_abs_error']:.4g} | "
                         f"{row['range']:.4g} |")
    lines += ["", "## What to try", ""]
    lines += [f"{i}. {s}" for i, s in enumerate(report.suggestions, start=1)]
    return "\n".join(lines) + "\n"
