"""--reweight shortcuts: weights that take the picture properties' say away, drawn as planned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.errors import DataError
from trainer.reweight import (
    REWEIGHT_FLOOR,
    ShortcutWeights,
    inverse_propensity_weights,
    shortcut_weights,
)

NAMES = ("glioma", "meningioma", "notumor", "pituitary")


def _planted(seed=0, per_class=60, lookalikes=6):
    """One property ("brightness") tells notumor from tumours, except for a few tumour
    pictures that look like the no-tumour ones."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), per_class)
    x = np.where(labels == 2, 1.0, -1.0) + rng.normal(0, 0.3, len(labels))
    odd = np.flatnonzero(labels == 1)[:lookalikes]  # meningiomas stored like notumor
    x[odd] = 1.0 + rng.normal(0, 0.3, lookalikes)
    return x[:, None], labels, odd


def test_tumour_pictures_that_look_like_no_tumour_weigh_most():
    x, labels, odd = _planted()
    p_true, w = inverse_propensity_weights(x, labels, NAMES)
    meningioma = labels == 1
    typical = np.setdiff1d(np.flatnonzero(meningioma), odd)
    assert p_true[odd].max() < 0.5 < p_true[typical].min()
    assert w[odd].min() > 3 * np.median(w[typical])
    for c in range(4):  # the classes keep their shares
        assert w[labels == c].mean() == pytest.approx(1.0)
    # the floor caps the ratio of the heaviest to the lightest picture of a class
    for c in range(4):
        members = w[labels == c]
        assert members.max() / members.min() <= 1 / REWEIGHT_FLOOR + 1e-9


def test_weighting_removes_what_the_property_says_about_the_answer():
    """Among pictures with the no-tumour look, the share that is really no tumour falls
    from nearly all to well below that once weighted."""
    x, labels, _ = _planted()
    _, w = inverse_propensity_weights(x, labels, NAMES)
    looks_negative = x[:, 0] > 0
    negative = labels == 2
    before = negative[looks_negative].mean()
    after = w[looks_negative & negative].sum() / w[looks_negative].sum()
    assert before > 0.9 and after < 0.75


def test_without_a_notumor_class_or_with_one_class_it_says_what_to_do():
    x, labels, _ = _planted()
    with pytest.raises(DataError, match="has none.*without --reweight"):
        inverse_propensity_weights(x, labels, ("a", "b", "c", "d"))
    with pytest.raises(DataError, match="both no-tumour and tumour"):
        inverse_propensity_weights(x[labels == 2], labels[labels == 2], NAMES)
    with pytest.raises(DataError, match="floor"):
        inverse_propensity_weights(x, labels, NAMES, floor=0)


def test_weights_of_real_picture_files_and_their_file_round_trip(tmp_path):
    from trainer_testdata import make_dataset

    from trainer.data import scan_split

    root = make_dataset(tmp_path / "data", train_per_class=12, test_per_class=2)
    paths, labels, names = scan_split(root, "Training")
    found = shortcut_weights(root, paths, labels, names)
    assert found.paths == paths and np.all(found.weights > 0)
    again = ShortcutWeights.from_dict(json.loads(json.dumps(found.to_dict())), "w.json")
    np.testing.assert_allclose(again.weights, found.weights, rtol=1e-5)
    summary = found.summary(labels, names)
    assert set(summary["per_class"]) == set(names)
    assert 0 < summary["effective_samples"] <= len(paths)
    broken = dict(found.to_dict(), weights=found.to_dict()["weights"][:-1])
    with pytest.raises(DataError, match="w.json is not a sample-weights file.*differ in length"):
        ShortcutWeights.from_dict(broken, "w.json")
    with pytest.raises(DataError, match="positive"):
        ShortcutWeights.from_dict(dict(found.to_dict(), weights=[0.0] * len(paths)), "w.json")


def test_weighted_batches_are_drawn_by_weight_and_repeat_exactly():
    keras = pytest.importorskip("keras")  # noqa: F841 - PyDataset
    from trainer.batches import TrainingBatches

    images = np.zeros((40, 8, 8, 3), np.uint8)
    labels = np.arange(40) % 4
    weights = np.ones(40)
    weights[0] = 20.0
    make = lambda: TrainingBatches(images, labels, 4, 8, seed=3, weights=weights)  # noqa: E731
    a, b = make(), make()
    np.testing.assert_array_equal(a.order(5), b.order(5))
    draws = np.concatenate([a.order(e) for e in range(50)])
    assert len(a.order(0)) == 40
    share = np.mean(draws == 0)  # 20 / 59 of the weight
    assert share == pytest.approx(20 / 59, abs=0.03)
    unweighted = TrainingBatches(images, labels, 4, 8, seed=3)
    assert sorted(unweighted.order(0)) == list(range(40))  # a permutation, as before
    for bad in (np.ones(39), np.r_[np.ones(39), 0.0]):
        with pytest.raises(ValueError, match="positive numbers, one per image"):
            TrainingBatches(images, labels, 4, 8, seed=3, weights=bad)


def test_a_reweighted_run_records_its_weights_and_resumes_with_them(tmp_path):
    pytest.importorskip("keras")
    from trainer_testdata import make_dataset

    from edge.preprocess import PreprocessSpec
    from trainer.errors import OptionError, RunError
    from trainer.runs import RunFolder
    from trainer.train import TrainConfig, resume, train

    root = make_dataset(tmp_path / "data", train_per_class=12, test_per_class=2)
    config = TrainConfig(arch="mlp", data_dir=str(root), runs_dir=str(tmp_path / "runs"),
                         name="rw", epochs=1, batch_size=8, spec=PreprocessSpec(32, 32),
                         use_cache=False, model_options={"hidden_units": (8,)},
                         reweight="shortcuts")
    run = train(config, verbose=0)
    record = run.read_record().raw
    assert record["reweight"] == "shortcuts" and record["sample_weights"]["floor"] == 0.1
    assert any("--reweight shortcuts" in d for d in record["deviations"])
    stored = run.read_sample_weights()
    assert stored["paths"] == run.read_split()["train"]
    resume(run.path, epochs=2, verbose=0)
    assert run.read_record().raw["epochs_done"] == 2
    stored["paths"] = stored["paths"][::-1]
    run.write_sample_weights(stored)
    with pytest.raises(RunError, match="other training files"):
        resume(run.path, epochs=3, verbose=0)
    (run.path / "sample_weights.json").unlink()
    with pytest.raises(RunError, match="sample_weights.json is missing"):
        resume(run.path, epochs=3, verbose=0)
    with pytest.raises(OptionError, match="--reweight must be one of none, shortcuts"):
        TrainConfig(**{**config.__dict__, "reweight": "sources"}).validate()
    assert isinstance(RunFolder.open(run.path), RunFolder)
