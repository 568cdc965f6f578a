"""Does the converted model load and run in the interpreters a device will use?

Two kinds of check, both through the device's own ``edge.runtime.TFLiteClassifier``:

- in this process, with whichever runtime ``edge.runtime.load_runtime`` picks here
  (ai-edge-litert when installed) and its default delegates (XNNPACK on CPU). A failure
  here fails the gate: it is the "converted fine, refused at load time" case.
- in another Python environment (``--check-runtime tflite-runtime=/venv/bin/python`` or
  ``$NEUROEDGE_TFLITE_RUNTIME_PYTHON``): tflite-runtime needs numpy<2 and cannot share a
  process with TensorFlow 2.21. A small probe classifies fixed inputs there and the outputs
  are compared with this process's.

Two int8 runtimes never agree exactly: they round inside different kernels (XNNPACK, or the
reference ones), and the gap grows with depth. What must not happen is a runtime that runs
the model *differently* (a misread tensor, a wrong kernel). ``judge`` therefore accepts
another runtime when it is within ``MAX_PROB_DIFF`` of this process's, or, failing that, when
it is as faithful to the float model as this process's runtime (which the gate has just
measured on the whole evaluation set): no further from the float probabilities than
``FLOAT_RATIO`` times that runtime's own distance (the larger of what the probe and the whole
evaluation set show, at least ``MAX_PROB_DIFF``), and giving the
float model's answer at least as often as that runtime does, or as the gate's
``--min-agreement`` asks.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import UsageError
from converters.export import quiet_native_stderr
from edge.manifest import ModelManifest
from edge.runtime import RUNTIMES, TFLiteClassifier

log = logging.getLogger(__name__)

TFLITE_RUNTIME_ENV = "NEUROEDGE_TFLITE_RUNTIME_PYTHON"
# Two runtimes run different int8 kernels (XNNPACK, or the reference ones), whose rounding
# differs by a few output steps through a deep network: measured up to 0.0195 (5 steps of
# 1/256) between tflite-runtime 2.14 and ai-edge-litert 2.3 on the paper model. A wrong
# kernel or a misread model differs by far more.
MAX_PROB_DIFF = 0.05
# Measured on issue 12's residual networks (docs/conversion.md, "Runtime compatibility"): the
# two runtimes were 0.016-0.078 apart while each stood 0.015-0.123 from the float model, the
# reference kernels at 0.3-1.3 times XNNPACK's distance. A misread model stands far outside.
FLOAT_RATIO = 1.5
PROBE_TIMEOUT_S = 300


@dataclass
class RuntimeCheck:
    """One runtime's verdict on the model (``ok``) and what was measured."""

    name: str
    where: str
    ok: bool
    version: str = ""
    python: str = ""
    platform: str = ""
    numpy: str = ""
    xnnpack: bool | None = None
    delegate_nodes: int | None = None
    images: int = 0
    compared_with: str = ""
    max_abs_prob_diff: float | None = None
    top1_agreement_pct: float | None = None
    # the same probe against the float (Keras) model's probabilities
    max_abs_diff_from_float: float | None = None
    top1_agreement_with_float_pct: float | None = None
    accepted_by: str = ""
    ms_per_image_1_thread: float | None = None
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def manifest_entry(self) -> dict[str, Any]:
        """The record kept in ``model.json``'s ``verified_runtimes``."""
        keep = ("name", "version", "python", "platform", "numpy", "xnnpack", "delegate_nodes",
                "images",
                "compared_with", "max_abs_prob_diff", "top1_agreement_pct",
                "max_abs_diff_from_float", "top1_agreement_with_float_pct", "accepted_by",
                "ms_per_image_1_thread")
        return {k: v for k, v in self.to_dict().items() if k in keep and v not in (None, "")}


