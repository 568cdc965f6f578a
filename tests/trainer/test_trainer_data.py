"""Data loading: layout, labels, decoding, cache, stratified subsets, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from trainer_testdata import CLASSES, make_dataset

from edge.preprocess import PreprocessSpec, resize_uint8
from trainer import data as data_module
from trainer.data import (
    DataError,
    class_names,
    load_split,
    scan_split,
    stratified_indices,
    stratified_split,
)

SPEC = PreprocessSpec(height=24, width=24)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), train_per_class=6, test_per_class=3)


def test_class_names_are_alphabetical_folders(tmp_path):
    for name in ("zeta", "Alpha", "beta", ".hidden"):
        (tmp_path / "Training" / name).mkdir(parents=True)
    (tmp_path / "Training" / "notes.txt").write_text("x")
    assert class_names(tmp_path) == ["Alpha", "beta", "zeta"]


def test_load_split_decodes_with_the_device_preprocessing(folder):
    data = load_split(folder, "Training", SPEC, use_cache=False)
    assert data.images.shape == (24, 24, 24, 3) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    assert data.class_names == list(CLASSES)
    assert data.class_counts() == dict.fromkeys(CLASSES, 6)
    assert data.paths[0] == "Training/glioma/glioma_000.jpg"
    assert all(CLASSES[label] in path for path, label in zip(data.paths, data.labels,
                                                             strict=True))
    with Image.open(folder / data.paths[7]) as image:
        np.testing.assert_array_equal(data.images[7], resize_uint8(image, SPEC))


def test_rgb_and_grayscale_and_any_size(tmp_path):
    for split in ("Training",):
        for name, image in (("a", Image.new("L", (50, 20), 200)),
                            ("b", Image.new("RGB", (7, 90), (10, 20, 30)))):
            (tmp_path / split / name).mkdir(parents=True)
            image.save(tmp_path / split / name / "x.png")
    data = load_split(tmp_path, "Training", SPEC, use_cache=False)
    assert data.images.shape == (2, 24, 24, 3)
    assert np.all(data.images[0] == 200)
    assert tuple(data.images[1, 0, 0]) == (10, 20, 30)


def test_limit_is_a_seeded_stratified_subset(folder):
    data = load_split(folder, "Training", SPEC, limit=8, seed=3, use_cache=False)
    again = load_split(folder, "Training", SPEC, limit=8, seed=3, use_cache=False)
    assert len(data) == 8 and data.paths == again.paths
    assert data.class_counts() == dict.fromkeys(CLASSES, 2)


def test_stratified_indices_keep_proportions_and_every_class():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 9 + [3] * 1)
    picked = stratified_indices(labels, 20, seed=0)
    assert len(picked) == 20 and len(set(picked.tolist())) == 20
    counts = np.bincount(labels[picked], minlength=4)
    quota = np.bincount(labels) / len(labels) * 20
    assert counts.min() >= 1 and np.all(np.abs(counts - quota) <= 1), counts
    assert not np.array_equal(picked, stratified_indices(labels, 20, seed=1))
    np.testing.assert_array_equal(picked, stratified_indices(labels, 20, seed=0))
    assert len(stratified_indices(labels, 500, seed=0)) == 100


def test_stratified_split_is_disjoint_and_per_class():
    labels = np.repeat(np.arange(4), [50, 30, 20, 10])
    train, val = stratified_split(labels, 0.1, seed=0)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(labels)
    assert np.bincount(labels[val]).tolist() == [5, 3, 2, 1]
    train2, val2 = stratified_split(labels, 0.1, seed=0)
    np.testing.assert_array_equal(val, val2)
    with pytest.raises(DataError, match="at least 2 per class"):
        stratified_split(np.array([0, 0, 1]), 0.1, seed=0)


def test_cache_is_reused_and_invalidated_when_a_file_changes(folder, tmp_path, monkeypatch):
    first = load_split(folder, "Testing", SPEC, cache_dir=tmp_path)
    cached = list((tmp_path / "images").glob("testing-*.npz"))
    assert len(cached) == 1
    calls = []
    real_decode = data_module._decode
    monkeypatch.setattr(data_module, "_decode",
                        lambda path, spec: calls.append(path) or real_decode(path, spec))
    second = load_split(folder, "Testing", SPEC, cache_dir=tmp_path)
    assert calls == []
    np.testing.assert_array_equal(first.images, second.images)
    assert second.paths == first.paths
    target = folder / first.paths[0]
    Image.new("L", (30, 30), 255).save(target, format="JPEG")
    third = load_split(folder, "Testing", SPEC, cache_dir=tmp_path)
    assert len(calls) == len(first)
    assert np.all(third.images[0] > 250)


def test_missing_folder_and_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist.*Expected layout"):
        load_split(tmp_path / "nowhere", "Training")
    (tmp_path / "Training").mkdir()
    with pytest.raises(DataError, match="has no Testing/ folder"):
        load_split(tmp_path, "Testing")
    with pytest.raises(DataError, match="pass its parent"):
        load_split(tmp_path / "Training", "Training")
    with pytest.raises(DataError, match="0 class folder"):
        class_names(tmp_path)
    for name in ("only", "empty"):
        (tmp_path / "Training" / name).mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "Training" / "only" / "a.png")
    (tmp_path / "Training" / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty holds no JPEG or PNG"):
        scan_split(tmp_path, "Training")


def test_a_single_class_is_an_error(tmp_path):
    (tmp_path / "Training" / "glioma").mkdir(parents=True)
    with pytest.raises(DataError, match="at least 2 are needed"):
        class_names(tmp_path)


def test_unreadable_images_are_named(tmp_path):
    make_dataset(tmp_path, train_per_class=2, test_per_class=1)
    bad = tmp_path / "Training" / "glioma" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match=r"(?s)1 image\(s\).*broken.jpg.*Replace or remove"):
        load_split(tmp_path, "Training", SPEC, use_cache=False)


def test_test_classes_must_be_known_to_the_model(folder):
    with pytest.raises(DataError, match="not among the model's classes"):
        scan_split(folder, "Testing", classes=["glioma", "meningioma", "notumor"])
    paths, labels, names = scan_split(folder, "Testing", classes=list(CLASSES) + ["zz"])
    assert names[-1] == "zz" and labels.max() == 3
