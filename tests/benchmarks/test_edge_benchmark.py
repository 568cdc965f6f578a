"""``python -m edge.benchmark`` (the device-side speed table) and its synthetic DICOM."""

from __future__ import annotations

import numpy as np
import pytest

from edge.benchmark import main, synthetic_mr


def test_synthetic_mr_carries_the_given_pixels(tmp_path):
    from edge.config import AgentConfig
    from edge.inputs import decode_file

    pixels = (np.arange(64 * 48, dtype=np.uint32).reshape(64, 48) % 256).astype(np.uint8)
    path = synthetic_mr(tmp_path / "x.dcm", pixels=pixels)
    config = AgentConfig()
    decoded = decode_file(path, config.dicom, config.limits)
    assert decoded.kind == "dicom" and decoded.picture.size == (48, 64)
    import pydicom

    ds = pydicom.dcmread(str(path))
    assert ds.Modality == "MR" and ds.BitsStored == 12
    assert np.array_equal(ds.pixel_array, pixels.astype(np.uint16) * 16)


@pytest.mark.slow
def test_edge_benchmark_cli_prints_both_tables(tiny, capsys):
    main(["--model", str(tiny.model_dir), "--repeats", "1", "--bursts", "4"])
    out = capsys.readouterr().out
    assert "| PNG 512x512 |" in out and "| DICOM MR 512x512 16-bit |" in out
    burst = [line for line in out.splitlines() if line.startswith("| 4 |")]
    assert len(burst) == 1
    peak, before = (float(c) for c in burst[0].strip("|").split("|")[3:5])
    assert 0 < before <= peak < 1000  # the child's own peak, not inherited from this process
