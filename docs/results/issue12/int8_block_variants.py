"""Which part of the residual DSConv-CBAM block costs int8 agreement? A tiny model at 32x32.

    python docs/results/issue12/int8_block_variants.py base|relu-cbam|cbam-after|none

Trains a 4-stage, 1-block-per-stage residual separable network (stem 8 filters) for 20
epochs on the converters' synthetic data set (80 training / 30 test pictures per class,
written to runs/int8-variants/data on the first call), converts it through the int8 gate
(100 calibration pictures, 60 probe pictures, tflite-runtime too when
$NEUROEDGE_TFLITE_RUNTIME_PYTHON is set) and prints one line. Variants of the block
SeparableConv -> BN -> ReLU -> SeparableConv -> BN -> [?] -> add shortcut -> ReLU:
``base`` CBAM on the signed BN output; ``relu-cbam`` ReLU, then CBAM (what
``dsconv_cbam_res`` does); ``cbam-after`` CBAM after the block's final ReLU; ``none`` no CBAM.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import keras
import numpy as np

from converters.testing import LABELS, convert_tiny, write_synthetic_dataset
from edge.preprocess import PreprocessSpec, scale
from trainer.data import load_split
from trainer.layers import CBAM
from trainer.logits import logits_view
from trainer.models import _conv_bn, _shortcut, classifier_output

VARIANT = sys.argv[1]
ROOT = Path("runs/int8-variants")
SPEC = PreprocessSpec(32, 32)


def block(x, filters: int, stride: int, name: str):
    shortcut = _shortcut(x, filters, stride, 0.9, name)
    y = keras.layers.SeparableConv2D(filters, 3, strides=stride, padding="same",
                                     use_bias=False)(x)
    y = keras.layers.BatchNormalization(momentum=0.9)(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(y)
    y = keras.layers.BatchNormalization(momentum=0.9)(y)
    if VARIANT == "relu-cbam":
        y = keras.layers.ReLU()(y)
    if VARIANT in ("base", "relu-cbam"):
        y = CBAM(ratio=16, kernel_size=5)(y)
    x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    if VARIANT == "cbam-after":
        x = CBAM(ratio=16, kernel_size=5)(x)
    return x


def main() -> None:
    data = ROOT / "data"
    if not data.exists():
        write_synthetic_dataset(data, train_per_class=80, test_per_class=30)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SPEC.shape, name="image")
    x = _conv_bn(inputs, 8, 3, 2, 0.9, "stem")
    for stage in range(1, 5):
        x = block(x, 8 * 2 ** stage, 2, f"s{stage}")
    x = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, classifier_output(x, 4), name=f"v_{VARIANT}")
    view = logits_view(model)
    view.compile(optimizer=keras.optimizers.Adam(3e-3),
                 loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    train = load_split(data, "Training", SPEC, classes=list(LABELS), use_cache=False)
    view.fit(scale(train.images, SPEC), np.eye(4, dtype="float32")[train.labels], epochs=20,
             batch_size=16, shuffle=True, verbose=0)
    run = ROOT / VARIANT
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    model.save(run / "model.keras")
    (run / "run.json").write_text(json.dumps({
        "architecture": f"v_{VARIANT}", "labels": list(LABELS), "preprocess": SPEC.to_dict(),
        "data_dir": str(data), "seed": 0}))
    out = ROOT / f"int8-{VARIANT}"
    shutil.rmtree(out, ignore_errors=True)
    outcome = convert_tiny(run, data, out, probe_images=60)
    ev = outcome.report["evaluation"]
    others = {r["name"]: (r.get("max_abs_prob_diff"), r.get("top1_agreement_pct"))
              for r in outcome.report["runtimes"] if r["name"] != "ai-edge-litert"}
    print("VARIANT", VARIANT, "float", ev["float_accuracy_pct"], "int8",
          ev["quantized_accuracy_pct"], "agreement", ev["top1_agreement_pct"], "max|dp|",
          ev["max_abs_prob_diff"], "passed", outcome.passed, "other runtimes", others)


if __name__ == "__main__":
    main()
