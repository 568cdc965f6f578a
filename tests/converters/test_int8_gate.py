"""End to end on a tiny synthetic model: the gate passes a good int8 model, refuses a broken one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from converters import datasets, runtimes
from converters.testing import LABELS, convert_tiny
from converters.tflite import main
from edge.errors import RuntimeUnavailableError
from edge.manifest import load_verified, sha256_file
from edge.preprocess import scale
from edge.runtime import TFLiteClassifier

pytestmark = pytest.mark.slow


def _deployable(out):
    return sorted(p.name for p in out.iterdir() if p.name in ("model.tflite", "model.json"))


def test_int8_model_passes_gate_with_complete_manifest(tiny_int8):
    manifest, model_path = load_verified(tiny_int8.model_dir)
    assert model_path == tiny_int8.model_path
    assert manifest.quantization == "int8"
    assert manifest.labels == LABELS
    assert manifest.architecture == "tiny_cbam"
    assert manifest.input.dtype == "int8" and manifest.input.shape == (1, 32, 32, 3)
    assert manifest.output.dtype == "int8" and manifest.output.shape == (1, 4)
    assert manifest.input.scale > 0 and manifest.output.scale > 0
    assert manifest.preprocess.height == 32 and manifest.output_kind == "probabilities"
    assert manifest.source_model_sha256 == sha256_file(tiny_int8.run_dir / "model.keras")
    metrics = manifest.metrics
    assert metrics["eval_set"] == "Testing" and metrics["n"] == 60
    assert metrics["accuracy_drop_pp"] <= 1.0 and metrics["top1_agreement_pct"] >= 98.0
    assert metrics["quantized_accuracy_pct"] >= 85.0  # the toy task is easy
    assert set(metrics["per_class_recall_pct"]) == set(LABELS)
    assert manifest.thresholds["max_drop_pp"] == 1.0
    assert manifest.thresholds["min_agreement_pct"] == 98.0
    runtimes_seen = [r["name"] for r in manifest.verified_runtimes]
    assert runtimes_seen[0] == "ai-edge-litert"
    assert manifest.verified_runtimes[0]["xnnpack"] is True
    prov = manifest.provenance
    assert prov["created_utc"].endswith("Z")
    assert {"tensorflow", "keras", "numpy", "ai-edge-litert"} <= set(prov["packages"])
    assert prov["conversion"]["batch_size"] == 1
    # Fixed batch of one: no shape-computing ops in the graph.
    assert "SHAPE" not in prov["conversion"]["op_types"]
    assert prov["conversion"]["ops"] == sum(prov["conversion"]["op_types"].values())
    # Nothing but the published files: no staging folder, no stale rejection.
    names = sorted(p.name for p in tiny_int8.model_dir.iterdir())
    assert names == ["model.json", "model.tflite", "report.json", "trust.npz"]
    report = json.loads((tiny_int8.model_dir / "report.json").read_text())
    assert report["passed"] is True and report["gate"]["reasons"] == []
    assert report["evaluation"]["float_confusion_matrix"] and report["evaluation"][
        "quantized_confusion_matrix"]


def test_int8_model_classifies_in_ai_edge_litert(tiny_int8):
    from trainer.data import load_split

    manifest, model_path = load_verified(tiny_int8.model_dir)
    classifier = TFLiteClassifier(model_path, manifest, runtime="ai-edge-litert")
    test = load_split(tiny_int8.data_dir, "Testing", spec=manifest.preprocess, use_cache=False)
    probs = classifier.predict(scale(test.images, manifest.preprocess))
    assert probs.shape == (60, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.05)
    accuracy = float((probs.argmax(axis=1) == test.labels).mean())
    assert 100 * accuracy == pytest.approx(manifest.metrics["quantized_accuracy_pct"], abs=1e-3)


def _break_calibration(monkeypatch):
    """Representative images x255: the classic mistake of scaling pixels twice."""
    real = datasets.calibration_images

    def times_255(*args, **kwargs):
        images, info = real(*args, **kwargs)
        return images * 255.0, info

    monkeypatch.setattr(datasets, "calibration_images", times_255)


def test_broken_calibration_fails_gate_and_leaves_no_model(tiny_run, tmp_path, monkeypatch):
    data_dir, run_dir = tiny_run
    _break_calibration(monkeypatch)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--int8", "--model", str(run_dir), "--data", str(data_dir),
                                       "--out", str(out), "--calibration-size", "100",
                                       "--no-dedup"])
    assert result.exit_code == 3, result.output
    assert "GATE FAILED" in result.output
    assert "below --min-agreement 98%" in result.output or "more than --max-drop" in result.output
    assert "Traceback" not in result.output
    assert _deployable(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["rejected"]
    report = json.loads((out / "rejected" / "report.json").read_text())
    assert report["passed"] is False and report["output"]["model"] is None
    assert report["gate"]["reasons"]
    debug = (out / "rejected" / "quant_debug.md").read_text()
    # The diagnosis names the real cause: calibration values far outside the input range.
    assert "The calibration images span [" in debug
    assert "preprocessing produces values in [0, 1]" in debug
    assert "Per-layer quantization error" in debug and "| CONV_2D |" in debug
    assert "--calibration-size" in debug and "--float16" in debug
    assert report["quant_debug"]["worst_layers"]


def _refuse_in_edge_runtime(monkeypatch):
    """The edge runtime refuses the model at load time, as XNNPACK did with one real model."""

    class RefusingClassifier:
        def __init__(self, *args, **kwargs):
            raise RuntimeUnavailableError("ai-edge-litert 2.3.0 cannot load model.tflite: failed "
                                          "to create XNNPACK runtime")

    monkeypatch.setattr(runtimes, "TFLiteClassifier", RefusingClassifier)


def test_runtime_refusal_fails_gate_keeps_earlier_model_and_a_pass_clears_it(
        tiny_run, tmp_path, monkeypatch):
    data_dir, run_dir = tiny_run
    out = tmp_path / "out"
    first = convert_tiny(run_dir, data_dir, out, mode="float32")
    assert first.passed
    before = sha256_file(out / "model.tflite")

    _refuse_in_edge_runtime(monkeypatch)
    second = convert_tiny(run_dir, data_dir, out, mode="float32", force=True)
    assert not second.passed  # whatever its accuracy: the device could not load it
    assert any("XNNPACK" in r and "default delegates" in r for r in second.gate.reasons)
    assert second.report["evaluation"] is None
    assert sha256_file(out / "model.tflite") == before  # the earlier model is not lost
    assert any("left as it was" in n for n in second.report["notes"])
    assert json.loads((out / "rejected" / "report.json").read_text())["passed"] is False

    monkeypatch.undo()
    third = convert_tiny(run_dir, data_dir, out, mode="float32", force=True, model_version="v3")
    assert third.passed and not (out / "rejected").exists()
    manifest, _ = load_verified(out)
    assert manifest.version == "v3" and manifest.quantization == "float32"


def test_existing_model_is_not_overwritten_without_force(tiny_int8):
    from converters.errors import OutputError

    with pytest.raises(OutputError, match="--force"):
        convert_tiny(tiny_int8.run_dir, tiny_int8.data_dir, tiny_int8.model_dir)


@pytest.mark.parametrize("mode, dtype", [("float16", "float32"), ("dynamic", "float32")])
def test_comparison_modes(tiny_run, tmp_path, mode, dtype):
    data_dir, run_dir = tiny_run
    outcome = convert_tiny(run_dir, data_dir, tmp_path / mode, mode=mode)
    assert outcome.passed, outcome.summary
    manifest, _ = load_verified(tmp_path / mode)
    assert manifest.quantization == mode
    assert manifest.input.dtype == dtype and manifest.input.shape == (1, 32, 32, 3)
    assert outcome.report["conversion"]["calibration"] is None
    assert manifest.metrics["top1_agreement_pct"] >= 98.0


def test_deduplicated_subset_is_found_and_reported(tiny_run, tmp_path):
    """The audit's list, where `python -m trainer audit-leakage` writes it, is picked up."""
    import shutil

    data_dir, run_dir = tiny_run
    run_copy = tmp_path / "runs" / "tiny"
    shutil.copytree(run_dir, run_copy)
    audit = tmp_path / "runs" / "leakage-audit" / data_dir.resolve().name
    audit.mkdir(parents=True)
    listed = [f"Testing/{label}/{label}_{i:03d}.png" for label in LABELS for i in range(0, 15, 2)]
    (audit / "dedup_test.txt").write_text("# kept after the audit\n" + "\n".join(listed) + "\n")
    (audit / "audit.json").write_text(json.dumps({"data_dir": str(data_dir.resolve())}))
    outcome = convert_tiny(run_copy, data_dir, tmp_path / "out", mode="float32", auto_dedup=True)
    assert outcome.passed
    dedup = outcome.report["evaluation_dedup"]
    assert dedup["n"] == len(listed) == 32 and dedup["list"] == str(audit / "dedup_test.txt")
    manifest, _ = load_verified(tmp_path / "out")
    assert manifest.metrics["dedup"]["n"] == 32
    assert "Deduplicated subset" in outcome.summary


