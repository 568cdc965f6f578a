"""The external check in the converter: reported float vs converted, recorded, not gated."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from converters.testing import LABELS, convert_tiny, synthetic_picture
from edge.manifest import external_checks, load_verified


def _external(root, seed=3):
    """tumour/ (glioma, meningioma and pituitary pictures) and notumor/, synthetic."""
    rng = np.random.default_rng(seed)
    for folder, label in (("tumour", 0), ("tumour", 1), ("tumour", 3), ("notumor", 2)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(synthetic_picture(label, rng), mode="L").save(
                root / folder / f"{LABELS[label]}-{i}.png")
    return root


@pytest.mark.slow
def test_conversion_reports_and_records_the_external_check(tiny_run, tmp_path):
    data_dir, run_dir = tiny_run
    ext = _external(tmp_path / "hospital-b")
    outcome = convert_tiny(run_dir, data_dir, tmp_path / "model", external=(ext,))
    assert outcome.passed, outcome.summary
    [entry] = outcome.report["evaluation_external"]
    assert entry["name"] == "hospital-b" and entry["n"] == 16
    for role in ("float", "quantized"):
        assert entry[role]["tumour_images"] == 12
        assert entry[role]["folders"]["tumour"]["n"] == 12
        assert entry[role]["tumour_sensitivity_pct"] >= 75.0  # the tiny task is easy
        lo, hi = entry[role]["tumour_sensitivity_ci95_pct"]  # 12 pictures: a wide interval
        assert lo < entry[role]["tumour_sensitivity_pct"] <= hi and hi - lo > 15
    assert "External check hospital-b" in outcome.summary
    assert "tumour sensitivity" in outcome.summary and "int8 95% CI" in outcome.summary
    manifest, _ = load_verified(tmp_path / "model")
    [recorded] = external_checks(manifest)
    assert recorded["quantized_tumour_sensitivity_pct"] == entry["quantized"][
        "tumour_sensitivity_pct"]
    assert recorded["folders"]["notumor"]["n"] == 4


@pytest.mark.slow
def test_a_bad_external_folder_stops_the_conversion_before_it_starts(tiny_run, tmp_path):
    from converters.tflite import main

    data_dir, run_dir = tiny_run
    bad = tmp_path / "ext"
    (bad / "tumor").mkdir(parents=True)
    result = CliRunner().invoke(main, ["--int8", "--model", str(run_dir), "--data",
                                       str(data_dir), "--out", str(tmp_path / "out"),
                                       "--external", str(bad)])
    assert result.exit_code == 65, result.output
    assert "must be named 'tumour'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "model.tflite").exists()


@pytest.mark.slow
def test_score_a_converted_model_and_record_its_external_check(tiny_int8, tmp_path):
    import shutil

    from converters.score import main

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_int8.model_dir, model_dir)
    ext = _external(tmp_path / "hospital-c", seed=4)
    result = CliRunner().invoke(main, [str(model_dir), "--data", str(tiny_int8.data_dir),
                                       "--no-dedup", "--external", str(ext), "--json",
                                       str(tmp_path / "score.json"), "--record"])
    assert result.exit_code == 0, result.output
    assert "official test split (Testing)" in result.output
    assert "External check hospital-c" in result.output
    scored = json.loads((tmp_path / "score.json").read_text())
    assert scored["official"]["n"] == 60
    assert scored["official"]["accuracy_pct"] == pytest.approx(
        tiny_int8.report["evaluation"]["quantized_accuracy_pct"], abs=1e-6)
    manifest, _ = load_verified(model_dir)  # still verifies: only model.json changed
    assert external_checks(manifest)[0]["name"] == "hospital-c"
    assert manifest.metrics["quantized_accuracy_pct"] == tiny_int8.report["evaluation"][
        "quantized_accuracy_pct"]


def test_score_refuses_contradictory_options(tmp_path):
    from converters.score import main

    result = CliRunner().invoke(main, [str(tmp_path), "--external", str(tmp_path),
                                       "--no-external"])
    assert result.exit_code == 64 and "contradict" in result.output
