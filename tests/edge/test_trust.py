"""Issue 13 on the device side: calibration, the "unlike the training data" score, the
review rule, the heat-map, manifest format 2, and ``edge-agent validate``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import REPO_ROOT, gray_png, make_config, run_once
from PIL import Image

from edge import heatmap
from edge.config import AgentConfig
from edge.errors import ManifestError, ModelIntegrityError
from edge.manifest import ModelManifest, load_manifest, load_verified, write_manifest
from edge.trust import Assessment, calibration_error, review_reasons, softmax


def _toy(test_model):
    if not test_model.toy:
        pytest.skip("needs the toy model's known behaviour")
    return test_model.path


def _blob(size: int = 224, centre: tuple[int, int] = (60, 160), radius: int = 14,
          background: int = 25) -> np.ndarray:
    """A dark picture with one bright, lesion-like disc (row, column)."""
    yy, xx = np.mgrid[:size, :size]
    picture = np.full((size, size), background, np.uint8)
    picture[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2] = 255
    return picture


def _classify(model: Path, picture: np.ndarray, heatmap: str = "occlusion", **review):
    from edge.classifier import Classifier
    from edge.decoded import DecodedImage

    config = AgentConfig().override("paths", model=str(model)).override("report",
                                                                        heatmap=heatmap)
    if review:
        config = config.override("review", **review)
    decoded = DecodedImage(kind="png", picture=Image.fromarray(picture), details={}, notes=[])
    return Classifier(config).classify(decoded)


# --- calibration --------------------------------------------------------------------------

def test_calibration_error_is_zero_when_confidence_matches_accuracy_and_large_when_not():
    rng = np.random.default_rng(0)
    n = 4000
    confidence = rng.uniform(0.3, 1.0, n)
    labels = np.zeros(n, dtype=int)
    right = rng.random(n) < confidence  # right exactly as often as it claims
    probs = np.stack([confidence, 1 - confidence], axis=1)
    truth = np.where(right, 0, 1)
    assert calibration_error(probs, truth) < 0.03
    overconfident = np.stack([np.full(n, 0.99), np.full(n, 0.01)], axis=1)
    labels[: n // 2] = 1  # right half the time, 99 % sure
    assert calibration_error(overconfident, labels) == pytest.approx(0.49, abs=0.01)


def test_temperature_softens_overconfident_logits():
    logits = np.array([[8.0, 0.0, 0.0, 0.0]])
    assert softmax(logits, 1.0)[0, 0] > 0.99
    assert softmax(logits, 4.0)[0, 0] == pytest.approx(np.e ** 2 / (np.e ** 2 + 3), abs=1e-9)


# --- the review rule ----------------------------------------------------------------------

def _rule(label: str, confidence: float, in_distribution: bool | None, **kw) -> list[str]:
    a = Assessment(np.zeros(4), calibrated=True)
    if in_distribution is not None:
        a.ood_score, a.ood_threshold = (1.0, 2.0) if in_distribution else (3.0, 2.0)
        a.ood_share_below = 0.5 if in_distribution else 0.999
    settings = {"threshold": 0.6, "min_margin": 0.0, "no_tumour_threshold": 0.95,
                "negative_label": "notumor", **kw}
    return review_reasons(label=label, confidence=confidence, margin=0.5, runner_up="glioma",
                          assessment=a, **settings)


def test_a_no_tumour_answer_stands_alone_only_when_confident_and_in_distribution():
    assert _rule("notumor", 0.99, True) == []
    low = _rule("notumor", 0.90, True)
    assert len(low) == 1 and "0.95 or more" in low[0] and "never missed silently" in low[0]
    unlike = _rule("notumor", 0.99, False)
    assert len(unlike) == 2 and "unlike the images the model was trained on" in unlike[0]
    # the dangerous case says what it means for this answer, not only for the image
    assert "does not rule out a tumour" in unlike[1] and "calibrated only" in unlike[1]
    unchecked = _rule("notumor", 0.99, None)
    assert len(unchecked) == 1 and "has no such check" in unchecked[0]


def test_a_tumour_answer_is_flagged_only_for_low_confidence_or_unlike_training():
    assert _rule("glioma", 0.7, True) == []
    assert _rule("glioma", 0.7, None) == []  # no OOD check: only the no-tumour rule tightens
    assert "below the review threshold" in _rule("glioma", 0.5, True)[0]
    assert "unlike the images" in _rule("pituitary", 0.99, False)[0]
    assert len(_rule("pituitary", 0.99, False)) == 1  # "does not rule out" is the negative's
    assert "99.9% of the validation images" in _rule("pituitary", 0.99, False)[0]


# --- heat-map -----------------------------------------------------------------------------

def test_heatmap_scaling_peak_and_overlay():
    raw = np.zeros((28, 28, 1))
    raw[5, 20, 0] = 3.0
    heat = heatmap.spatial_map(raw, "spatial_attention")
    assert heat.max() == 1.0 and heat.min() == 0.0
    assert heatmap.peak(heat) == {"x": round(20.5 / 28, 4), "y": round(5.5 / 28, 4)}
    assert not heatmap.spatial_map(np.ones((4, 4, 2)), "feature_map").any()  # flat: no peak
    picture = np.full((224, 224, 3), 100, np.uint8)
    drawn = heatmap.overlay(picture, heat)
    assert drawn.shape == picture.shape
    assert np.abs(drawn.astype(int) - 100).sum(axis=2)[44, 164] > 50  # coloured at the peak
    assert (drawn[200, 20] == 100).all()  # untouched where the map is 0
    assert heatmap.png_bytes(drawn).startswith(b"\x89PNG")


def test_class_activation_map_peaks_at_the_evidence_not_at_what_every_picture_shares():
    """A CAM: channel 3 (weight 1) lights up at one place; channel 0 (weight 1) is bright all
    along the left edge in every picture (as padding leaves it), so the training mean has it
    too and the map leaves it out."""
    value = np.zeros((7, 7, 8))
    value[:, 0, 0] = 5.0  # shared by every picture
    value[2, 5, 3] = 2.0  # this picture's evidence
    weights = np.zeros(8)
    weights[[0, 3]] = 1.0
    baseline = np.zeros((7, 7))
    baseline[:, 0] = 5.0  # the mean map over the training pictures
    heat = heatmap.spatial_map(value, "class_activation", (weights, baseline))
    assert heatmap.peak(heat) == {"x": round(5.5 / 7, 4), "y": round(2.5 / 7, 4)}
    raw = heatmap.spatial_map(value, "class_activation", (weights, np.zeros((7, 7))))
    assert heatmap.peak(raw)["x"] == round(0.5 / 7, 4)  # without the mean: the edge wins
    with pytest.raises(ValueError, match="8 class weights and a 7 x 7 mean map"):
        heatmap.spatial_map(value, "class_activation", None)
    with pytest.raises(ValueError, match="class weights"):
        heatmap.spatial_map(value, "class_activation", (weights[:4], baseline))


def test_class_activation_weights_are_checked_when_the_model_loads(tmp_path):
    from edge.trust import load_class_activation

    path = tmp_path / "trust.npz"
    np.savez(path, class_weights=np.ones((8, 4)), class_activation_baseline=np.zeros((7, 7, 4)))
    weights, baseline = load_class_activation(path, 8, (7, 7), 4)
    assert weights.shape == (8, 4) and baseline.shape == (7, 7, 4)
    with pytest.raises(ModelIntegrityError, match=r"classifier weights of shape \(8, 4\), the "
                                                  r"model needs \(16, 4\)"):
        load_class_activation(path, 16, (7, 7), 4)
    np.savez(path, class_weights=np.ones((8, 4)))
    with pytest.raises(ModelIntegrityError, match="refit the model's trust"):
        load_class_activation(path, 8, (7, 7), 4)


def test_occlusion_map_lights_the_cells_the_answer_needs_and_nothing_else():
    """A stand-in model whose margin is the brightness of two regions (weights 2 and 1) less
    a third (blacking that one out strengthens the answer): the map is the fall of the margin
    per cell, scaled to 0..1, with the harmful cell at 0 and the largest fall reported."""
    picture = np.zeros((224, 224, 3), np.uint8)
    picture[64:96, 160:192] = 200  # cell (2, 5)
    picture[160:192, 32:64] = 200  # cell (5, 1)
    picture[0:32, 0:32] = 100  # cell (0, 0)
    calls = []

    def margin(pixels: np.ndarray) -> float:
        calls.append(1)
        return (2 * pixels[64:96, 160:192].mean() + pixels[160:192, 32:64].mean()
                - pixels[0:32, 0:32].mean()) / 100

    heat, largest = heatmap.occlusion_map(picture, margin)
    assert len(calls) == 1 + 49 and heat.shape == (7, 7)
    assert heat[2, 5] == 1.0 and heat[5, 1] == pytest.approx(0.5) and heat[0, 0] == 0.0
    assert largest == pytest.approx(4.0) and np.count_nonzero(heat) == 2
    assert heatmap.peak(heat) == {"x": round(5.5 / 7, 4), "y": round(2.5 / 7, 4)}
    assert picture[64:96, 160:192].min() == 200  # the caller's picture is left as it was
    flat, none = heatmap.occlusion_map(picture, lambda pixels: 1.0)
    assert not flat.any() and none == 0.0


def test_answer_margin_from_logits_or_from_probabilities():
    assert heatmap.answer_margin(np.array([0.1, 0.9]), {"logits": np.array([1.0, 4.0, 2.5])},
                                 1) == pytest.approx(1.5)
    assert heatmap.answer_margin(np.array([0.2, 0.8]), {}, 1) == pytest.approx(np.log(4.0))
    assert np.isfinite(heatmap.answer_margin(np.array([0.0, 1.0]), {}, 1))  # saturated


def test_the_report_heatmap_setting_is_checked():
    from edge.errors import ConfigError

    assert AgentConfig().report.heatmap == "occlusion"
    with pytest.raises(ConfigError, match=r"\[report\] heatmap must be one of 'occlusion', "
                                          r"'model', 'none', got 'gradcam'"):
        AgentConfig().override("report", heatmap="gradcam")


def test_the_model_s_own_map_peaks_at_a_planted_bright_blob(test_model):
    model = _toy(test_model)
    for centre in ((60, 160), (170, 50)):
        prediction = _classify(model, _blob(centre=centre), heatmap="model")
        assert prediction.heatmap is not None and prediction.heatmap.shape == (28, 28)
        peak = heatmap.peak(prediction.heatmap)
        assert abs(peak["y"] - centre[0] / 224) < 0.06 and abs(peak["x"] - centre[1] / 224) < 0.06


# --- the toy model's trust end to end -----------------------------------------------------

def test_toy_in_distribution_answers_and_an_unusual_picture(test_model):
    model = _toy(test_model)
    plain = _classify(model, np.full((64, 64), 160, np.uint8))
    assert plain.label == "notumor" and not plain.needs_review, plain.review_reasons
    assert plain.trust["calibrated"] and plain.trust["in_distribution"] is True
    unusual = _classify(model, _blob())
    assert unusual.needs_review and unusual.trust["in_distribution"] is False
    assert any("unlike the images the model was trained on" in r for r in unusual.review_reasons)
    strict = _classify(model, np.full((64, 64), 160, np.uint8), no_tumour_threshold=0.9999)
    assert strict.needs_review and "never missed silently" in strict.review_reasons[0]


@pytest.mark.parametrize("setting", ["model", "occlusion", "none"])
def test_the_agent_writes_the_heatmap_beside_the_report(folders, test_model, setting):
    _toy(test_model)
    Image.fromarray(_blob()).save(folders["inbox"] / "blob.png")
    run_once(make_config(folders, test_model.path, report={"heatmap": setting}))
    reports = folders["outbox"] / "reports"
    (report_file,) = reports.glob("*.json")
    report = json.loads(report_file.read_text())
    assert report["schema"] == "neuroedge.report/2"
    assert report["trust"]["in_distribution"] is False and report["needs_review"] is True
    section = report["heatmap"]
    page = report_file.with_suffix(".html").read_text()
    if setting == "none":
        assert section is None and not list(reports.glob("*.heatmap.png"))
        assert "Where the model looked" not in page and "How far to trust it" in page
        return
    if setting == "model":
        assert section["kind"] == "feature_map" and "peak_effect" not in section
        assert section["map_size"] == [28, 28] and abs(section["peak"]["x"] - 160 / 224) < 0.06
    else:  # the toy answers by mean brightness: blacking out any cell only strengthens it
        assert section["kind"] == "occlusion" and section["map_size"] == [7, 7]
        assert section["peak_effect"] == 0.0 and "timings_ms" in report
        assert report["timings_ms"]["heatmap"] > 0
    png = reports / section["file"]
    with Image.open(png) as image:
        assert image.size == (224, 224)
    assert "Where the model looked" in page and page.count("data:image/png;base64,") == 2
    assert "How far to trust it" in page and "UNLIKE them" in page


# --- manifest format 2 --------------------------------------------------------------------

def test_format_1_manifests_still_load_and_are_written_as_format_1(tmp_path, test_model):
    manifest = load_manifest(test_model.path)
    plain = dataclasses.replace(manifest, outputs={}, trust={})
    write_manifest(plain, tmp_path / "model.json")
    data = json.loads((tmp_path / "model.json").read_text())
    assert data["format_version"] == 1 and "trust" not in data and "outputs" not in data
    assert ModelManifest.from_dict(data) == plain
    data["trust"] = {"version": 1}
    with pytest.raises(ManifestError, match="need format_version 2"):
        ModelManifest.from_dict(data)


def test_format_2_manifest_round_trip_and_its_checks(test_model):
    manifest = load_manifest(test_model.path)
    if not manifest.trust:
        pytest.skip("the test model has no trust section")
    data = manifest.to_dict()
    assert data["format_version"] == 2 and ModelManifest.from_dict(data) == manifest
    for change, message in (
            (lambda d: d["trust"]["ood"].update(inputs=["nothing"]), "must name outputs"),
            (lambda d: d["trust"].update(temperature=0), "positive number"),
            (lambda d: d["trust"].update(negative_label="healthy"), "not one of the labels"),
            (lambda d: d["trust"]["ood"].update(statistics="../x.npz"), "bare file name"),
            (lambda d: d["trust"].update(version=9), "upgrade neuroedge"),
            (lambda d: d["trust"]["heatmap"].update(output="logits"), "[1, H, W, C]"),
            (lambda d: d["trust"]["heatmap"].update(output=["x"]), "is not in"),
            (lambda d: d["trust"]["heatmap"].update(kind=["x"]), "kind must be one of"),
            (lambda d: d["trust"]["ood"].update(inputs=[["features"]]), "must name outputs"),
            (lambda d: d["trust"].update(negative_label=["notumor"]), "not one of the labels"),
            (lambda d: (d["trust"]["heatmap"].update(kind="class_activation"),
                        d["trust"].pop("ood")), "needs the classifier weights")):
        broken = json.loads(json.dumps(data))
        change(broken)
        with pytest.raises(ManifestError, match=message):
            ModelManifest.from_dict(broken)


def test_statistics_file_is_verified_against_its_sha256(tmp_path, test_model):
    import shutil

    if not load_manifest(test_model.path).trust:
        pytest.skip("the test model has no trust section")
    copy = tmp_path / "model"
    shutil.copytree(test_model.path, copy)
    load_verified(copy)
    stats = copy / "trust.npz"
    stats.write_bytes(stats.read_bytes() + b"tampered")
    with pytest.raises(ModelIntegrityError, match="corrupt or was replaced"):
        load_verified(copy)
    stats.unlink()
    with pytest.raises(ModelIntegrityError, match="do not exist"):
        load_verified(copy)


def test_a_manifest_naming_an_output_the_model_lacks_is_refused(tmp_path, test_model):
    from edge.runtime import TFLiteClassifier

    manifest, model_path = load_verified(test_model.path)
    if "heatmap" not in manifest.outputs:
        pytest.skip("the test model has no heat-map output")
    wrong = dict(manifest.outputs)
    wrong["heatmap"] = dataclasses.replace(wrong["heatmap"], tensor="no/such/tensor")
    with pytest.raises(ManifestError, match="lacks the outputs"):
        TFLiteClassifier(model_path, dataclasses.replace(manifest, outputs=wrong))


# --- edge-agent validate ------------------------------------------------------------------

def _validation_folder(root: Path) -> Path:
    for label, level, n in (("glioma", 30, 6), ("meningioma", 95, 6), ("notumor", 160, 6),
                            ("pituitary", 230, 6)):
        (root / label).mkdir(parents=True)
        for k in range(n):
            gray_png(root / label / f"{k}.png", level + k)
    (root / "notumor" / "wrong.png").write_bytes(  # a pituitary-bright picture, mislabelled
        (root / "pituitary" / "0.png").read_bytes())
    (root / "tumour").mkdir()
    gray_png(root / "tumour" / "a.png", 40)
    gray_png(root / "tumour" / "b.png", 170)  # "no tumour": a missed tumour
    (root / "tumour" / "notes.txt").write_text("not an image")
    return root


def test_validate_writes_the_figures_a_clinic_needs(tmp_path, test_model, monkeypatch):
    from edge import classifier as classifier_module
    from edge.validate import run_validation

    model = _toy(test_model)
    folder = _validation_folder(tmp_path / "site")
    config = AgentConfig().override("paths", model=str(model))
    drawn = []  # the occlusion map only for the worst mistakes' thumbnails, not every image
    real_occlusion = classifier_module.occlusion_map
    monkeypatch.setattr(classifier_module, "occlusion_map",
                        lambda *a, **k: drawn.append(1) or real_occlusion(*a, **k))
    summary = run_validation(folder, tmp_path / "out", config, echo=lambda _: None)
    assert 0 < len(drawn) == len(summary["worst_mistakes"]) < summary["n"]
    saved = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert saved["schema"] == "neuroedge.validation/1" and saved["n"] == 27 == summary["n"]
    assert [r["file"] for r in saved["refused"]] == ["tumour/notes.txt"]
    assert saved["confusion_rows"] == ["glioma", "meningioma", "notumor", "pituitary", "tumour"]
    matrix = np.array(saved["confusion_matrix"])
    assert matrix.shape == (5, 4) and matrix.sum() == 27
    assert matrix[2, 3] == 1 and matrix[4].tolist() == [1, 0, 1, 0]
    assert saved["accuracy"] == pytest.approx(25 / 27)
    assert saved["per_class"]["glioma"] == {"n": 6, "sensitivity": 1.0, "specificity": 1.0}
    assert saved["per_class"]["pituitary"]["specificity"] == pytest.approx(18 / 19)
    assert saved["tumours"]["n"] == 20 and saved["tumours"]["called_no_tumour"] == 1  # all tumours
    assert 0 <= saved["calibration_error"] <= 1 and 0 <= saved["flagged_share"] <= 1
    assert saved["unflagged_accuracy"] is not None
    assert "value" in saved["recommended_review_threshold"]
    assert saved["worst_mistakes"][0]["file"] in ("notumor/wrong.png", "tumour/b.png")
    assert any("only 27 images" in n for n in saved["notes"])
    page = (tmp_path / "out" / "validation.html").read_text()
    assert "Confusion matrix" in page and "<svg" in page and "most confident mistakes" in page
    assert "<script" not in page
    # the mistakes carry the occlusion map: its colour scale says what the colours mean
    assert page.count("linear-gradient(90deg") == 1
    assert "brightest: covering this region weakened the answer most" in page
    plain = AgentConfig().override("paths", model=str(model)).override(
        "report", heatmap="none")
    run_validation(folder, tmp_path / "plain", plain, echo=lambda _: None)
    assert "linear-gradient" not in (tmp_path / "plain" / "validation.html").read_text()


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("file", "is not a folder"),
    ("flat", "has no sub-folders. It holds 1 file(s) directly"),
    ("typo", "'gliomas' (did you mean 'glioma'?)"),
    ("empty", "is empty"),
])
def test_validate_refuses_a_bad_folder_with_a_clear_message(tmp_path, test_model, layout,
                                                            message):
    folder = tmp_path / "site"
    if layout == "file":
        folder.write_text("x")
    elif layout == "flat":
        folder.mkdir()
        gray_png(folder / "scan.png", 100)
    elif layout == "typo":
        (folder / "gliomas").mkdir(parents=True)
        gray_png(folder / "gliomas" / "scan.png", 100)
    elif layout == "empty":
        (folder / "glioma").mkdir(parents=True)
    run = subprocess.run([sys.executable, "-m", "edge", "validate", str(folder), "--out",
                          str(tmp_path / "out"), "--model", str(test_model.path)],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert run.returncode == 65, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "validation.json").exists()


def test_the_page_gives_the_temperature_to_two_decimals_and_says_when_it_is_unknown():
    from edge.pages import _trust_parts

    def page(**trust):
        return "".join(_trust_parts({"trust": trust}, None))

    assert "calibrated (temperature 3.40)" in page(calibrated=True, temperature=3.402687)
    assert "calibrated</td>" in page(calibrated=True)  # a report without the number
    assert "not calibrated" in page(calibrated=False, temperature=None)


def test_a_percentage_on_a_page_never_rounds_into_a_certainty():
    from edge.pages import percent

    assert percent(0.9965) == "99.7%"  # not "100%": a 0.3 % chance it is wrong
    assert percent(0.99996) == ">99.9%" and percent(0.99996, 1) == ">99.9%"
    assert percent(0.003) == "0.3%" and percent(1e-7) == "<0.1%"
    assert percent(0.9997, 1) == ">99.9%" and percent(0.873, 1) == "87.3%"
    assert percent(0.5) == "50%" and percent(1.0) == "100%" and percent(0.0) == "0%"


def test_the_report_page_headline_of_a_confident_unfamiliar_no_tumour_answer():
    """2.2.0 answers a Br35H tumour slice "notumor" at 0.9965, flagged as unlike the training
    data: the page must not read "notumor (100%)", and must say what the flag means for it."""
    from edge.pages import report_page

    reasons = _rule("notumor", 0.9965, False)
    report = {"notice": "NOT FOR CLINICAL USE", "needs_review": True, "review_reasons": reasons,
              "prediction": {"label": "notumor", "confidence": 0.9965,
                             "probabilities": {"notumor": 0.9965, "glioma": 0.0012,
                                               "meningioma": 0.0012, "pituitary": 0.0011}},
              "input": {"file_name": "y10.jpg", "format": "jpeg", "size_bytes": 1,
                        "sha256": "0" * 64},
              "intake": {"received_at": "2026-12-06T00:00:00+00:00"},
              "model": {"name": "m", "version": "1", "architecture": "a", "quantization": "int8",
                        "sha256": "0" * 64},
              "agent": {"version": "0"}, "timings_ms": {}, "created_at": "", "id": "x"}
    page = report_page(report, None).decode()
    assert "<strong>notumor</strong> (99.7%), but" in page and "100%" not in page
    assert "does not rule out a tumour" in page
    assert "<td>99.7%</td>" in page and "<td>0.1%</td>" in page
