"""Statistics, ratios, tables and the target verdicts: pure functions, no models."""

from __future__ import annotations

import math

import pytest

from benchmarks.cli import targets, targets_markdown
from benchmarks.report import ratio, summarize, table


def test_summarize_median_and_p90():
    stats = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert stats["median_ms"] == 3.0
    assert stats["p90_ms"] == pytest.approx(61.6)  # numpy's linear interpolation
    assert stats["min_ms"] == 1.0 and stats["n"] == 5


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_summarize_refuses_empty_or_non_finite(bad):
    with pytest.raises(ValueError, match="no finite timing samples"):
        summarize(bad)


def test_ratio_guards_missing_and_zero():
    assert ratio(12.6, 9.4) == pytest.approx(1.3404, abs=1e-4)
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None and ratio(1.0, 0) is None
    assert ratio(math.inf, 1.0) is None


def test_table_layout_and_escaping():
    text = table(["a", "b"], [["x|y", 1.23456], ["z", None]], ["l", "r"])
    lines = text.splitlines()
    assert lines[0] == "| a | b |" and lines[1] == "|---|---:|"
    assert lines[2] == "| x/y | 1.23 |" and lines[3] == "| z | - |"


def _latency_row(fmt, median, speedup):
    return {"arch": "dsconv_cbam", "format": fmt, "runtime": "ai-edge-litert", "threads": 1,
            "median_ms": median, "speedup_vs_float32": speedup}


def test_targets_verdicts_follow_the_numbers():
    result = {
        "latency": {"rows": [_latency_row("float32", 12.0, 1.0), _latency_row("int8", 3.5, 3.43)]},
        "agent": {"kinds": {"png": {
            "agent_disk": {"overhead_vs_bare_pct": 40.0, "overhead_ms_per_file": 8.0},
            "agent_tmpfs": {"overhead_vs_bare_pct": 10.0, "overhead_ms_per_file": 2.0}}}},
        "memory": {"peak_rss_mb": 130.0, "met": False},
    }
    rows = {r["target"].split(":")[0]: r for r in targets(result)}
    assert rows["paper int8, 1 thread, ai-edge-litert"]["met"] is True
    assert [r for r in targets(result) if "2.5x" in r["target"]][0]["met"] is True
    assert rows["agent overhead, PNG, outbox on disk"]["met"] is False
    assert rows["agent overhead, PNG, outbox on tmpfs"]["met"] is True
    assert rows["agent peak RSS, device environment"]["met"] is False
    text = targets_markdown(targets(result))
    assert text.count("**no**") == 2 and "3.50 ms" in text


def test_targets_empty_without_measurements():
    assert targets({}) == []


def test_short_error_keeps_the_interpreters_reason():
    from benchmarks.latency import short_error

    error = ("RuntimeUnavailableError: tflite-runtime 2.14.0 cannot load dynamic.tflite: Didn't "
             "find op for builtin opcode 'FULLY_CONNECTED' version '12'. The model may need a "
             "newer runtime")
    assert short_error(error) == "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'"
    assert short_error("x" * 200).endswith("...") and len(short_error("x" * 200)) == 80
