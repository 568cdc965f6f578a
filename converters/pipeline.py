"""Convert, check, and only then publish: the whole ``converters.tflite`` run.

Everything is built in a hidden staging folder inside ``--out``. Only a model that loads in
the edge runtime and passes the accuracy gate is moved into place (``model.tflite``, then
``model.json``, then ``report.json``); a refused model leaves ``rejected/report.json`` and
``rejected/quant_debug.md`` and nothing a device could install.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters import datasets, export, external_check, flatbuffer, selective
from converters.errors import ConversionFailedError, OutputError, SourceModelError, UsageError
from converters.evaluate import compare, keras_predictor, output_kind_of, predict_batched
from converters.gate import GateResult, Thresholds, apply_gate
from converters.outdir import check_output_folder, output_folder
from converters.provenance import (
    build_manifest,
    default_version,
    manifest_metrics,
    now_utc,
    package_versions,
    provenance,
)
from converters.quant_debug import diagnose, to_markdown
from converters.report import REPORT_FORMAT, summary_text, write_report
from converters.runtimes import (
    check_in_process,
    check_subprocess,
    parse_runtime_specs,
    record_float_closeness,
)
from converters.source import load_keras_model, resolve_source
from edge.durable import fsync_dir, install_files
from edge.manifest import MANIFEST_NAME, load_verified, write_manifest
from edge.preprocess import scale
from edge.views import TEST_TIMES, with_views
from trainer.data import scan_split, stratified_indices

log = logging.getLogger(__name__)

MODEL_NAME = "model.tflite"
REJECTED = "rejected"
QUANT_DEBUG = "quant_debug.md"


@dataclass(frozen=True)
class ConvertOptions:
    """Every knob of one conversion (the CLI's options, one to one)."""

    model: Path
    data: Path
    out: Path
    mode: str = "int8"
    keep_float: tuple[str, ...] | None = None  # op types kept float32 in int8 (None: not asked)
    labels: str | None = None
    arch: str | None = None
    name: str | None = None
    model_version: str | None = None
    calibration_size: int = 300
    seed: int = 0
    eval_data: Path | None = None
    eval_split: str = "Testing"
    eval_limit: int | None = None
    dedup_list: Path | None = None
    auto_dedup: bool = True
    external: tuple[Path, ...] = ()  # external check folders (trainer.external layout)
    default_external: bool = True  # ../shared/data/br35h-tumour when none is given
    thresholds: Thresholds = field(default_factory=Thresholds)
    check_runtimes: tuple[str, ...] = ()
    require_runtimes: tuple[str, ...] = ()
    probe_images: int = 64
    debug_samples: int = 32
    force: bool = False
    command: tuple[str, ...] = ()
    trust: bool = True  # fit the trust checks of a model that passed (converters.trust)
    test_time: str = "none"  # edge.views: the answers are measured and shipped this way


@dataclass
class Outcome:
    passed: bool
    report: dict[str, Any]
    report_path: Path
    model_dir: Path | None
    gate: GateResult
    summary: str


def _validate(opts: ConvertOptions) -> list[tuple[str, str]]:
    if opts.mode not in export.MODES:
        raise UsageError(f"unknown mode {opts.mode!r}; choose one of {', '.join(export.MODES)}")
    if opts.keep_float is not None:
        if opts.mode != "int8":
            raise UsageError(f"--keep-float keeps some ops of an int8 model in float and applies "
                             f"to --int8 only, not --{opts.mode}; drop one of the two options")
        selective.check_op_names(opts.keep_float)
    for name, value, low in (("--calibration-size", opts.calibration_size, 1),
                             ("--eval-limit", opts.eval_limit, 1),
                             ("--probe-images", opts.probe_images, 1),
                             ("--debug-samples", opts.debug_samples, 1)):
        if value is not None and value < low:
            raise UsageError(f"{name} must be at least {low}, got {value}")
    if opts.seed < 0:
        raise UsageError(f"--seed must be 0 or more, got {opts.seed}")
    if opts.test_time not in TEST_TIMES:
        raise UsageError(f"--test-time must be one of {', '.join(TEST_TIMES)}, "
                         f"got {opts.test_time!r}")
    th = opts.thresholds
    if not 0.0 <= th.max_drop_pp <= 100.0:
        raise UsageError(f"--max-drop is in percentage points (0-100), got {th.max_drop_pp}")
    if not 0.0 <= th.min_agreement_pct <= 100.0:
        raise UsageError(f"--min-agreement is a percentage (0-100), got {th.min_agreement_pct}")
    if opts.eval_split not in ("Training", "Testing"):
        raise UsageError(f"--eval-split must be Training or Testing, got {opts.eval_split!r}")
    out = opts.out
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    check_output_folder(out)  # a read-only place: now, not after the conversion
    existing = [p.name for p in (out / MODEL_NAME, out / MANIFEST_NAME) if p.exists()]
    if existing and not opts.force:
        raise OutputError(f"--out {out} already holds {' and '.join(existing)}; choose another "
                          "folder, or pass --force to replace that model if this one passes")
    return parse_runtime_specs(opts.check_runtimes)


def run_conversion(opts: ConvertOptions) -> Outcome:
    """Convert ``opts.model``, check it, and publish it only if it passes the gate."""
    started = time.monotonic()
    subprocess_runtimes = _validate(opts)
    source = resolve_source(opts.model, opts.labels, opts.arch, opts.name)
    eval_root = opts.eval_data or opts.data
    # Data folder mistakes surface before the (slow) TensorFlow import and model load.
    if opts.mode == "int8":
        scan_split(opts.data, "Training", source.labels)
    scan_split(eval_root, opts.eval_split, source.labels)
    model, source = load_keras_model(source)
    spec = source.preprocess
    dedup_path = datasets.find_dedup_list(opts.dedup_list, opts.auto_dedup, opts.eval_split,
                                          source.run_dir, eval_root)

    calibration, calib_info = np.zeros((0, *spec.shape), np.float32), None
    if opts.mode == "int8":
        log.info("drawing %d calibration images from %s/Training", opts.calibration_size,
                 opts.data)
        calibration, calib_info = datasets.calibration_images(
            opts.data, source.labels, spec, opts.calibration_size, opts.seed)
    log.info("loading the evaluation set %s/%s", eval_root, opts.eval_split)
    eval_set = datasets.evaluation_set(eval_root, opts.eval_split, source.labels, spec,
                                       opts.eval_limit, opts.seed)
    if len(eval_set.labels) == 0:
        raise UsageError(f"the evaluation set {eval_root}/{opts.eval_split} holds no images")
    dedup_idx = (datasets.dedup_indices(eval_set, dedup_path, opts.dedup_list is not None)
                 if dedup_path is not None else None)
    external_sets = external_check.load_sets(opts.external, opts.default_external,
                                             source.labels, spec)
    probe_idx = stratified_indices(eval_set.labels, opts.probe_images, opts.seed)
    probe = scale(eval_set.images[probe_idx], spec)
    probe_outputs = np.asarray(model.predict(probe, verbose=0), dtype=np.float32)
    require_finite(probe_outputs, source.keras_path, f"{len(probe)} probe images")
    output_kind = output_kind_of(probe_outputs)
    with output_folder(opts.out):
        try:
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=opts.out))
        except OSError as exc:
            raise OutputError(f"cannot write to --out {opts.out}: {exc.strerror}") from None
        try:
            return _convert_and_publish(opts, source, model, calibration, calib_info,
                                        eval_set, dedup_idx, dedup_path, probe, probe_idx,
                                        output_kind, subprocess_runtimes, staging, started,
                                        external_sets)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def require_finite(outputs: np.ndarray, model_path: Path, what: str) -> None:
    """A diverged model (NaN weights) answers NaN; its int8 scales would be infinite. Refuse
    it, saying why, before anything is converted or written."""
    bad = int((~np.isfinite(outputs)).reshape(len(outputs), -1).any(axis=1).sum())
    if bad:
        raise SourceModelError(
            f"the model {model_path} answers NaN or infinite values for {bad} of {what}: its "
            f"training diverged. Train it again with a lower --lr (python -m trainer train); "
            f"there is nothing to convert")


