"""The models a benchmark times: trained ones when given, else the architectures built here.

Latency does not depend on weight values, only on the graph, so when no trained model is
given the suite builds each architecture with random weights (seed 0), exports it once and
converts it to every TFLite format with ``converters.export`` (the converter's own code).
int8 is calibrated on synthetic MR-like phantoms, or on real images with
``--calibration-data``; the tables say which. Accuracy is the converter's business (its
gate), never measured here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ARCHS = ("dsconv_cbam", "dsconv_cbam_gap", "mobilenetv2")
FORMATS = ("keras", "float32", "dynamic", "float16", "int8")
TFLITE_FORMATS = FORMATS[1:]
PAPER_ARCH = "dsconv_cbam"


def known_archs() -> list[str]:
    """Every architecture the trainer registers (its registry needs no Keras)."""
    from trainer.registry import ARCHITECTURE_INFO

    return list(ARCHITECTURE_INFO)


@dataclass(frozen=True)
class BuiltModel:
    """One model file to time: an architecture in one format."""

    arch: str
    fmt: str  # keras, float32, dynamic, float16, int8
    path: str
    weights: str  # "random (seed 0)" or the trained model's path
    calibration: str  # int8 only: what calibrated it
    bytes: int
    seconds_to_build: float

    @property
    def key(self) -> str:
        return f"{self.arch}/{self.fmt}"


def synthetic_calibration(count: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """Float images in [0, 1] that look like the agent's inputs: phantom heads with noise."""
    from PIL import Image

    from edge.preprocess import DEFAULT_SPEC, resize_uint8, scale
    from edge.sample_inbox import phantom

    rng = np.random.default_rng(seed)
    spec = DEFAULT_SPEC if DEFAULT_SPEC.height == size else None
    base = phantom(512).astype(np.int16)
    images = []
    for _ in range(count):
        shifted = np.roll(base, tuple(int(s) for s in rng.integers(-40, 41, 2)), axis=(0, 1))
        gain = rng.uniform(0.7, 1.3)
        noisy = np.clip(shifted * gain + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        picture = Image.fromarray(noisy)
        if spec is None:
            pixels = np.asarray(picture.convert("RGB").resize((size, size)), dtype=np.uint8)
            images.append(pixels.astype(np.float32) / 255.0)
        else:
            images.append(scale(resize_uint8(picture, spec), spec))
    return np.stack(images).astype(np.float32)


def real_calibration(data_dir: Path, count: int, seed: int = 0) -> np.ndarray:
    """A stratified, seeded draw of Training images, preprocessed like the device does."""
    from edge.preprocess import DEFAULT_SPEC, scale
    from trainer.data import load_split

    data = load_split(Path(data_dir), "Training", spec=DEFAULT_SPEC, limit=count, seed=seed)
    return scale(data.images, DEFAULT_SPEC)


def keras_model_for(arch: str, trained: Path | None, seed: int = 0) -> tuple[Any, str]:
    """A trained model (run folder or .keras) or the architecture with random weights."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    if trained is not None:
        from converters.source import load_keras_model, resolve_source

        model, _ = load_keras_model(resolve_source(Path(trained), arch=arch))
        return model, str(trained)
    from trainer.models import build_model

    keras.utils.set_random_seed(seed)
    options = {"backbone_weights": "none"} if arch == "mobilenetv2" else {}
    return build_model(arch, **options), f"random (seed {seed})"


def convert_saved_model(saved: Path, fmt: str, calibration: np.ndarray | None,
                        **converter_attrs: Any) -> bytes:
    """``converters.export``'s converter for ``fmt``, with extra (experimental) attributes.

    The attributes are TFLiteConverter settings such as
    ``_experimental_disable_per_channel_quantization_for_dense_layers``: the int8 study
    compares them; the default conversion sets none.
    """
    from converters import export
    from converters.errors import ConversionFailedError

    with export.quiet_native_stderr() as captured:
        feed = (export.representative_dataset(calibration, captured.terminal)
                if calibration is not None and fmt == "int8" else None)
        converter = export.make_converter(saved, fmt, feed)
        for name, value in converter_attrs.items():
            if not hasattr(converter, name):
                raise ConversionFailedError(f"this TensorFlow's converter has no {name}")
            setattr(converter, name, value)
        try:
            return bytes(converter.convert())
        except Exception as exc:  # noqa: BLE001 - TF raises many types
            failure = exc
    raise ConversionFailedError(f"TensorFlow could not convert to {fmt}: "
                                f"{str(failure).strip().splitlines()[0]}")


def build_models(out: Path, archs: tuple[str, ...] | list[str],
                 formats: tuple[str, ...] | list[str], calibration: np.ndarray,
                 calibration_name: str, trained: dict[str, Path] | None = None,
                 seed: int = 0) -> list[BuiltModel]:
    """Every (arch, format) pair as a file under ``out/<arch>/``; reused when already built.

    ``out/models.json`` records what was built from what, so a second run with the same
    sources (``--cache DIR``) skips the conversions (minutes for MobileNetV2).
    """
    from converters import export

    trained = trained or {}
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "models.json"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    built: list[BuiltModel] = []
    for arch in archs:
        folder = out / arch
        folder.mkdir(exist_ok=True)
        weights = _trained_label(trained[arch]) if arch in trained else f"random (seed {seed})"
        wanted = [f for f in formats]
        cached = {}
        for fmt in wanted:
            entry = record.get(f"{arch}/{fmt}")
            if (entry and entry["weights"] == weights and Path(entry["path"]).is_file()
                    and (fmt != "int8" or entry["calibration"] == calibration_name)):
                cached[fmt] = BuiltModel(**entry)
        missing = [f for f in wanted if f not in cached]
        if missing:
            log.info("building %s (%s weights): %s", arch, weights, ", ".join(missing))
            t0 = time.perf_counter()
            model, _ = keras_model_for(arch, trained.get(arch), seed)
            keras_path = folder / "model.keras"
            model.save(str(keras_path))
            saved = export.export_saved_model(model, folder / "saved_model")
            export_s = time.perf_counter() - t0
            for fmt in missing:
                t1 = time.perf_counter()
                if fmt == "keras":
                    path = keras_path
                else:
                    path = folder / f"{fmt}.tflite"
                    path.write_bytes(convert_saved_model(saved, fmt, calibration))
                seconds = time.perf_counter() - t1 + (export_s if fmt == "keras" else 0.0)
                cached[fmt] = BuiltModel(arch, fmt, str(path), weights,
                                         calibration_name if fmt == "int8" else "",
                                         path.stat().st_size, round(seconds, 1))
                record[cached[fmt].key] = asdict(cached[fmt])
                record_path.write_text(json.dumps(record, indent=2), encoding="utf-8")
        built += [cached[f] for f in wanted]
    return built


def _trained_label(path: Path) -> str:
    """The trained model's path and content hash: a cached conversion of an older file at the
    same path is not reused."""
    from edge.manifest import sha256_file

    path = Path(path)
    keras_file = path / "model.keras" if path.is_dir() else path
    digest = sha256_file(keras_file)[:12] if keras_file.is_file() else "?"
    return f"{path} (sha256 {digest})"


def model_from_file(path: Path, arch: str = "given") -> BuiltModel:
    """A ready ``.tflite`` (or a model folder holding model.tflite) to time as is."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.tflite"
    fmt = "tflite"
    manifest = path.with_name("model.json")
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            fmt = str(data.get("quantization", fmt))
            arch = str(data.get("architecture", arch)) if arch == "given" else arch
        except ValueError:
            pass
    return BuiltModel(arch, fmt, str(path), "trained (given)", "", path.stat().st_size, 0.0)
