"""Inference latency per image: every format, both interpreter packages, 1 and 2 threads.

Every timing runs in a fresh process (``benchmarks.probe`` for TFLite, one per interpreter
package; ``benchmarks.keras_probe`` for Keras, one per thread count), so no process carries
another's TensorFlow, thread pools or caches. All of them run in the same invocation, one
after the other, so the ratios in the table compare like with like.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.models import BuiltModel
from benchmarks.report import ratio, summarize, table

log = logging.getLogger(__name__)

LITERT = "ai-edge-litert"
TFLITE_RUNTIME = "tflite-runtime"
PROBE_TIMEOUT_S = 1800


def _probe_folder(tmp: Path) -> Path:
    """The probe script plus a copy of the device package (no models, no caches)."""
    import edge

    shutil.copytree(Path(edge.__file__).resolve().parent, tmp / "edge",
                    ignore=shutil.ignore_patterns("__pycache__", "models", "*.tflite"))
    shutil.copyfile(Path(__file__).with_name("probe.py"), tmp / "probe.py")
    return tmp / "probe.py"


def run_tflite_probe(python: str, runtime: str, models: list[BuiltModel], threads: list[int],
                     runs: int, warmup: int) -> dict[str, Any]:
    """Time ``models`` with ``runtime`` in ``python``; {'results': [...]} or {'error': ...}."""
    jobs = [{"key": m.key, "path": str(Path(m.path).resolve()), "threads": t}
            for m in models for t in threads]
    with tempfile.TemporaryDirectory(prefix="neuroedge-latency-") as tmp:
        probe = _probe_folder(Path(tmp))
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"jobs": jobs, "runs": runs, "warmup": warmup}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["NEUROEDGE_RUNTIME"] = runtime
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            done = subprocess.run([python, "-E", "-s", str(probe), str(spec)], cwd=tmp, env=env,
                                  capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"error": f"could not run {python}: {exc}"}
    return _probe_result(done, f"the probe in {python}")


def run_keras_probe(model: BuiltModel, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    done = subprocess.run([sys.executable, "-m", "benchmarks.keras_probe", model.path,
                           str(threads), str(runs), str(warmup)], capture_output=True, text=True,
                          env=env, timeout=PROBE_TIMEOUT_S)
    return _probe_result(done, "Keras probe")


def _probe_result(done: subprocess.CompletedProcess, what: str) -> dict[str, Any]:
    """A probe's record: the last JSON line it printed, else an error row with its stderr."""
    for line in reversed(done.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"{what} exited with {done.returncode}: {tail}"}


def tflite_runtime_python(explicit: str | None) -> tuple[str | None, str]:
    """The Python holding tflite-runtime: the option, else $NEUROEDGE_TFLITE_RUNTIME_PYTHON."""
    python = explicit or os.environ.get("NEUROEDGE_TFLITE_RUNTIME_PYTHON") or None
    if python is None:
        return None, ("tflite-runtime not measured: pass --tflite-runtime-python "
                      "VENV/bin/python (a venv with 'numpy<2' tflite-runtime pillow)")
    if shutil.which(python) is None and not os.access(python, os.X_OK):
        return None, f"tflite-runtime not measured: {python} is not an executable Python"
    return python, ""


