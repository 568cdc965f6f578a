"""Issue 13 on the converter side: exposing the trust tensors of a converted model, fitting
the temperature and the "unlike the training data" statistics, and the refit command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from converters.trust import TrustOptions, fit_ood, fit_temperature, refit
from edge.trust import mahalanobis, softmax


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (6000, 4))
    for true_t in (0.5, 2.0, 3.5):
        p = softmax(logits, true_t)
        labels = np.array([rng.choice(4, p=row) for row in p])
        assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.1)


def test_fit_ood_threshold_passes_the_chosen_share_and_flags_far_points():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 5, (3, 8))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        return centres[y] + rng.normal(0, 1, (n, 8)), y

    train_x, train_y = draw(3000)
    val_x, _ = draw(1000)
    fit = fit_ood(train_x, train_y, val_x, pass_rate=0.95)
    assert np.mean(fit["validation_scores"] <= fit["threshold"]) == pytest.approx(0.95, abs=0.01)
    fresh, _ = draw(2000)
    passed = mahalanobis(fresh, fit["means"], fit["precision"]) <= fit["threshold"]
    assert passed.mean() == pytest.approx(0.95, abs=0.02)  # holds on images it never saw
    far = centres[0] + rng.normal(0, 1, (200, 8)) + 6.0  # shifted in every feature
    assert (mahalanobis(far, fit["means"], fit["precision"]) > fit["threshold"]).all()
    with pytest.raises(Exception, match="pass-rate"):
        fit_ood(train_x, train_y, val_x, pass_rate=1.0)


def test_the_converter_fits_trust_for_a_model_that_passes(tiny_int8):
    from edge.manifest import load_verified

    manifest, _ = load_verified(tiny_int8.model_dir)
    assert manifest.format_version == 2 and manifest.trust["temperature"] > 0
    assert set(manifest.outputs) == {"logits", "features", "stage1", "stage2", "heatmap"}
    assert tiny_int8.report["trust"]["primary_output_identical_on"] > 0


@pytest.fixture(scope="module")
def plain_int8(tiny_run, tmp_path_factory):
    """The tiny run converted without trust outputs (--no-trust)."""
    from converters.testing import TinyModel, convert_tiny

    data_dir, run_dir = tiny_run
    out = tmp_path_factory.mktemp("plain") / "model"
    outcome = convert_tiny(run_dir, data_dir, out, trust=False)
    assert outcome.passed and not (out / "trust.npz").exists()
    return TinyModel(out, run_dir, data_dir, outcome.report)


def test_the_trust_tensors_of_a_cbam_model_are_found_and_exposed_unchanged(plain_int8,
                                                                            tmp_path):
    from converters import outputs
    from edge.manifest import load_verified
    from edge.preprocess import scale
    from trainer.data import load_split

    tiny_int8 = plain_int8
    model_bytes = tiny_int8.model_path.read_bytes()
    found = outputs.find_trust_tensors(model_bytes)
    assert set(found) == {"logits", "features", "stage1", "stage2", "heatmap"}
    exposed = outputs.expose(model_bytes, found)
    named = outputs.exposed_outputs(exposed)
    assert [e.key for e in named] == list(found)
    by_key = {e.key: e for e in named}
    assert by_key["heatmap"].heatmap_kind == "spatial_attention"
    assert by_key["heatmap"].spec.shape[-1] == 1 and len(by_key["heatmap"].spec.shape) == 4
    assert by_key["stage1"].spec.shape[1] == 2  # PACK(mean, max) of each CBAM stage

    out = tmp_path / "with-trust"
    summary = refit(tiny_int8.model_dir, out, TrustOptions(data=tiny_int8.data_dir))
    assert summary["primary_output_identical_on"] > 0 and summary["temperature"] > 0
    assert summary["ood_inputs"] == ["stage1", "stage2"]
    manifest, model_path = load_verified(out)
    assert manifest.format_version == 2 and manifest.trust["negative_label"] == "notumor"
    assert manifest.trust["heatmap"] == {"output": "heatmap", "kind": "spatial_attention"}
    assert manifest.trust["ood"]["statistics"] == "trust.npz"
    assert json.loads((out / "model.json").read_text())["format_version"] == 2

    from edge.runtime import TFLiteClassifier

    test = load_split(tiny_int8.data_dir, "Testing", manifest.preprocess,
                      classes=list(manifest.labels), use_cache=False)
    before = TFLiteClassifier(tiny_int8.model_path)
    after = TFLiteClassifier(model_path, manifest)
    images = scale(test.images[:20], manifest.preprocess)
    assert np.array_equal(before.predict(images), after.predict(images))

    # A refit of the refitted model keeps its outputs; an existing model needs --force.
    with pytest.raises(Exception, match="--force"):
        refit(out, out, TrustOptions(data=tiny_int8.data_dir))
    again = tmp_path / "again"
    shutil.copytree(out, again)
    refit(again, again, TrustOptions(data=tiny_int8.data_dir, pass_rate=0.9), force=True)
    refitted, _ = load_verified(again)
    assert refitted.outputs == manifest.outputs
    assert refitted.trust["ood"]["pass_rate"] == 0.9


def test_the_agent_uses_a_refitted_model(tiny_int8, tmp_path):
    from PIL import Image

    from edge.classifier import Classifier
    from edge.config import AgentConfig
    from edge.inputs import DecodedImage

    out = tmp_path / "with-trust"
    refit(tiny_int8.model_dir, out, TrustOptions(data=tiny_int8.data_dir))
    classifier = Classifier(AgentConfig().override("paths", model=str(out)))
    picture = next((tiny_int8.data_dir / "Testing" / "glioma").iterdir())
    with Image.open(picture) as image:
        decoded = DecodedImage(kind="png", picture=image.convert("L"), details={}, notes=[])
    prediction = classifier.classify(decoded)
    assert prediction.trust["calibrated"] and prediction.trust["ood_score"] is not None
    assert prediction.heatmap is not None and prediction.heatmap.max() <= 1.0
    photo = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    noisy = classifier.classify(DecodedImage(kind="png", picture=Image.fromarray(photo),
                                             details={}, notes=[]))
    assert noisy.trust["in_distribution"] is False and noisy.needs_review