def _convert_and_publish(opts: ConvertOptions, source: Any, model: Any, calibration: np.ndarray,
                         calib_info: dict[str, Any] | None, eval_set: datasets.EvaluationSet,
                         dedup_idx: np.ndarray | None, dedup_path: Path | None,
                         probe: np.ndarray, probe_idx: np.ndarray, output_kind: str,
                         subprocess_runtimes: list[tuple[str, str]], staging: Path,
                         started: float, external_sets: list[Any] = ()) -> Outcome:
    spec, mode = source.preprocess, opts.mode
    created = now_utc()
    log.info("exporting the Keras model with a fixed batch of 1")
    saved_model = export.export_saved_model(model, staging / "saved_model")
    keep_float = opts.keep_float or ()
    log.info("converting to %s TFLite%s", mode,
             f" ({', '.join(keep_float)} kept in float32)" if keep_float else "")
    t0 = time.monotonic()
    tflite = export.convert(saved_model, mode, calibration if mode == "int8" else None,
                            keep_float_ops=keep_float)
    convert_s = time.monotonic() - t0
    model_path = staging / MODEL_NAME
    model_path.write_bytes(tflite)
    ops = flatbuffer.ops_summary(tflite)
    input_spec, output_spec = flatbuffer.io_specs(tflite)
    kept = None
    if keep_float:
        kept = {"keep_float_ops": list(keep_float),
                "float_ops": selective.check_kept_float(tflite, keep_float, ops["by_type"])}
        if not (input_spec.dtype == output_spec.dtype == "int8"):
            raise ConversionFailedError(
                f"with --keep-float the model's input/output became {input_spec.dtype}/"
                f"{output_spec.dtype}, not int8/int8; convert without --keep-float")
    version = opts.model_version or default_version(created)
    prov = provenance(source, mode, created, ops, calib_info, len(tflite), opts.command, kept)

    def manifest_with(**extra: Any) -> Any:
        return build_manifest(source=source, mode=mode, model_path=model_path,
                              input_spec=input_spec, output_spec=output_spec,
                              output_kind=output_kind, version=version, provenance_info=prov,
                              test_time=opts.test_time, **extra)

    write_manifest(manifest_with(), staging / MANIFEST_NAME)
    manifest, _ = load_verified(staging)

    log.info("loading the model in the edge runtime (default delegates)")
    edge_check, classifier = check_in_process(model_path, manifest, probe)
    comparison = dedup = None
    external: list[dict[str, Any]] = []
    other_checks = []
    if classifier is not None:
        edge_check.compared_with = ""
        # float and converted model answer as the agent will run them (edge.views); the
        # runtime checks below compare single views, the interpreter's own output
        float_predict = with_views(keras_predictor(model, output_kind), opts.test_time)
        quant_predict = with_views(classifier.predict, opts.test_time)
        float_probs = predict_batched(float_predict, eval_set.images, spec, "float model")
        require_finite(float_probs, source.keras_path, f"{len(float_probs)} evaluation images")
        quant_probs = predict_batched(quant_predict, eval_set.images, spec,
                                      f"{mode} model ({edge_check.name})")
        labels = list(source.labels)
        comparison = compare(eval_set.labels, float_probs, quant_probs, labels, mode)
        comparison.update(set=eval_set.name, data_dir=str(eval_set.data_dir))
        if dedup_idx is not None:
            dedup = compare(eval_set.labels[dedup_idx], float_probs[dedup_idx],
                            quant_probs[dedup_idx], labels, mode)
            dedup["list"] = _portable(dedup_path)
        external = external_check.score(
            external_sets, labels, spec,
            {"float": float_predict, "quantized": quant_predict})
        reference = classifier.predict(probe)
        float_probe = float_probs[probe_idx]  # the probe is drawn from the evaluation set
        record_float_closeness(edge_check, reference, float_probe)
        for name, python in subprocess_runtimes:
            log.info("checking %s with %s", name, python)
            other_checks.append(check_subprocess(
                name, python, staging, probe, reference, edge_check.name, float_probe,
                opts.thresholds.min_agreement_pct, comparison["max_abs_prob_diff"]))
    gate = apply_gate(comparison, edge_check, other_checks, opts.require_runtimes,
                      opts.thresholds, mode, eval_set.name)
    checks = [edge_check, *other_checks]
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "passed": gate.passed,
        "mode": mode,
        "test_time": opts.test_time,
        "created_utc": prov["created_utc"],
        "source": {"model": str(source.keras_path), "sha256": source.sha256,
                   "run_dir": str(source.run_dir) if source.run_dir else None,
                   "architecture": source.architecture, "labels": list(source.labels),
                   "preprocess": spec.to_dict(), "output_kind": output_kind},
        "conversion": {"ops": ops, "bytes": len(tflite), "seconds": round(convert_s, 1),
                       "calibration": calib_info, "input": input_spec.to_dict(),
                       "output": output_spec.to_dict(), **(kept or {})},
        "evaluation": comparison,
        "evaluation_dedup": dedup,
        "evaluation_external": external,
        "runtimes": [c.to_dict() for c in checks],
        "thresholds": {**opts.thresholds.to_dict(),
                       "required_runtimes": list(opts.require_runtimes)},
        "gate": gate.to_dict(),
        "versions": package_versions(),
        "notes": _notes(edge_check, other_checks, subprocess_runtimes, comparison,
                        list(source.labels)),
    }
    if gate.passed:
        if opts.trust:
            manifest_with = _with_trust(opts, report, manifest, manifest_with, model_path,
                                        staging)
        return _publish(opts, report, manifest_with, comparison, dedup, eval_set, checks, gate,
                        staging, model_path, started)
    return _reject(opts, report, gate, saved_model, calibration, eval_set, spec, input_spec,
                   source.architecture, started)


