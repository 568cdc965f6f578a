"""``--keep-float OPS``: an int8 model whose chosen op types run in float32, int8 I/O kept."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters.errors import UsageError
from converters.selective import check_op_names, parse_op_list
from converters.testing import TinyModel, convert_tiny
from converters.tflite import main

CONVS = ("CONV_2D", "DEPTHWISE_CONV_2D")


@pytest.fixture(scope="module")
def tiny_keep_float(tiny_run, tmp_path_factory) -> TinyModel:
    """The tiny run converted with its convolutions kept in float, through the gate."""
    data_dir, run_dir = tiny_run
    out = tmp_path_factory.mktemp("tiny-keep-float") / "model"
    outcome = convert_tiny(run_dir, data_dir, out, keep_float=CONVS)
    assert outcome.passed, outcome.summary
    return TinyModel(out, run_dir, data_dir, outcome.report)


def _op_input_types(model_path) -> list[tuple[str, str]]:
    """(op name, dtype of its first input) for every op of the graph, delegates left out."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(model_path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    dtypes = {d["index"]: np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}
    return [(op["op_name"], dtypes[op["inputs"][0]]) for op in interpreter._get_ops_details()]


def test_parse_op_list_normalises():
    assert parse_op_list(" conv_2d,DEPTHWISE_CONV_2D,,conv_2d ") == CONVS
    assert parse_op_list(" , ") == ()


@pytest.mark.parametrize("ops, message", [
    ((), "needs at least one TFLite op name"),
    (("CONV2D",), "did you mean CONV_2D?"),
    (("DEQUANTIZE",), "not a TFLite builtin op that can be kept in float"),
])
def test_bad_op_names(ops, message):
    with pytest.raises(UsageError, match=message.replace("?", r"\?")) as caught:
        check_op_names(ops)
    assert caught.value.exit_code == 64
    assert "CONV_2D,DEPTHWISE_CONV_2D" in str(caught.value)


@pytest.mark.slow  # the fixtures train and convert the tiny model
def test_convolutions_run_in_float_and_the_rest_in_int8(tiny_keep_float, tiny_int8):
    mixed = _op_input_types(tiny_keep_float.model_path)
    convs = [dtype for op, dtype in mixed if op in CONVS]
    assert len(convs) == 6 and set(convs) == {"float32"}  # 2 separable + 2 attention convs
    dense = [dtype for op, dtype in mixed if op == "FULLY_CONNECTED"]
    assert dense and set(dense) == {"int8"}
    assert [op for op, _ in mixed].count("DEQUANTIZE") == 4  # one before each float block
    # the plain int8 model of the same run, for contrast: its convolutions are int8
    plain = _op_input_types(tiny_int8.model_path)
    assert {dtype for op, dtype in plain if op in CONVS} == {"int8"}


@pytest.mark.slow
def test_io_stays_int8_and_the_device_runtime_runs_it(tiny_keep_float, tiny_int8):
    from edge.manifest import load_verified
    from edge.preprocess import scale
    from edge.runtime import TFLiteClassifier
    from trainer.data import load_split

    manifest, model_path = load_verified(tiny_keep_float.model_dir)
    assert manifest.quantization == "int8"
    assert manifest.input.dtype == manifest.output.dtype == "int8"
    assert manifest.input.scale > 0 and manifest.output.scale > 0
    classifier = TFLiteClassifier(model_path, manifest, num_threads=1)
    assert classifier.input_spec.quantized and classifier.output_spec.quantized
    test = load_split(tiny_keep_float.data_dir, "Testing", spec=manifest.preprocess,
                      use_cache=False)
    probs = classifier.predict(scale(test.images, manifest.preprocess))
    assert probs.shape == (len(test.labels), 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.02)
    assert (probs.argmax(axis=1) == test.labels).mean() >= 0.8


@pytest.mark.slow
def test_gate_and_manifest_record_the_kept_float_ops(tiny_keep_float):
    report = tiny_keep_float.report
    assert report["passed"] and report["gate"]["passed"]
    checks = {c["check"]: c for c in report["gate"]["checks"]}
    assert checks["top-1 agreement (%)"]["passed"] and checks["accuracy drop (pp)"]["passed"]
    assert report["evaluation"]["n"] == 60  # the same evaluation as any int8 model
    assert report["conversion"]["keep_float_ops"] == list(CONVS)
    assert report["conversion"]["input"]["dtype"] == "int8"
    manifest = json.loads(tiny_keep_float.manifest_path.read_text())
    conversion = manifest["provenance"]["conversion"]
    assert conversion["mode"] == "int8"
    assert conversion["keep_float_ops"] == ["CONV_2D", "DEPTHWISE_CONV_2D"]
    assert conversion["float_ops"] == {"CONV_2D": 4, "DEPTHWISE_CONV_2D": 2}
    assert manifest["metrics"]["top1_agreement_pct"] >= 98.0


