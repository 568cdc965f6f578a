"""The months-of-use benchmark: its synthetic outbox must be one the agent could have written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import history
from benchmarks.cli import _scales
from benchmarks.errors import BenchmarkError
from edge.fsck import check_outbox


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow", reason="the toy model is built with TensorFlow")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))
    from toy_model import build_toy_model

    return build_toy_model(tmp_path_factory.mktemp("history-toy"))


def test_a_synthetic_history_passes_fsck_deep(tmp_path, toy_model_dir):
    seed = history._Seed(history.seed_outbox(str(toy_model_dir), tmp_path))
    root = tmp_path / "outbox"
    counts = history.build(root, seed, days=4, per_day=60)
    assert counts["classified"] and counts["duplicate"] and counts["quarantined"]
    result = check_outbox(root, repair=False, deep=True)
    assert not result.findings, result.findings[:3]
    total = counts["classified"] + counts["duplicate"] + counts["quarantined"]
    assert result.counts["index_lines"] == total
    markers = sorted((root / "quarantine").glob("export*.done"))
    assert len(markers) == 16  # four a day, one name each: export.done, export~e3b0c442...
    line = json.loads((root / "index" / "2025-01-01.jsonl").read_bytes().splitlines()[0])
    assert set(line) >= {"time", "token", "id", "file_name", "outcome", "moved_to"}


def test_scales_are_checked():
    assert _scales("30x1000,365x2000") == [(30, 1000), (365, 2000)]
    for bad in ("30", "0x10", "x10", "ax1"):
        with pytest.raises(BenchmarkError):
            _scales(bad)