def _with_trust(opts: ConvertOptions, report: dict[str, Any], manifest: Any,
                manifest_with: Any, model_path: Path, staging: Path) -> Any:
    """Issue 13: expose the gated model's trust outputs and fit them on the Training split;
    the model in staging is replaced by the exposed one (its probabilities bit-identical)."""
    import dataclasses

    from converters.trust import STATISTICS_NAME, TrustOptions, fit_trust
    from trainer.errors import DataError

    folder = staging / "trust"
    folder.mkdir()
    try:
        fitted, summary = fit_trust(model_path, manifest, folder, TrustOptions(data=opts.data))
    except DataError as exc:
        report["notes"].append(f"the trust checks were not fitted ({exc}); the agent will "
                               "flag every 'no tumour' answer of this model for review")
        return manifest_with
    os.replace(folder / model_path.name, model_path)
    if (folder / STATISTICS_NAME).exists():
        os.replace(folder / STATISTICS_NAME, staging / STATISTICS_NAME)
    report["trust"] = summary

    def with_trust(**extra: Any) -> Any:
        return dataclasses.replace(manifest_with(**extra), outputs=fitted.outputs,
                                   trust=fitted.trust, provenance=fitted.provenance)
    return with_trust


def _notes(edge_check: Any, others: list[Any], configured: list[tuple[str, str]],
           comparison: dict[str, Any] | None, labels: list[str]) -> list[str]:
    notes = []
    if comparison is not None and comparison["n"] >= 10:
        # The gate measures fidelity to the float model, not its quality: say so when the
        # float model itself is degenerate (the paper model collapses like this in epoch 1).
        predicted = np.asarray(comparison["float_confusion_matrix"]).sum(axis=0)
        top = int(predicted.argmax())
        if predicted[top] >= 0.95 * predicted.sum():
            notes.append(f"the float model itself answers {labels[top]!r} for "
                         f"{100 * predicted[top] / predicted.sum():.0f}% of the evaluation "
                         "images: the conversion is faithful, but check the training run")
    if edge_check.ok and edge_check.xnnpack is False:
        notes.append(f"{edge_check.name} ran the model without the XNNPACK delegate")
    if not configured:
        notes.append("tflite-runtime was not checked: set NEUROEDGE_TFLITE_RUNTIME_PYTHON or pass "
                     "--check-runtime tflite-runtime=/path/to/venv/bin/python (a numpy<2 venv)")
    for check in others:
        if not check.ok:
            notes.append(f"{check.name} ({check.where}) did not verify the model: {check.error}")
    return notes