@pytest.mark.slow
def test_plain_int8_manifest_has_no_kept_float_entry(tiny_int8):
    manifest = json.loads(tiny_int8.manifest_path.read_text())
    assert "keep_float_ops" not in manifest["provenance"]["conversion"]


@pytest.mark.slow
def test_cli_errors_are_one_line_usage_errors(tmp_path, tiny_run):
    data_dir, run_dir = tiny_run
    base = ["--model", str(run_dir), "--data", str(data_dir), "--out", str(tmp_path / "o"),
            "--no-dedup", "--calibration-size", "20"]
    cases = [
        (["--float16", "--keep-float", "CONV_2D"], "applies to --int8 only, not --float16"),
        (["--dynamic", "--keep-float", "CONV_2D"], "applies to --int8 only, not --dynamic"),
        (["--int8", "--keep-float", ""], "needs at least one TFLite op name"),
        (["--int8", "--keep-float", ",,"], "needs at least one TFLite op name"),
        (["--int8", "--keep-float", "CONV_2D,DEPTHWISE_CONV"], "did you mean DEPTHWISE_CONV_2D"),
        # a real op the model does not have: found after conversion, nothing is written
        (["--int8", "--keep-float", "LSTM"], "this model has no LSTM op; its ops are"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(main, [*base, *extra])
        assert result.exit_code == 64, (extra, result.output)
        assert "Traceback" not in result.output
        assert isinstance(result.exception, SystemExit), result.exception
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines == [lines[0]] and lines[0].startswith("error: --keep-float"), lines
        assert message in lines[0], (extra, lines)
        assert not (tmp_path / "o" / "model.tflite").exists()


@pytest.mark.slow
def test_a_refused_mixed_model_is_analysed_without_the_float_ops(tiny_run):
    """The per-layer debugger of a refusal leaves the kept ops out, as the model does."""
    import keras

    from converters import export
    from converters.quant_debug import layer_statistics
    from converters.testing import SIZE

    _, run_dir = tiny_run
    model = keras.saving.load_model(str(run_dir / "model.keras"), compile=False)
    rng = np.random.default_rng(0)
    images = rng.random((8, SIZE, SIZE, 3), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        saved = export.export_saved_model(model, Path(tmp) / "saved")
        mixed = {row["op"] for row in layer_statistics(saved, images, images[:4], CONVS)}
        plain = {row["op"] for row in layer_statistics(saved, images, images[:4])}
    assert "CONV_2D" in plain and "DEPTHWISE_CONV_2D" in plain
    assert not mixed & set(CONVS) and "FULLY_CONNECTED" in mixed


@pytest.mark.slow
def test_a_classifier_kept_in_float_keeps_the_class_activation_heat_map(tiny_run, tmp_path):
    """``--keep-float FULLY_CONNECTED`` (what a refusal suggests for a CBAM layer dead on the
    calibration images) puts a DEQUANTIZE before the classifier and a QUANTIZE after it. The
    trust outputs must still be found through them: the int8 features and feature map, and
    the heat-map must stay the class activation map, what the logits are made of (it fell
    back to CBAM's attention map before)."""
    from converters import outputs
    from edge.manifest import load_verified
    from edge.preprocess import scale
    from edge.runtime import TFLiteClassifier
    from edge.trust import TrustModel
    from trainer.data import load_split

    data_dir, run_dir = tiny_run
    out = tmp_path / "model"
    outcome = convert_tiny(run_dir, data_dir, out, keep_float=("FULLY_CONNECTED",))
    assert outcome.passed, outcome.summary
    assert ("FULLY_CONNECTED", "float32") in _op_input_types(out / "model.tflite")
    manifest, model_path = load_verified(out)
    assert manifest.trust["heatmap"] == {"output": "feature_map", "kind": "class_activation"}
    assert {"logits", "features", "feature_map"} <= set(manifest.outputs)
    assert manifest.outputs["features"].spec.dtype == "int8"
    assert outputs.classifier_weights(model_path.read_bytes()) is not None

    weights, _ = TrustModel(manifest, out).class_activation
    classifier = TFLiteClassifier(model_path, manifest)
    test = load_split(data_dir, "Testing", manifest.preprocess, classes=list(manifest.labels),
                      use_cache=False)
    logits, bias = [], []
    for image in scale(test.images[:12], manifest.preprocess):
        _, got = classifier.predict_with_outputs(image)
        logits.append(got["logits"])
        bias.append(got["logits"] - got["feature_map"].mean(axis=(0, 1)) @ weights)
    step = manifest.outputs["logits"].spec.scale
    assert (np.ptp(bias, axis=0) < 0.1 * np.ptp(logits, axis=0) + 2 * step).all()
