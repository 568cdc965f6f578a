"""Does the converted model load and run in the interpreters a device will use?

Two kinds of check, both through the device's own ``edge.runtime.TFLiteClassifier``:

- in this process, with whichever runtime ``edge.runtime.load_runtime`` picks here
  (ai-edge-litert when installed) and its default delegates (XNNPACK on CPU). A failure
  here fails the gate: it is the "converted fine, refused at load time" case.
- in another Python environment (``--check-runtime tflite-runtime=/venv/bin/python`` or
  ``$NEUROEDGE_TFLITE_RUNTIME_PYTHON``): tflite-runtime needs numpy<2 and cannot share a
  process with TensorFlow 2.21. A small probe classifies fixed inputs there and the outputs
  are compared with this process's.
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
    ms_per_image_1_thread: float | None = None
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def manifest_entry(self) -> dict[str, Any]:
        """The record kept in ``model.json``'s ``verified_runtimes``."""
        keep = ("name", "version", "python", "platform", "numpy", "xnnpack", "delegate_nodes",
                "images",
                "compared_with", "max_abs_prob_diff", "top1_agreement_pct",
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


def check_subprocess(name: str, python: str, model_dir: Path, probe: np.ndarray,
                     reference: np.ndarray, reference_name: str) -> RuntimeCheck:
    """Classify ``probe`` with ``python`` and ``name``; compare with ``reference`` outputs."""
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
    check.max_abs_prob_diff = round(float(np.abs(probs - reference).max()), 6)
    check.top1_agreement_pct = round(
        100.0 * float((probs.argmax(1) == reference.argmax(1)).mean()), 3)
    if check.max_abs_prob_diff > MAX_PROB_DIFF:
        check.error = (f"outputs differ from {reference_name} by up to "
                       f"{check.max_abs_prob_diff:.4f} (allowed {MAX_PROB_DIFF})")
        return check
    check.ok = True
    return check


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
