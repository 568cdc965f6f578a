"""``python -m benchmarks network``: a small study through storescu -> agent -> storescp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import network


def test_a_small_study_reaches_the_pacs(tiny, tmp_path):
    # network.dcmtk, not shutil.which: pynetdicom puts scripts named storescu, storescp and
    # echoscu on the venv's PATH, which are not dcmtk
    missing = [t for t in network.TOOLS if network.dcmtk(t) is None]
    if missing:
        pytest.skip(f"dcmtk is not installed ({', '.join(missing)}): apt-get install -y dcmtk")
    pytest.importorskip("pynetdicom")
    result = network.measure(str(tiny.model_dir), 6, 1, None, tmp_path, settle=0.2)
    (run,) = result["runs"]
    assert run["instances_judged"] == 6
    assert 0 < run["received_s"] <= run["classified_s"] <= run["judged_s"] <= run["sr_s"]
    assert run["instances_per_s"] == pytest.approx(6 / run["classified_s"])
    assert run["peak_rss_mb"] is None or run["peak_rss_mb"] > 10
    assert list(tmp_path.iterdir()) == []  # the scratch study and runs are removed
    text = network.markdown(result)
    assert "**SR at the PACS (storescp), s**" in text and "settle_seconds = 0.2" in text


def test_the_recorded_run_renders():
    saved = Path(__file__).resolve().parents[2] / "docs" / "performance-runs" / (
        "2026-12-04-network-200.json")
    text = network.markdown(json.loads(saved.read_text())["network"])
    assert "| **SR at the PACS (storescp), s** | 6.37 | 5.53 | 7.56 | 6.37 |" in text
