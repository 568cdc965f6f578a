"""The images a conversion uses: calibration from Training, evaluation from Testing.

Both go through ``trainer.data.load_split`` (the device's own resize, the trainer's cache)
and ``edge.preprocess.scale``, with the model's labels fixing the class order, so the
converter sees exactly what training and the device see.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import UsageError
from edge.preprocess import PreprocessSpec, scale

log = logging.getLogger(__name__)

DEDUP_RELATIVE = Path("docs") / "leakage" / "dedup_test.txt"


def _on_terminal() -> bool:
    """Progress bars for a person at a terminal, not for log files."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def calibration_images(data_dir: Path, labels: tuple[str, ...], spec: PreprocessSpec, size: int,
                       seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A stratified, seeded draw of ``size`` Training images, preprocessed to float32."""
    from trainer.data import load_split

    data = load_split(data_dir, "Training", spec=spec, limit=size, seed=seed,
                      progress=_on_terminal(), classes=list(labels))
    info = {"split": "Training", "data_dir": str(data_dir), "n": len(data), "seed": seed,
            "per_class": data.class_counts()}
    return scale(data.images, spec), info


@dataclass
class EvaluationSet:
    images: np.ndarray  # uint8 (N, H, W, 3): scaled chunk by chunk when predicting
    labels: np.ndarray
    paths: list[str]
    name: str
    data_dir: Path


def evaluation_set(data_dir: Path, split: str, labels: tuple[str, ...], spec: PreprocessSpec,
                   limit: int | None, seed: int) -> EvaluationSet:
    from trainer.data import load_split

    data = load_split(data_dir, split, spec=spec, limit=limit, seed=seed,
                      progress=_on_terminal(), classes=list(labels))
    name = split if limit is None else f"{split} (stratified {len(data)}-image subset, seed {seed})"
    return EvaluationSet(data.images, data.labels, data.paths, name, Path(data_dir))


def find_dedup_list(explicit: Path | None, auto: bool, split: str, run_dir: Path | None,
                    eval_root: Path) -> Path | None:
    """The leakage audit's deduplicated test list: given, or found where the audit writes it.

    Looked up like ``python -m trainer evaluate`` does (``<runs>/leakage-audit/<data folder
    name>/dedup_test.txt`` beside the run, then under ./runs, checked against the audit's
    record of its data folder), then in ``docs/leakage/dedup_test.txt``.
    """
    if explicit is not None:
        if not explicit.is_file():
            raise UsageError(f"--dedup-list {explicit} does not exist; run the leakage audit "
                             "(python -m trainer audit-leakage) or drop the option")
        return explicit
    if not auto or split != "Testing":
        return None
    from trainer.evaluate import COMMITTED_DEDUP_LIST
    from trainer.evaluate import find_dedup_list as trainer_lookup
    from trainer.runs import RunFolder

    found = trainer_lookup(RunFolder(run_dir or Path("runs") / "_"), Path(eval_root))
    candidates = [found] if found is not None else []
    candidates += [Path.cwd() / DEDUP_RELATIVE, COMMITTED_DEDUP_LIST]
    for candidate in candidates:
        if candidate.is_file():
            log.info("using the leakage audit's deduplicated test list %s", candidate)
            return candidate
    return None


def dedup_indices(eval_set: EvaluationSet, dedup_list: Path, explicit: bool) -> np.ndarray | None:
    """Indices of evaluation images named by the deduplicated list (None: list doesn't fit)."""
    from trainer.audit import load_dedup_list

    keep = load_dedup_list(dedup_list)
    idx = np.asarray([i for i, p in enumerate(eval_set.paths) if p in keep], dtype=np.int64)
    if len(idx) == 0:
        message = (f"the deduplicated list {dedup_list} names none of the {len(eval_set.paths)} "
                   f"evaluation images (paths like {eval_set.paths[0]!r}): it was made for "
                   "another data folder")
        if explicit:
            raise UsageError(message + "; pass the list the audit wrote for this --data")
        log.warning("%s; skipping the deduplicated report", message)
        return None
    return idx
