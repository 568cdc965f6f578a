"""Issue 13 on the converter side: exposing the trust tensors of a converted model, fitting
the temperature and the "unlike the training data" statistics, and the refit command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from converters.trust import TrustOptions, fit_ood, fit_temperature, refit
from edge.trust import mahalanobis, softmax, subspace_mahalanobis


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (6000, 4))
    for true_t in (0.5, 2.0, 3.5):
        p = softmax(logits, true_t)
        labels = np.array([rng.choice(4, p=row) for row in p])
        assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.1)


def test_with_test_time_views_the_mean_of_the_views_is_calibrated():
    """A mirror-mean model answers with the mean of its views' softmax(logits / T): the
    temperature must fit that mean, not one view (the mean of two views is less sure)."""
    rng = np.random.default_rng(1)
    base = rng.normal(0, 4, (6000, 4))
    views = np.stack([base + rng.normal(0, 2, base.shape) for _ in range(2)])
    p = softmax(views, 1.5).mean(axis=0)
    labels = np.array([rng.choice(4, p=row) for row in p])
    fitted = fit_temperature(views, labels)
    assert fitted == pytest.approx(1.5, rel=0.1)
    assert abs(fit_temperature(views[0], labels) - 1.5) > 0.2  # one view would miss it

    def nll(t: float) -> float:
        q = softmax(views, t).mean(axis=0)[np.arange(len(labels)), labels]
        return float(-np.mean(np.log(q)))

    assert nll(fitted) <= min(nll(fitted * 0.95), nll(fitted * 1.05))


def _score(fit: dict, x: np.ndarray) -> np.ndarray:
    return subspace_mahalanobis(x, fit["means"], fit["scale"], fit["components"],
                                fit["variances"], fit["residual_variance"])


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
    passed = _score(fit, fresh) <= fit["threshold"]
    assert passed.mean() == pytest.approx(0.95, abs=0.02)  # holds on images it never saw
    far = centres[0] + rng.normal(0, 1, (200, 8)) + 6.0  # shifted in every feature
    assert (_score(fit, far) > fit["threshold"]).all()
    with pytest.raises(Exception, match="pass-rate"):
        fit_ood(train_x, train_y, val_x, pass_rate=1.0)


def _low_rank(rng: np.random.Generator, n: int, dim: int = 64, factors: int = 6):
    """Two classes in ``dim`` features driven by ``factors`` strong hidden causes, plus noise
    that is the same share of every feature's spread."""
    loadings = np.random.default_rng(7).normal(0, 1, (factors, dim))
    loadings *= 3 / np.linalg.norm(loadings, axis=0)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, factors)) @ loadings + rng.normal(0, 0.3, (n, dim)) + 4.0 * y[:, None]
    return x * np.linspace(0.1, 10, dim), y  # features on very different scales


def test_fit_ood_with_every_direction_is_the_full_mahalanobis_distance():
    rng = np.random.default_rng(2)
    x, y = _low_rank(rng, 2000, dim=12)
    val, _ = _low_rank(rng, 300, dim=12)
    fit = fit_ood(x, y, val, components=12, shrinkage=1e-3)
    assert fit["residual_variance"] == 0 and fit["components"].shape == (12, 12)
    means = np.stack([x[y == c].mean(0) for c in (0, 1)])
    residual = x - means[y]
    z = residual / residual.std(0)
    covariance = z.T @ z / (len(z) - 2)
    covariance += 1e-3 * np.trace(covariance) / 12 * np.eye(12)
    scale = residual.std(0)
    precision = np.linalg.inv(covariance) / np.outer(scale, scale)  # back in raw units
    # the directions are stored (and used) as float16: close, not equal
    assert np.allclose(_score(fit, val), mahalanobis(val, means, precision), rtol=1e-2)


