"""The model manifest: the one contract between trainer, converters and the device.

``model.json`` lives beside ``model.tflite``. The trainer and converters write it; the
edge agent reads it and refuses a model whose bytes do not match it. Stdlib only (plus
the preprocessing spec), so it loads on the smallest device.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import ManifestError, ModelIntegrityError
from .preprocess import PreprocessSpec

FORMAT_VERSION = 1
MANIFEST_NAME = "model.json"
QUANTIZATIONS = ("int8", "float16", "dynamic", "float32")
DTYPES = ("int8", "uint8", "float32", "float16")
OUTPUT_KINDS = ("probabilities", "logits")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and affine quantization (``real = scale * (q - zero_point)``)."""

    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.dtype in ("int8", "uint8")

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "scale": self.scale,
                "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TensorSpec:
        _require_keys(data, ("shape", "dtype"), ("scale", "zero_point"), where)
        shape = data["shape"]
        if not (isinstance(shape, list) and shape and all(_is_int(d) and d > 0 for d in shape)):
            raise ManifestError(f"{where}.shape must be a list of positive integers, got {shape!r}")
        if data["dtype"] not in DTYPES:
            raise ManifestError(f"{where}.dtype must be one of {', '.join(DTYPES)}, "
                                f"got {data['dtype']!r}")
        spec = cls(tuple(shape), data["dtype"], float(data.get("scale", 0.0)),
                   int(data.get("zero_point", 0)))
        if spec.quantized and not spec.scale > 0:
            raise ManifestError(f"{where} is {spec.dtype} but has no positive quantization scale")
        return spec


