"""Training on logits: the trap the augmented BN run fell into, and the way out.

Under Keras' JAX backend a cross-entropy computed from probabilities clips them to
[1e-7, 1 - 1e-7], so a network whose softmax is saturated on every training picture gets
exactly zero gradient and never moves again: the GPU run `dsconv_cbam_bn-aug` sat at a loss
of 12.007 = -ln(1e-7) x (1 - 1311/5140) for 35 epochs (docs/results.md). From the logits the
gradient is p - y, never zero. Runs in a subprocess because the backend is fixed at import.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

SCRIPT = """
import sys
sys.modules["tensorflow"] = None
import numpy as np, keras
from trainer.logits import is_logits_view, logits_view, with_softmax
from trainer.models import classifier_output
assert keras.backend.backend() == {backend!r}
keras.utils.set_random_seed(0)
inputs = keras.Input((6,))
model = keras.Model(inputs, classifier_output(keras.layers.Dense(8, activation="relu")(inputs), 4),
                    name="toy")
logits = model.get_layer("logits")
kernel, bias = logits.get_weights()
logits.set_weights([kernel, np.array([0, 0, 0, 60.0], "float32")])  # saturated on class 3
x = np.random.default_rng(0).random((32, 6)).astype("float32")
y = np.eye(4, dtype="float32")[np.arange(32) % 4]
results = {{}}
for name, fitted, from_logits in (("probabilities", model, False),
                                  ("logits", logits_view(model), True)):
    before = [w.copy() for w in model.get_weights()]
    fitted.compile(optimizer=keras.optimizers.Adam(1e-3),
                   loss=keras.losses.CategoricalCrossentropy(from_logits=from_logits))
    loss = float(fitted.train_on_batch(x, y))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), before))
    results[name] = (loss, moved)
    model.set_weights(before)
print("RESULT", results)
view = logits_view(model)
assert is_logits_view(view) and view.name == "toy_logits"
again = with_softmax(view)
assert again.name == "toy" and [l.name for l in again.layers][-2:] == ["logits", "predictions"]
np.testing.assert_allclose(keras.ops.convert_to_numpy(again(x)),
                           keras.ops.convert_to_numpy(model(x)), atol=1e-6)
print("VIEWS OK")
"""


def _run(backend: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(backend=backend)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "VIEWS OK" in done.stdout
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return eval(line[len("RESULT "):])  # noqa: S307 - our own repr of a dict of floats


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_on_jax_a_saturated_softmax_learns_only_from_its_logits():
    results = _run("jax")
    loss, moved = results["probabilities"]
    assert loss == pytest.approx(-np.log(1e-7) * 0.75, rel=1e-3)  # 3 of 4 classes wrong
    assert moved == 0.0  # not one weight moved: the trap
    loss, moved = results["logits"]
    assert loss > 40 and moved > 1e-4  # the same network, from its logits, does learn
