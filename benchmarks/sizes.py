"""Model size on disk per format: what a device downloads and keeps in memory."""

from __future__ import annotations

from typing import Any

from benchmarks.models import BuiltModel
from benchmarks.report import ratio, table


def measure(models: list[BuiltModel]) -> dict[str, Any]:
    rows = []
    float32 = {m.arch: m.bytes for m in models if m.fmt == "float32"}
    for m in models:
        rows.append({"arch": m.arch, "format": m.fmt, "bytes": m.bytes, "weights": m.weights,
                     "fraction_of_float32": ratio(m.bytes, float32.get(m.arch)),
                     "path": m.path})
    return {"rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for r in result["rows"]:
        frac = r["fraction_of_float32"]
        lines.append([r["arch"], r["format"], f"{r['bytes']:,}", f"{r['bytes'] / 1e6:.2f}",
                      f"{frac:.3f}" if frac is not None else "-"])
    return table(["model", "format", "bytes", "MB", "÷ float32 TFLite"], lines,
                 ["l", "l", "r", "r", "r"]) + (
        "\n\n- keras: the `.keras` file (weights + graph, float32); the others are `.tflite` "
        "flatbuffers as `converters.export` writes them")
