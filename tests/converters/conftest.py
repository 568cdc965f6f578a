"""Fixtures for converter tests: one tiny trained run per session, and its int8 model.

The tiny model comes from ``converters.testing`` (importable from any test folder, e.g.
``build_tiny_int8_model(tmp_path)`` in edge tests); these fixtures share one build.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from converters.testing import TinyModel, build_tiny_run, convert_tiny


@pytest.fixture(scope="session", autouse=True)
def _private_image_cache(tmp_path_factory: pytest.TempPathFactory):
    """Decoded-image caches of test data sets go to a temp folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEUROEDGE_CACHE_DIR", str(tmp_path_factory.mktemp("image-cache")))
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        mp.delenv("NEUROEDGE_RUNTIME", raising=False)
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data_dir, run_dir): a synthetic data set and a tiny CBAM model trained on it."""
    return build_tiny_run(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_int8(tiny_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny run converted to int8 through the gate (it must pass)."""
    data_dir, run_dir = tiny_run
    out = tmp_path_factory.mktemp("tiny-int8") / "model"
    outcome = convert_tiny(run_dir, data_dir, out)
    assert outcome.passed, outcome.summary
    return TinyModel(out, run_dir, data_dir, outcome.report)
