"""The pictures of a report, piece by piece: what the agent's reports step spends its CPU on.

For N pictures (the data set's Testing images with ``--data``, else phantoms), classified
once with the agent's model: the heat-map blend, its PNG, the thumbnail's data URI and the
HTML page, each timed over all pictures (best of several passes, one thread), with the
sizes they make. Reference rows time what the agent did before (the blend in arithmetic,
Pillow's PNG encoder at zlib levels 1 and 6) on the same pictures. The agent's own
throughput is ``python -m benchmarks agent``; this says where its reports step goes.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import table


def _blend_arithmetic(picture: np.ndarray, heat: np.ndarray, strength: float = 0.55
                      ) -> np.ndarray:
    """``edge.heatmap.overlay`` as it was computed before its tables (same bytes)."""
    from edge import heatmap

    height, width = picture.shape[:2]
    level = np.rint(np.clip(heatmap.resize_map(heat, height, width), 0.0, 1.0) * 255)
    level = level.astype(np.uint8)
    alpha = np.rint(256 * strength * np.linspace(0.0, 1.0, 256) ** 2).astype(np.uint16)
    a = alpha[level][..., None]
    return ((picture.astype(np.uint16) * (256 - a) + heatmap._LUT[level] * a) >> 8).astype(
        np.uint8)


def _pillow_png(pixels: np.ndarray, level: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def _best_ms(fn: Callable[[Any], Any], items: list[Any], passes: int) -> tuple[float, list[Any]]:
    best, out = float("inf"), []
    for _ in range(passes):
        start = time.perf_counter()
        out = [fn(item) for item in items]
        best = min(best, (time.perf_counter() - start) * 1000 / len(items))
    return best, out


def measure(model: str, files: int, data_dir: Path | None, passes: int = 5) -> dict[str, Any]:
    from PIL import Image

    from benchmarks.agent import _source_pictures
    from edge import heatmap, pages
    from edge.classifier import Classifier
    from edge.config import config_from_dict
    from edge.decoded import DecodedImage
    from edge.report import build_report

    config = config_from_dict({"paths": {"model": model}}, "benchmark")
    classifier = Classifier(config)
    items = []
    for picture in _source_pictures(files, data_dir):
        decoded = DecodedImage(kind="png", picture=Image.fromarray(picture))
        prediction = classifier.classify(decoded)
        if prediction.heatmap is None:
            from benchmarks.errors import BenchmarkError

            raise BenchmarkError(f"the model in {model} has no heat-map output: nothing to draw")
        report = build_report(sha256="0" * 64, file_name="scan.png", size=0, decoded=decoded,
                              prediction=prediction, model=classifier.describe(),
                              timings_ms=dict(prediction.timings_ms), token="t",
                              received_at="now")
        items.append((report, prediction.model_input, prediction.heatmap))
    rows: dict[str, dict[str, float]] = {}

    def row(name: str, fn: Callable[[Any], Any], inputs: list[Any]) -> list[Any]:
        ms, out = _best_ms(fn, inputs, passes)
        rows[name] = {"ms": ms}
        if out and isinstance(out[0], (bytes, str)):
            rows[name]["kb"] = float(np.mean([len(x) for x in out])) / 1000
        return out

    drawn = row("heat-map blend (edge.heatmap.overlay)",
                lambda i: heatmap.overlay(i[1], i[2]), items)
    row("before: the blend in arithmetic", lambda i: _blend_arithmetic(i[1], i[2]), items)
    pngs = row("heat-map PNG (edge.png, Up filter, zlib 1)", heatmap.png_bytes, drawn)
    row("before: heat-map PNG by Pillow, zlib 1", lambda d: _pillow_png(d, 1), drawn)
    row("reference: heat-map PNG by Pillow, zlib 6 (its default)",
        lambda d: _pillow_png(d, 6), drawn)
    row("thumbnail data URI (edge.png; kB of base64 text)",
        lambda i: pages.thumbnail_data_uri(i[1]), items)
    row("before: thumbnail PNG by Pillow, zlib 1 (kB of PNG)",
        lambda i: _pillow_png(i[1][..., 0].copy(), 1), items)
    row("HTML page from the drawn PNG (thumbnail + trust section)",
        lambda k: pages.report_page(items[k][0], items[k][1], pngs[k]), list(range(len(items))))
    row("all of it: blend + PNG + page", lambda i: pages.report_page(
        i[0], i[1], heatmap.png_bytes(heatmap.overlay(i[1], i[2]))), items)
    return {"model": model, "files": len(items), "passes": passes,
            "source": str(data_dir) + " Testing images" if data_dir
            else "synthetic phantom heads (512x512)", "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    rows = [[name, f"{r['ms']:.2f}", f"{r['kb']:.1f}" if "kb" in r else "-"]
            for name, r in result["rows"].items()]
    text = table(["piece (one thread)", "ms per picture", "kB per picture"], rows,
                 ["l", "r", "r"])
    notes = [f"{result['files']} pictures ({result['source']}), classified once with "
             f"{result['model']}; each row: best of {result['passes']} passes over all of them",
             "before / reference: on the same pictures, what the agent did before (commit "
             "4102f11) and Pillow's default level; not done by the agent now"]
    return text + "\n\n" + "\n".join(f"- {n}" for n in notes)
