"""Statistics, Markdown tables and a description of the machine a run was made on."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """Median and 90th percentile (what a clinic waits for typically and on a bad scan)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("no finite timing samples")
    return {"median_ms": float(np.median(values)), "p90_ms": float(np.percentile(values, 90)),
            "mean_ms": float(values.mean()), "min_ms": float(values.min()), "n": int(values.size)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` or None when either is missing or the result is not finite."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    value = float(numerator) / float(denominator)
    return value if math.isfinite(value) else None


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
          align: Sequence[str] | None = None) -> str:
    """A Markdown table; ``align`` per column: 'l' or 'r' (default: text left, numbers right)."""
    rows = [[fmt(cell) if not isinstance(cell, str) else cell for cell in row] for row in rows]
    if align is None:
        align = ["l"] + ["r"] * (len(headers) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "").strip() or platform.processor()
    extra = []
    for key in ("CPU family", "Model", "Hypervisor vendor"):
        if key in fields:
            extra.append(f"{key.lower()} {fields[key].strip()}")
    flags = fields.get("Flags", "").split()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "asimddp", "i8mm")
            if f in flags]
    return f"{model} ({', '.join(extra + ['flags: ' + ' '.join(simd)])})"


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, load, Python and package versions."""
    versions: dict[str, str] = {}
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python 3.8+ has it
        version = None
    for dist in ("numpy", "ai-edge-litert", "tensorflow", "keras", "pillow", "pydicom"):
        try:
            versions[dist] = version(dist) if version else "?"
        except PackageNotFoundError:
            versions[dist] = "not installed"
    memory_gib = None
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu": _lscpu_model(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "memory_gib": round(memory_gib, 1) if memory_gib else None,
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "versions": versions,
            "load_average_at_start": [round(x, 2) for x in load_average()],
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def machine_markdown(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    load = ", ".join(str(x) for x in info["load_average_at_start"])
    return (f"- CPU: {info['cpu']}, {info['cpus']} CPUs, {info['memory_gib']} GiB, "
            f"{info['system']}\n- Python {info['python']}; {versions}\n"
            f"- load average (1, 5, 15 min) at start: {load}; {info['date_utc']} UTC")
