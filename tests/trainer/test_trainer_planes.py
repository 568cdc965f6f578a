"""The plane table (trainer.planes), --reweight planes and --reweight shortcuts+planes."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from trainer.errors import DataError
from trainer.planes import (
    PlaneTable,
    fit_axial,
    label_planes,
    read_hand_labels,
    read_planes,
    write_planes,
)
from trainer.reweight import combined_weights, plane_weights, shortcut_weights

NAMES = ("glioma", "meningioma", "notumor", "pituitary")
SHIPPED = __import__("pathlib").Path(__file__).resolve().parents[2] / "edge" / "models"


def _hand(tmp_path, rows, header="path,plane"):
    path = tmp_path / "hand.csv"
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return path


def test_hand_labels_are_read_and_bad_ones_named(tmp_path):
    good = _hand(tmp_path, [("Training/a/1.jpg", "axial"), ("Training/a/2.jpg", "sagittal")])
    assert read_hand_labels(good) == {"Training/a/1.jpg": "axial",
                                      "Training/a/2.jpg": "sagittal"}
    with pytest.raises(DataError, match="line 3: .*one of axial, coronal, sagittal"):
        read_hand_labels(_hand(tmp_path, [("a", "axial"), ("b", "oblique")]))
    with pytest.raises(DataError, match="header line 'path,plane'"):
        read_hand_labels(_hand(tmp_path, [("a", "axial")], header="file,label"))
    with pytest.raises(DataError, match="axial and non-axial examples"):
        read_hand_labels(_hand(tmp_path, [("a", "axial"), ("b", "axial")]))
    with pytest.raises(DataError, match="cannot read the hand labels"):
        read_hand_labels(tmp_path / "none.csv")


def test_axial_is_learned_from_a_labelled_sample_and_hand_labels_win():
    rng = np.random.default_rng(0)
    n = 300
    axial = rng.random(n) < 0.4
    features = rng.normal(0, 1, (n, 8))
    features[:, 0] += np.where(axial, 3.0, -3.0)  # one feature carries the plane
    paths = [f"Training/x/{i}.jpg" for i in range(n)]
    hand = {paths[i]: ("axial" if axial[i] else "coronal") for i in range(60)}
    hand[paths[0]] = "sagittal" if axial[0] else "axial"  # the hand overrides the model
    table, info = label_planes(paths, features, hand)
    assert info["hand_labels"] == 60 and info["leave_one_out_accuracy"] > 0.9
    assert np.mean(table.axial[60:] == axial[60:]) > 0.95
    assert table.axial[0] == (not axial[0]) and table.source[0] == "hand"
    assert table.source[100] == "model"
    with pytest.raises(DataError, match="not in this data set's Training split"):
        label_planes(paths, features, {"Training/y/other.jpg": "axial", **hand})
    probs, loo = fit_axial(features, np.where(np.arange(n) < 60, axial.astype(int), -1))
    assert probs.shape == (n,) and 0.9 < loo <= 1.0


def test_the_plane_table_round_trips_and_names_what_it_lacks(tmp_path):
    table = PlaneTable(["Training/a/1.jpg", "Training/b/2.jpg"], np.array([0.9, 0.2]),
                       ["hand", "model"])
    write_planes(tmp_path / "planes.csv", table)
    back = read_planes(tmp_path / "planes.csv")
    assert back.paths == table.paths and back.source == table.source
    np.testing.assert_allclose(back.p_axial, table.p_axial)
    assert list(back.lookup(["Training/b/2.jpg"], "planes.csv")) == [0.2]
    # a training pack's .png copies of the .jpg originals find their planes too
    assert list(back.lookup(["Training/b/2.png", "Training/a/1.png"], "planes.csv")) == [0.2, 0.9]
    with pytest.raises(DataError, match="planes.csv has no plane for 1 training picture.*"
                                        "python -m trainer planes"):
        back.lookup(["Training/c/3.jpg"], "planes.csv")
    (tmp_path / "bad.csv").write_text("path,p_axial,plane,source\nTraining/a/1.jpg,high\n")
    with pytest.raises(DataError, match="damaged"):
        read_planes(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="make it with"):
        read_planes(tmp_path / "none.csv")


def test_plane_weights_make_axial_tumours_count_more(tmp_path):
    """Tumours mostly coronal or sagittal, no-tumour pictures axial (as in the data set):
    the axial tumour pictures are drawn more often, the plane says less about the answer."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 200)
    axial = np.where(labels == 2, rng.random(800) < 0.97, rng.random(800) < 0.3)
    paths = [f"Training/{NAMES[y]}/{i}.jpg" for i, y in enumerate(labels)]
    write_planes(tmp_path / "planes.csv", PlaneTable(paths, axial.astype(float), ["model"] * 800))
    found = plane_weights(paths, labels, NAMES, tmp_path / "planes.csv")
    w = found.weights
    tumour = labels != 2
    assert w[tumour & axial].min() > 1.5 * w[tumour & ~axial].max()
    before = np.mean(labels[axial] == 2)
    after = w[axial & ~tumour].sum() / w[axial].sum()
    assert after < before - 0.1
    assert found.method == "planes" and "planes.csv, sha256" in found.basis
    assert found.summary(labels, NAMES)["method"] == "planes"


