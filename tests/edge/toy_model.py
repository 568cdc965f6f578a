"""A tiny int8 TFLite model with a known, meaningful behaviour, for the agent's tests and demo.

It averages the picture's brightness and maps it to the four labels by band:
mean < 0.25 -> glioma, < 0.5 -> meningioma, < 0.75 -> notumor, else pituitary (the weights
are set by hand, no training, so predictions are deterministic). At a band edge the two
neighbours tie, which is how the tests produce a low-confidence prediction. Its answers
mean nothing medically.

Needs TensorFlow (the ``train`` extra); the agent itself never imports it.

    python tests/edge/toy_model.py OUT_DIR     # writes OUT_DIR/model.tflite + model.json
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

LABELS = ("glioma", "meningioma", "notumor", "pituitary")
BANDS = (0.25, 0.5, 0.75)
SHARPNESS = 40.0


def expected_label(mean_brightness: float) -> str:
    """The label the toy model gives a picture of this mean brightness (0..1)."""
    return LABELS[sum(mean_brightness >= t for t in BANDS)]


def build_toy_model(out_dir: Path) -> Path:
    """Build, quantize to int8 and write ``model.tflite`` + ``model.json`` into ``out_dir``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
    import keras
    import tensorflow as tf

    from edge.manifest import ModelManifest, TensorSpec, sha256_file, write_manifest
    from edge.preprocess import DEFAULT_SPEC
    from edge.runtime import load_runtime

    inputs = keras.Input((224, 224, 3), batch_size=1)
    x = keras.layers.AveragePooling2D(pool_size=8)(inputs)
    x = keras.layers.Conv2D(1, 1, use_bias=False, name="gray")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4, name="bands")(x)
    outputs = keras.layers.Softmax()(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("gray").set_weights([np.full((1, 1, 3, 1), 1 / 3, dtype=np.float32)])
    slopes = SHARPNESS * np.arange(4, dtype=np.float32)
    biases = np.zeros(4, dtype=np.float32)
    for k, edge in enumerate(BANDS):
        biases[k + 1] = biases[k] - SHARPNESS * edge
    model.get_layer("bands").set_weights([slopes[None, :], biases])

    def representative():
        rng = np.random.default_rng(0)
        for level in np.linspace(0, 1, 24):
            yield [np.full((1, 224, 224, 3), level, np.float32)]
        for _ in range(8):
            yield [rng.random((1, 224, 224, 3), dtype=np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    tflite = converter.convert()

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.tflite"
    model_path.write_bytes(tflite)
    interpreter = load_runtime().interpreter_class(model_path=str(model_path))
    interpreter.allocate_tensors()
    specs = []
    for detail in (interpreter.get_input_details()[0], interpreter.get_output_details()[0]):
        scale, zero_point = detail["quantization"]
        specs.append(TensorSpec(tuple(int(d) for d in detail["shape"]),
                                np.dtype(detail["dtype"]).name, float(scale), int(zero_point)))
    manifest = ModelManifest(
        name="toy-brightness", version="test", architecture="toy_brightness_bands",
        labels=LABELS, model_file="model.tflite", model_sha256=sha256_file(model_path),
        quantization="int8", input=specs[0], output=specs[1], preprocess=DEFAULT_SPEC,
        metrics={"note": "hand-set weights: brightness bands; medically meaningless"},
        provenance={"tool": "tests/edge/toy_model.py", "tensorflow": tf.__version__})
    write_manifest(manifest, out_dir / "model.json")
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    print(build_toy_model(Path(sys.argv[1])))