def measure(models: list[BuiltModel], threads: list[int], runs: int, warmup: int,
            tflite_python: str | None) -> dict[str, Any]:
    """All timings: {'rows': [...], 'notes': [...], 'runtimes': {...}}."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    runtimes: dict[str, Any] = {}
    tflite_models = [m for m in models if m.fmt != "keras"]
    pythons = [(LITERT, sys.executable)]
    python, why = tflite_runtime_python(tflite_python)
    if python:
        pythons.append((TFLITE_RUNTIME, python))
    else:
        notes.append(why)
    for runtime, py in pythons:
        log.info("timing %d model file(s) in %s (%s)", len(tflite_models), runtime, py)
        out = run_tflite_probe(py, runtime, tflite_models, threads, runs, warmup)
        if "error" in out:
            notes.append(f"{runtime} not measured: {out['error']}")
            continue
        runtimes[runtime] = {"python": out.get("python"), "numpy": out.get("numpy"),
                             "executable": py}
        by_key = {m.key: m for m in tflite_models}
        for result in out["results"]:
            model = by_key[result["key"]]
            row = _row(model, runtime, result)
            if row.get("version"):
                runtimes[runtime]["version"] = row["version"]
            rows.append(row)
    for model in (m for m in models if m.fmt == "keras"):
        for t in threads:
            log.info("timing %s in Keras, %d thread(s)", model.key, t)
            rows.append(_row(model, "keras", run_keras_probe(model, t, runs, warmup), t))
    _add_ratios(rows)
    return {"rows": rows, "notes": notes, "runtimes": runtimes}


def short_error(error: str, limit: int = 80) -> str:
    """The interpreter's own reason for a table cell: what follows "cannot load NAME: "."""
    text = error.split("cannot load ", 1)[-1]
    text = text.split(": ", 1)[-1] if ": " in text else text
    text = text.split(". The model", 1)[0].strip().strip('"').split(". ", 1)[0]
    text = text.replace("|", "/").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _row(model: BuiltModel, runtime: str, result: dict[str, Any],
         threads: int | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"arch": model.arch, "format": model.fmt, "runtime": runtime,
                           "threads": result.get("threads", threads), "bytes": model.bytes,
                           "weights": model.weights, "path": model.path}
    if "error" in result:
        row["error"] = result["error"]
        return row
    row.update(summarize(result["samples_ms"]))
    row["version"] = result.get("version", "")
    if "delegate_nodes" in result:
        row["delegate_nodes"] = result["delegate_nodes"]
    return row


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed-up of each row over float32 of the same model, runtime and thread count."""
    base = {(r["arch"], r["runtime"], r["threads"]): r.get("median_ms") for r in rows
            if r["format"] == "float32"}
    for r in rows:
        runtime = LITERT if r["runtime"] == "keras" else r["runtime"]
        r["speedup_vs_float32"] = ratio(base.get((r["arch"], runtime, r["threads"])),
                                        r.get("median_ms"))


def markdown(result: dict[str, Any], threads: list[int]) -> str:
    """One row per (model, format, runtime); median / p90 per thread count; speed-ups."""
    groups: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for r in result["rows"]:
        groups.setdefault((r["arch"], r["format"], r["runtime"]), {})[r["threads"]] = r
    headers = ["model", "format", "MB", "runtime"]
    headers += [f"{t} thr median / p90 ms" for t in threads]
    headers += [f"× vs float32 ({t} thr)" for t in threads]
    lines = []
    for (arch, fmt, runtime), by_threads in groups.items():
        first = next(iter(by_threads.values()))
        cells = [arch, fmt, f"{first['bytes'] / 1e6:.2f}", runtime]
        for t in threads:
            r = by_threads.get(t)
            if r is None:
                cells.append("-")
            elif "error" in r:
                cells.append("fails: " + short_error(r["error"]))
            else:
                deleg = r.get("delegate_nodes")
                tag = " (no XNNPACK)" if deleg == 0 else ""
                cells.append(f"{r['median_ms']:.2f} / {r['p90_ms']:.2f}{tag}")
        for t in threads:
            r = by_threads.get(t) or {}
            s = r.get("speedup_vs_float32")
            cells.append(f"{s:.2f}" if s is not None else "-")
        lines.append(cells)
    text = table(headers, lines, ["l", "l", "r", "l"] + ["r"] * (2 * len(threads)))
    notes = list(result["notes"])
    weights = sorted({r["weights"] for r in result["rows"]})
    notes.append("weights: " + "; ".join(weights) + " (latency depends on the graph, not on "
                 "the weight values)")
    notes.append("× vs float32: the float32 TFLite model's median over this row's median, same "
                 "model, runtime and thread count (Keras rows: against ai-edge-litert float32); "
                 "above 1 is faster")
    return text + "\n\n" + "\n".join(f"- {n}" for n in notes)