@dataclass(frozen=True)
class ModelManifest:
    """Everything the device needs to know about a model, and where it came from.

    ``metrics`` holds the numbers the model was accepted with (float and quantized
    accuracy, agreement, ...), ``thresholds`` the gate it passed, ``verified_runtimes``
    the interpreters it was loaded and run in at conversion time, ``provenance`` the
    creation time, tool and package versions and the source run.
    """

    name: str
    version: str
    architecture: str
    labels: tuple[str, ...]
    model_file: str
    model_sha256: str
    quantization: str
    input: TensorSpec
    output: TensorSpec
    preprocess: PreprocessSpec
    output_kind: str = "probabilities"
    source_model_sha256: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    verified_runtimes: tuple[dict[str, Any], ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        data["input"] = self.input.to_dict()
        data["output"] = self.output.to_dict()
        data["preprocess"] = self.preprocess.to_dict()
        data["verified_runtimes"] = list(self.verified_runtimes)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ModelManifest:
        required = ("format_version", "name", "version", "architecture", "labels", "model_file",
                    "model_sha256", "quantization", "input", "output", "preprocess")
        optional = ("output_kind", "source_model_sha256", "metrics", "thresholds",
                    "verified_runtimes", "provenance")
        _require_keys(data, required, optional, "manifest")
        if data["format_version"] != FORMAT_VERSION:
            raise ManifestError(
                f"manifest format_version is {data['format_version']!r}, this agent reads "
                f"version {FORMAT_VERSION}: upgrade neuroedge or re-export the model")
        for key in ("name", "version", "architecture", "model_file", "model_sha256"):
            if not isinstance(data[key], str) or not data[key]:
                raise ManifestError(f"manifest.{key} must be a non-empty string")
        if Path(data["model_file"]).name != data["model_file"]:
            raise ManifestError("manifest.model_file must be a bare file name beside model.json, "
                                f"got {data['model_file']!r}")
        if len(data["model_sha256"]) != 64:
            raise ManifestError("manifest.model_sha256 must be a 64-character hex sha256")
        labels = data["labels"]
        if (not isinstance(labels, list) or len(labels) < 2
                or not all(isinstance(x, str) and x for x in labels)
                or len(set(labels)) != len(labels)):
            raise ManifestError("manifest.labels must be a list of at least two distinct names")
        if data["quantization"] not in QUANTIZATIONS:
            raise ManifestError(f"manifest.quantization must be one of {', '.join(QUANTIZATIONS)}")
        output_kind = data.get("output_kind", "probabilities")
        if output_kind not in OUTPUT_KINDS:
            raise ManifestError(f"manifest.output_kind must be one of {', '.join(OUTPUT_KINDS)}")
        inp = TensorSpec.from_dict(data["input"], "manifest.input")
        out = TensorSpec.from_dict(data["output"], "manifest.output")
        if out.shape[-1] != len(labels):
            raise ManifestError(f"the model has {out.shape[-1]} outputs but the manifest "
                                f"names {len(labels)} labels")
        try:
            preprocess = PreprocessSpec.from_dict(data["preprocess"])
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"manifest.preprocess is invalid: {exc}") from None
        if inp.shape[-3:] != preprocess.shape:
            raise ManifestError(f"manifest.input.shape {list(inp.shape)} does not match the "
                                f"preprocessing size {list(preprocess.shape)}")
        for key in ("metrics", "thresholds", "provenance"):
            if not isinstance(data.get(key, {}), dict):
                raise ManifestError(f"manifest.{key} must be an object")
        runtimes = data.get("verified_runtimes", [])
        if not isinstance(runtimes, list) or not all(isinstance(r, dict) for r in runtimes):
            raise ManifestError("manifest.verified_runtimes must be a list of objects")
        return cls(
            name=data["name"], version=data["version"], architecture=data["architecture"],
            labels=tuple(labels), model_file=data["model_file"],
            model_sha256=data["model_sha256"].lower(), quantization=data["quantization"],
            input=inp, output=out, preprocess=preprocess, output_kind=output_kind,
            source_model_sha256=data.get("source_model_sha256", ""),
            metrics=dict(data.get("metrics", {})), thresholds=dict(data.get("thresholds", {})),
            verified_runtimes=tuple(runtimes), provenance=dict(data.get("provenance", {})),
            format_version=data["format_version"],
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_keys(data: Any, required: tuple[str, ...], optional: tuple[str, ...],
                  where: str) -> None:
    if not isinstance(data, dict):
        raise ManifestError(f"{where} must be a JSON object")
    missing = [k for k in required if k not in data]
    if missing:
        raise ManifestError(f"{where} lacks {', '.join(missing)}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise ManifestError(f"{where} has unknown keys: {', '.join(unknown)}")


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path_for(model_path: PathLike) -> Path:
    """``model.json`` beside a ``.tflite`` file (or inside a model folder)."""
    path = Path(model_path)
    return path / MANIFEST_NAME if path.is_dir() else path.with_name(MANIFEST_NAME)


def load_manifest(path: PathLike) -> ModelManifest:
    """Read and validate a manifest (a ``model.json`` path, a model folder, or a ``.tflite``)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".tflite":
        path = manifest_path_for(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"no model manifest at {path}: every model.tflite needs the "
                            "model.json written by `python -m converters.tflite`") from None
    except OSError as exc:
        raise ManifestError(f"cannot read the model manifest {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    try:
        return ModelManifest.from_dict(data)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None


def verify_model_file(manifest: ModelManifest, model_path: PathLike) -> None:
    """Raise ``ModelIntegrityError`` unless the model's bytes match the manifest."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelIntegrityError(f"model file {model_path} named by the manifest does not exist")
    actual = sha256_file(model_path)
    if actual != manifest.model_sha256:
        raise ModelIntegrityError(
            f"{model_path} has sha256 {actual[:12]}…, its manifest expects "
            f"{manifest.model_sha256[:12]}…: the file is corrupt or was replaced. "
            "Reinstall the model together with its model.json.")


def load_verified(model_dir_or_file: PathLike) -> tuple[ModelManifest, Path]:
    """Load the manifest for a model and check the model's sha256; return both."""
    manifest_file = manifest_path_for(model_dir_or_file)
    manifest = load_manifest(manifest_file)
    model_path = manifest_file.parent / manifest.model_file
    verify_model_file(manifest, model_path)
    return manifest, model_path


def write_manifest(manifest: ModelManifest, path: PathLike) -> Path:
    """Validate and write ``manifest`` atomically (temp file, fsync, rename)."""
    data = manifest.to_dict()
    ModelManifest.from_dict(data)  # never write what the device would refuse to read
    path = Path(path)
    write_json_atomic(path, data)
    return path


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    """Write JSON via temp file + fsync + rename; ``mode`` replaces mkstemp's private 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def default_model_dir() -> Path | None:
    """The model shipped inside the package (``edge/models``), or None if none is shipped."""
    folder = Path(__file__).resolve().parent / "models"
    return folder if (folder / MANIFEST_NAME).is_file() else None


def label_list(manifest: ModelManifest) -> list[str]:
    return list(manifest.labels)
