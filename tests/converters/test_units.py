"""The gate, the diagnosis and the option parsing, on numbers made up for the purpose."""

from __future__ import annotations

import numpy as np
import pytest

from converters.errors import UsageError
from converters.evaluate import output_kind_of
from converters.gate import Thresholds, apply_gate
from converters.quant_debug import diagnose
from converters.runtimes import TFLITE_RUNTIME_ENV, RuntimeCheck, parse_runtime_specs
from edge.preprocess import DEFAULT_SPEC


def _comparison(drop: float, agreement: float) -> dict:
    return {"accuracy_drop_pp": drop, "top1_agreement_pct": agreement,
            "float_accuracy_pct": 97.0, "quantized_accuracy_pct": 97.0 - drop, "n": 1311,
            "disagreements": round((100 - agreement) * 13.11)}


OK = RuntimeCheck(name="ai-edge-litert", where="in-process", ok=True, version="2.3.0")


@pytest.mark.parametrize("drop, agreement, passed, words", [
    (0.5, 99.0, True, []),
    (1.0, 98.0, True, []),  # the limits themselves pass
    (1.01, 99.0, False, ["dropped 1.01 points", "--max-drop 1"]),
    (0.2, 97.9, False, ["97.90%", "--min-agreement 98%"]),
    (-0.5, 94.3, False, ["94.30%"]),  # same or better accuracy but disagreeing: refused
])
def test_gate_thresholds(drop, agreement, passed, words):
    result = apply_gate(_comparison(drop, agreement), OK, [], (), Thresholds(), "int8", "Testing")
    assert result.passed is passed
    text = " ".join(result.reasons)
    for word in words:
        assert word in text


def test_gate_requires_named_runtimes():
    tflrt = RuntimeCheck(name="tflite-runtime", where="/venv/bin/python", ok=False,
                         error="Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'")
    result = apply_gate(_comparison(0, 100), OK, [tflrt], ("tflite-runtime",), Thresholds(),
                        "dynamic", "Testing")
    assert not result.passed and "FULLY_CONNECTED" in result.reasons[0]
    result = apply_gate(_comparison(0, 100), OK, [], ("tflite-runtime",), Thresholds(),
                        "int8", "Testing")
    assert not result.passed and "--check-runtime tflite-runtime=" in result.reasons[0]
    assert apply_gate(_comparison(0, 100), OK, [tflrt], (), Thresholds(), "int8", "T").passed


def test_gate_fails_when_edge_runtime_cannot_load():
    bad = RuntimeCheck(name="ai-edge-litert", where="in-process", ok=False, version="2.3.0",
                       error="failed to create XNNPACK runtime")
    result = apply_gate(None, bad, [], (), Thresholds(), "int8", "Testing")
    assert not result.passed and "XNNPACK" in result.reasons[0]


def test_output_kind():
    assert output_kind_of(np.array([[0.1, 0.9], [0.5, 0.5]])) == "probabilities"
    assert output_kind_of(np.array([[2.0, -1.0], [0.3, 0.1]])) == "logits"


def test_diagnosis_names_miscalibrated_input_and_suggests_fixes():
    calibration = np.random.default_rng(0).uniform(0, 255, (8, 4, 4, 3)).astype(np.float32)
    report = diagnose(saved_model=None, calibration=calibration, debug_images=calibration,
                      spec=DEFAULT_SPEC, input_quant=(1.0, -128), architecture="dsconv_cbam",
                      calibration_size=300, mode="int8")
    text = " ".join(report.findings)
    assert "produces values in [0, 1]" in text and "almost erased" in text
    joined = " ".join(report.suggestions)
    assert report.suggestions[0].startswith("Fix the calibration data")
    assert "--calibration-size 1000" in joined and "dsconv_cbam_bn" in joined
    assert "--dynamic" in joined and "--float16" in joined


