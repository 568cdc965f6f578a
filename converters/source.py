"""The model to convert: a trainer run folder, or a bare ``.keras`` file plus labels.

A run folder carries everything the manifest needs (``run.json``: architecture, labels in
order, the preprocessing the model was trained with). A bare ``.keras`` file carries only
weights and graph, so the labels must be given and the preprocessing defaults to the
project's one (``edge.preprocess.DEFAULT_SPEC``) at the model's own input size.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from converters.errors import SourceModelError, UsageError
from edge.manifest import sha256_file
from edge.preprocess import DEFAULT_SPEC, PreprocessSpec
from trainer.errors import RunError
from trainer.runs import RunRecord

log = logging.getLogger(__name__)

RUN_INFO = "run.json"
RUN_MODEL = "model.keras"


@dataclass(frozen=True)
class SourceModel:
    """Where the Keras model is, and what the device must know about it."""

    keras_path: Path
    name: str
    architecture: str
    labels: tuple[str, ...]
    preprocess: PreprocessSpec
    sha256: str
    run_dir: Path | None = None
    run_info: dict[str, Any] = field(default_factory=dict)
    preprocess_source: str = "run.json"


def _read_run_record(run_dir: Path) -> RunRecord:
    path = run_dir / RUN_INFO
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SourceModelError(f"{path} is not valid JSON ({exc}); the run folder is damaged. "
                               "Re-run training or pass the .keras file with --labels.") from None
    except OSError as exc:
        raise SourceModelError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return RunRecord.from_dict(data, str(path))
    except RunError as exc:
        raise SourceModelError(f"{exc}. Re-run training or pass the .keras file with "
                               "--labels.") from None


def _find_run_dir(keras_path: Path) -> Path | None:
    """The run folder a .keras file belongs to (its folder, or the one above checkpoints/)."""
    for folder in (keras_path.parent, keras_path.parent.parent):
        if (folder / RUN_INFO).is_file():
            return folder
    return None


def _labels_from_option(labels: str | None) -> tuple[str, ...] | None:
    if labels is None:
        return None
    names = tuple(x.strip() for x in labels.split(",") if x.strip())
    if len(names) < 2 or len(set(names)) != len(names):
        raise UsageError(f"--labels must name at least two distinct classes separated by commas, "
                         f"in the model's output order, got {labels!r}")
    return names


def resolve_source(model: Path, labels: str | None = None, arch: str | None = None,
                   name: str | None = None) -> SourceModel:
    """Find the .keras file and its run.json; check labels/architecture options against it."""
    model = Path(model)
    if not model.exists():
        raise SourceModelError(f"--model {model} does not exist: give a trainer run folder "
                               "(runs/<name>/) or a .keras file")
    if model.is_dir():
        run_dir: Path | None = model
        keras_path = model / RUN_MODEL
        if not keras_path.is_file():
            raise SourceModelError(f"{model} is a folder without {RUN_MODEL}: is it a trainer run "
                                   "folder? Give runs/<name>/ or the .keras file itself.")
        if not (model / RUN_INFO).is_file():
            raise SourceModelError(f"{model} has no {RUN_INFO}, so its labels and preprocessing "
                                   f"are unknown. Pass {keras_path} with --labels instead.")
    else:
        if model.suffix != ".keras":
            raise SourceModelError(f"--model {model} is not a .keras file or a run folder "
                                   "(Keras 3 saves models as .keras; .h5/SavedModel are not read)")
        keras_path = model
        run_dir = _find_run_dir(model)

    option_labels = _labels_from_option(labels)
    record = _read_run_record(run_dir) if run_dir is not None else None
    run_info = record.raw if record is not None else {}
    if run_dir is not None and record is not None:
        run_labels = record.labels
        if run_labels is None:
            raise SourceModelError(f"{run_dir / RUN_INFO} has no valid 'labels' list; pass the "
                                   ".keras file with --labels in the model's output order")
        if option_labels is not None and run_labels != option_labels:
            raise UsageError(f"--labels {','.join(option_labels)} contradicts the run's labels "
                             f"{','.join(run_labels)} ({run_dir / RUN_INFO}); drop --labels")
        final_labels = run_labels
        spec = record.preprocess or DEFAULT_SPEC
        run_arch = record.architecture
        if arch is not None and run_arch and arch != run_arch:
            raise UsageError(f"--arch {arch} contradicts the run's architecture {run_arch}; "
                             "drop --arch")
        final_arch = str(arch or run_arch or "unknown")
        preprocess_source = "run.json" if record.preprocess is not None else "default"
    else:
        if option_labels is None:
            raise UsageError(f"{keras_path} is a bare .keras file (no run.json beside it), so its "
                             "class labels are unknown: pass --labels glioma,meningioma,notumor,"
                             "pituitary (in the model's output order), or give the run folder")
        final_labels = option_labels
        spec = DEFAULT_SPEC
        final_arch = arch or ""
        preprocess_source = "default"
    default_name = run_dir.name if run_dir is not None and keras_path.parent == run_dir else (
        keras_path.stem)
    return SourceModel(
        keras_path=keras_path, name=name or default_name, architecture=final_arch,
        labels=final_labels, preprocess=spec, sha256=sha256_file(keras_path), run_dir=run_dir,
        run_info=run_info, preprocess_source=preprocess_source)


def load_keras_model(source: SourceModel) -> tuple[Any, SourceModel]:
    """Load the Keras model (custom CBAM layers registered) and check it fits the source info.

    Returns the model and the source, completed where a bare .keras left things open
    (architecture name, input size of the default preprocessing).
    """
    import keras

    import trainer.layers  # noqa: F401 - registers ChannelAttention, SpatialAttention, CBAM

    if keras.backend.backend() != "tensorflow":
        raise UsageError(f"TFLite conversion needs Keras' TensorFlow backend, but Keras is using "
                         f"{keras.backend.backend()!r}: run with KERAS_BACKEND=tensorflow")
    try:
        model = keras.saving.load_model(source.keras_path, compile=False)
    except Exception as exc:  # noqa: BLE001 - zip, h5py, deserialization errors all mean this
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceModelError(f"cannot load the Keras model {source.keras_path}: {first}. Is it a "
                               "complete .keras file saved by this project's trainer?") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise SourceModelError(f"{source.keras_path} has {len(model.inputs)} inputs and "
                               f"{len(model.outputs)} outputs; a classifier needs one of each")
    in_shape = tuple(model.inputs[0].shape[1:])
    out_shape = tuple(model.outputs[0].shape[1:])
    if len(in_shape) != 3 or in_shape[-1] != 3 or None in in_shape:
        raise SourceModelError(f"{source.keras_path} takes input of shape {in_shape}; the device "
                               "feeds fixed-size RGB images (height, width, 3)")
    if out_shape != (len(source.labels),):
        raise SourceModelError(f"{source.keras_path} has output shape {out_shape} but "
                               f"{len(source.labels)} labels were given "
                               f"({', '.join(source.labels)})")
    if source.run_dir is None:
        spec = source.preprocess
        if spec.shape != in_shape:
            spec = replace(spec, height=int(in_shape[0]), width=int(in_shape[1]))
            log.info("no run.json: using the default preprocessing at the model's input size "
                     "%dx%d", spec.height, spec.width)
        source = replace(source, preprocess=spec,
                         architecture=source.architecture or str(model.name))
    elif source.preprocess.shape != in_shape:
        raise SourceModelError(f"the model takes {in_shape} images but its run.json "
                               f"preprocessing makes {source.preprocess.shape}; the run folder "
                               "is inconsistent")
    return model, source
