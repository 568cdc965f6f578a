"""A real int8 model for the deploy tests, on machines with or without TensorFlow.

Not a conftest.py: tests/edge imports names from its own conftest module, which a second
conftest.py on sys.path would shadow. Test modules import these fixtures by name.

``$NEUROEDGE_TEST_MODEL`` (a folder with model.tflite + model.json; ``.ci/arm64-tests.sh``
builds it on the host and passes it into the arm64 userlands, which have no TensorFlow),
else the agent's brightness toy model (tests/edge/toy_model.py) built once per session
with TensorFlow; else the tests that need a model skip.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EDGE_TESTS = Path(__file__).resolve().parents[1] / "edge"


@pytest.fixture(scope="session")
def device_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(EDGE_TESTS))
    from toy_model import build_toy_model, model_from_environment

    try:
        path = model_from_environment()
    except ValueError as exc:
        pytest.fail(str(exc))
    if path is not None:
        return path
    pytest.importorskip("tensorflow", reason="no TensorFlow to build the toy model and "
                        "NEUROEDGE_TEST_MODEL is not set")

    return build_toy_model(tmp_path_factory.mktemp("toy-model"))


@pytest.fixture(scope="session")
def toy_labels(device_model: Path):
    """``expected_label(mean_brightness)`` when the model is the brightness toy, else skip."""
    if json.loads((device_model / "model.json").read_text())["name"] != "toy-brightness":
        pytest.skip("NEUROEDGE_TEST_MODEL is not the brightness toy model: answers unknown")
    sys.path.insert(0, str(EDGE_TESTS))
    from toy_model import expected_label

    return expected_label
