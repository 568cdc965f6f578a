"""The model manifest: the one contract between trainer, converters and the device.

``model.json`` lives beside ``model.tflite``. The trainer and converters write it; the
edge agent reads it and refuses a model whose bytes do not match it. Stdlib only (plus
the preprocessing spec), so it loads on the smallest device.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

from .durable import write_json_atomic
from .errors import ManifestError, ModelIntegrityError
from .preprocess_spec import PreprocessSpec

FORMAT_VERSION = 2  # what this agent writes when a model has trust outputs; else 1
TEST_TIME_FORMAT = 3  # ... and when it names a test-time procedure
NONE = "none"
TEST_TIMES = (NONE, "mirror-mean")  # how the agent runs the model (edge.views does it)
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_NAME = "model.json"
QUANTIZATIONS = ("int8", "float16", "dynamic", "float32")
DTYPES = ("int8", "uint8", "float32", "float16")
OUTPUT_KINDS = ("probabilities", "logits")
HEATMAP_KINDS = ("spatial_attention", "feature_map", "class_activation")
TRUST_VERSION = 1

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
        scale, zero_point = data.get("scale", 0.0), data.get("zero_point", 0)
        if not (_number(scale) and math.isfinite(scale) and scale >= 0):
            raise ManifestError(f"{where}.scale must be a number >= 0, got {scale!r}")
        if not _is_int(zero_point):
            raise ManifestError(f"{where}.zero_point must be an integer, got {zero_point!r}")
        spec = cls(tuple(shape), data["dtype"], float(scale), zero_point)
        if spec.quantized and not spec.scale > 0:
            raise ManifestError(f"{where} is {spec.dtype} but has no positive quantization scale")
        return spec


@dataclass(frozen=True)
class NamedOutput:
    """An extra model output (format 2): the tensor's name in the ``.tflite`` and its spec."""

    tensor: str
    spec: TensorSpec

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, **self.spec.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> NamedOutput:
        if not isinstance(data, dict) or not isinstance(data.get("tensor"), str) \
                or not data["tensor"]:
            raise ManifestError(f"{where}.tensor must be the output tensor's name")
        rest = {k: v for k, v in data.items() if k != "tensor"}
        return cls(data["tensor"], TensorSpec.from_dict(rest, where))


