"""A tiny int8 TFLite model with a known, meaningful behaviour, for the agent's tests and demo.

It averages the picture's brightness and maps it to the four labels by band:
mean < 0.25 -> glioma, < 0.5 -> meningioma, < 0.75 -> notumor, else pituitary (the weights
are set by hand, no training, so predictions are deterministic). At a band edge the two
neighbours tie, which is how the tests produce a low-confidence prediction. Its answers
mean nothing medically.

It carries the trust outputs of a format-2 manifest (docs/trust.md) the way a converted
model does: ``logits``, and its 28x28 brightness map as ``heatmap`` (so the heat-map peaks
where the picture is bright). The "unlike the training data" statistics are fitted with
``converters.trust.fit_ood`` on the map's mean and maximum over seeded synthetic pictures
(uniform greys, ramps, soft noise): a small bright spot on a dark background is unlike
them. The temperature is 1.

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


def model_from_environment() -> Path | None:
    """The model folder ``$NEUROEDGE_TEST_MODEL`` names (a device without TensorFlow gets
    one built elsewhere), or None when it is not set. ValueError if it holds no model."""
    given = os.environ.get("NEUROEDGE_TEST_MODEL")
    if not given:
        return None
    path = Path(given)
    if not (path / "model.json").is_file():
        raise ValueError(f"NEUROEDGE_TEST_MODEL={given} has no model.json")
    return path


def expected_label(mean_brightness: float) -> str:
    """The label the toy model gives a picture of this mean brightness (0..1)."""
    return LABELS[sum(mean_brightness >= t for t in BANDS)]


def training_pictures(seed: int, n: int) -> np.ndarray:
    """The toy's "training data": uniform greys, horizontal ramps and soft noise, uint8."""
    rng = np.random.default_rng(seed)
    pictures = np.empty((n, 224, 224, 3), np.uint8)
    for i in range(n):
        level = rng.uniform(0.02, 0.98)
        if i % 3 == 0:
            picture = np.full((224, 224), level)
        elif i % 3 == 1:
            span = rng.uniform(0.0, 0.3)
            picture = np.tile(np.linspace(max(0, level - span), min(1, level + span), 224),
                              (224, 1))
        else:
            picture = level + rng.normal(0, 0.05, (224, 224))
        pictures[i] = np.repeat((np.clip(picture, 0, 1) * 255)[..., None], 3, axis=2)
    return pictures


def build_toy_model(out_dir: Path) -> Path:
    """Build, quantize to int8 and write ``model.tflite`` + ``model.json`` + ``trust.npz``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
    import keras
    import tensorflow as tf

    from converters.outputs import exposed_outputs, name_signature_outputs
    from converters.trust import STATISTICS_NAME, fit_ood, write_statistics
    from edge.manifest import (
        TRUST_VERSION,
        ModelManifest,
        NamedOutput,
        TensorSpec,
        sha256_file,
        write_manifest,
    )
    from edge.preprocess import DEFAULT_SPEC, scale
    from edge.runtime import TFLiteClassifier, load_runtime
    from edge.trust import feature_vector

    inputs = keras.Input((224, 224, 3), batch_size=1)
    x = keras.layers.AveragePooling2D(pool_size=8)(inputs)
    brightness = keras.layers.Conv2D(1, 1, use_bias=False, name="gray")(x)
    x = keras.layers.GlobalAveragePooling2D()(brightness)
    logits = keras.layers.Dense(4, name="bands")(x)
    outputs = keras.layers.Softmax()(logits)
    model = keras.Model(inputs, {"probabilities": outputs, "logits": logits,
                                 "heatmap": brightness})
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

    from keras.export import ExportArchive

    out_dir.mkdir(parents=True, exist_ok=True)
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.__call__,
                         input_signature=[tf.TensorSpec((1, 224, 224, 3), tf.float32)])
    saved = out_dir / "saved_model"
    archive.write_out(str(saved), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    tflite = name_signature_outputs(converter.convert())
    import shutil

    shutil.rmtree(saved)

    model_path = out_dir / "model.tflite"
    model_path.write_bytes(tflite)
    named = {e.key: NamedOutput(e.tensor, e.spec) for e in exposed_outputs(tflite)}
    interpreter = load_runtime().interpreter_class(model_path=str(model_path))
    interpreter.allocate_tensors()
    specs = []  # input, and the first output: the probabilities
    for detail in (interpreter.get_input_details()[0], interpreter.get_output_details()[0]):
        scale_, zero_point = detail["quantization"]
        specs.append(TensorSpec(tuple(int(d) for d in detail["shape"]),
                                np.dtype(detail["dtype"]).name, float(scale_), int(zero_point)))
    manifest = ModelManifest(
        name="toy-brightness", version="test", architecture="toy_brightness_bands",
        labels=LABELS, model_file="model.tflite", model_sha256=sha256_file(model_path),
        quantization="int8", input=specs[0], output=specs[1],
        preprocess=DEFAULT_SPEC, outputs=named,
        metrics={"note": "hand-set weights: brightness bands; medically meaningless"},
        provenance={"tool": "tests/edge/toy_model.py", "tensorflow": tf.__version__})
    classifier = TFLiteClassifier(model_path, manifest)

    def features(pictures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, labels = [], []
        for picture in pictures:
            _, out = classifier.predict_with_outputs(scale(picture, DEFAULT_SPEC))
            rows.append(feature_vector(out, ("heatmap",)))
            labels.append(LABELS.index(expected_label(float(picture.mean()) / 255)))
        return np.stack(rows), np.asarray(labels)

    train_x, train_y = features(training_pictures(1, 160))
    val_x, _ = features(training_pictures(2, 60))
    fit = fit_ood(train_x, train_y, val_x, pass_rate=0.95)
    fit["threshold"] = float(fit["validation_scores"].max()) * 1.5  # every such picture passes
    stats = out_dir / STATISTICS_NAME
    write_statistics(stats, ["heatmap"], fit)
    trust = {"version": TRUST_VERSION, "temperature": 1.0, "negative_label": "notumor",
             "ood": {"method": "mahalanobis", "inputs": ["heatmap"],
                     "statistics": STATISTICS_NAME, "statistics_sha256": sha256_file(stats),
                     "threshold": fit["threshold"], "pass_rate": 1.0},
             "heatmap": {"output": "heatmap", "kind": "feature_map"},
             "fit": {"note": "synthetic greys, ramps and noise; see tests/edge/toy_model.py"}}
    import dataclasses

    write_manifest(dataclasses.replace(manifest, trust=trust), out_dir / "model.json")
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    print(build_toy_model(Path(sys.argv[1])))