def _dataset_and_hand_labels(tmp_path):
    from trainer_testdata import make_dataset

    from trainer.data import scan_split

    root = make_dataset(tmp_path / "data", train_per_class=6, test_per_class=1)
    paths, labels, _ = scan_split(root, "Training")
    rows = [(p, "axial" if i % 2 else "coronal") for i, p in enumerate(paths[::3])]
    return root, _hand(tmp_path, rows), paths, labels


@pytest.mark.slow
def test_the_planes_command_labels_a_data_set_with_the_shipped_models_features(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from trainer.cli import main

    root, hand, paths, _ = _dataset_and_hand_labels(tmp_path)
    out = tmp_path / "planes.csv"
    result = CliRunner().invoke(main, ["planes", str(root), "--labels", str(hand),
                                       "--model", str(SHIPPED), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "hand labels; leave-one-out accuracy" in result.output and "% axial" in result.output
    table = read_planes(out)
    assert sorted(table.paths) == sorted(paths) and table.source.count("hand") == 8
    bad = CliRunner().invoke(main, ["planes", str(root), "--labels", str(tmp_path / "no.csv"),
                                    "--out", str(out)])
    assert bad.exit_code != 0 and "cannot read the hand labels" in bad.output
    assert "Traceback" not in bad.output
    no_model = CliRunner().invoke(main, ["planes", str(root), "--labels", str(hand),
                                         "--model", str(tmp_path), "--out", str(out)])
    assert no_model.exit_code != 0 and "cannot use the model" in no_model.output
    assert "model.json" in no_model.output and "Traceback" not in no_model.output
    no_data = CliRunner().invoke(main, ["planes", str(tmp_path / "none"), "--labels", str(hand)])
    assert no_data.exit_code != 0 and "does not exist" in no_data.output


def test_combined_weights_see_the_plane_and_the_picture_properties(tmp_path):
    """Real picture files whose planes are planted: no-tumour pictures all axial, tumours
    mostly not. The joint weights draw axial tumours more often as the plane weights do,
    and differ from the property-only weights (one model sees both cues)."""
    root, _, paths, labels = _dataset_and_hand_labels(tmp_path)
    axial = np.where(labels == 2, 1.0, (np.arange(len(labels)) % 4 == 0).astype(float))
    planes = tmp_path / "planes.csv"
    write_planes(planes, PlaneTable(paths, axial, ["hand"] * len(paths)))
    both = combined_weights(root, paths, labels, NAMES, planes)
    assert both.method == "shortcuts+planes" and both.paths == paths
    assert both.basis.startswith("visible properties and axial or not (planes.csv, sha256")
    tumour = labels != 2
    assert (both.weights[tumour & (axial == 1)].mean()
            > 1.3 * both.weights[tumour & (axial == 0)].mean())
    for c in range(4):  # the classes keep their shares
        assert both.weights[labels == c].mean() == pytest.approx(1.0)
    alone = shortcut_weights(root, paths, labels, NAMES)
    assert not np.allclose(both.weights, alone.weights)
    with pytest.raises(DataError, match="make it with"):  # before any picture is measured
        combined_weights(root, paths, labels, NAMES, tmp_path / "none.csv")


@pytest.mark.parametrize("method", ["planes", "shortcuts+planes"])
def test_a_run_with_reweight_planes_records_its_table(tmp_path, method):
    pytest.importorskip("keras")
    from edge.preprocess import PreprocessSpec
    from trainer.train import TrainConfig, train

    root, _, paths, labels = _dataset_and_hand_labels(tmp_path)
    planes = tmp_path / "planes.csv"
    axial = np.where(labels == 2, 1.0, (np.arange(len(labels)) % 3 == 0).astype(float))
    write_planes(planes, PlaneTable(paths, axial, ["hand"] * len(paths)))
    config = TrainConfig(arch="mlp", data_dir=str(root), runs_dir=str(tmp_path / "runs"),
                         name="planes", epochs=1, batch_size=8, spec=PreprocessSpec(32, 32),
                         use_cache=False, model_options={"hidden_units": (8,)},
                         reweight=method, planes_file=str(planes))
    run = train(config, verbose=0)
    summary = run.read_record().raw["sample_weights"]
    assert summary["method"] == method and "planes.csv" in summary["basis"]
    assert run.read_sample_weights()["method"] == method