def _publish(opts: ConvertOptions, report: dict[str, Any], manifest_with: Any,
             comparison: dict[str, Any], dedup: dict[str, Any] | None,
             eval_set: datasets.EvaluationSet, checks: list[Any], gate: GateResult,
             staging: Path, model_path: Path, started: float) -> Outcome:
    verified = [c.manifest_entry() for c in checks if c.ok]
    verified[0]["evaluated_images"] = comparison["n"]
    metrics = manifest_metrics(comparison, dedup, eval_set.name, eval_set.data_dir)
    if report.get("evaluation_external"):
        metrics["external"] = external_check.manifest_entries(report["evaluation_external"])
    manifest = manifest_with(
        metrics=metrics,
        thresholds=report["thresholds"], verified_runtimes=verified)
    write_manifest(manifest, staging / MANIFEST_NAME)
    load_verified(staging)  # exactly what the device will do with the pair
    out = opts.out
    report["output"] = {"dir": str(out), "model": str(out / MODEL_NAME),
                        "manifest": str(out / MANIFEST_NAME), "report": str(out / "report.json")}
    report["seconds"] = round(time.monotonic() - started, 1)
    write_report(staging, report)
    from converters.trust import STATISTICS_NAME

    statistics = staging / STATISTICS_NAME
    if not statistics.exists() and (out / STATISTICS_NAME).exists():
        os.unlink(out / STATISTICS_NAME)  # a replaced model's statistics must not linger
    # 0644: the device's service user reads these, whatever this user's umask
    moves = [(statistics, out / STATISTICS_NAME)] if statistics.exists() else []
    moves += [(model_path, out / MODEL_NAME), (staging / MANIFEST_NAME, out / MANIFEST_NAME),
              (staging / "report.json", out / "report.json")]
    install_files(moves, mode=0o644)
    shutil.rmtree(out / REJECTED, ignore_errors=True)  # a stale refusal of an earlier attempt
    return Outcome(True, report, out / "report.json", out, gate, summary_text(report))


