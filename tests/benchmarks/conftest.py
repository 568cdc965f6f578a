"""One tiny trained int8 model (``converters.testing``) shared by the benchmark tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # -> converters.testing.TinyModel
    pytest.importorskip("tensorflow", reason="building the tiny model needs the train extra")
    from converters.testing import build_tiny_int8_model

    return build_tiny_int8_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny_built(tiny) -> list:
    """The tiny model as the suite's BuiltModel records (int8 + its .keras source)."""
    from benchmarks.models import BuiltModel

    tflite = Path(tiny.model_path)
    keras_path = Path(tiny.run_dir) / "model.keras"
    return [BuiltModel("tiny", "int8", str(tflite), "trained (tiny)", "synthetic",
                       tflite.stat().st_size, 0.0),
            BuiltModel("tiny", "keras", str(keras_path), "trained (tiny)", "",
                       keras_path.stat().st_size, 0.0)]
