"""External checks: pictures from sources the model never trained on, scored in every evaluation.

The official test split shares its sources (and near-copies) with Training, so it cannot
tell a model that learned "tumour" from one that learned "looks like a Br35H picture". An
external folder can::

    DIR/<label>/*.jpg|png    pictures of one of the model's classes (glioma, notumor, ...)
    DIR/tumour/*.jpg|png     pictures with a tumour of unknown type: any tumour class is right

Per folder we report accuracy (for ``tumour``: the share not called the no-tumour class),
and over every tumour picture the **tumour sensitivity**: the share not called
``notumor``. Missing a tumour is the error that matters for triage.

No Keras here: the trainer's ``evaluate`` and the converter's gate report share this code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.preprocess import DEFAULT_SPEC, PreprocessSpec
from trainer.data import IMAGE_SUFFIXES, _decode_all
from trainer.errors import DataError

log = logging.getLogger(__name__)

TUMOUR_FOLDER = "tumour"
ANY_TUMOUR = -1  # the target of a picture in a ``tumour`` folder
NO_TUMOUR_LABELS = ("notumor", "notumour", "no_tumor", "no_tumour", "normal")
DEFAULT_EXTERNAL_NAME = "br35h-tumour"
LAYOUT_HINT = (f"Expected layout: DIR/<class>/*.jpg|png with <class> one of the model's labels, "
               f"or DIR/{TUMOUR_FOLDER}/ for tumour pictures of unknown type.")


def no_tumour_index(labels: Sequence[str]) -> int | None:
    """Index of the model's no-tumour class (``notumor`` in this data set), or None."""
    for i, label in enumerate(labels):
        if label.lower() in NO_TUMOUR_LABELS:
            return i
    return None


def default_external_dirs() -> list[Path]:
    """``../shared/data/br35h-tumour`` beside the checkout (or the working folder), if there."""
    checkout = Path(__file__).resolve().parents[1]
    candidates = [checkout.parent / "shared" / "data" / DEFAULT_EXTERNAL_NAME,
                  Path.cwd().parent / "shared" / "data" / DEFAULT_EXTERNAL_NAME]
    for candidate in dict.fromkeys(c.resolve() for c in candidates):
        if candidate.is_dir():
            return [candidate]
    return []