def _reject(opts: ConvertOptions, report: dict[str, Any], gate: GateResult, saved_model: Path,
            calibration: np.ndarray, eval_set: datasets.EvaluationSet, spec: Any,
            input_spec: Any, architecture: str, started: float) -> Outcome:
    log.info("the gate refused the model; analysing where the quantization error grows")
    debug_idx = stratified_indices(eval_set.labels, opts.debug_samples, opts.seed + 1)
    debug = diagnose(saved_model=saved_model, calibration=calibration,
                     debug_images=scale(eval_set.images[debug_idx], spec), spec=spec,
                     input_quant=(input_spec.scale, input_spec.zero_point)
                     if input_spec.quantized else None,
                     architecture=architecture, calibration_size=opts.calibration_size,
                     mode=opts.mode, comparison=report.get("evaluation"),
                     keep_float=opts.keep_float or (),
                     tflite_path=saved_model.parent / MODEL_NAME)
    report["quant_debug"] = debug.to_dict()
    rejected = opts.out / REJECTED
    staged = saved_model.parent / REJECTED
    staged.mkdir()
    (staged / QUANT_DEBUG).write_text(to_markdown(debug, gate.reasons, opts.mode),
                                      encoding="utf-8")
    report["output"] = {"dir": str(opts.out), "model": None, "manifest": None,
                        "report": str(rejected / "report.json"),
                        "quant_debug": str(rejected / QUANT_DEBUG)}
    if (opts.out / MODEL_NAME).exists():
        report["notes"].append(f"the model already in {opts.out} (from an earlier run) was left "
                               "as it was")
    report["seconds"] = round(time.monotonic() - started, 1)
    write_report(staged, report)
    os.chmod(staged / "report.json", 0o644)
    shutil.rmtree(rejected, ignore_errors=True)
    os.replace(staged, rejected)  # a whole folder: its files were written through edge.durable
    fsync_dir(opts.out)
    return Outcome(False, report, rejected / "report.json", None, gate, summary_text(report))


def _portable(path: Path) -> str:
    """``path`` relative to the working directory when it lies beneath it (a checkout's
    ``docs/leakage/dedup_test.txt``, which a test opens from any clone), else as given."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)
