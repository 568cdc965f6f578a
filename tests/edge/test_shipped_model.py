"""The model shipped inside the package: intact, loadable, and as accurate as its manifest says.

The accuracy test runs the whole official Testing split through the agent's own path
(``edge.inputs.decode_file`` on the raw JPEG files, then ``edge.classifier.Classifier``), not
the training pipeline, and holds it to the int8 accuracy the converter recorded, on the
official split and on its deduplicated subset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.config import load_config
from edge.manifest import default_model_dir, load_verified, sha256_file

SHIPPED = default_model_dir()
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(SHIPPED is None, reason="no model is shipped in edge/models")


def test_shipped_model_matches_its_manifest():
    manifest, model_path = load_verified(SHIPPED)
    assert sha256_file(model_path) == manifest.model_sha256
    assert manifest.labels == ("glioma", "meningioma", "notumor", "pituitary")
    assert manifest.quantization == "int8"
    assert manifest.input.dtype == "int8" and manifest.input.shape == (1, 224, 224, 3)
    assert {"quantized_accuracy_pct", "top1_agreement_pct", "dedup"} <= set(manifest.metrics)
    assert manifest.metrics["dedup"]["n"] == 273  # docs/leakage/dedup_test.txt
    assert any(r.get("name") == "ai-edge-litert" for r in manifest.verified_runtimes)
    # issue 13: its trust outputs and fit (python -m converters.trust), statistics verified
    assert manifest.format_version == 2 and manifest.trust["negative_label"] == "notumor"
    assert manifest.trust["temperature"] > 0
    ood = manifest.trust["ood"]
    assert ood["inputs"] and all(key.startswith("stage") and key in manifest.outputs
                                 for key in ood["inputs"])
    assert manifest.trust["heatmap"] in ({"output": "heatmap", "kind": "spatial_attention"},
                                         {"output": "feature_map", "kind": "class_activation"})
    assert manifest.trust["fit"]["validation_images"] == 572
    # the statistics are the compact kind (format 2), small enough to ship in the package
    from edge.trust import STATISTICS_FORMAT

    statistics = SHIPPED / ood["statistics"]
    with np.load(statistics) as data:
        assert str(data["format"]) == STATISTICS_FORMAT
        assert data["components"].shape == (ood["fit"]["features"], ood["fit"]["components"])
    assert statistics.stat().st_size <= 4 * 2**20


def test_shipped_model_runs_in_the_edge_runtime():
    from edge.classifier import Classifier

    classifier = Classifier(load_config(None))
    probs = classifier.self_test()
    assert probs.shape == (4,) and abs(float(probs.sum()) - 1.0) < 0.05


def test_the_shipped_heatmap_is_what_the_answer_is_made_of():
    """A class activation map: averaged over positions and weighted by the classifier, the
    exposed feature map gives the logits (less a bias), on the device's runtime."""
    manifest, model_path = load_verified(SHIPPED)
    if manifest.trust.get("heatmap", {}).get("kind") != "class_activation":
        pytest.skip("the shipped model's heat-map is not a class activation map")
    from edge.preprocess import scale
    from edge.runtime import TFLiteClassifier
    from edge.trust import TrustModel

    weights, baseline = TrustModel(manifest, SHIPPED).class_activation
    classifier = TFLiteClassifier(model_path, manifest)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:224, :224]
    logits, bias = [], []
    for _ in range(6):  # discs of random size, place and brightness on a dark field
        cy, cx, r = rng.integers(40, 184, 2).tolist() + [int(rng.integers(20, 90))]
        picture = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, rng.integers(80, 255), 10)
        picture = np.repeat(picture.astype(np.uint8)[..., None], 3, axis=2)
        _, out = classifier.predict_with_outputs(scale(picture, manifest.preprocess))
        logits.append(out["logits"])
        bias.append(out["logits"] - out["feature_map"].mean(axis=(0, 1)) @ weights)
    # The int8 classifier reads the pooled features requantized to their own int8 step, not
    # the mean of the int8 map: each of the C channels may round by half a step, so the
    # "bias" of a class may move by up to twice sum_c |w_ck| * step / 2 between pictures
    # (plus the logits' own rounding). A map that were not what the answer is made of would
    # move it by the order of the logits' spread (several units; this bound is about 0.2).
    pooled = manifest.outputs["features"].spec.scale
    step = manifest.outputs["logits"].spec.scale
    rounding = 2 * (0.5 * pooled * np.abs(weights).sum(axis=0) + 0.5 * step)
    spread = np.ptp(np.asarray(bias), axis=0)
    assert (spread <= rounding).all(), (spread, rounding)
    assert (np.ptp(np.asarray(logits), axis=0).max() > 10 * rounding).all()  # it can fail