@dataclass(frozen=True)
class ModelManifest:
    """Everything the device needs to know about a model, and where it came from.

    ``metrics`` holds the numbers the model was accepted with (float and quantized
    accuracy, agreement, ...), ``thresholds`` the gate it passed, ``verified_runtimes``
    the interpreters it was loaded and run in at conversion time, ``provenance`` the
    creation time, tool and package versions and the source run.

    Format 2 adds two optional sections (docs/schemas/manifest.md): ``outputs``, the model's extra
    named outputs (logits, features, heat-map), and ``trust``: the temperature, the
    "unlike the training data" statistics (a file beside the model, hashed here) and
    threshold, the heat-map's source, and how they were fitted. A manifest without them
    is written as format 1, so older agents still read it.

    Format 3 adds ``test_time`` (``edge.views``): answers averaged over the picture and its
    mirror image (``mirror-mean``). It changes what the model's answers are, so a manifest
    that names one is format 3, which older agents refuse instead of running the model
    another way than it was measured; ``none`` is left out and keeps format 1 or 2.
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
    outputs: dict[str, NamedOutput] = field(default_factory=dict)
    trust: dict[str, Any] = field(default_factory=dict)
    test_time: str = NONE

    @property
    def format_version(self) -> int:
        """3 with a test-time procedure, 2 with outputs or trust (what older agents cannot
        read), else 1."""
        if self.test_time != NONE:
            return TEST_TIME_FORMAT
        return FORMAT_VERSION if (self.outputs or self.trust) else 1

    def to_dict(self) -> dict[str, Any]:
        data = {"format_version": self.format_version, **asdict(self)}
        data["labels"] = list(self.labels)
        data["input"] = self.input.to_dict()
        data["output"] = self.output.to_dict()
        data["preprocess"] = self.preprocess.to_dict()
        data["verified_runtimes"] = list(self.verified_runtimes)
        if self.outputs or self.trust:
            data["outputs"] = {k: v.to_dict() for k, v in self.outputs.items()}
        else:  # nothing of format 2: older agents can read it
            del data["outputs"], data["trust"]
        if self.test_time == NONE:
            del data["test_time"]
        return data

    @property
    def statistics_file(self) -> str | None:
        """The trust statistics file beside the model (``trust.ood.statistics``), if any."""
        ood = self.trust.get("ood") or {}
        return ood.get("statistics")

    @classmethod
    def from_dict(cls, data: Any) -> ModelManifest:
        required = ("format_version", "name", "version", "architecture", "labels", "model_file",
                    "model_sha256", "quantization", "input", "output", "preprocess")
        optional = ("output_kind", "source_model_sha256", "metrics", "thresholds",
                    "verified_runtimes", "provenance", "outputs", "trust", "test_time")
        _require_keys(data, required, optional, "manifest")
        if data["format_version"] not in READABLE_VERSIONS:
            raise ManifestError(
                f"manifest format_version is {data['format_version']!r}, this agent reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}: upgrade neuroedge or "
                "re-export the model")
        if data["format_version"] == 1 and ("outputs" in data or "trust" in data):
            raise ManifestError("manifest.outputs and manifest.trust need format_version 2")
        test_time = data.get("test_time", NONE)
        if test_time not in TEST_TIMES:
            raise ManifestError(f"manifest.test_time must be one of {', '.join(TEST_TIMES)}, "
                                f"got {test_time!r}")
        if test_time != NONE and data["format_version"] < TEST_TIME_FORMAT:
            raise ManifestError(f"manifest.test_time {test_time!r} needs format_version "
                                f"{TEST_TIME_FORMAT}")
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
        _check_external(data.get("metrics", {}).get("external"))
        runtimes = data.get("verified_runtimes", [])
        if not isinstance(runtimes, list) or not all(isinstance(r, dict) for r in runtimes):
            raise ManifestError("manifest.verified_runtimes must be a list of objects")
        outputs = _outputs_from(data.get("outputs", {}))
        trust = data.get("trust", {})
        _check_trust(trust, outputs, labels, output_kind)
        return cls(
            name=data["name"], version=data["version"], architecture=data["architecture"],
            labels=tuple(labels), model_file=data["model_file"],
            model_sha256=data["model_sha256"].lower(), quantization=data["quantization"],
            input=inp, output=out, preprocess=preprocess, output_kind=output_kind,
            source_model_sha256=data.get("source_model_sha256", ""),
            metrics=dict(data.get("metrics", {})), thresholds=dict(data.get("thresholds", {})),
            verified_runtimes=tuple(runtimes), provenance=dict(data.get("provenance", {})),
            outputs=outputs, trust=dict(trust), test_time=test_time,
        )


def _outputs_from(data: Any) -> dict[str, NamedOutput]:
    if not isinstance(data, dict):
        raise ManifestError("manifest.outputs must be an object of named outputs")
    outputs = {}
    for key, value in data.items():
        if not (isinstance(key, str) and key.replace("_", "").isalnum()):
            raise ManifestError(f"manifest.outputs key {key!r} must be a plain name")
        outputs[key] = NamedOutput.from_dict(value, f"manifest.outputs.{key}")
    tensors = [o.tensor for o in outputs.values()]
    if len(set(tensors)) != len(tensors):
        raise ManifestError("manifest.outputs names the same tensor twice")
    return outputs


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_trust(trust: Any, outputs: dict[str, NamedOutput], labels: list[str],
                 output_kind: str) -> None:
    """The structure of ``manifest.trust``; the numbers themselves are used by edge.trust."""
    if not isinstance(trust, dict):
        raise ManifestError("manifest.trust must be an object")
    if not trust:
        return
    where = "manifest.trust"
    if trust.get("version") != TRUST_VERSION:
        raise ManifestError(f"{where}.version is {trust.get('version')!r}, this agent reads "
                            f"version {TRUST_VERSION}: upgrade neuroedge")
    known = {"version", "temperature", "negative_label", "ood", "heatmap", "fit"}
    unknown = sorted(set(trust) - known)
    if unknown:
        raise ManifestError(f"{where} has unknown keys: {', '.join(unknown)}")
    if "temperature" in trust:
        if not (_number(trust["temperature"]) and trust["temperature"] > 0):
            raise ManifestError(f"{where}.temperature must be a positive number")
        if "logits" not in outputs and output_kind != "logits":
            raise ManifestError(f"{where}.temperature needs the model's logits: an output "
                                "named 'logits' in manifest.outputs")
    negative = trust.get("negative_label")
    if negative is not None and (not isinstance(negative, str) or negative not in labels):
        raise ManifestError(f"{where}.negative_label {negative!r} is not one of the labels")
    ood = trust.get("ood")
    if ood is not None:
        if not isinstance(ood, dict):
            raise ManifestError(f"{where}.ood must be an object")
        _require_keys(ood, ("method", "inputs", "statistics", "statistics_sha256", "threshold"),
                      ("pass_rate", "fit"), f"{where}.ood")
        if ood["method"] != "mahalanobis":
            raise ManifestError(f"{where}.ood.method {ood['method']!r} is not known to this "
                                "agent (it knows 'mahalanobis'): upgrade neuroedge")
        inputs = ood["inputs"]
        if not (isinstance(inputs, list) and inputs
                and all(isinstance(i, str) and i in outputs for i in inputs)):
            raise ManifestError(f"{where}.ood.inputs must name outputs in manifest.outputs, "
                                f"got {inputs!r}")
        name = ood["statistics"]
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise ManifestError(f"{where}.ood.statistics must be a bare file name beside "
                                f"model.json, got {name!r}")
        digest = ood["statistics_sha256"]
        if not (isinstance(digest, str) and len(digest) == 64):
            raise ManifestError(f"{where}.ood.statistics_sha256 must be a hex sha256")
        if not (_number(ood["threshold"]) and ood["threshold"] > 0):
            raise ManifestError(f"{where}.ood.threshold must be a positive number")
    heatmap = trust.get("heatmap")
    if heatmap is not None:
        if not isinstance(heatmap, dict):
            raise ManifestError(f"{where}.heatmap must be an object")
        _require_keys(heatmap, ("output", "kind"), (), f"{where}.heatmap")
        if not isinstance(heatmap["output"], str) or heatmap["output"] not in outputs:
            raise ManifestError(f"{where}.heatmap.output {heatmap['output']!r} is not in "
                                "manifest.outputs")
        if not isinstance(heatmap["kind"], str) or heatmap["kind"] not in HEATMAP_KINDS:
            raise ManifestError(f"{where}.heatmap.kind must be one of {', '.join(HEATMAP_KINDS)}")
        if len(outputs[heatmap["output"]].spec.shape) != 4:
            raise ManifestError(f"{where}.heatmap.output must be a [1, H, W, C] tensor")
        if heatmap["kind"] == "class_activation" and ood is None:
            raise ManifestError(f"{where}.heatmap.kind 'class_activation' needs the classifier "
                                f"weights from the statistics file ({where}.ood.statistics), "
                                "and there is none")
    if "fit" in trust and not isinstance(trust["fit"], dict):
        raise ManifestError(f"{where}.fit must be an object")


def _check_external(entries: Any) -> None:
    """``metrics.external`` (optional): one object per external check folder.

    Each has ``name`` and ``n``; the percentages (``quantized_accuracy_pct``,
    ``quantized_tumour_sensitivity_pct``, their ``float_`` twins) are numbers in [0, 100] or
    null (no tumour pictures in that folder), ``folders`` maps sub-folder -> {n, accuracy}.
    Kept inside ``metrics`` so that agents which know nothing of it still load the model.
    """
    if entries is None:
        return
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ManifestError("manifest.metrics.external must be a list of objects")
    for i, entry in enumerate(entries):
        where = f"manifest.metrics.external[{i}]"
        if not isinstance(entry.get("name"), str) or not entry.get("name"):
            raise ManifestError(f"{where}.name must be a non-empty string")
        if not _is_int(entry.get("n")) or entry["n"] < 1:
            raise ManifestError(f"{where}.n must be a positive integer")
        for key, value in entry.items():
            if key.endswith("_pct") and value is not None and not (
                    isinstance(value, (int, float)) and not isinstance(value, bool)
                    and 0.0 <= value <= 100.0):
                raise ManifestError(f"{where}.{key} must be a percentage (0-100) or null, "
                                    f"got {value!r}")
        if not isinstance(entry.get("folders", {}), dict):
            raise ManifestError(f"{where}.folders must be an object")


def external_checks(manifest: ModelManifest) -> list[dict[str, Any]]:
    """The external checks the model was scored on at conversion (``metrics.external``)."""
    return list(manifest.metrics.get("external", []))


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


def verify_statistics_file(manifest: ModelManifest, folder: PathLike) -> Path | None:
    """Check the trust statistics beside the model against their sha256; return the path."""
    name = manifest.statistics_file
    if name is None:
        return None
    path = Path(folder) / name
    if not path.is_file():
        raise ModelIntegrityError(
            f"the trust statistics {path} named by the manifest do not exist: copy the model "
            "folder whole (model.tflite, model.json and the files beside them)")
    actual = sha256_file(path)
    if actual != manifest.trust["ood"]["statistics_sha256"].lower():
        raise ModelIntegrityError(
            f"{path} has sha256 {actual[:12]}…, the manifest expects "
            f"{manifest.trust['ood']['statistics_sha256'][:12]}…: the file is corrupt or was "
            "replaced. Reinstall the model folder whole.")
    return path


def load_verified(model_dir_or_file: PathLike) -> tuple[ModelManifest, Path]:
    """Load the manifest for a model and check the model's (and its statistics') sha256.

    The model's folder is resolved once, first: through a link that an upgrade switches
    (``models/current``, deploy/install.sh) the manifest, the model and its statistics
    could otherwise be read from two versions, and a start-up that raced an upgrade would
    refuse a good model. The returned path is the resolved one, so that whatever reads the
    model later reads the version that was verified."""
    manifest_file = manifest_path_for(model_dir_or_file)
    manifest_file = Path(os.path.realpath(manifest_file.parent)) / manifest_file.name
    manifest = load_manifest(manifest_file)
    model_path = manifest_file.parent / manifest.model_file
    verify_model_file(manifest, model_path)
    verify_statistics_file(manifest, manifest_file.parent)
    return manifest, model_path


def write_manifest(manifest: ModelManifest, path: PathLike) -> Path:
    """Validate and write ``manifest`` atomically and durably (``edge.durable``), as strict
    JSON (a NaN anywhere is a bug, not a value to write)."""
    data = manifest.to_dict()
    ModelManifest.from_dict(data)  # never write what the device would refuse to read
    path = Path(path)
    write_json_atomic(path, data)
    return path


def default_model_dir() -> Path | None:
    """The model shipped inside the package (``edge/models``), or None if none is shipped."""
    folder = Path(__file__).resolve().parent / "models"
    return folder if (folder / MANIFEST_NAME).is_file() else None
