"""ResNet-18 and the scaled DSConv-CBAM: built, saved, trained above chance, converted to int8.

The learn-and-convert tests train each network (narrowed with ``width``) for a minute on the
converters' synthetic 40x40 data set at 32x32, through the trainer itself, then convert the
run through the gate. tflite-runtime is checked when $NEUROEDGE_TFLITE_RUNTIME_PYTHON points
at a venv holding it (see converters/runtimes.py): it must load and run the model and pass
the converter's runtime check. Its reference int8 kernels round differently from XNNPACK's
through these deeper networks (0.04-0.14 apart in probability on these tiny models, more than
the 0.05 measured for the 3-block paper model), so the check accepts it as being as close to
the float model as XNNPACK (docs/conversion.md, "Runtime compatibility").
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edge.preprocess import PreprocessSpec  # noqa: E402
from trainer.errors import ArchitectureError  # noqa: E402
from trainer.models import build_model  # noqa: E402

SMALL = (32, 32, 3)
NEW = {"resnet18": {"width": 8}, "dsconv_cbam_res": {"width": 8, "blocks": (1, 1, 1, 1)}}


@pytest.mark.parametrize(("arch", "count", "adds", "cbams"), [
    ("resnet18", 11_188_164, 8, 0),
    ("dsconv_cbam_res", 1_680_855, 9, 9),
])
def test_full_size_structure(arch, count, adds, cbams):
    from trainer.layers import CBAM

    model = build_model(arch)
    assert model.count_params() == count
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 4)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Add") == adds
    assert sum(isinstance(layer, CBAM) for layer in model.layers) == cbams
    assert any(k == "GlobalAveragePooling2D" for k in kinds) and "Flatten" not in kinds
    assert [layer.name for layer in model.layers[-2:]] == ["logits", "predictions"]


def test_width_and_blocks_scale_the_network():
    small = build_model("dsconv_cbam_res", input_shape=SMALL, width=8, blocks=(1, 1))
    assert sum(type(layer).__name__ == "Add" for layer in small.layers) == 2
    assert small.get_layer("stage2_block1_sep_b").filters == 32
    assert build_model("resnet18", input_shape=SMALL, width=4).count_params() < 200_000
    with pytest.raises(ArchitectureError, match="width"):
        build_model("resnet18", width=0)
    with pytest.raises(ArchitectureError, match="blocks"):
        build_model("dsconv_cbam_res", blocks=())
    with pytest.raises(ArchitectureError, match="does not take option"):
        build_model("resnet18", padding="valid")


@pytest.mark.parametrize("arch", list(NEW))
def test_save_load_round_trip_with_dropout(arch, tmp_path):
    model = build_model(arch, input_shape=SMALL, dropout=0.3, **NEW[arch])
    x = np.random.default_rng(0).random((2, *SMALL)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from converters.testing import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("archdata"), train_per_class=80,
                                   test_per_class=60)


def _train(arch, data, runs, recipe="paper", epochs=20):
    from trainer.recipes import resolve
    from trainer.train import TrainConfig, train

    values = resolve(recipe, {"epochs": epochs, "batch_size": 16, "learning_rate": 3e-3,
                              "warmup_epochs": 1.0 if recipe == "strong" else None})
    config = TrainConfig(arch=arch, data_dir=str(data), runs_dir=str(runs), name=arch,
                         model_options=dict(NEW[arch]), spec=PreprocessSpec(32, 32),
                         use_cache=False, val_fraction=0.2, recipe=recipe, **values)
    return train(config, verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(NEW))
def test_learns_above_chance_and_converts_to_int8_through_the_gate(arch, synthetic, tmp_path):
    from converters.gate import Thresholds
    from converters.runtimes import TFLITE_RUNTIME_ENV
    from converters.testing import convert_tiny
    from edge.manifest import load_verified

    run = _train(arch, synthetic, tmp_path / "runs")
    record = run.read_record().raw
    assert record["status"] == "completed" and record["architecture"] == arch
    assert record["best_val_accuracy"] >= 0.6  # chance is 0.25
    # The gate's drop allowance is 2 points here, not 1: on these 240 test pictures one
    # picture is 0.42 points, and which of a 32x32 toy model's border pictures int8 turns
    # over depends on the CPU's float rounding (resnet18 lost 3, 1.25 points, on an Intel
    # Xeon and passed at 1 point on an AMD Zen 5). Agreement keeps the default 98 %.
    outcome = convert_tiny(run.path, synthetic, tmp_path / "int8", probe_images=60,
                           thresholds=Thresholds(max_drop_pp=2.0))
    assert outcome.passed, outcome.summary
    evaluation = outcome.report["evaluation"]
    assert evaluation["quantized_accuracy_pct"] >= 60.0
    assert evaluation["top1_agreement_pct"] >= 98.0
    manifest, _ = load_verified(tmp_path / "int8")
    assert manifest.architecture == arch and manifest.quantization == "int8"
    # the converter's trust outputs (issue 13) found their tensors in these graphs too
    assert {"logits", "features"} <= set(manifest.outputs)
    [litert] = [r for r in outcome.report["runtimes"] if r["name"] == "ai-edge-litert"]
    assert litert["ok"] and litert["xnnpack"]
    others = [r for r in outcome.report["runtimes"] if r["name"] == "tflite-runtime"]
    if os.environ.get(TFLITE_RUNTIME_ENV):
        [tflrt] = others
        assert tflrt["version"] and tflrt["images"] == 60  # it loaded and ran the model
        assert tflrt["ok"], tflrt
        assert tflrt["top1_agreement_pct"] >= 95.0 and tflrt["max_abs_prob_diff"] <= 0.2, tflrt
        assert tflrt["max_abs_diff_from_float"] is not None and tflrt["accepted_by"]
        assert litert["max_abs_diff_from_float"] is not None
    (tmp_path / "report.json").write_text(json.dumps(outcome.report["conversion"]["ops"]))


@pytest.mark.slow
def test_the_strong_recipe_trains_the_residual_network(synthetic, tmp_path):
    run = _train("dsconv_cbam_res", synthetic, tmp_path / "runs", recipe="strong", epochs=12)
    record = run.read_record().raw
    assert record["recipe"] == "strong" and record["optimizer"]["name"] == "adamw"
    assert record["loss_settings"] == {"name": "categorical_crossentropy", "from_logits": True,
                                       "label_smoothing": 0.1}
    assert any("training recipe 'strong'" in d for d in record["deviations"])
    history = run.read_history()
    rates = history["learning_rate"]
    # the rate after each epoch: the peak at the end of the 1-epoch warm-up, then cosine decay
    assert rates[0] == pytest.approx(3e-3, rel=1e-3)
    assert all(b < a for a, b in zip(rates, rates[1:], strict=False))
    assert rates[-1] < 0.1 * rates[0]
    assert record["best_val_accuracy"] >= 0.5  # chance 0.25; augmented 12 epochs
