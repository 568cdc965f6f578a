"""The only module that imports a TFLite interpreter.

Preference order: ``ai_edge_litert`` (LiteRT, current and fastest), ``tflite_runtime``
(the legacy light runtime; the one that exists for Jetson Nano's Python 3.8), and last
``tensorflow.lite`` (a workstation that has TensorFlow anyway). ``NEUROEDGE_RUNTIME``
forces one of them by name, for tests and for comparing runtimes.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ManifestError, RuntimeUnavailableError
from .manifest import ModelManifest, TensorSpec

# (name used in manifests and NEUROEDGE_RUNTIME, module holding Interpreter, pip package)
RUNTIMES: tuple[tuple[str, str, str], ...] = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow", "tensorflow.lite.python.interpreter", "tensorflow"),
)
TRUST_OUTPUT_PREFIX = "neuroedge/"  # names of the extra outputs converters.outputs adds
_DISTRIBUTIONS = {"ai-edge-litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime",
                  "tensorflow": "tensorflow"}


@dataclass(frozen=True)
class Runtime:
    name: str
    version: str
    interpreter_class: Any


def _distribution_version(dist: str) -> str:
    try:
        from importlib.metadata import version  # Python 3.8+
        return version(dist)
    except Exception:  # noqa: BLE001 - a version is informative only
        return "unknown"


def available_runtimes() -> list[str]:
    """Names of the interpreter packages that import on this machine, in preference order."""
    found = []
    for name, module, _ in RUNTIMES:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - ImportError, or a broken binary wheel
            continue
        found.append(name)
    return found


def load_runtime(preferred: str | None = None) -> Runtime:
    """Import the first interpreter available (or ``preferred`` / ``$NEUROEDGE_RUNTIME``)."""
    preferred = preferred or os.environ.get("NEUROEDGE_RUNTIME") or None
    names = [r[0] for r in RUNTIMES]
    if preferred is not None and preferred not in names:
        raise RuntimeUnavailableError(
            f"unknown TFLite runtime {preferred!r}; choose one of {', '.join(names)}")
    candidates = [r for r in RUNTIMES if preferred is None or r[0] == preferred]
    errors = []
    for name, module_name, package in candidates:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{package}: {exc.__class__.__name__}: {exc}")
            continue
        return Runtime(name, _distribution_version(_DISTRIBUTIONS[name]), module.Interpreter)
    if preferred is not None:
        raise RuntimeUnavailableError(
            f"the TFLite runtime {preferred!r} was requested but does not import "
            f"({'; '.join(errors)}). Install it with `pip install {preferred}`, or unset "
            "NEUROEDGE_RUNTIME to use whichever runtime is installed.")
    raise RuntimeUnavailableError(
        "no TFLite interpreter is installed. Install one with `pip install ai-edge-litert` "
        "(Python 3.9+, Raspberry Pi OS, Debian, Ubuntu) or `pip install 'tflite-runtime==2.13.0' "
        "'numpy<2'` (Jetson Nano with Python 3.8). Import errors: " + "; ".join(errors))


def quantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float values to the tensor's integer type: ``q = round(x / scale) + zero_point``."""
    info = np.iinfo(spec.dtype)
    q = np.rint(np.asarray(values, dtype=np.float32) / np.float32(spec.scale)) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Integer tensor values to float: ``x = scale * (q - zero_point)``."""
    return (np.asarray(values, dtype=np.float32) - np.float32(spec.zero_point)) * np.float32(
        spec.scale)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _tensor_spec(detail: dict[str, Any]) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]).name,
                      float(scale), int(zero_point))


class TFLiteClassifier:
    """A ``.tflite`` classifier with quantized input and output handled explicitly.

    ``predict`` takes preprocessed float images (the model's real-valued input) and
    returns float probabilities, whatever the model's tensor types are: int8 inputs are
    quantized with the interpreter's own (scale, zero point), int8 outputs dequantized
    the same way, and logits turned into probabilities with a softmax. The raw int8
    output is never normalised by its sum.
    """

    def __init__(self, model_path: Path, manifest: ModelManifest | None = None,
                 num_threads: int | None = None, runtime: str | None = None) -> None:
        self.runtime = load_runtime(runtime)
        self.model_path = Path(model_path)
        self.manifest = manifest
        try:
            self._interpreter = self.runtime.interpreter_class(
                model_path=str(self.model_path), num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise RuntimeUnavailableError(
                f"{self.runtime.name} {self.runtime.version} cannot load {self.model_path.name}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}. The model "
                "may need a newer runtime (`pip install -U ai-edge-litert`) or was not converted "
                "by `python -m converters.tflite`.") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        named = dict(manifest.outputs) if manifest is not None else {}
        by_name = {d["name"]: d for d in outputs}
        missing = [f"{key} ({o.tensor})" for key, o in named.items() if o.tensor not in by_name]
        if missing:  # the folder's two files disagree: a restart cannot fix it (exit 78)
            raise ManifestError(
                f"{self.model_path.name} lacks the outputs its manifest names: "
                f"{', '.join(missing)}; re-export the model with its manifest")
        # the trust outputs (neuroedge/<key>, manifest format 2) are extras even to a caller
        # that passes no manifest: the classifier's own output is the one left
        extras = {o.tensor for o in named.values()}
        primary = [d for d in outputs if d["name"] not in extras
                   and not str(d["name"]).startswith(TRUST_OUTPUT_PREFIX)]
        if len(inputs) != 1 or len(primary) != 1:
            raise RuntimeUnavailableError(
                f"{self.model_path.name} has {len(inputs)} inputs and {len(primary)} outputs "
                "besides those its manifest names; a classifier needs exactly one of each")
        self._input_index = inputs[0]["index"]
        self._output_index = primary[0]["index"]
        self.input_spec = _tensor_spec(inputs[0])
        self.output_spec = _tensor_spec(primary[0])
        # extra outputs (manifest format 2): key -> (interpreter index, spec)
        self._named = {key: (by_name[o.tensor]["index"], _tensor_spec(by_name[o.tensor]))
                       for key, o in named.items()}
        self.last_outputs: dict[str, np.ndarray] = {}
        if manifest is not None:
            self._check_against_manifest(manifest)
        self.output_kind = manifest.output_kind if manifest is not None else "probabilities"

    def _check_against_manifest(self, manifest: ModelManifest) -> None:
        for what, actual, declared in (("input", self.input_spec, manifest.input),
                                       ("output", self.output_spec, manifest.output)):
            if actual.dtype != declared.dtype or tuple(actual.shape) != tuple(declared.shape):
                raise ManifestError(
                    f"the model's {what} is {actual.dtype}{list(actual.shape)} but its manifest "
                    f"says {declared.dtype}{list(declared.shape)}: re-export the model")
        for key, (_, actual) in self._named.items():
            declared = manifest.outputs[key].spec
            if actual.dtype != declared.dtype or tuple(actual.shape) != tuple(declared.shape):
                raise ManifestError(
                    f"the model's output {key!r} is {actual.dtype}{list(actual.shape)} but its "
                    f"manifest says {declared.dtype}{list(declared.shape)}: re-export the model")

    @property
    def delegate_nodes(self) -> int | None:
        """Graph nodes run by a delegate (XNNPACK on a CPU); 0: plain kernels; None: unknown."""
        try:
            ops = self._interpreter._get_ops_details()
        except Exception:  # noqa: BLE001 - a private API: informative only
            return None
        return sum(1 for op in ops if op.get("op_name") == "DELEGATE")

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for a batch (N, H, W, 3) or one image (H, W, 3) of float input."""
        images = np.asarray(images, dtype=np.float32)
        single = images.ndim == 3
        if single:
            images = images[None]
        expected = tuple(self.input_spec.shape[1:])
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"input images have shape {images.shape[1:]}, the model "
                             f"expects {expected}")
        results = [self._invoke_one(image) for image in images]
        probs = np.stack(results)
        return probs[0] if single else probs

    def _invoke_one(self, image: np.ndarray) -> np.ndarray:
        tensor = image[None]
        if self.input_spec.quantized:
            tensor = quantize(tensor, self.input_spec)
        else:
            tensor = tensor.astype(self.input_spec.dtype, copy=False)
        self._interpreter.set_tensor(self._input_index, tensor)
        self._interpreter.invoke()
        out = self._read(self._output_index, self.output_spec)
        if self._named:
            self.last_outputs = {key: self._read(index, spec)
                                 for key, (index, spec) in self._named.items()}
        if self.output_kind == "logits":
            self.last_outputs["logits"] = out
            out = softmax(out)
        return out

    def _read(self, index: int, spec: TensorSpec) -> np.ndarray:
        raw = self._interpreter.get_tensor(index)[0]
        return dequantize(raw, spec) if spec.quantized else raw.astype(np.float32)

    def predict_with_outputs(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Probabilities for one (H, W, 3) image, and the extra outputs the manifest names
        (float, batch axis dropped; ``logits`` too when the model outputs logits)."""
        probs = self.predict(image)
        return probs, dict(self.last_outputs)
