"""The trainer on the JAX backend with TensorFlow absent (as on the lent GPU machines).

Runs in a subprocess because the Keras backend is fixed at import. Skipped where JAX is not
installed (``pip install -e .[jax]``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                       reason="jax is not installed (pip install -e .[jax])"),
]

SCRIPT = """
import sys
sys.modules["tensorflow"] = None  # any import of TensorFlow now fails loudly
sys.path.insert(0, {tests!r})
from pathlib import Path
from trainer_testdata import make_dataset
from edge.preprocess import PreprocessSpec
from trainer.train import TrainConfig, resume, train
import keras
assert keras.backend.backend() == "jax"
data = make_dataset(Path({tmp!r}) / "data", train_per_class=8, test_per_class=2)
config = TrainConfig(arch="mlp", data_dir=str(data), runs_dir={tmp!r}, name="jax",
                     epochs=1, batch_size=8, spec=PreprocessSpec(32, 32), use_cache=False,
                     model_options={{"hidden_units": (8,)}})
run = train(config, verbose=0)
resume(run.path, epochs=2, verbose=0)
record = run.read_record().raw
print("RESULT", record["backend"], record["status"], record["epochs_done"])

# CBAM and BatchNormalization eagerly (each op compiles once on JAX, so keep it small):
# BN recalibration, then a save/load round trip.
import numpy as np
from trainer.bn import recalibrate_batchnorm
from trainer.layers import CBAM
inputs = keras.Input((8, 8, 16))
hidden = CBAM(ratio=4)(keras.layers.BatchNormalization()(inputs))
model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(hidden))
x = np.random.default_rng(0).random((4, 8, 8, 16)).astype("float32")
assert recalibrate_batchnorm(model, [x]) == 1
mean = keras.ops.convert_to_numpy(model.layers[1].moving_mean)
assert np.allclose(mean, x.mean(axis=(0, 1, 2)), atol=1e-5)
before = keras.ops.convert_to_numpy(model(x, training=False))
model.save(Path({tmp!r}) / "small.keras")
after = keras.ops.convert_to_numpy(
    keras.saving.load_model(Path({tmp!r}) / "small.keras")(x, training=False))
assert np.allclose(before, after, atol=1e-6)
print("CBAM OK")
"""


def test_train_and_resume_on_jax_without_tensorflow(tmp_path):
    tests = str(Path(__file__).parent)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests, tmp=str(tmp_path))],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RESULT jax completed 2" in result.stdout
    assert "CBAM OK" in result.stdout


STRONG_SCRIPT = """
import sys
sys.modules["tensorflow"] = None
sys.path.insert(0, {tests!r})
from pathlib import Path
from trainer_testdata import make_dataset
from edge.preprocess import PreprocessSpec
from trainer.recipes import resolve
from trainer.train import TrainConfig, resume, train
import keras
assert keras.backend.backend() == "jax"
data = make_dataset(Path({tmp!r}) / "data", train_per_class=8, test_per_class=2)
values = resolve("strong", {{"epochs": 2, "batch_size": 8}})
assert values["augment"] == "strong" and values["optimizer"] == "adamw"
for arch, options in (("dsconv_cbam_res", {{"width": 4, "blocks": (1, 1)}}),
                      ("resnet18", {{"width": 4}})):
    config = TrainConfig(arch=arch, data_dir=str(data), runs_dir={tmp!r}, name=arch,
                         spec=PreprocessSpec(32, 32), use_cache=False, model_options=options,
                         recipe="strong", **values)
    run = train(config, verbose=0)
    resume(run.path, epochs=3, verbose=0)
    record = run.read_record().raw
    print("RESULT", arch, record["backend"], record["status"], record["epochs_done"],
          record["augment"], record["optimizer"]["name"])
"""


def test_strong_recipe_and_new_architectures_on_jax_without_tensorflow(tmp_path):
    tests = str(Path(__file__).parent)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    script = STRONG_SCRIPT.format(tests=tests, tmp=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for arch in ("dsconv_cbam_res", "resnet18"):
        assert f"RESULT {arch} jax completed 3 strong adamw" in result.stdout
