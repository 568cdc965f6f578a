"""The loader on the real Brain Tumor MRI data set (skipped when ../shared is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data import class_names, load_split, scan_split

pytestmark = pytest.mark.dataset

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def test_the_paper_split_and_class_order(dataset_dir):
    assert class_names(dataset_dir) == CLASSES
    assert class_names(dataset_dir, "Testing") == CLASSES
    _, train_labels, _ = scan_split(dataset_dir, "Training")
    _, test_labels, _ = scan_split(dataset_dir, "Testing")
    assert np.bincount(train_labels).tolist() == [1321, 1339, 1595, 1457]  # paper, Table 1
    assert np.bincount(test_labels).tolist() == [300, 306, 405, 300]


def test_a_stratified_subset_of_real_jpegs(dataset_dir):
    data = load_split(dataset_dir, "Testing", limit=12, seed=0, use_cache=False)
    assert data.images.shape == (12, 224, 224, 3) and data.images.dtype == np.uint8
    assert data.class_counts() == {"glioma": 3, "meningioma": 3, "notumor": 3, "pituitary": 3}
    assert all((dataset_dir / p).is_file() for p in data.paths)
    assert all(p.startswith("Testing/") for p in data.paths)
    # grayscale MR slices, replicated into three identical channels
    assert np.array_equal(data.images[..., 0], data.images[..., 2])
    assert 0 < data.images.mean() < 128
