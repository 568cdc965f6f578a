"""The run folder: everything one training run leaves behind, in one place.

::

    runs/<name>/
      run.json            config, labels, preprocessing, environment, deviations, status
      model.keras         the selected model (best validation accuracy), no optimizer state
      history.json/.csv   per-epoch loss, accuracy, val_loss, val_accuracy, seconds
      data_split.json     the exact training and validation files (relative paths)
      sample_weights.json with --reweight: each training file's sampling weight
      checkpoints/        epoch-NNN.keras (latest, with optimizer state), best.keras,
                          state.json (what --resume continues from)
      evaluation/         written by `python -m trainer evaluate`

Every file is written through ``edge.durable`` (temp file, fsync, rename), so an interrupted
run never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from edge.durable import unwritable_reason, write_bytes_atomic
from edge.preprocess_spec import PreprocessSpec
from trainer.errors import OptionError, OutputError, RunError

RUN_JSON = "run.json"
MODEL_FILE = "model.keras"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
SPLIT_JSON = "data_split.json"
SAMPLE_WEIGHTS_JSON = "sample_weights.json"
CHECKPOINTS = "checkpoints"
STATE_JSON = "state.json"
BEST_CHECKPOINT = "best.keras"
EVALUATION = "evaluation"
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_lesion_missed",
                "learning_rate", "seconds")
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PACKAGES = ("neuroedge", "keras", "tensorflow", "jax", "jaxlib", "numpy", "pillow",
             "h5py", "matplotlib")


@dataclass(frozen=True)
class RunRecord:
    """``run.json``, typed: the fields its readers (evaluate, resume, the converter, the
    campaign's selection) rely on, checked once here. ``raw`` keeps every field as written:
    provenance copies some of them into the model's manifest."""

    raw: dict[str, Any]
    architecture: str | None = None
    labels: tuple[str, ...] | None = None
    preprocess: PreprocessSpec | None = None
    data_dir: str | None = None
    seed: int = 0
    status: str = "unknown"
    recipe: str = "paper"
    epochs: int | None = None
    epochs_done: int | None = None
    best_val_accuracy: float | None = None
    no_imagenet_weights: bool = False
    config: dict[str, Any] | None = None  # the TrainConfig, for --resume

    @classmethod
    def from_dict(cls, data: Any, where: str) -> RunRecord:
        """Check the types of what is there; what is absent stays None (older or minimal
        run.json files); ``require`` names what a reader cannot do without."""
        if not isinstance(data, dict):
            raise RunError(f"{where} does not hold a JSON object; the run folder is damaged")

        def typed(key: str, kind: Any, default: Any = None) -> Any:
            value = data.get(key, default)
            if value is not None and not isinstance(value, kind):
                raise RunError(f"{where}: '{key}' should be {getattr(kind, '__name__', kind)}, "
                               f"got {value!r}; the run folder is damaged")
            return value

        labels = typed("labels", list)
        if labels is not None and (len(labels) < 2 or not all(
                isinstance(x, str) and x for x in labels)):
            raise RunError(f"{where}: 'labels' must list at least two class names, got {labels!r}")
        preprocess = typed("preprocess", dict)
        try:
            spec = PreprocessSpec.from_dict(preprocess) if preprocess is not None else None
        except (TypeError, ValueError) as exc:
            raise RunError(f"{where} has an invalid 'preprocess': {exc}") from None
        best = typed("best_val_accuracy", (int, float))
        return cls(raw=data, architecture=typed("architecture", str),
                   labels=tuple(labels) if labels is not None else None, preprocess=spec,
                   data_dir=typed("data_dir", str), seed=int(typed("seed", int, 0) or 0),
                   status=typed("status", str, "unknown"), recipe=typed("recipe", str, "paper"),
                   epochs=typed("epochs", int), epochs_done=typed("epochs_done", int),
                   best_val_accuracy=float(best) if best is not None else None,
                   no_imagenet_weights=bool(data.get("no_imagenet_weights")),
                   config=typed("config", dict))

    def require(self, *fields: str, where: str = RUN_JSON) -> None:
        missing = [name for name in fields if getattr(self, name) is None]
        if missing:
            raise RunError(f"{where} has no {', '.join(repr(m) for m in missing)}; it was not "
                           "written by this trainer, or the run folder is damaged")


class RunFolder:
    """Paths and atomic reads/writes of one run folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()

    # -- locations -------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def state_json(self) -> Path:
        return self.checkpoints / STATE_JSON

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / BEST_CHECKPOINT

    def epoch_checkpoint(self, epochs_done: int) -> Path:
        return self.checkpoints / f"epoch-{epochs_done:03d}.keras"

    @property
    def evaluation(self) -> Path:
        return self.path / EVALUATION

    # -- creation / opening ----------------------------------------------------------
    @classmethod
    def check_new(cls, runs_dir: str | os.PathLike, name: str) -> RunFolder:
        """The folder a new run ``name`` would get under ``runs_dir``, checked before any slow
        work: a valid name, no earlier run there, and a runs folder that can be written."""
        if not RUN_NAME.fullmatch(name):
            raise OptionError(f"--name {name!r}: a run name may only contain letters, digits, "
                              f"'.', '_' and '-' (no '/'; it is one folder inside --runs-dir), "
                              f"and must start with a letter or digit")
        run = cls(Path(runs_dir).expanduser() / name)
        if run.path.is_dir() and any(run.path.iterdir()):
            raise RunError(
                f"run folder {run.path} already exists. Continue it with --resume {run.path}, "
                f"or choose another --name."
            )
        reason = unwritable_reason(run.path, folder=True)
        if reason is not None:
            raise OutputError(f"--runs-dir {runs_dir}: cannot create the run folder there: "
                              f"{reason}; choose another --runs-dir")
        return run

    @classmethod
    def create(cls, runs_dir: str | os.PathLike, name: str) -> RunFolder:
        run = cls.check_new(runs_dir, name)
        try:
            run.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--runs-dir {runs_dir}: cannot create the run folder {run.path}: "
                              f"{exc.strerror or exc}; choose another --runs-dir") from None
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunFolder:
        run = cls(path)
        if not run.path.is_dir():
            raise RunError(f"run folder {run.path} does not exist; pass the folder that "
                           f"`python -m trainer train` created (runs/<name>)")
        if not run.run_json.is_file():
            raise RunError(f"{run.path} is not a run folder: it has no {RUN_JSON}")
        return run

    # -- JSON ------------------------------------------------------------------------
    def _read_json(self, path: Path) -> dict:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunError(f"{path} is missing; the run folder is incomplete") from None
        except (OSError, ValueError) as exc:
            raise RunError(f"{path} cannot be read ({exc}); the run folder is damaged") from None
        if not isinstance(data, dict):
            raise RunError(f"{path} does not hold a JSON object; the run folder is damaged")
        return data

    def read_record(self) -> RunRecord:
        """``run.json``, typed and checked."""
        return RunRecord.from_dict(self._read_json(self.run_json), str(self.run_json))

    def write_config(self, config: dict) -> None:
        write_json_atomic(self.run_json, config)

    def update_config(self, **changes: Any) -> dict:
        config = self._read_json(self.run_json)
        config.update(changes)
        self.write_config(config)
        return config

    def read_state(self) -> dict:
        return self._read_json(self.state_json)

    def write_state(self, state: dict) -> None:
        write_json_atomic(self.state_json, state)

    def read_split(self) -> dict:
        return self._read_json(self.path / SPLIT_JSON)

    def write_split(self, train_paths: list[str], val_paths: list[str]) -> None:
        write_json_atomic(self.path / SPLIT_JSON, {"train": train_paths, "validation": val_paths})

    @property
    def sample_weights_json(self) -> Path:
        return self.path / SAMPLE_WEIGHTS_JSON

    def read_sample_weights(self) -> dict:
        return self._read_json(self.sample_weights_json)

    def write_sample_weights(self, data: dict) -> None:
        write_json_atomic(self.sample_weights_json, data)

    def read_history(self) -> dict[str, list[float]]:
        path = self.path / HISTORY_JSON
        return self._read_json(path) if path.is_file() else {}

    def write_history(self, history: dict[str, list[float]]) -> None:
        write_json_atomic(self.path / HISTORY_JSON, history)
        keys = [k for k in HISTORY_KEYS if k in history]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["epoch", *keys])
        for i in range(len(history.get("loss", []))):
            writer.writerow([i + 1, *(history[k][i] for k in keys)])
        write_text_atomic(self.path / HISTORY_CSV, buffer.getvalue())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably (``edge.durable``)."""
    write_bytes_atomic(Path(path), text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """Pretty JSON, written atomically. NaN is allowed here, unlike in the agent's files: a
    diverged epoch's loss is NaN in ``history.json``, and that is the honest record."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n")


def default_run_name(arch: str) -> str:
    return f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def environment() -> dict[str, Any]:
    """Where a run ran: Python, OS, package versions, Keras backend and devices."""
    import keras

    try:
        devices = [str(d) for d in keras.distribution.list_devices()]
    except Exception as exc:  # noqa: BLE001 - informational only
        devices = [f"unknown ({type(exc).__name__})"]
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": keras.backend.backend(),
        "devices": devices,
        "packages": package_versions(),
    }
