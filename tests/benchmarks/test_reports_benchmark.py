"""``python -m benchmarks reports``: the report pictures piece by piece, with the shipped
model (it has a heat-map output) on a few phantoms. Structure and sizes, not speed."""

from __future__ import annotations

import math

from benchmarks import reports
from benchmarks.cli import COMMANDS, NOT_IN_ALL, render
from benchmarks.report import machine_info
from edge.manifest import default_model_dir


def test_every_piece_is_timed_and_the_pngs_are_real_sizes():
    result = reports.measure(str(default_model_dir()), files=3, data_dir=None, passes=1)
    rows = result["rows"]
    assert result["files"] == 3 and len(rows) == 9
    for name, row in rows.items():
        assert math.isfinite(row["ms"]) and row["ms"] > 0, name
    heat = rows["heat-map PNG (edge.png, Up filter, zlib 1)"]["kb"]
    pillow = rows["before: heat-map PNG by Pillow, zlib 1"]["kb"]
    assert 10 < heat < 160 and abs(heat - pillow) < 0.25 * pillow  # the same picture, lossless
    page = rows["all of it: blend + PNG + page"]["kb"]
    assert page > heat  # the page embeds the heat-map (base64) and the thumbnail
    text = reports.markdown(result)
    assert "| heat-map blend (edge.heatmap.overlay) |" in text and "3 pictures" in text
    assert "reports" in COMMANDS and "reports" in NOT_IN_ALL
    assert "piece by piece" in render({"machine": machine_info(), "reports": result,
                                       "seconds": 1.0, "load_average_at_end": "0"})
