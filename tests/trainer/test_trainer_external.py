"""External checks: folder layout (class folders and ``tumour``), metrics, clear errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from trainer.errors import DataError
from trainer.external import (
    ANY_TUMOUR,
    external_metrics,
    load_external,
    markdown_rows,
    resolve_external_dirs,
    scan_external,
    summary_line,
)

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]


def _pictures(folder, count, size=(30, 40), rgb=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(count):
        image = Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8), mode="L")
        if rgb:
            image = image.convert("RGB")
        image.save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")


def _onehot_probs(predicted):
    probs = np.full((len(predicted), 4), 0.02)
    probs[np.arange(len(predicted)), predicted] = 0.94
    return probs


def test_tumour_folder_counts_any_tumour_class_as_right():
    targets = np.array([ANY_TUMOUR] * 5)
    predicted = [0, 1, 2, 2, 3]  # two called notumor
    result = external_metrics(targets, ["tumour"] * 5, _onehot_probs(predicted), LABELS)
    assert result["folders"]["tumour"]["correct"] == 3
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["tumour_images"] == 5
    assert result["tumour_sensitivity"] == pytest.approx(0.6)
    assert result["predicted"] == {"glioma": 1, "meningioma": 1, "notumor": 2, "pituitary": 1}


def test_class_folders_need_the_exact_class_and_count_towards_sensitivity():
    # glioma x3 (one called meningioma: wrong class, still a tumour found; one notumor),
    # notumor x2 (one right), tumour x1 (called pituitary: right)
    targets = np.array([0, 0, 0, 2, 2, ANY_TUMOUR])
    folders = ["glioma"] * 3 + ["notumor"] * 2 + ["tumour"]
    predicted = [0, 1, 2, 2, 0, 3]
    result = external_metrics(targets, folders, _onehot_probs(predicted), LABELS)
    assert result["folders"]["glioma"]["accuracy"] == pytest.approx(1 / 3)
    assert result["folders"]["notumor"]["accuracy"] == pytest.approx(0.5)
    assert result["folders"]["tumour"]["accuracy"] == 1.0
    assert result["accuracy"] == pytest.approx(3 / 6)
    assert result["tumour_images"] == 4  # glioma x3 + tumour x1; notumor pictures are not
    assert result["tumour_sensitivity"] == pytest.approx(3 / 4)
    lo, hi = result["tumour_sensitivity_ci95"]
    assert lo < 0.75 < hi and (lo, hi) == pytest.approx((0.3006, 0.9544), abs=1e-4)
    line = summary_line("other-hospital", result)
    assert "glioma 33.33% (1/3)" in line and "tumour sensitivity 75.00% (95% CI 30.1-95.4%)" in line
    table = markdown_rows([{"name": "other-hospital", "metrics": result}])
    assert table.count("| other-hospital |") == 3 and "75.00% (95% CI 30.1-95.4%)" in table


def test_the_wilson_interval_of_a_sensitivity():
    """Reference values (Wilson score interval, z = 1.96): 57 of 89 Br35H tumours found, the
    ends (0 and all of 10), and no pictures at all."""
    from trainer.external import wilson_interval

    assert wilson_interval(57, 89) == pytest.approx((0.5369, 0.7324), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_only_no_tumour_pictures_have_no_sensitivity():
    result = external_metrics(np.array([2, 2]), ["notumor"] * 2, _onehot_probs([2, 1]), LABELS)
    assert result["tumour_sensitivity"] is None and result["accuracy"] == 0.5
    assert "sensitivity" not in summary_line("x", result)


def test_broken_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        external_metrics(np.array([ANY_TUMOUR]), ["tumour"], np.full((1, 4), np.nan), LABELS)
    with pytest.raises(ValueError, match="shape"):
        external_metrics(np.array([ANY_TUMOUR]), ["tumour"], np.ones((1, 3)) / 3, LABELS)


def test_scan_and_load_a_mixed_folder(tmp_path):
    root = tmp_path / "hospital-b"
    _pictures(root / "tumour", 3)
    _pictures(root / "notumor", 2, rgb=True)
    (root / "tumour" / "notes.txt").write_text("not a picture")
    (root / ".hidden").mkdir()
    paths, targets, folders = scan_external(root, LABELS)
    assert folders == ["notumor"] * 2 + ["tumour"] * 3
    assert targets.tolist() == [2, 2, ANY_TUMOUR, ANY_TUMOUR, ANY_TUMOUR]
    assert paths[0].startswith("notumor/")
    from edge.preprocess import PreprocessSpec

    loaded = load_external(root, LABELS, PreprocessSpec(32, 32))
    assert loaded.name == "hospital-b" and loaded.images.shape == (5, 32, 32, 3)
    assert loaded.images.dtype == np.uint8


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("file", "is not a folder"),
    ("class-folder", "looks like a class folder itself; pass its parent"),
    ("loose", "holds 2 picture(s) directly: move them into"),
    ("empty", "has no class sub-folders"),
    ("unknown", "neither the model's labels"),
    ("tumor", "must be named 'tumour'"),
    ("no-pictures", "holds no JPEG or PNG pictures"),
])
def test_bad_external_folders_say_what_is_wrong(tmp_path, layout, message):
    root = tmp_path / "ext"
    if layout == "file":
        root.write_text("x")
    elif layout == "class-folder":
        root = tmp_path / "ext" / "tumour"
        _pictures(root, 2)
    elif layout == "loose":
        _pictures(root, 2)
    elif layout == "empty":
        root.mkdir()
    elif layout == "unknown":
        _pictures(root / "astrocytoma", 2)
    elif layout == "tumor":
        _pictures(root / "tumor", 2)
    elif layout == "no-pictures":
        (root / "glioma").mkdir(parents=True)
        (root / "glioma" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scan_external(root, LABELS)


def test_tumour_folder_needs_a_no_tumour_class(tmp_path):
    _pictures(tmp_path / "ext" / "tumour", 1)
    with pytest.raises(DataError, match="no no-tumour class"):
        scan_external(tmp_path / "ext", ["cat", "dog"])


def test_unreadable_picture_is_named(tmp_path):
    _pictures(tmp_path / "ext" / "tumour", 1)
    (tmp_path / "ext" / "tumour" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_external(tmp_path / "ext", LABELS)


def test_which_folders_are_checked(tmp_path, monkeypatch):
    import trainer.external as external

    monkeypatch.setattr(external, "default_external_dirs", lambda: [tmp_path / "default"])
    assert resolve_external_dirs(None) == [tmp_path / "default"]
    assert resolve_external_dirs((), use_default=False) == []
    given = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert resolve_external_dirs(given) == [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(DataError, match="more than once"):
        resolve_external_dirs([str(tmp_path / "x" / "same"), str(tmp_path / "y" / "same")])


keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from trainer_testdata import make_dataset

    from edge.preprocess import PreprocessSpec
    from trainer.train import TrainConfig, train

    data = make_dataset(tmp_path_factory.mktemp("extdata"), train_per_class=16, test_per_class=4)
    runs = tmp_path_factory.mktemp("extruns")
    run = train(TrainConfig(arch="mlp", data_dir=str(data), runs_dir=str(runs), name="mlp",
                            epochs=3, batch_size=16, spec=PreprocessSpec(32, 32),
                            use_cache=False, model_options={"hidden_units": (32,)}), verbose=0)
    return data, run


@pytest.mark.slow
def test_evaluate_reports_external_folders(trained, tmp_path):
    from trainer_testdata import picture

    from trainer.evaluate import evaluate_run

    data, run = trained
    ext = tmp_path / "hospital-b"
    rng = np.random.default_rng(5)
    for folder, label in (("tumour", 0), ("tumour", 3), ("notumor", 2), ("glioma", 0)):
        (ext / folder).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            picture(label, rng).save(ext / folder / f"{label}-{i}.png")
    result = evaluate_run(run.path, out_dir=tmp_path / "out", use_cache=False,
                          external=[str(ext)], dedup_list=None)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    [checked] = metrics["external"]
    assert checked["name"] == "hospital-b" and checked["metrics"]["n"] == 12
    assert checked["metrics"]["tumour_images"] == 9
    assert set(checked["metrics"]["folders"]) == {"glioma", "notumor", "tumour"}
    # the synthetic task is easy: a trained model finds these
    assert checked["metrics"]["tumour_sensitivity"] >= 0.75
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| external hospital-b (" in table and "tumour sensitivity" in table
    assert result["table_markdown"].strip() == table.strip()
    with open(tmp_path / "out" / "predictions_external.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and {r["folder"] for r in rows} == {"glioma", "notumor", "tumour"}


@pytest.mark.slow
def test_evaluate_cli_refuses_a_bad_external_folder(trained, tmp_path):
    from click.testing import CliRunner

    from trainer.cli import main

    _, run = trained
    bad = tmp_path / "ext"
    _pictures(bad / "astrocytoma", 1)
    result = CliRunner().invoke(main, ["evaluate", str(run.path), "--external", str(bad),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 65, result.output
    assert "error:" in result.output and "astrocytoma" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "metrics.json").exists()  # refused before predicting
    both = CliRunner().invoke(main, ["evaluate", str(run.path), "--external", str(bad),
                                     "--no-external"])
    assert both.exit_code == 64 and "contradict" in both.output