def test_a_mirror_mean_model_is_gated_the_way_the_agent_will_run_it(tiny_run, tmp_path):
    """--test-time mirror-mean: the manifest says so (format 3), and the gate's figures are
    those of the mean over each picture and its mirror, float and int8 alike."""
    from converters.score import score_model
    from edge.views import MIRROR_MEAN

    data_dir, run_dir = tiny_run
    outcome = convert_tiny(run_dir, data_dir, tmp_path / "model", test_time=MIRROR_MEAN)
    assert outcome.passed, outcome.summary
    assert outcome.report["test_time"] == MIRROR_MEAN
    assert "test time: mirror-mean" in outcome.summary
    manifest, model_path = load_verified(tmp_path / "model")
    assert manifest.test_time == MIRROR_MEAN and manifest.format_version == 3
    assert manifest.trust  # the trust fit rewrote the manifest and kept the test time
    assert manifest.trust["fit"]["test_time"] == MIRROR_MEAN  # calibrated on the views' mean
    # the int8 model's answers, by hand: the mean over each picture and its mirror image
    test = datasets.evaluation_set(data_dir, "Testing", LABELS, manifest.preprocess, None, 0)
    classifier = TFLiteClassifier(model_path, manifest)
    plain = np.stack([classifier.predict(scale(image, manifest.preprocess))
                      for image in test.images])
    mirrored = np.stack([classifier.predict(scale(image[:, ::-1], manifest.preprocess))
                         for image in test.images])
    assert np.abs(plain - mirrored).max() > 0.01  # the views differ: the mean is not idle
    by_hand = 100 * np.mean(((plain + mirrored) / 2).argmax(axis=1) == test.labels)
    evaluation = outcome.report["evaluation"]
    assert evaluation["quantized_accuracy_pct"] == pytest.approx(by_hand, abs=1e-3)
    # ... and the float model's too: the largest float/int8 difference is the means'
    import keras

    import trainer.layers  # noqa: F401 - the custom layers

    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    floats = [model.predict(scale(views, manifest.preprocess), verbose=0)
              for views in (test.images, test.images[:, :, ::-1])]
    means = np.abs((floats[0] + floats[1]) / 2 - (plain + mirrored) / 2).max()
    alone = np.abs(floats[0] - plain).max()
    assert evaluation["max_abs_prob_diff"] == pytest.approx(means, abs=2e-6)
    assert abs(means - alone) > 1e-4  # so the figure tells the two apart
    # converters.score reads the test time from the manifest
    scored = score_model(tmp_path / "model", data_dir, auto_dedup=False, default_external=False)
    assert scored["test_time"] == MIRROR_MEAN
    assert scored["official"]["accuracy_pct"] == pytest.approx(by_hand, abs=1e-3)


def test_an_unknown_test_time_is_refused_before_anything_is_converted(tiny_run, tmp_path):
    from converters.errors import UsageError

    data_dir, run_dir = tiny_run
    with pytest.raises(UsageError, match="--test-time must be one of none, mirror-mean"):
        convert_tiny(run_dir, data_dir, tmp_path / "model", test_time="rotate-mean")
    assert not (tmp_path / "model").exists()
