"""The crash soak's own logic: its bursts, and its books on a short real run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import soak


def test_a_burst_mixes_good_and_bad_inputs():
    items = soak.burst(np.random.default_rng(1), 0, 200)
    assert len(items) == 200
    names = [name for name, _ in items]
    assert any(name.startswith(b"sub/") for name in names)  # DICOM without extension
    assert any(name.endswith(b"-cut.jpg") for name in names)
    assert any(data == b"" for _, data in items)
    assert any(data.startswith(b"\x89PNG") for _, data in items)


@pytest.mark.slow
def test_a_short_soak_balances_its_books(tmp_path, test_model_dir):
    result = soak.measure(str(test_model_dir), rounds=3, files=8, seed=2, work=tmp_path,
                          max_delay_s=1.0)
    assert result["inputs"] == 24
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["hangs"] == 0
    assert result["left_in_inbox"] == 0 and result["fsck_exit"] == 0
    assert result["archived"] + result["quarantined"] == 24
    assert "books balance" in soak.markdown(result)


def test_the_books_see_a_lost_input(tmp_path):
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    (outbox / "archive" / "2026-01-01").mkdir(parents=True)
    (outbox / "reports").mkdir()
    inbox.mkdir()
    (outbox / "archive" / "2026-01-01" / "a.png").write_bytes(b"a")
    books = soak._books(inbox, outbox, [b"a", b"b"])
    assert books["lost"] == 1 and books["missing_reports"] == 1


@pytest.fixture(scope="session")
def test_model_dir(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow", reason="the toy model is built with TensorFlow")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))
    from toy_model import build_toy_model

    return build_toy_model(tmp_path_factory.mktemp("soak-toy"))