def test_diagnosis_of_a_well_calibrated_input_finds_nothing_wrong_there():
    calibration = np.random.default_rng(0).uniform(0, 1, (8, 4, 4, 3)).astype(np.float32)
    report = diagnose(saved_model=None, calibration=calibration, debug_images=calibration,
                      spec=DEFAULT_SPEC, input_quant=(1 / 255, -128),
                      architecture="dsconv_cbam_gap", calibration_size=300, mode="int8")
    assert report.findings == [] and not report.suggestions[0].startswith("Fix the calibration")


def test_runtime_specs(monkeypatch, tmp_path):
    monkeypatch.delenv(TFLITE_RUNTIME_ENV, raising=False)
    assert parse_runtime_specs(()) == []
    import sys

    assert parse_runtime_specs([f"tflite-runtime={sys.executable}"]) == [
        ("tflite-runtime", sys.executable)]
    monkeypatch.setenv(TFLITE_RUNTIME_ENV, sys.executable)
    assert parse_runtime_specs(()) == [("tflite-runtime", sys.executable)]
    monkeypatch.setenv(TFLITE_RUNTIME_ENV, str(tmp_path / "missing" / "python"))
    with pytest.raises(UsageError, match=TFLITE_RUNTIME_ENV):
        parse_runtime_specs(())


def test_dedup_list_errors(tmp_path):
    from converters.datasets import EvaluationSet, dedup_indices, find_dedup_list

    with pytest.raises(UsageError, match="does not exist"):
        find_dedup_list(tmp_path / "none.txt", True, "Testing", None, tmp_path)
    assert find_dedup_list(None, True, "Training", None, tmp_path) is None
    listed = tmp_path / "dedup.txt"
    listed.write_text("Testing/glioma/other.jpg\n")
    eval_set = EvaluationSet(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]),
                             ["Testing/glioma/a.png", "Testing/notumor/b.png"], "Testing", tmp_path)
    with pytest.raises(UsageError, match="names none of the 2 evaluation images"):
        dedup_indices(eval_set, listed, explicit=True)
    assert dedup_indices(eval_set, listed, explicit=False) is None
    listed.write_text("# audit\nTesting/notumor/b.png\n")
    assert dedup_indices(eval_set, listed, explicit=True).tolist() == [1]


def test_diagnosis_spots_changed_answers_on_near_ties():
    calibration = np.random.default_rng(0).uniform(0, 1, (8, 4, 4, 3)).astype(np.float32)
    comparison = {"disagreements": 48, "float_margin_median": 0.31,
                  "float_margin_median_disagreeing": 0.04}
    report = diagnose(saved_model=None, calibration=calibration, debug_images=calibration,
                      spec=DEFAULT_SPEC, input_quant=(1 / 255, -128), architecture="dsconv_cbam_bn",
                      calibration_size=300, mode="int8", comparison=comparison)
    assert "0.040 on those images, against 0.310" in report.findings[0]
    assert report.suggestions[0].startswith("Train the model further")
    comparison["float_margin_median_disagreeing"] = 0.3  # changes spread evenly: no such claim
    report = diagnose(saved_model=None, calibration=calibration, debug_images=calibration,
                      spec=DEFAULT_SPEC, input_quant=(1 / 255, -128), architecture="dsconv_cbam_bn",
                      calibration_size=300, mode="int8", comparison=comparison)
    assert not any("hesitates" in f for f in report.findings)


def test_note_when_the_float_model_itself_answers_one_class():
    from converters.pipeline import _notes

    collapsed = {"n": 40, "float_confusion_matrix": [[0, 0, 9, 0], [0, 0, 9, 0], [0, 0, 13, 0],
                                                     [0, 0, 9, 0]]}
    notes = _notes(OK, [], [("tflite-runtime", "/py")], collapsed, ["g", "m", "notumor", "p"])
    assert notes == ["the float model itself answers 'notumor' for 100% of the evaluation "
                     "images: the conversion is faithful, but check the training run"]
    healthy = {"n": 40, "float_confusion_matrix": [[9, 0, 0, 0], [0, 9, 0, 0], [0, 0, 13, 0],
                                                   [0, 0, 0, 9]]}
    assert _notes(OK, [], [("tflite-runtime", "/py")], healthy, ["g", "m", "n", "p"]) == []