def test_fit_ood_keeps_the_directions_the_validation_data_supports_within_the_budget():
    rng = np.random.default_rng(3)
    x, y = _low_rank(rng, 400)
    val, _ = _low_rank(rng, 500)
    fit = fit_ood(x, y, val)
    likelihood = fit["validation_log_likelihood"]
    assert set(likelihood) == {8, 16, 32, 64}  # the candidates up to D = 64
    assert fit["components"].shape == (64, 8)  # 6 hidden causes: 8 directions fit best
    assert max(likelihood, key=likelihood.get) == 8
    assert fit["kept_variance"] > 0.9 and fit["residual_variance"] > 0
    small = fit_ood(x, y, val, budget_bytes=64 * 16 * 2)  # room for 16 float16 directions
    assert set(small["validation_log_likelihood"]) == {8, 16}
    forced = fit_ood(x, y, val, components=3)
    assert forced["components"].shape == (64, 3) and set(forced["validation_log_likelihood"]) == {3}
    # fewer directions than the causes: a point off them all is still far (the residual)
    far = x[:50] + 6.0 * np.linspace(0.1, 10, 64) * np.resize([1, -1], 64)
    assert (_score(forced, far) > forced["threshold"]).all()
    with pytest.raises(Exception, match="--components must be between 1 and the feature count 64"):
        fit_ood(x, y, val, components=65)


def test_trust_statistics_file_round_trip_and_format_1_still_read(tmp_path):
    from converters.trust import write_statistics
    from edge.errors import ModelIntegrityError
    from edge.trust import FULL_PRECISION_FORMAT, STATISTICS_FORMAT, OodStatistics

    rng = np.random.default_rng(4)
    x, y = _low_rank(rng, 1500, dim=20)
    val, _ = _low_rank(rng, 200, dim=20)
    fit = fit_ood(x, y, val)
    path = tmp_path / "trust.npz"
    write_statistics(path, ["a", "b"], fit)
    with np.load(path) as data:
        assert str(data["format"]) == STATISTICS_FORMAT and data["components"].dtype == np.float16
    stats = OodStatistics.load(path, ("a", "b"), fit["threshold"])
    assert np.allclose(stats.distances(val), _score(fit, val), rtol=1e-3)
    with pytest.raises(ModelIntegrityError, match="fitted on outputs"):
        OodStatistics.load(path, ("a",), 1.0)
    # a model fitted before format 2 (a full precision matrix) still works on a new agent
    precision = np.eye(20) / 4
    np.savez(path, format=np.array(FULL_PRECISION_FORMAT), inputs=np.array(["a"]),
             means=fit["means"], precision=precision, validation_scores=np.array([1.0, 2.0]))
    old = OodStatistics.load(path, ("a",), 1.5)
    assert np.allclose(old.distances(val), mahalanobis(val, fit["means"], precision))
    assert old.share_below(1.5) == 0.5
    np.savez(path, format=np.array("neuroedge.trust-statistics/9"), inputs=np.array(["a"]))
    with pytest.raises(ModelIntegrityError, match="upgrade neuroedge"):
        OodStatistics.load(path, ("a",), 1.0)
    write_statistics(path, ["a"], dict(fit, variances=fit["variances"][:-1]))
    with pytest.raises(ModelIntegrityError, match="do not fit together"):
        OodStatistics.load(path, ("a",), 1.0)


def test_the_converter_fits_trust_for_a_model_that_passes(tiny_int8):
    from edge.manifest import load_verified

    manifest, _ = load_verified(tiny_int8.model_dir)
    assert manifest.format_version == 2 and manifest.trust["temperature"] > 0
    assert set(manifest.outputs) == {"logits", "features", "feature_map", "stage1", "stage2",
                                     "heatmap"}
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
    assert set(found) == {"logits", "features", "feature_map", "stage1", "stage2", "heatmap"}
    exposed = outputs.expose(model_bytes, found)
    named = outputs.exposed_outputs(exposed)
    assert [e.key for e in named] == list(found)
    by_key = {e.key: e for e in named}
    assert by_key["heatmap"].heatmap_kind == "spatial_attention"
    assert by_key["feature_map"].heatmap_kind == "class_activation"
    assert len(by_key["feature_map"].spec.shape) == 4
    assert by_key["heatmap"].spec.shape[-1] == 1 and len(by_key["heatmap"].spec.shape) == 4
    assert by_key["stage1"].spec.shape[1] == 2  # PACK(mean, max) of each CBAM stage

    out = tmp_path / "with-trust"
    summary = refit(tiny_int8.model_dir, out, TrustOptions(data=tiny_int8.data_dir))
    assert summary["primary_output_identical_on"] > 0 and summary["temperature"] > 0
    assert summary["ood_inputs"] == ["stage1", "stage2"]
    manifest, model_path = load_verified(out)
    assert manifest.format_version == 2 and manifest.trust["negative_label"] == "notumor"
    assert manifest.trust["heatmap"] == {"output": "feature_map", "kind": "class_activation"}
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
    from edge.decoded import DecodedImage

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


