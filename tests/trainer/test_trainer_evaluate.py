"""``evaluate``: official and deduplicated scores side by side, Table 3, plots, labelling."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from click.testing import CliRunner  # noqa: E402
from trainer_testdata import make_dataset  # noqa: E402

from edge.preprocess import PreprocessSpec  # noqa: E402
from trainer.cli import main  # noqa: E402
from trainer.errors import DataError  # noqa: E402
from trainer.evaluate import evaluate_run, write_audit_record  # noqa: E402
from trainer.train import TrainConfig, train  # noqa: E402

SPEC = PreprocessSpec(height=32, width=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("evaldata"), train_per_class=16,
                        test_per_class=6)
    runs = tmp_path_factory.mktemp("evalruns")
    run = train(TrainConfig(arch="mlp", data_dir=str(data), runs_dir=str(runs), name="mlp",
                            epochs=3, batch_size=16, spec=SPEC, use_cache=False,
                            model_options={"hidden_units": (32,)}), verbose=0)
    return data, run


def _dedup_list(path, keep):
    path.write_text("# kept test images\n" + "\n".join(keep) + "\n")
    return path


@pytest.mark.slow
def test_official_and_deduplicated_side_by_side(trained, tmp_path):
    data, run = trained
    test_paths = sorted(p.relative_to(data).as_posix() for p in (data / "Testing").rglob("*.*"))
    keep = test_paths[::2]
    result = evaluate_run(run.path, dedup_list=_dedup_list(tmp_path / "dedup.txt", keep),
                          out_dir=tmp_path / "out", use_cache=False)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["official"]["n"] == 24 and metrics["deduplicated"]["n"] == len(keep)
    assert metrics["official"]["accuracy"] >= 0.75  # the synthetic task is easy
    assert metrics["labels"] == ["glioma", "meningioma", "notumor", "pituitary"]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "official test split (n=24)" in table
    assert f"deduplicated test split (n={len(keep)})" in table
    assert result["table_markdown"].strip() == table.strip()
    # issue 13: expected calibration error and the reliability diagram
    calibration = metrics["official"]["calibration"]
    assert 0 <= calibration["ece"] <= 1 and len(calibration["bins"]) == 15
    assert sum(b["n"] for b in calibration["bins"]) == 24
    assert "Expected calibration error" in table
    for png in ("confusion_matrix.png", "confusion_matrix_dedup.png", "history.png",
                "reliability.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and sum(int(r["in_dedup"]) for r in rows) == len(keep)
    probs = np.array([[float(r[f"p_{c}"]) for c in metrics["labels"]] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    accuracy = np.mean([r["true"] == r["predicted"] for r in rows])
    assert accuracy == pytest.approx(metrics["official"]["accuracy"])


@pytest.mark.slow
def test_without_an_audit_only_the_official_score_and_a_note(trained, tmp_path, monkeypatch):
    data, run = trained
    monkeypatch.chdir(tmp_path)  # no ./runs/leakage-audit here
    result = evaluate_run(run.path, out_dir=tmp_path / "out", use_cache=False)
    assert result["deduplicated"] is None and result["dedup_list"] is None
    assert "not available" in (tmp_path / "out" / "table.md").read_text()


@pytest.mark.slow
def test_the_default_audit_location_is_found_and_checked(trained, tmp_path, monkeypatch):
    data, run = trained
    monkeypatch.chdir(tmp_path)
    audit = tmp_path / "runs" / "leakage-audit" / data.name
    audit.mkdir(parents=True)
    keep = [p.relative_to(data).as_posix() for p in (data / "Testing" / "glioma").iterdir()]
    _dedup_list(audit / "dedup_test.txt", keep)
    write_audit_record(audit, data, {"kept": len(keep)})
    result = evaluate_run(run.path, out_dir=tmp_path / "out", use_cache=False)
    assert result["deduplicated"]["n"] == len(keep)
    write_audit_record(audit, tmp_path / "another-folder", {})  # an audit of other data
    result = evaluate_run(run.path, out_dir=tmp_path / "out2", use_cache=False)
    assert result["deduplicated"] is None


@pytest.mark.slow
def test_a_list_from_another_data_set_is_refused(trained, tmp_path):
    data, run = trained
    with pytest.raises(DataError, match="names none of the"):
        evaluate_run(run.path, dedup_list=_dedup_list(tmp_path / "d.txt", ["Testing/x/y.jpg"]),
                     out_dir=tmp_path / "out", use_cache=False)
    result = CliRunner().invoke(main, ["evaluate", str(run.path), "--dedup-list",
                                       str(tmp_path / "missing.txt")])
    assert result.exit_code == 65 and "does not exist" in result.output


@pytest.mark.slow
def test_no_imagenet_runs_are_labelled(trained, tmp_path):
    data, run = trained
    run.update_config(no_imagenet_weights=True)
    try:
        result = evaluate_run(run.path, out_dir=tmp_path / "out", use_cache=False)
    finally:
        run.update_config(no_imagenet_weights=False)
    assert "(no ImageNet weights)" in (tmp_path / "out" / "table.md").read_text()
    assert result["no_imagenet_weights"] is True


def test_the_committed_list_is_the_last_resort_for_the_same_data_set(tmp_path, monkeypatch):
    from trainer.evaluate import COMMITTED_DEDUP_LIST, find_dedup_list
    from trainer.runs import RunFolder

    monkeypatch.chdir(tmp_path)  # no ./runs/leakage-audit here
    assert COMMITTED_DEDUP_LIST.is_file()
    run = RunFolder(tmp_path / "runs" / "some-run")
    assert find_dedup_list(run, tmp_path / "elsewhere" / "brain-tumor-mri") == COMMITTED_DEDUP_LIST
    assert find_dedup_list(run, tmp_path / "another-data-set") is None


def _probabilities(folder, labels):
    with open(folder / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {r["path"].rsplit(".", 1)[0]: [float(r[f"p_{c}"]) for c in labels] for r in rows}


@pytest.mark.slow
def test_mirror_mean_is_the_mean_of_the_pictures_and_their_mirror_images(trained, tmp_path):
    """--test-time mirror-mean: each answer is the mean of the answers for the picture and for
    its mirror image (checked against a copy of the test split mirrored on disk)."""
    from PIL import Image

    data, run = trained
    mirror = tmp_path / "mirror"
    for picture in (data / "Testing").rglob("*.*"):  # PNG and JPEG, mirrored into PNG
        target = (mirror / picture.relative_to(data)).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(picture).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target)
    result = CliRunner().invoke(main, ["evaluate", str(run.path), "--test-time", "mirror-mean",
                                       "--no-external", "--no-cache"])
    assert result.exit_code == 0, result.output
    out = run.path / "evaluation-mirror-mean"  # the default, beside RUN/evaluation
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_time"] == "mirror-mean"
    assert "mlp, mirror-mean, official test split" in (out / "table.md").read_text()
    labels = metrics["labels"]
    plain = evaluate_run(run.path, out_dir=tmp_path / "plain", use_cache=False,
                         default_external=False)
    assert plain["test_time"] == "none"
    evaluate_run(run.path, mirror, out_dir=tmp_path / "mirrored", use_cache=False,
                 default_external=False)
    both, one, other = (_probabilities(folder, labels)
                        for folder in (out, tmp_path / "plain", tmp_path / "mirrored"))
    assert both.keys() == one.keys() == other.keys() and len(both) == 24
    expected = np.array([np.mean([one[p], other[p]], axis=0) for p in sorted(both)])
    got = np.array([both[p] for p in sorted(both)])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert np.abs(got - np.array([one[p] for p in sorted(both)])).max() > 1e-3


def test_an_unknown_test_time_is_a_usage_error(trained):
    data, run = trained
    result = CliRunner().invoke(main, ["evaluate", str(run.path), "--test-time", "rotate"])
    assert result.exit_code == 2 and "'rotate' is not one of 'none', 'mirror-mean'" in result.output