def parse_runtime_specs(specs: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """``NAME=PYTHON`` options (plus ``$NEUROEDGE_TFLITE_RUNTIME_PYTHON``) -> pairs."""
    names = [r[0] for r in RUNTIMES]
    pairs: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, python = spec.partition("=")
        if not sep or not name or not python:
            raise UsageError(f"--check-runtime wants NAME=PYTHON (for example tflite-runtime="
                             f"/opt/venv-tflrt/bin/python), got {spec!r}")
        if name not in names:
            raise UsageError(f"--check-runtime: unknown runtime {name!r}; choose one of "
                             f"{', '.join(names)}")
        pairs.append((name, python))
    env_python = os.environ.get(TFLITE_RUNTIME_ENV)
    if env_python and not any(name == "tflite-runtime" for name, _ in pairs):
        pairs.append(("tflite-runtime", env_python))
    for name, python in pairs:
        if shutil.which(python) is None and not os.access(python, os.X_OK):
            source = (f"${TFLITE_RUNTIME_ENV}" if python == env_python
                      else f"--check-runtime {name}=...")
            raise UsageError(f"{source}: {python} is not an executable Python. Create one with "
                             "`python3 -m venv VENV && VENV/bin/pip install "
                             "'tflite-runtime==2.14.0' 'numpy<2' pillow` and pass VENV/bin/python")
    return pairs


def check_in_process(model_path: Path, manifest: ModelManifest,
                     probe: np.ndarray) -> tuple[RuntimeCheck, TFLiteClassifier | None]:
    """Load with this process's edge runtime and default delegates, time ``probe``."""
    from converters.errors import ConverterError
    from edge.errors import EdgeError

    check = RuntimeCheck(name="?", where="in-process", ok=False,
                         python=platform.python_version(), numpy=np.__version__,
                         platform=f"{platform.system()}-{platform.machine()}")
    native = ""
    try:
        with quiet_native_stderr() as captured:
            try:
                timed = TFLiteClassifier(model_path, manifest, num_threads=1)
                timed.predict(probe[0])  # some delegates fail only at the first invoke
            finally:
                native = captured.text()
        check.name, check.version = timed.runtime.name, timed.runtime.version
        check.delegate_nodes = timed.delegate_nodes
        check.xnnpack = None if check.delegate_nodes is None else check.delegate_nodes > 0
        start = time.perf_counter()
        timed.predict(probe)
        check.ms_per_image_1_thread = round(1000 * (time.perf_counter() - start) / len(probe), 3)
        check.images = int(len(probe))
        classifier = TFLiteClassifier(model_path, manifest)  # all cores, for the evaluation
    except (EdgeError, ConverterError, RuntimeError, ValueError) as exc:
        check.error = _first_line(exc)
        details = [line.strip() for line in native.splitlines()
                   if "error" in line.lower() or "failed" in line.lower()]
        if details:
            check.error += " [" + " | ".join(details[:3]) + "]"
        if check.name == "?":
            check.name = _runtime_name_or_unknown()
        return check, None
    check.ok = True
    return check, classifier


def _runtime_name_or_unknown() -> str:
    from edge.runtime import load_runtime

    try:
        return load_runtime().name
    except Exception:  # noqa: BLE001
        return "unknown"


@dataclass(frozen=True)
class Closeness:
    """How far one set of probe probabilities is from another."""

    max_abs_diff: float
    top1_agreement_pct: float

    @classmethod
    def of(cls, probs: np.ndarray, other: np.ndarray) -> Closeness:
        return cls(max_abs_diff=round(float(np.abs(probs - other).max()), 6),
                   top1_agreement_pct=round(
                       100.0 * float((probs.argmax(1) == other.argmax(1)).mean()), 3))


def judge(probs: np.ndarray, reference: np.ndarray, reference_name: str,
          float_probs: np.ndarray | None, min_agreement_pct: float,
          reference_spread: float = 0.0) -> tuple[str, str]:
    """(how the runtime was accepted, "") or ("", why it was refused); see the module doc.

    ``reference_spread``: the largest distance of ``reference_name`` from the float model
    on the gate's whole evaluation set, which the gate accepted. A few probe pictures
    estimate that distance poorly (a maximum over 64 of them), so the bar is set by the
    larger of the two.
    """
    to_reference = Closeness.of(probs, reference)
    if to_reference.max_abs_diff <= MAX_PROB_DIFF:
        return f"within {MAX_PROB_DIFF} of {reference_name}", ""
    refused = (f"outputs differ from {reference_name} by up to "
               f"{to_reference.max_abs_diff:.4f} (allowed {MAX_PROB_DIFF})")
    if float_probs is None:
        return "", refused
    mine, theirs = Closeness.of(probs, float_probs), Closeness.of(reference, float_probs)
    allowed = FLOAT_RATIO * max(theirs.max_abs_diff, reference_spread, MAX_PROB_DIFF)
    wanted = min(theirs.top1_agreement_pct, min_agreement_pct)
    if mine.max_abs_diff <= allowed and mine.top1_agreement_pct >= wanted:
        known = (f", {reference_spread:.4f} on the evaluation set"
                 if reference_spread > theirs.max_abs_diff else "")
        return (f"as close to the float model as {reference_name} "
                f"({mine.max_abs_diff:.4f} vs {theirs.max_abs_diff:.4f}{known})"), ""
    if mine.max_abs_diff > allowed:
        why = (f"it stands {mine.max_abs_diff:.4f} from the float model's probabilities, "
               f"{reference_name} {theirs.max_abs_diff:.4f}"
               + (f" ({reference_spread:.4f} on the evaluation set)"
                  if reference_spread > theirs.max_abs_diff else "")
               + f" (allowed {allowed:.4f})")
    else:
        why = (f"it gives the float model's answer on {mine.top1_agreement_pct:.1f}% of the "
               f"probe images, {reference_name} on {theirs.top1_agreement_pct:.1f}% "
               f"(wanted {wanted:.1f}%)")
    return "", f"{refused}, and it is not as faithful to the float model: {why}"


def check_subprocess(name: str, python: str, model_dir: Path, probe: np.ndarray,
                     reference: np.ndarray, reference_name: str,
                     float_probs: np.ndarray | None = None,
                     min_agreement_pct: float = 98.0,
                     reference_spread: float = 0.0) -> RuntimeCheck:
    """Classify ``probe`` with ``python`` and ``name``; ``judge`` it against ``reference``.

    ``float_probs``: the float model's probabilities for ``probe``; without them only the
    ``MAX_PROB_DIFF`` rule applies.
    """
    import edge

    check = RuntimeCheck(name=name, where=python, ok=False, compared_with=reference_name,
                         images=int(len(probe)))
    with tempfile.TemporaryDirectory(prefix="neuroedge-probe-") as tmp:
        scratch = Path(tmp)
        # A copy of the device package only: nothing of this environment (numpy 2, TF)
        # leaks into the other one through sys.path.
        shutil.copytree(Path(edge.__file__).resolve().parent, scratch / "edge",
                        ignore=shutil.ignore_patterns("__pycache__", "models", "*.tflite"))
        probe_script = scratch / "runtime_probe.py"
        shutil.copyfile(Path(__file__).with_name("runtime_probe.py"), probe_script)
        inputs = scratch / "inputs.npy"
        np.save(inputs, np.asarray(probe, dtype=np.float32))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["NEUROEDGE_RUNTIME"] = name
        try:
            done = subprocess.run([python, "-E", "-s", str(probe_script), str(model_dir.resolve()),
                                   str(inputs)], capture_output=True, text=True, env=env,
                                  cwd=tmp, timeout=PROBE_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            check.error = f"could not run {python}: {_first_line(exc)}"
            return check
    result = _last_json(done.stdout)
    if result is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        check.error = f"the probe in {python} exited with {done.returncode}: {tail}"
        return check
    check.python = result.get("python", "")
    if "error" in result:
        check.error = result["error"]
        if "ModuleNotFoundError" in check.error or "ImportError" in check.error:
            check.error += (f" (install the device requirements in that environment: "
                            f"{python} -m pip install 'numpy<2' pillow {name})")
        return check
    check.version = result["version"]
    check.numpy = result.get("numpy", "")
    check.platform = result.get("platform", "")
    check.delegate_nodes = result.get("delegate_nodes")
    check.xnnpack = None if check.delegate_nodes is None else check.delegate_nodes > 0
    check.ms_per_image_1_thread = round(float(result["ms_per_image"]), 3)
    probs = np.asarray(result["probs"], dtype=np.float64)
    if probs.shape != reference.shape:
        check.error = f"returned outputs of shape {probs.shape}, expected {reference.shape}"
        return check
    to_reference = Closeness.of(probs, reference)
    check.max_abs_prob_diff = to_reference.max_abs_diff
    check.top1_agreement_pct = to_reference.top1_agreement_pct
    if float_probs is not None:
        record_float_closeness(check, probs, float_probs)
    check.accepted_by, check.error = judge(probs, reference, reference_name, float_probs,
                                           min_agreement_pct, reference_spread)
    check.ok = not check.error
    return check


def record_float_closeness(check: RuntimeCheck, probs: np.ndarray,
                           float_probs: np.ndarray) -> None:
    """Keep how far ``check``'s runtime stands from the float model on the probe."""
    to_float = Closeness.of(probs, float_probs)
    check.max_abs_diff_from_float = to_float.max_abs_diff
    check.top1_agreement_with_float_pct = to_float.top1_agreement_pct


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
