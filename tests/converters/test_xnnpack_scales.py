"""A layer that is dead on every calibration picture gets an int8 range too narrow for
XNNPACK; the converter's diagnosis names it and suggests --keep-float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.quant_debug import (
    QuantDebugReport,
    _check_requantization,
    _suggest,
    requantization_problems,
)

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

SHIPPED = Path(__file__).resolve().parents[2] / "edge" / "models" / "model.tflite"


def _int8_model_with_a_dead_layer(tmp_path) -> Path:
    """Dense(8) -> ReLU whose biases keep it at or just above 0 on every calibration input
    (at most 1e-6: the int8 output range is that narrow), then Dense(4) reading it alone."""
    import keras

    from converters.export import convert, export_saved_model

    inputs = keras.Input((16,), name="x")
    dead = keras.layers.Dense(8, activation="relu", name="dead")(inputs)
    outputs = keras.layers.Dense(4, name="head")(dead)
    model = keras.Model(inputs, outputs)
    calibration = np.random.default_rng(0).uniform(0, 1, (32, 16)).astype(np.float32)
    kernel, _ = model.get_layer("dead").get_weights()
    bias = 1e-6 - (calibration @ kernel).max(axis=0)
    model.get_layer("dead").set_weights([kernel, bias.astype(np.float32)])
    saved = export_saved_model(model, tmp_path / "saved_model")
    path = tmp_path / "model.tflite"
    path.write_bytes(convert(saved, "int8", calibration))
    return path


def test_a_dead_layer_is_named_and_keep_float_suggested(tmp_path):
    path = _int8_model_with_a_dead_layer(tmp_path)
    from ai_edge_litert.interpreter import Interpreter

    with pytest.raises((RuntimeError, ValueError), match="(?i)xnnpack|prepare"):
        Interpreter(model_path=str(path)).allocate_tensors()  # what the device would do
    found = requantization_problems(path)
    assert [f["op"] for f in found] == ["FULLY_CONNECTED"] and "dead" in found[0]["tensor"]
    assert found[0]["requantization_scale"] >= 256
    report = QuantDebugReport(xnnpack_refused=found)
    _check_requantization(report)
    _suggest(report, "dsconv_cbam_res", 300, "int8")
    assert "cannot prepare 1 quantized op" in report.findings[0]
    assert report.suggestions[0].startswith("Keep those op types in float: --keep-float "
                                            "FULLY_CONNECTED")


def test_the_shipped_model_has_no_such_op():
    assert requantization_problems(SHIPPED) == []
