"""The shortcut audit finds a planted shortcut, and only that one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from trainer.errors import OptionError
from trainer.shortcuts import (
    FEATURES,
    audit_shortcuts,
    cross_validate,
    jpeg_quality,
    picture_features,
)

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def _noise(rng, size):
    return Image.fromarray(rng.integers(30, 200, size, dtype=np.uint8), mode="L")


def _shortcut_dataset(root, per_class=24, seed=0):
    """Same noise in every class; only notumor is stored at another size (the shortcut)."""
    rng = np.random.default_rng(seed)
    for split in ("Training", "Testing"):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            size = (48, 64) if name == "notumor" else (64, 64)
            for i in range(per_class):
                _noise(rng, size).save(folder / f"{name}{i}.png")
    return root


@pytest.mark.parametrize("quality", [40, 75, 92])
def test_jpeg_quality_is_recovered_from_the_tables(tmp_path, quality):
    path = tmp_path / "x.jpg"
    _noise(np.random.default_rng(0), (64, 64)).save(path, quality=quality)
    with Image.open(path) as image:
        assert jpeg_quality(image) == pytest.approx(quality, abs=2)
    png = tmp_path / "x.png"
    _noise(np.random.default_rng(0), (64, 64)).save(png)
    with Image.open(png) as image:
        assert jpeg_quality(image) is None


def test_features_of_a_framed_colour_picture(tmp_path):
    pixels = np.zeros((100, 80, 3), np.uint8)
    pixels[10:90, 8:72] = (120, 60, 200)  # a coloured block inside a 10 % black frame
    Image.fromarray(pixels).save(tmp_path / "framed.png")
    f = picture_features(tmp_path / "framed.png")
    assert set(f) == set(FEATURES)
    assert f["aspect"] == pytest.approx(0.8)
    assert f["rgb_storage"] == 1.0 and f["colourfulness"] > 100 and f["is_jpeg"] == 0.0
    assert f["black_frame"] == pytest.approx(0.1 * 2 * 0.5 + 0.1 * 2 * 0.5, abs=0.02)
    assert f["head_fill"] == pytest.approx(0.64, abs=0.05)


def test_cross_validation_separates_what_differs():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 30)
    x = np.column_stack([y + rng.normal(0, 0.1, len(y)), rng.normal(0, 1, len(y))])
    probs = cross_validate(x, y, 4, folds=5, seed=0)
    assert np.mean(probs["logistic"].argmax(1) == y) > 0.95
    assert np.mean(probs["knn"].argmax(1) == y) > 0.85  # the noise column blurs neighbours
    noise = cross_validate(x[:, 1:], y, 4, folds=5, seed=0)
    assert np.mean(noise["logistic"].argmax(1) == y) < 0.5


def test_the_audit_finds_the_planted_size_shortcut(tmp_path):
    data = _shortcut_dataset(tmp_path / "data")
    ext = tmp_path / "ext" / "tumour"
    ext.mkdir(parents=True)
    rng = np.random.default_rng(9)
    for i in range(6):
        _noise(rng, (48, 64)).save(ext / f"t{i}.png")  # tumour pictures stored like notumor
    record, tables = audit_shortcuts(data, [tmp_path / "ext"], folds=4)
    training = record["splits"]["Training"]
    size = training["groups"]["size"]["knn"]
    assert size["notumor_vs_tumour_auc"] > 0.95 and size["recall"]["notumor"] > 0.95
    assert training["groups"]["intensity"]["logistic"]["notumor_vs_tumour_auc"] < 0.85
    assert training["chance_accuracy"] == pytest.approx(0.25)
    calls = record["external"]["ext"][0]["called"]["knn"]
    assert calls["notumor"] > 0.8  # the shortcut calls these tumour pictures "no tumour"
    assert record["folders"]["Training/notumor"]["aspect"] == pytest.approx(64 / 48)
    assert len(tables) == 3


def test_cli_writes_the_report_and_refuses_bad_input(tmp_path):
    from trainer.cli import main

    data = _shortcut_dataset(tmp_path / "data", per_class=8)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["audit-shortcuts", str(data), "--no-external",
                                       "--out", str(out), "--folds", "2"])
    assert result.exit_code == 0, result.output
    assert "## Training" in result.output
    record = json.loads((out / "audit.json").read_text())
    assert set(record["splits"]) == {"Training", "Testing"}
    assert (out / "features.csv").read_text().count("\n") == 1 + 64
    assert "Typical values per folder" in (out / "report.md").read_text()
    bad = CliRunner().invoke(main, ["audit-shortcuts", str(tmp_path / "nope")])
    assert bad.exit_code == 65 and "does not exist" in bad.output
    with pytest.raises(OptionError, match="folds"):  # a wrong option: exit 64
        audit_shortcuts(data, folds=1)
