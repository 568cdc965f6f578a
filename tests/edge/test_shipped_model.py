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
    assert manifest.trust["temperature"] > 1  # the int8 model is overconfident
    assert manifest.trust["ood"]["inputs"] == ["stage1", "stage2", "stage3"]
    assert manifest.trust["heatmap"] == {"output": "heatmap", "kind": "spatial_attention"}
    assert manifest.trust["fit"]["validation_images"] == 572


def test_shipped_model_runs_in_the_edge_runtime():
    from edge.classifier import Classifier

    classifier = Classifier(load_config(None))
    probs = classifier.self_test()
    assert probs.shape == (4,) and abs(float(probs.sum()) - 1.0) < 0.05


@pytest.mark.slow
@pytest.mark.dataset
def test_shipped_model_accuracy_on_the_official_test_split_through_the_agent(dataset_dir):
    from edge.classifier import Classifier
    from edge.inputs import decode_file

    config = load_config(None)
    classifier = Classifier(config)
    files = sorted((dataset_dir / "Testing").glob("*/*"))
    right, flagged, probs, truth = {}, [], [], []
    for path in files:
        decoded = decode_file(Path(path), config.dicom, config.limits)
        prediction = classifier.classify(decoded)
        right[path.relative_to(dataset_dir).as_posix()] = prediction.label == path.parent.name
        flagged.append(prediction.needs_review)
        probs.append(list(prediction.probabilities.values()))
        truth.append(classifier.labels.index(path.parent.name))
    # issue 13 (measured 6.3% flagged and 1.3% calibration error: docs/trust.md)
    from edge.trust import calibration_error

    assert sum(flagged) / len(files) <= 0.10
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