def resolve_external_dirs(given: Sequence[str | os.PathLike] | None,
                          use_default: bool = True) -> list[Path]:
    """The folders to check: those given, else the default one when present, else none."""
    if given:
        dirs = [Path(d).expanduser() for d in given]
        names = [d.resolve().name for d in dirs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DataError(f"--external folders must have distinct names (they label the "
                            f"results); {', '.join(twice)} is given more than once")
        return dirs
    if not use_default:
        return []
    found = default_external_dirs()
    if found:
        log.info("external check: %s (the default; --no-external to skip)", found[0])
    return found


@dataclass
class ExternalSet:
    """One external folder, decoded: uint8 images, targets (label index or ANY_TUMOUR)."""

    name: str
    root: Path
    images: np.ndarray
    targets: np.ndarray
    folders: list[str]  # the sub-folder of each picture
    paths: list[str]  # relative to root

    def __len__(self) -> int:
        return len(self.targets)


def scan_external(root: str | os.PathLike,
                  labels: Sequence[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """List an external folder without decoding: (relative paths, targets, folder names).

    Every mistake is a DataError saying what is wrong and what the folder should look like.
    """
    root = Path(root).expanduser()
    labels = list(labels)
    if not root.exists():
        raise DataError(f"external folder {root} does not exist. {LAYOUT_HINT}")
    if not root.is_dir():
        raise DataError(f"external folder {root} is not a folder. {LAYOUT_HINT}")
    allowed = [*labels, TUMOUR_FOLDER]
    if root.name in allowed:
        raise DataError(f"external folder {root} looks like a class folder itself; pass its "
                        f"parent {root.parent}. {LAYOUT_HINT}")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = (f" It holds {len(loose)} picture(s) directly: move them into {root}/"
                f"{TUMOUR_FOLDER}/ or {root}/<class>/." if loose else "")
        raise DataError(f"external folder {root} has no class sub-folders.{hint} {LAYOUT_HINT}")
    unknown = [p.name for p in subfolders if p.name not in allowed]
    if unknown:
        hint = ""
        if any(u.lower() in ("tumor", "tumors", "tumours", "yes") for u in unknown):
            hint = f" (a folder of tumour pictures of unknown type must be named {TUMOUR_FOLDER!r})"
        raise DataError(f"external folder {root} has sub-folder(s) {', '.join(unknown)} that are "
                        f"neither the model's labels ({', '.join(labels)}) nor "
                        f"{TUMOUR_FOLDER!r}{hint}. {LAYOUT_HINT}")
    if any(p.name == TUMOUR_FOLDER for p in subfolders) and no_tumour_index(labels) is None:
        raise DataError(f"external folder {root} has a {TUMOUR_FOLDER!r} folder, but the model "
                        f"has no no-tumour class among {', '.join(labels)}, so 'any tumour "
                        "class' cannot be scored. Use class-named folders instead.")
    paths: list[str] = []
    targets: list[int] = []
    folders: list[str] = []
    for folder in subfolders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise DataError(f"external class folder {folder} holds no JPEG or PNG pictures "
                            f"({', '.join(IMAGE_SUFFIXES)}). Add pictures or remove the folder.")
        if len(images) < len(files):
            log.warning("ignored %d file(s) in %s that are not %s", len(files) - len(images),
                        folder, "/".join(IMAGE_SUFFIXES))
        target = ANY_TUMOUR if folder.name == TUMOUR_FOLDER else labels.index(folder.name)
        paths += [p.relative_to(root).as_posix() for p in images]
        targets += [target] * len(images)
        folders += [folder.name] * len(images)
    return paths, np.asarray(targets, dtype=np.int64), folders


def load_external(root: str | os.PathLike, labels: Sequence[str],
                  spec: PreprocessSpec = DEFAULT_SPEC, workers: int | None = None) -> ExternalSet:
    """Decode an external folder with the device's own resize (``edge.preprocess``)."""
    root = Path(root).expanduser()
    paths, targets, folders = scan_external(root, labels)
    images = _decode_all(root, paths, spec, progress=False, workers=workers)
    return ExternalSet(root.resolve().name, root, images, targets, folders, paths)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95 % for z = 1.96); None for n = 0.

    89 pictures give a sensitivity of 64 % an interval of about 54-73 %: two models a
    picture or two apart on Br35H are not told apart by it.
    """
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def external_metrics(targets: np.ndarray, folders: Sequence[str], probs: np.ndarray,
                     labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy per folder and tumour sensitivity, as fractions (like ``compute_metrics``).

    A picture is right when the arg-max is its folder's class; in a ``tumour`` folder, when
    it is any class but the no-tumour one. Tumour pictures are those of ``tumour`` and of
    every class folder except the no-tumour class; ``tumour_sensitivity`` is the share of
    them not called no-tumour (None when there are none).
    """
    targets = np.asarray(targets, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(labels)
    if probs.shape != (len(targets), len(labels)) or len(folders) != len(targets):
        raise ValueError(f"expected {len(targets)} folders and probabilities of shape "
                         f"({len(targets)}, {len(labels)}), got {len(folders)} and {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("the model returned NaN or infinite scores on the external pictures")
    predicted = probs.argmax(axis=1)
    negative = no_tumour_index(labels)
    if negative is None and np.any(targets == ANY_TUMOUR):
        raise ValueError(f"a {TUMOUR_FOLDER!r} folder needs a no-tumour class among {labels}")
    called_negative = (predicted == negative if negative is not None
                       else np.zeros(len(predicted), dtype=bool))
    correct = np.where(targets == ANY_TUMOUR, ~called_negative, predicted == targets)
    tumour = (targets == ANY_TUMOUR) | ((targets >= 0) & (targets != (
        -1 if negative is None else negative)))
    folders = np.asarray(folders)

    def counts(mask: np.ndarray) -> dict[str, int]:
        found = np.bincount(predicted[mask], minlength=len(labels))
        return {label: int(c) for label, c in zip(labels, found, strict=True)}

    per_folder = {}
    for name in dict.fromkeys(folders.tolist()):
        mask = folders == name
        per_folder[name] = {"n": int(mask.sum()), "correct": int(correct[mask].sum()),
                            "accuracy": float(correct[mask].mean()),
                            "predicted": counts(mask),
                            "mean_top_probability": float(probs[mask].max(axis=1).mean())}
    sensitivity = interval = None
    if negative is not None and tumour.any():
        found = int(np.sum(~called_negative[tumour]))
        sensitivity = found / int(tumour.sum())
        interval = wilson_interval(found, int(tumour.sum()))
    return {
        "n": int(len(targets)),
        "accuracy": float(correct.mean()) if len(targets) else 0.0,
        "folders": per_folder,
        "tumour_images": int(tumour.sum()),
        "tumour_sensitivity": sensitivity,
        "tumour_sensitivity_ci95": list(interval) if interval else None,
        "predicted": counts(np.ones(len(targets), dtype=bool)),
        "mean_top_probability": float(probs.max(axis=1).mean()) if len(targets) else 0.0,
    }


def summary_line(name: str, result: dict[str, Any]) -> str:
    """One line for a terminal: accuracy per folder and the tumour sensitivity."""
    parts = [f"{folder} {100 * r['accuracy']:.2f}% ({r['correct']}/{r['n']})"
             for folder, r in result["folders"].items()]
    sens = result["tumour_sensitivity"]
    tail = (f"; tumour sensitivity {100 * sens:.2f}%{_interval(result)} "
            f"({result['tumour_images']} tumour pictures)" if sens is not None else "")
    return f"external {name}: " + ", ".join(parts) + tail


def markdown_rows(results: Sequence[dict[str, Any]]) -> str:
    """The external checks as a Markdown table (one row per folder)."""
    lines = ["| external set | folder | n | accuracy | tumour sensitivity | mean confidence |",
             "|---|---|---:|---:|---:|---:|"]
    for result in results:
        sens = result["metrics"]["tumour_sensitivity"]
        for i, (folder, r) in enumerate(result["metrics"]["folders"].items()):
            sens_cell = (f"{100 * sens:.2f}%{_interval(result['metrics'])}"
                         if sens is not None and i == 0 else "")
            lines.append(f"| {result['name']} | {folder} | {r['n']} | {100 * r['accuracy']:.2f}% "
                         f"| {sens_cell} | {100 * r['mean_top_probability']:.1f}% |")
    return "\n".join(lines)


def _interval(metrics: dict[str, Any]) -> str:
    ci = metrics.get("tumour_sensitivity_ci95")
    return f" (95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}%)" if ci else ""
