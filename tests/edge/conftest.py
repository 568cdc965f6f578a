"""Fixtures for the edge agent's tests: a model and folders (helpers: agent_helpers.py).

The model: ``$NEUROEDGE_TEST_MODEL`` (a folder with model.tflite + model.json, e.g. one
built on a workstation and passed to an emulated arm64 device without TensorFlow), else the
brightness toy model of ``toy_model.py``, built once per session with TensorFlow. Without
either, tests that need a model are skipped with the reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_helpers import TestModel  # noqa: E402
from toy_model import build_toy_model, model_from_environment  # noqa: E402


@pytest.fixture(scope="session")
def test_model(tmp_path_factory: pytest.TempPathFactory) -> TestModel:
    try:
        path = model_from_environment()
    except ValueError as exc:
        pytest.fail(str(exc))
    if path is not None:
        name = json.loads((path / "model.json").read_text())["name"]
        return TestModel(path, toy=(name == "toy-brightness"))
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pytest.skip("no test model: TensorFlow is not installed to build the toy model and "
                    "NEUROEDGE_TEST_MODEL is not set (python tests/edge/toy_model.py DIR "
                    "builds one elsewhere)")
    try:
        from edge.runtime import load_runtime
        load_runtime()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no TFLite runtime to run the test model: {exc}")
    return TestModel(build_toy_model(tmp_path_factory.mktemp("toy-model")), toy=True)


@pytest.fixture()
def folders(tmp_path: Path) -> dict[str, Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return {"inbox": inbox, "outbox": tmp_path / "outbox", "root": tmp_path}




@pytest.fixture(scope="module")
def loaded_classifier(test_model: TestModel, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The test model loaded once for a module's many agent runs (the disk-fault sweeps:
    loading it is most of a run's cost)."""
    from agent_helpers import make_config

    from edge.classifier import Classifier

    folders = {"inbox": tmp_path_factory.mktemp("inbox"), "outbox": Path("/nonexistent")}
    return Classifier(make_config(folders, test_model.path))
