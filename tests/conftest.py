"""Shared test fixtures: the location of the real data set, and a skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_DIR = Path(
    os.environ.get("NEUROEDGE_DATA", REPO_ROOT.parent / "shared" / "data" / "brain-tumor-mri")
)


@pytest.fixture(scope="session")
def dataset_dir() -> Path:
    """The real Brain Tumor MRI data set; skips the test when it is not on this machine."""
    if not (DATASET_DIR / "Training").is_dir() or not (DATASET_DIR / "Testing").is_dir():
        pytest.skip(f"real data set not found at {DATASET_DIR} (set NEUROEDGE_DATA to its folder)")
    return DATASET_DIR


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: none where it is not installed
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (the README's test command): two workers a core, at most eight. The long
    tests wait on subprocesses, sockets and timers as much as they compute: on this
    project's 2-core machines the suite took 9 min 27 s with four workers against 12 min 2 s
    with two (2026-12-07, docs/testing.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, 2 * (cores or 1))
