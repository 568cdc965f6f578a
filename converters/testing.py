"""A tiny trained model, converted to int8 with its manifest, for tests anywhere in the project.

Building one takes about ten seconds on two cores and needs TensorFlow (the ``train``
extra). It is the real pipeline end to end: a synthetic four-class data set written as PNG
files, a small separable-convolution + CBAM network trained for a few seconds, a trainer-style
run folder, then ``converters.pipeline.run_conversion`` with its gate. Edge tests use the
result (``model.tflite`` + ``model.json``) as a genuine device model without the real data set.

    from converters.testing import build_tiny_int8_model
    tiny = build_tiny_int8_model(tmp_path)      # TinyModel(model_dir, run_dir, data_dir, ...)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge.preprocess import PreprocessSpec

LABELS = ("glioma", "meningioma", "notumor", "pituitary")
SIZE = 32


@dataclass(frozen=True)
class TinyModel:
    model_dir: Path  # model.tflite + model.json (+ report.json)
    run_dir: Path  # trainer-style run folder: model.keras + run.json
    data_dir: Path  # Training/<class>/*.png, Testing/<class>/*.png
    report: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.model_dir / "model.tflite"

    @property
    def manifest_path(self) -> Path:
        return self.model_dir / "model.json"


def synthetic_picture(label: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """An 8-bit grayscale picture whose texture depends on the class.

    glioma: horizontal stripes, meningioma: vertical stripes, notumor: plain noise,
    pituitary: one bright disc. Random period, phase, contrast and position.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(40, 90) + rng.normal(0, 12, (size, size))
    period, phase = rng.uniform(5, 8), rng.uniform(0, 2 * np.pi)
    contrast = rng.uniform(50, 80)
    if label == 0:
        base += contrast * (np.sin(2 * np.pi * yy / period + phase) > 0)
    elif label == 1:
        base += contrast * (np.sin(2 * np.pi * xx / period + phase) > 0)
    elif label == 3:
        cy, cx, r = rng.uniform(10, size - 10), rng.uniform(10, size - 10), rng.uniform(5, 8)
        base += 1.6 * contrast * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
    return np.clip(base, 0, 255).astype(np.uint8)


def write_class_folders(root: Path, labels: Sequence[str], train_per_class: int,
                        test_per_class: int, seed: int,
                        save: Callable[[Path, int, int, np.random.Generator], None]) -> Path:
    """``root/Training/<label>/`` and ``root/Testing/<label>/``: ``save(folder / stem,
    label index, picture index, rng)`` writes each picture (its extension is its own)."""
    rng = np.random.default_rng(seed)
    for split, count in (("Training", train_per_class), ("Testing", test_per_class)):
        for label, name in enumerate(labels):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                save(folder / f"{name}_{i:03d}", label, i, rng)
    return root


def write_synthetic_dataset(root: Path, train_per_class: int = 40, test_per_class: int = 15,
                            seed: int = 0) -> Path:
    """``root/Training/<class>/*.png`` and ``root/Testing/<class>/*.png``, seeded."""
    def save(stem: Path, label: int, _i: int, rng: np.random.Generator) -> None:
        Image.fromarray(synthetic_picture(label, rng), mode="L").save(f"{stem}.png")

    return write_class_folders(root, LABELS, train_per_class, test_per_class, seed, save)


def build_tiny_keras_model(spec: PreprocessSpec, num_classes: int = len(LABELS)) -> Any:
    """Two separable-conv stages with CBAM attention, then GAP and a softmax head."""
    import keras

    from trainer.layers import CBAM

    inputs = keras.Input(shape=spec.shape, name="image")
    x = inputs
    for stage, filters in enumerate((8, 16), start=1):
        x = keras.layers.SeparableConv2D(filters, 3, padding="same", activation="relu",
                                         name=f"sepconv{stage}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{stage}")(x)
        x = CBAM(ratio=4, kernel_size=3, name=f"cbam{stage}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny_cbam")


def train_tiny_run(data_dir: Path, run_dir: Path, epochs: int = 25, seed: int = 0) -> Path:
    """Train the tiny model on ``data_dir``'s Training split; write a trainer-style run folder."""
    import keras

    from edge.preprocess import scale
    from trainer.data import load_split

    spec = PreprocessSpec(height=SIZE, width=SIZE)
    train = load_split(data_dir, "Training", spec=spec, classes=list(LABELS), use_cache=False)
    keras.utils.set_random_seed(seed)
    model = build_tiny_keras_model(spec)
    model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(scale(train.images, spec), train.labels, epochs=epochs, batch_size=16,
                        shuffle=True, verbose=0)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    run_info = {
        "architecture": "tiny_cbam", "labels": list(LABELS), "preprocess": spec.to_dict(),
        "data_dir": str(data_dir), "seed": seed, "epochs": epochs, "batch_size": 16,
        "optimizer": "adam(5e-3)", "backend": keras.backend.backend(),
        "deviations": ["synthetic test model, not a paper architecture"],
        "no_imagenet_weights": False,
        "final_train_accuracy": float(history.history["accuracy"][-1]),
    }
    (run_dir / "run.json").write_text(json.dumps(run_info, indent=2), encoding="utf-8")
    return run_dir


def build_tiny_run(workdir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Synthetic data in ``workdir/data`` and a trained run in ``workdir/run``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = Path(workdir)
    data_dir = write_synthetic_dataset(workdir / "data", seed=seed)
    run_dir = train_tiny_run(data_dir, workdir / "run", seed=seed)
    return data_dir, run_dir


def convert_tiny(run_dir: Path, data_dir: Path, out: Path, **options: Any) -> Any:
    """``run_conversion`` with settings sized for the tiny model; returns its ``Outcome``."""
    from converters.pipeline import ConvertOptions, run_conversion

    settings: dict[str, Any] = {"calibration_size": 100, "auto_dedup": False,
                                "default_external": False}
    settings.update(options)
    return run_conversion(ConvertOptions(model=Path(run_dir), data=Path(data_dir), out=Path(out),
                                         **settings))


def build_tiny_int8_model(workdir: Path, seed: int = 0, **options: Any) -> TinyModel:
    """Synthetic data -> trained tiny run -> gated int8 model in ``workdir/model``.

    ``options`` go to ``ConvertOptions`` (for example ``mode="float16"``). Raises
    ``AssertionError`` when the gate refuses the model: callers expect a deployable one.
    """
    data_dir, run_dir = build_tiny_run(Path(workdir), seed)
    outcome = convert_tiny(run_dir, data_dir, Path(workdir) / "model", seed=seed, **options)
    if not outcome.passed:
        raise AssertionError("the tiny model failed the gate:\n" + outcome.summary)
    return TinyModel(Path(workdir) / "model", run_dir, data_dir, outcome.report)