def test_the_class_activation_map_is_what_the_logits_are_made_of(plain_int8, tmp_path):
    """A global-average-pool head: the mean over positions of the feature map times the
    classifier's weights is the logits less a bias, for every picture (int8: to within
    rounding)."""
    from edge.manifest import load_verified
    from edge.preprocess import scale
    from edge.runtime import TFLiteClassifier
    from edge.trust import TrustModel
    from trainer.data import load_split

    out = tmp_path / "with-trust"
    refit(plain_int8.model_dir, out, TrustOptions(data=plain_int8.data_dir))
    manifest, model_path = load_verified(out)
    trust = TrustModel(manifest, out)
    weights, baseline = trust.class_activation
    shape = manifest.outputs["feature_map"].spec.shape
    assert weights.shape == (shape[-1], 4) and baseline.shape == (shape[1], shape[2], 4)
    classifier = TFLiteClassifier(model_path, manifest)
    test = load_split(plain_int8.data_dir, "Testing", manifest.preprocess,
                      classes=list(manifest.labels), use_cache=False)
    logits, bias = [], []
    for image in scale(test.images[:12], manifest.preprocess):
        _, got = classifier.predict_with_outputs(image)
        logits.append(got["logits"])
        bias.append(got["logits"] - got["feature_map"].mean(axis=(0, 1)) @ weights)
    logits, bias = np.asarray(logits), np.asarray(bias)
    step = manifest.outputs["logits"].spec.scale  # one int8 step of the logits
    print("logit spread", np.ptp(logits, axis=0), "bias spread", np.ptp(bias, axis=0), step)
    assert (np.ptp(bias, axis=0) < 0.1 * np.ptp(logits, axis=0) + 2 * step).all()


def test_a_model_exposed_before_gains_the_outputs_it_lacks_unchanged(plain_int8, tmp_path):
    """The shipped model's path: exposed by an older converter (no feature_map), refitted."""
    from converters import outputs
    from edge.manifest import load_verified
    from edge.runtime import TFLiteClassifier

    model_bytes = plain_int8.model_path.read_bytes()
    found = outputs.find_trust_tensors(model_bytes)
    older = tmp_path / "older"
    shutil.copytree(plain_int8.model_dir, older)
    (older / "model.tflite").write_bytes(outputs.expose(
        model_bytes, {k: v for k, v in found.items() if k != "feature_map"}))
    manifest, _ = load_verified(plain_int8.model_dir)
    import dataclasses

    from edge.manifest import sha256_file, write_manifest

    write_manifest(dataclasses.replace(manifest, model_sha256=sha256_file(older / "model.tflite")),
                   older / "model.json")
    out = tmp_path / "refitted"
    refit(older, out, TrustOptions(data=plain_int8.data_dir))
    refitted, model_path = load_verified(out)
    assert "feature_map" in refitted.outputs
    assert refitted.trust["heatmap"]["kind"] == "class_activation"
    probe = np.random.default_rng(0).integers(0, 255, (6, *refitted.input.shape[1:]))
    from edge.preprocess import scale

    images = scale(probe.astype(np.uint8), refitted.preprocess)
    assert np.array_equal(TFLiteClassifier(plain_int8.model_path).predict(images),
                          TFLiteClassifier(model_path, refitted).predict(images))
