"""Another runtime's probe finds the model when the output folder was given relatively."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest

from converters.runtimes import check_subprocess


@pytest.mark.slow
def test_a_relative_model_folder_reaches_the_probe(tiny_int8, tmp_path, monkeypatch):
    shutil.copytree(tiny_int8.model_dir, tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    images = np.zeros((2, 32, 32, 3), np.float32)
    # this environment has no tflite-runtime: the probe must get as far as saying so, not
    # fail to find model.json (the subprocess runs in a temporary working folder)
    try:
        import tflite_runtime  # noqa: F401
        pytest.skip("tflite-runtime is installed in this environment")
    except ImportError:
        pass
    check = check_subprocess("tflite-runtime", sys.executable, type(tmp_path)("model"), images,
                             np.zeros((2, 4)), "ai-edge-litert")
    assert "no model manifest" not in check.error
    assert "tflite-runtime" in check.error and os.getcwd() == str(tmp_path)
