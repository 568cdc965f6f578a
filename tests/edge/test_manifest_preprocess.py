from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edge.errors import ManifestError, ModelIntegrityError
from edge.manifest import (
    ModelManifest,
    TensorSpec,
    load_manifest,
    load_verified,
    sha256_file,
    write_manifest,
)
from edge.preprocess import DEFAULT_SPEC, PreprocessSpec, preprocess, resize_uint8, scale


def make_manifest(model_sha: str, **overrides) -> ModelManifest:
    fields = dict(
        name="toy", version="1", architecture="toy_cnn",
        labels=("glioma", "meningioma", "notumor", "pituitary"),
        model_file="model.tflite", model_sha256=model_sha, quantization="int8",
        input=TensorSpec((1, 224, 224, 3), "int8", 1 / 255, -128),
        output=TensorSpec((1, 4), "int8", 1 / 256, -128),
        preprocess=DEFAULT_SPEC,
    )
    fields.update(overrides)
    return ModelManifest(**fields)


def test_manifest_round_trip_and_integrity(tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"not really a model")
    manifest = make_manifest(sha256_file(model), metrics={"int8_accuracy": 0.9})
    write_manifest(manifest, tmp_path / "model.json")
    assert load_manifest(tmp_path) == manifest
    loaded, path = load_verified(tmp_path / "model.tflite")
    assert path == model and loaded.labels[2] == "notumor"

    model.write_bytes(b"tampered")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_verified(tmp_path)


def test_a_model_link_switched_during_loading_still_gives_one_verified_version(
        tmp_path, monkeypatch):
    """deploy/install.sh switches models/current from one version's folder to the next. An
    agent starting at that moment read the manifest through the old link and the model
    through the new one: a good model refused (exit 78, which systemd does not restart)."""
    import edge.manifest

    for version, payload in (("1", b"model one"), ("2", b"model two")):
        folder = tmp_path / f"toy-{version}"
        folder.mkdir()
        (folder / "model.tflite").write_bytes(payload)
        write_manifest(make_manifest(sha256_file(folder / "model.tflite"), version=version),
                       folder / "model.json")
    current = tmp_path / "current"
    current.symlink_to("toy-1")
    read = edge.manifest.load_manifest

    def read_then_upgrade(path):
        manifest = read(path)
        (tmp_path / "next").symlink_to("toy-2")
        (tmp_path / "next").replace(current)  # as install.sh does: mv -T, atomic
        return manifest

    monkeypatch.setattr(edge.manifest, "load_manifest", read_then_upgrade)
    manifest, model = load_verified(current)
    assert manifest.version == "1" and model == tmp_path / "toy-1" / "model.tflite"
    assert model.read_bytes() == b"model one"  # what a later reader opens: the verified one


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("labels"), "lacks labels"),
        (lambda d: d.update(extra=1), "unknown keys: extra"),
        (lambda d: d.update(labels=["a", "b", "c"]), "4 outputs"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d.update(model_file="../evil.tflite"), "bare file name"),
        (lambda d: d["input"].update(scale=0), "quantization scale"),
        (lambda d: d["preprocess"].update(interpolation="magic"), "interpolation"),
        # hand edits of the wrong type: a clear ManifestError, never a traceback or (for the
        # preprocessing) a model that loads and then fails on every input
        (lambda d: d["input"].update(scale="abc"), "input.scale must be a number"),
        (lambda d: d["input"].update(scale=None), "input.scale must be a number"),
        (lambda d: d["input"].update(zero_point="x"), "zero_point must be an integer"),
        (lambda d: d["output"].update(scale=float("nan")), "output.scale must be a number"),
        (lambda d: d["preprocess"].update(scale="x"), "scale must be a finite number"),
        (lambda d: d["preprocess"].update(offset=None), "offset must be a finite number"),
        (lambda d: d["preprocess"].update(height=224.0), "height must be a whole number"),
        (lambda d: d["preprocess"].update(interpolation=["bilinear"]), "must be a name"),
        (lambda d: d.update(preprocess=[1]), "preprocess must be an object"),
    ],
)
def test_manifest_rejects_malformed(tmp_path, mutate, message):
    data = make_manifest("0" * 64).to_dict()
    mutate(data)
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path / "model.json")


def test_manifest_missing_and_not_json(tmp_path):
    with pytest.raises(ManifestError, match="no model manifest"):
        load_manifest(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_preprocess_grayscale_equals_replicated_rgb():
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 256, (300, 260), dtype=np.uint8))
    a = resize_uint8(gray)
    b = resize_uint8(gray.convert("RGB"))
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    x = preprocess(gray)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x, a / 255.0, rtol=0, atol=1e-7)


def test_preprocess_16bit_png_is_windowed_to_full_range():
    values = np.linspace(1000, 5000, 64 * 64).reshape(64, 64).astype(np.uint16)
    img = Image.fromarray(values)
    out = resize_uint8(img, PreprocessSpec(height=64, width=64))
    assert out.min() == 0 and out.max() == 255


def test_scale_applies_spec():
    spec = PreprocessSpec(scale=2 / 255, offset=-1.0)
    out = scale(np.array([[[0, 255, 128]]], dtype=np.uint8), spec)
    np.testing.assert_allclose(out, [[[-1.0, 1.0, 128 * 2 / 255 - 1]]], atol=1e-6)


def test_the_manifest_and_its_preprocess_spec_need_only_the_standard_library():
    """A manifest can be read where NumPy and Pillow are not installed (an installer, a CI
    job): importing them with both blocked must work, and so must reading a manifest."""
    import subprocess
    import sys

    from agent_helpers import REPO_ROOT

    code = ("import sys\n"
            "for name in ('numpy', 'PIL', 'PIL.Image'):\n"
            "    sys.modules[name] = None  # import numpy now raises ImportError\n"
            "import edge.manifest, edge.preprocess_spec\n"
            "from edge.manifest import load_manifest, default_model_dir\n"
            "shipped = default_model_dir()\n"
            "print(load_manifest(shipped).preprocess.shape if shipped else 'none')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(REPO_ROOT), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("(224, 224, 3)", "none")


def test_every_interpolation_the_spec_allows_has_a_resampler():
    from edge.preprocess import _INTERPOLATIONS
    from edge.preprocess_spec import INTERPOLATIONS

    assert set(_INTERPOLATIONS) == set(INTERPOLATIONS)
