"""The model in other Python environments: tflite-runtime in its own numpy<2 venv."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from converters.runtimes import MAX_PROB_DIFF, TFLITE_RUNTIME_ENV, check_subprocess
from converters.testing import convert_tiny
from edge.manifest import load_verified
from edge.preprocess import scale
from edge.runtime import TFLiteClassifier


def _probe(tiny) -> tuple[np.ndarray, np.ndarray]:
    from trainer.data import load_split

    manifest, model_path = load_verified(tiny.model_dir)
    test = load_split(tiny.data_dir, "Testing", spec=manifest.preprocess, limit=6,
                      use_cache=False)
    images = scale(test.images, manifest.preprocess)
    return images, TFLiteClassifier(model_path, manifest).predict(images)


@pytest.mark.slow
def test_probe_explains_a_runtime_that_is_not_installed(tiny_int8):
    images, reference = _probe(tiny_int8)
    try:
        import tflite_runtime  # noqa: F401
        pytest.skip("tflite-runtime is installed in this environment")
    except ImportError:
        pass
    check = check_subprocess("tflite-runtime", sys.executable, tiny_int8.model_dir, images,
                             reference, "ai-edge-litert")
    assert not check.ok
    assert "RuntimeUnavailableError" in check.error and "tflite-runtime" in check.error


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(TFLITE_RUNTIME_ENV),
                    reason=f"set {TFLITE_RUNTIME_ENV} to the python of a venv with "
                           "'tflite-runtime==2.14.0' 'numpy<2' pillow to run this check")
def test_int8_model_verifies_in_tflite_runtime_venv(tiny_run, tmp_path):
    data_dir, run_dir = tiny_run
    outcome = convert_tiny(run_dir, data_dir, tmp_path / "out",
                           require_runtimes=("tflite-runtime",))
    assert outcome.passed, outcome.summary
    manifest, _ = load_verified(tmp_path / "out")
    verified = {r["name"]: r for r in manifest.verified_runtimes}
    assert set(verified) == {"ai-edge-litert", "tflite-runtime"}
    tflrt = verified["tflite-runtime"]
    assert tflrt["numpy"].startswith("1.")  # it really ran in the numpy<2 environment
    assert tflrt["max_abs_prob_diff"] <= MAX_PROB_DIFF and tflrt["top1_agreement_pct"] == 100.0
    assert tflrt["compared_with"] == "ai-edge-litert"
