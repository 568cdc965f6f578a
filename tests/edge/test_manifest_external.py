"""``metrics.external`` in the manifest: optional, validated, readable without it."""

from __future__ import annotations

import json

import pytest

from edge.errors import ManifestError
from edge.manifest import ModelManifest, TensorSpec, external_checks, load_manifest, write_manifest
from edge.preprocess import DEFAULT_SPEC

ENTRY = {"name": "br35h-tumour", "n": 89, "float_accuracy_pct": 23.6,
         "quantized_accuracy_pct": 22.472, "tumour_images": 89,
         "float_tumour_sensitivity_pct": 23.6, "quantized_tumour_sensitivity_pct": 22.472,
         "folders": {"tumour": {"n": 89, "quantized_accuracy_pct": 22.472}}}


def _manifest(metrics):
    return ModelManifest(
        name="toy", version="1", architecture="toy", labels=("a", "notumor"),
        model_file="model.tflite", model_sha256="0" * 64, quantization="int8",
        input=TensorSpec((1, 224, 224, 3), "int8", 1 / 255, -128),
        output=TensorSpec((1, 2), "int8", 1 / 256, -128), preprocess=DEFAULT_SPEC,
        metrics=metrics)


def test_external_checks_round_trip(tmp_path):
    write_manifest(_manifest({"n": 10, "external": [ENTRY]}), tmp_path / "model.json")
    loaded = load_manifest(tmp_path / "model.json")
    assert external_checks(loaded) == [ENTRY]


def test_a_manifest_without_external_checks_still_loads(tmp_path):
    write_manifest(_manifest({"n": 10}), tmp_path / "model.json")
    assert external_checks(load_manifest(tmp_path / "model.json")) == []


def test_a_folder_without_tumour_pictures_has_a_null_sensitivity(tmp_path):
    entry = dict(ENTRY, quantized_tumour_sensitivity_pct=None, float_tumour_sensitivity_pct=None)
    write_manifest(_manifest({"external": [entry]}), tmp_path / "model.json")
    assert external_checks(load_manifest(tmp_path))[0]["quantized_tumour_sensitivity_pct"] is None


@pytest.mark.parametrize("external, message", [
    ({"name": "x"}, "must be a list of objects"),
    ([dict(ENTRY, name="")], r"external\[0\].name"),
    ([dict(ENTRY, n=0)], r"external\[0\].n must be a positive integer"),
    ([ENTRY, dict(ENTRY, quantized_accuracy_pct=180.0)], r"external\[1\].quantized_accuracy_pct"),
    ([dict(ENTRY, quantized_tumour_sensitivity_pct="high")], "percentage"),
    ([dict(ENTRY, folders=[1])], "folders must be an object"),
])
def test_malformed_external_checks_are_refused(tmp_path, external, message):
    data = _manifest({}).to_dict()
    data["metrics"]["external"] = external
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path / "model.json")
