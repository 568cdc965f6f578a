"""How far apart are two int8 runtimes, and each from the float model, on a residual network?

    NEUROEDGE_TFLITE_RUNTIME_PYTHON=/opt/venv-tflrt/bin/python \
        python docs/results/issue12/runtime_agreement.py resnet18|dsconv_cbam_res SEED

Trains the narrowed network of tests/trainer/test_trainer_new_archs.py (20 epochs at 32x32 on
the converters' synthetic data set, 80 training / 60 test pictures per class, under
runs/runtime-agreement/ARCH-SEED), converts it through the int8 gate, then classifies all 240
test pictures with the float Keras model, ai-edge-litert (XNNPACK) in this process and
tflite-runtime (reference kernels) in its own venv, and prints one JSON line: accuracies, each
pair's largest probability difference and top-1 agreement, and the converter's verdict
(``converters.runtimes.judge``) on the first 64 pictures (the default probe) and on all 240.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

from converters import datasets
from converters.evaluate import keras_predictor, output_kind_of
from converters.runtimes import TFLITE_RUNTIME_ENV, Closeness, judge
from converters.testing import convert_tiny, write_synthetic_dataset
from edge.manifest import load_verified
from edge.preprocess import PreprocessSpec, scale
from edge.runtime import TFLiteClassifier
from trainer.recipes import resolve
from trainer.train import TrainConfig, train

NARROW = {"resnet18": {"width": 8}, "dsconv_cbam_res": {"width": 8, "blocks": (1, 1, 1, 1)}}
ROOT = Path(__file__).resolve().parents[3]


def main(arch: str, seed: int) -> None:
    tflrt_python = os.environ.get(TFLITE_RUNTIME_ENV)
    if not tflrt_python:
        sys.exit(f"set {TFLITE_RUNTIME_ENV} to a Python with tflite-runtime (docs/conversion.md)")
    work = ROOT / "runs" / "runtime-agreement" / f"{arch}-{seed}"
    shutil.rmtree(work, ignore_errors=True)
    keras.utils.set_random_seed(seed)
    data = write_synthetic_dataset(work / "data", train_per_class=80, test_per_class=60)
    values = resolve("paper", {"epochs": 20, "batch_size": 16, "learning_rate": 3e-3,
                               "warmup_epochs": None})
    run = train(TrainConfig(arch=arch, data_dir=str(data), runs_dir=str(work / "runs"),
                            name=arch, model_options=dict(NARROW[arch]),
                            spec=PreprocessSpec(32, 32), use_cache=False, val_fraction=0.2,
                            recipe="paper", **values), verbose=0)
    outcome = convert_tiny(run.path, data, work / "int8", probe_images=60, force=True,
                           seed=seed)
    manifest, model_path = load_verified(work / "int8")
    test = datasets.evaluation_set(data, "Testing", tuple(manifest.labels), manifest.preprocess,
                                   None, seed)
    images = scale(test.images, manifest.preprocess).astype(np.float32)
    model = keras.saving.load_model(run.path / "model.keras")
    kind = output_kind_of(np.asarray(model.predict(images[:2], verbose=0)))
    probs = {"float": keras_predictor(model, kind)(images),
             "xnnpack": TFLiteClassifier(model_path, manifest, num_threads=1).predict(images),
             "reference": _in_tflite_runtime(tflrt_python, work / "int8", images)}
    line = {"arch": arch, "seed": seed, "n": len(images), "gate_passed": outcome.passed}
    line.update({f"accuracy_{k}": round(float((p.argmax(1) == test.labels).mean()), 4)
                 for k, p in probs.items()})
    for a, b in (("xnnpack", "float"), ("reference", "float"), ("reference", "xnnpack")):
        line[f"{a}_vs_{b}"] = vars(Closeness.of(probs[a], probs[b]))
    for n in (64, len(images)):
        accepted, refused = judge(probs["reference"][:n], probs["xnnpack"][:n],
                                  "ai-edge-litert", probs["float"][:n], 98.0)
        line[f"verdict_{n}"] = accepted or f"refused: {refused}"
    print(json.dumps(line))


def _in_tflite_runtime(python: str, model_dir: Path, images: np.ndarray) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "edge", Path(tmp) / "edge",
                        ignore=shutil.ignore_patterns("__pycache__", "models"))
        shutil.copy(ROOT / "converters" / "runtime_probe.py", tmp)
        np.save(Path(tmp) / "x.npy", images)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["NEUROEDGE_RUNTIME"] = "tflite-runtime"
        done = subprocess.run([python, "-E", "-s", "runtime_probe.py", str(model_dir.resolve()),
                               "x.npy"], capture_output=True, text=True, env=env, cwd=tmp,
                              check=True)
    return np.asarray(json.loads(done.stdout.strip().splitlines()[-1])["probs"])


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in NARROW:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]))
