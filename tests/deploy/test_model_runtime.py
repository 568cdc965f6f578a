"""A real int8 model gives the right answers in every device TFLite runtime installed here.

In the arm64 userlands of ``.ci/arm64-tests.sh`` this proves the aarch64 wheels of
ai-edge-litert, and of tflite-runtime 2.13 (the Jetson Nano's runtime), load an int8 model
converted by TensorFlow 2.21, run its int8 kernels (including SOFTMAX) and agree.
"""

from __future__ import annotations

from pathlib import Path

import deploy_fixtures
import numpy as np
import pytest
from PIL import Image

from edge.manifest import load_verified
from edge.preprocess import preprocess
from edge.runtime import RUNTIMES, TFLiteClassifier, available_runtimes

# shared fixtures (not a conftest.py: see deploy_fixtures)
device_model = deploy_fixtures.device_model
toy_labels = deploy_fixtures.toy_labels

# What a device runs; tensorflow.lite is the workstation fallback.
DEVICE_RUNTIMES = [name for name, _, _ in RUNTIMES if name != "tensorflow"]
LEVELS = (0.1, 0.37, 0.62, 0.9)  # one per brightness band, away from the band edges


def _pictures() -> tuple:
    rng = np.random.default_rng(0)
    pictures, means = [], []
    for level in LEVELS:
        for _ in range(3):
            # larger than the model input, so the shared preprocessing resizes them
            values = np.clip(rng.normal(level * 255, 12, (300, 260)), 0, 255).astype(np.uint8)
            pictures.append(Image.fromarray(values))
            means.append(values.mean() / 255)
    return pictures, means


@pytest.mark.parametrize("runtime", DEVICE_RUNTIMES)
def test_int8_model_classifies_correctly(device_model: Path, toy_labels, runtime: str) -> None:
    if runtime not in available_runtimes():
        pytest.skip(f"{runtime} is not installed here")
    manifest, model_path = load_verified(device_model)
    assert manifest.input.dtype == "int8" and manifest.output.dtype == "int8"
    classifier = TFLiteClassifier(model_path, manifest, runtime=runtime)
    pictures, means = _pictures()
    probs = classifier.predict(np.stack([preprocess(p, manifest.preprocess) for p in pictures]))
    assert probs.shape == (len(pictures), len(manifest.labels))
    assert np.all(probs >= 0) and np.all(probs <= 1)
    # dequantized int8 probabilities: they sum to 1 within one step per class
    np.testing.assert_allclose(probs.sum(axis=1), 1.0,
                               atol=len(manifest.labels) * manifest.output.scale)
    predicted = [manifest.labels[i] for i in probs.argmax(axis=1)]
    assert predicted == [toy_labels(m) for m in means]
    assert probs.max(axis=1).min() > 0.6  # confident away from the band edges


def test_device_runtimes_agree(device_model: Path) -> None:
    names = [n for n in available_runtimes() if n in DEVICE_RUNTIMES]
    if len(names) < 2:
        pytest.skip(f"only {names or 'no device runtime'} installed here: nothing to compare")
    manifest, model_path = load_verified(device_model)
    pictures, _ = _pictures()
    inputs = np.stack([preprocess(p, manifest.preprocess) for p in pictures])
    results = {n: TFLiteClassifier(model_path, manifest, runtime=n).predict(inputs)
               for n in names}
    for name in names[1:]:
        # the same int8 kernels: at most one output quantization step apart
        np.testing.assert_allclose(results[name], results[names[0]],
                                   atol=manifest.output.scale * 1.01,
                                   err_msg=f"{name} vs {names[0]}")