@pytest.mark.slow
@pytest.mark.dataset
def test_shipped_model_accuracy_on_the_official_test_split_through_the_agent(dataset_dir):
    from edge.classifier import Classifier
    from edge.inputs import decode_file

    # the answers and flags do not depend on the heat-map; the default occlusion map would
    # cost 49 more runs of the model per picture (its own test is below)
    config = load_config(None).override("report", heatmap="none")
    classifier = Classifier(config)
    files = sorted((dataset_dir / "Testing").glob("*/*"))
    right, flagged, unflagged, probs, truth = {}, [], [], [], []
    for path in files:
        decoded = decode_file(Path(path), config.dicom, config.limits)
        prediction = classifier.classify(decoded)
        ok = prediction.label == path.parent.name
        right[path.relative_to(dataset_dir).as_posix()] = ok
        flagged.append(prediction.needs_review)
        if not prediction.needs_review:
            unflagged.append(ok)  # (not zip(..., strict=True): the agent runs on Python 3.8)
        probs.append(list(prediction.probabilities.values()))
        truth.append(classifier.labels.index(path.parent.name))
    # The trust figures docs/trust.md gives for the shipped model (2.5.0, benchmarks trust,
    # 2026-12-06: 14.5% flagged, 99.29% of the others right, calibration error 0.7%), each
    # held to within half a point as the accuracies below are. Issue 13's targets are 10%
    # flagged and 99% right: 2.5.0 misses the first (docs/trust.md says so and why the
    # thresholds were not moved); a new shipped model updates these with its docs.
    from edge.trust import calibration_error

    share_flagged = sum(flagged) / len(files)
    assert share_flagged <= 0.145 + 0.005, f"{share_flagged:.1%} flagged (documented 14.5%)"
    assert sum(unflagged) / len(unflagged) >= 0.9929 - 0.005, (
        f"{sum(unflagged) / len(unflagged):.2%} of unflagged answers right (documented 99.29%)")
    assert calibration_error(np.asarray(probs), np.asarray(truth)) <= 0.03
    accuracy = 100.0 * sum(right.values()) / len(files)
    recorded = classifier.manifest.metrics["quantized_accuracy_pct"]
    assert len(files) == 1311 and accuracy >= recorded - 0.5, (
        f"agent-path accuracy {accuracy:.2f}% vs manifest {recorded:.2f}%")

    # The deduplicated subset (test images with no near-twin in Training), same tolerance.
    dedup = classifier.manifest.metrics["dedup"]
    listed = REPO / dedup["list"]
    kept = [line.strip() for line in listed.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert len(kept) == dedup["n"]
    dedup_accuracy = 100.0 * sum(right[name] for name in kept) / len(kept)
    assert dedup_accuracy >= dedup["quantized_accuracy_pct"] - 0.5, (
        f"agent-path deduplicated accuracy {dedup_accuracy:.2f}% vs manifest "
        f"{dedup['quantized_accuracy_pct']:.2f}%")


@pytest.mark.dataset
def test_the_shipped_occlusion_map_points_inside_the_head_and_at_what_the_answer_needs(
        dataset_dir):
    """The default heat-map on 10 Testing pictures of each class: its peak cell lies on the
    head, not on the black frame (the model's own class activation map peaked on the frame
    for most glioma answers: docs/trust.md), and blacking that cell out weakens the answer
    more than blacking out where the model's own map peaks."""
    from edge.classifier import Classifier
    from edge.heatmap import answer_margin
    from edge.inputs import decode_file
    from edge.preprocess import scale

    config = load_config(None)
    occlusion = Classifier(config)
    spec = occlusion.manifest.preprocess
    on_head, falls = 0, {"occlusion": [], "model": []}
    files = [path for label in occlusion.labels
             for path in sorted((dataset_dir / "Testing" / label).glob("*"))[:10]]
    for path in files:
        decoded = decode_file(path, config.dicom, config.limits)
        answer = occlusion.classify(decoded)
        assert answer.heatmap_kind == "occlusion" and answer.heatmap.shape == (7, 7)
        pixels = answer.model_input
        index = occlusion.labels.index(answer.label)

        def margin(picture, index=index):
            return answer_margin(*occlusion._model.predict_with_outputs(scale(picture, spec)),
                                 index)

        base = margin(pixels)
        for kind, heat in (("occlusion", answer.heatmap),
                           ("model", occlusion.classify(decoded, heatmap="model").heatmap)):
            rows, cols = heat.shape
            r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
            h, w = pixels.shape[:2]
            box = (slice(r * h // rows, (r + 1) * h // rows),
                   slice(c * w // cols, (c + 1) * w // cols))
            if kind == "occlusion":
                on_head += pixels[box].mean() > 20  # the frame is black (mean grey 0-10)
            blacked = pixels.copy()
            blacked[box] = 0
            falls[kind].append(base - margin(blacked))
    assert on_head >= 0.9 * len(files), f"{on_head} of {len(files)} peaks on the head"
    assert np.mean(falls["occlusion"]) > 2 * np.mean(falls["model"]), falls
