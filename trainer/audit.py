"""Leakage audit: which Testing images (nearly) duplicate a Training image.

The Kaggle Brain Tumor MRI data set shares pictures between its splits: byte-identical
files, re-encoded or resized copies, and neighbouring slices of the same patient. A score
on the official test split is inflated by them, so ``evaluate`` also scores a deduplicated
test list written here.

Method (calibrated on the real data set, see docs/leakage/README.md):

1. sha256 of every file: byte-identical pairs are duplicates whatever their pixels say.
2. Every picture becomes a 128x128 grayscale grid (box-filter resize of the whole picture,
   aspect ratio not kept, so a resized copy lands on the same grid), band-passed with a
   difference of Gaussians (sigma 1 minus sigma 6 grid pixels): the blur absorbs
   re-encoding, resizing and sub-pixel residue; removing the sigma-6 background drops what
   every head scan shares (a bright oval on black), which otherwise makes unrelated scans
   look alike.
3. Coarse search: a 32x32 thumbnail of that grid, zero-mean and unit-norm; the cosine
   similarity of every test picture with every training picture is one matrix product.
   The best ``candidates`` (64) training pictures per test picture go on to step 4
   (measured on the real data: a 4x larger candidate pool changes no decision), plus 16
   by a shift-proof 16x16 thumbnail of the unfiltered picture.
4. Fine score: normalised cross-correlation (NCC) of the test grid's centre (120x120,
   sampled every 2nd pixel: 3600 values) with the candidate's grid shifted by -4..+5 grid
   pixels on each axis (about 3.5 % of the picture side) in 1-pixel steps, i.e. half-sample
   steps. NCC ignores brightness and contrast (any affine change of intensity); the shift
   search absorbs small translations. Steps 3-4 run for the test picture and for its
   left-right mirror image: the data set holds hundreds of mirrored copies. A test
   picture's similarity is its best NCC, and its nearest training picture the one that
   gives it.
5. A test picture is a duplicate when it is sha256-identical to a training file or its
   similarity is >= ``threshold``.

As a control, the same score is computed against the best training pictures of the
*other* classes (other diagnoses, so other patients): its maximum is the highest similarity
two unrelated pictures reach in the data set, and the threshold must sit well above it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EX_INTERRUPTED
from trainer.errors import DataError, OptionError, TrainerError
from trainer.similarity import (  # noqa: F401 - re-exported: the audit's public names
    BACKGROUND_SIGMA,
    BLUR_SIGMA,
    CANDIDATES,
    COARSE,
    COARSE_SIGMA,
    CONTROL_CANDIDATES,
    DEFAULT_THRESHOLD,
    GRID,
    MARGIN,
    SHAPE,
    STEP,
    SWEEP,
    Match,
    _list_split,
    _load_split,
    _TrainingIndex,
    nearest_neighbours,
    similarity_grid,
)

__all__ = [
    "DEFAULT_THRESHOLD", "Match", "audit_leakage", "load_dedup_list", "similarity_grid",
    "nearest_neighbours", "main",
]

log = logging.getLogger(__name__)

FORMAT = "neuroedge-leakage-audit/1"

# ----------------------------------------------------------------------------- the audit


def _check_threshold(threshold: float) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise OptionError(f"the threshold must be a number, got {threshold!r}") from None
    if not 0.0 < value <= 1.0:
        raise OptionError(f"the threshold must be in (0, 1], got {value}; the calibrated "
                          f"default is {DEFAULT_THRESHOLD} (see docs/leakage/README.md)")
    return value


def _byte_identical_within(shas: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sha in shas:
        counts[sha] = counts.get(sha, 0) + 1
    groups = [n for n in counts.values() if n > 1]
    return {"groups": len(groups), "pictures": int(sum(groups))}


def audit_leakage(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  threshold: float = DEFAULT_THRESHOLD, *, candidates: int = CANDIDATES,
                  mirror: bool = True) -> dict[str, Any]:
    """Pair every Testing picture with its most similar Training picture; write the results.

    Writes ``out_dir/pairs.csv`` (one row per test picture), ``out_dir/dedup_test.txt``
    (test pictures that are not duplicates, relative to ``data_dir``, '#' header lines) and
    ``out_dir/summary.json``; returns the summary. ``mirror=False`` skips the search for
    left-right mirrored copies (not recommended: the Kaggle set is full of them).
    """
    threshold = _check_threshold(threshold)
    if candidates < 1:
        raise OptionError(f"candidates must be at least 1, got {candidates}")
    root = Path(data_dir).expanduser()
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise OptionError(f"output folder {out} is a file; pass a folder with --out")
    started = time.monotonic()
    listings = {split: _list_split(root, split) for split in ("Training", "Testing")}
    train = _load_split(root, "Training", listings["Training"])
    test = _load_split(root, "Testing", listings["Testing"])
    train_classes, test_classes = np.array(train[1]), np.array(test[1])

    index = _TrainingIndex(train[3])
    match = index.nearest(test[3], candidates, mirror=mirror)
    by_sha: dict[str, int] = {}
    for j, sha in enumerate(train[2]):
        by_sha.setdefault(sha, j)
    sha_identical = np.array([sha in by_sha for sha in test[2]], dtype=bool)
    for i in np.flatnonzero(sha_identical):
        match.index[i], match.similarity[i] = by_sha[test[2][i]], 1.0
        match.direct[i], match.mirrored[i] = 1.0, False
    # Control: the best match among the other classes (other diagnoses, other patients).
    control = index.nearest(test[3], CONTROL_CANDIDATES, mirror=mirror,
                            exclude=test_classes[:, None] == train_classes[None, :])
    log.info("pictures read and compared in %.1f s", time.monotonic() - started)

    found = _Findings(test[0], test_classes, train[0], train_classes, match, sha_identical,
                      threshold, control)
    summary = _summary(root, found, candidates, mirror, train[2], test[2])
    try:
        _write_outputs(out, root, summary, found)
    except OSError as exc:
        raise TrainerError(f"cannot write the audit to {out}: {exc}. Pass a writable "
                           "folder with --out.") from None
    log.info("audit done in %.1f s: %d of %d test pictures are duplicates (threshold %.3f)",
             time.monotonic() - started, summary["duplicates"], len(test[0]), threshold)
    return summary


@dataclass
class _Findings:
    """Everything known about each test picture once the search is done."""

    test_paths: list[str]
    test_classes: np.ndarray
    train_paths: list[str]
    train_classes: np.ndarray
    match: Match
    sha_identical: np.ndarray
    threshold: float
    control: Match

    def flagged(self, threshold: float, mirror: bool = True) -> np.ndarray:
        similarity = self.match.similarity if mirror else self.match.direct
        return self.sha_identical | (similarity >= threshold)

    @property
    def duplicate(self) -> np.ndarray:
        return self.flagged(self.threshold)

    @property
    def class_mismatch(self) -> np.ndarray:
        return self.duplicate & (self.train_classes[self.match.index] != self.test_classes)


def _summary(root: Path, found: _Findings, candidates: int, mirror: bool,
             train_sha: list[str], test_sha: list[str]) -> dict[str, Any]:
    names = sorted(set(found.test_classes.tolist()))
    classes, duplicate = found.test_classes, found.duplicate
    mirrored = duplicate & found.match.mirrored & ~found.sha_identical
    control = found.control.similarity[np.isfinite(found.control.similarity)]
    threshold = found.threshold

    def per_class(flags: np.ndarray) -> dict[str, int]:
        return {name: int((flags & (classes == name)).sum()) for name in names}

    sweep = []
    for t in sorted({*SWEEP, threshold}):
        row = {"threshold": t, "duplicates": int(found.flagged(t).sum()),
               "per_class": per_class(found.flagged(t))}
        if mirror:
            row["duplicates_without_mirror_search"] = int(found.flagged(t, mirror=False).sum())
        sweep.append(row)

    def stat(value: float) -> float | None:
        return round(float(value), 5) if control.size else None

    return {
        "format": FORMAT,
        "data_dir": str(root),
        "threshold": threshold,
        "test_images": len(classes),
        "train_images": len(train_sha),
        "duplicates": int(duplicate.sum()),
        "kept": int((~duplicate).sum()),
        "sha_identical": int(found.sha_identical.sum()),
        "mirrored": int(mirrored.sum()),
        "class_mismatch": int(found.class_mismatch.sum()),
        "control_max_similarity": stat(control.max()) if control.size else None,
        "per_class": {
            name: {"test": int((classes == name).sum()),
                   "duplicates": per_class(duplicate)[name],
                   "kept": per_class(~duplicate)[name],
                   "sha_identical": per_class(found.sha_identical)[name],
                   "mirrored": per_class(mirrored)[name],
                   "class_mismatch": per_class(found.class_mismatch)[name]}
            for name in names},
        "control": {
            "meaning": "best similarity of each test picture among the training pictures of "
                       "the other classes (other diagnoses, so other patients)",
            "max": stat(control.max()) if control.size else None,
            "p99_9": stat(np.percentile(control, 99.9)) if control.size else None,
            "p99": stat(np.percentile(control, 99)) if control.size else None,
            "median": stat(np.median(control)) if control.size else None,
            "at_or_above_threshold": int((control >= threshold).sum()),
        },
        "sweep": sweep,
        "byte_identical_within": {"Training": _byte_identical_within(train_sha),
                                  "Testing": _byte_identical_within(test_sha)},
        "method": {"grid": GRID, "blur_sigma": BLUR_SIGMA, "background_sigma": BACKGROUND_SIGMA,
                   "margin": MARGIN, "step": STEP, "coarse": COARSE,
                   "coarse_sigma": COARSE_SIGMA, "shape": SHAPE, "candidates": candidates,
                   "control_candidates": CONTROL_CANDIDATES, "mirror": mirror},
        "files": {"pairs": "pairs.csv", "dedup_list": "dedup_test.txt"},
    }


def _write_outputs(out: Path, root: Path, summary: dict[str, Any], found: _Findings) -> None:
    from trainer.runs import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["test_path", "test_class", "train_path", "train_class", "similarity",
                     "mirrored", "sha_identical", "duplicate", "other_class_path",
                     "other_class_similarity"])
    match, control, duplicate = found.match, found.control, found.duplicate
    for i, path in enumerate(found.test_paths):
        j, o = int(match.index[i]), int(control.index[i])
        writer.writerow([path, found.test_classes[i], found.train_paths[j],
                         found.train_classes[j], f"{match.similarity[i]:.5f}",
                         int(match.mirrored[i]), int(found.sha_identical[i]), int(duplicate[i]),
                         found.train_paths[o] if o >= 0 else "",
                         f"{control.similarity[i]:.5f}" if o >= 0 else ""])
    write_text_atomic(out / "pairs.csv", rows.getvalue())

    kept = [p for p, d in zip(found.test_paths, duplicate, strict=True) if not d]
    per_class = ", ".join(f"{name} {row['kept']}/{row['test']}"
                          for name, row in summary["per_class"].items())
    mirror = "" if summary["method"]["mirror"] else ", mirror search off"
    header = [
        f"# NeuroEdge leakage audit ({FORMAT}): Testing pictures with no duplicate in Training",
        f"# data: {root}",
        f"# threshold: {summary['threshold']} (duplicate = sha256-identical to a training "
        f"file, or similarity >= threshold, the picture or its mirror image{mirror})",
        f"# test pictures: {summary['test_images']}; duplicates: {summary['duplicates']}; "
        f"kept: {summary['kept']}",
        f"# kept per class: {per_class}",
        f"# rerun: python -m trainer audit-leakage {root} --out {out}",
    ]
    write_text_atomic(out / "dedup_test.txt", "\n".join(header + kept) + "\n")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def load_dedup_list(path: str | os.PathLike) -> set[str]:
    """The test pictures (relative to the data folder) that a dedup_test.txt keeps."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"deduplicated test list {p} does not exist; write it with "
                        "python -m trainer audit-leakage DATA_DIR --out FOLDER") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the deduplicated test list {p}: {exc}") from None
    entries: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip().replace("\\", "/")
        if not entry or entry.startswith("#"):
            continue
        if entry.startswith("/") or ".." in entry.split("/") or ":" in entry.split("/")[0]:
            raise DataError(f"{p} line {number}: {entry!r} is not a path relative to the data "
                            "folder (like Testing/glioma/Te-gl_0010.jpg). Regenerate the list "
                            "with python -m trainer audit-leakage.")
        entries.add(entry)
    if not entries:
        log.warning("%s keeps no test pictures: every test picture was a duplicate", p)
    return entries


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainer.audit DATA --out DIR``: the audit without the trainer's CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.audit",
        description="Find Testing pictures that (nearly) duplicate Training pictures and "
                    "write pairs.csv, dedup_test.txt and summary.json.")
    parser.add_argument("data_dir", help="data folder with Training/<class>/ and Testing/<class>/")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="similarity at or above which a test picture is a duplicate "
                             "(default %(default)s, calibrated on the Kaggle data set)")
    parser.add_argument("--candidates", type=int, default=CANDIDATES,
                        help="training candidates scored finely per test picture "
                             "(default %(default)s)")
    parser.add_argument("--no-mirror", action="store_true",
                        help="do not search for left-right mirrored copies")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s")
    try:
        summary = audit_leakage(args.data_dir, args.out, args.threshold,
                                candidates=args.candidates, mirror=not args.no_mirror)
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    if not args.quiet:
        print(f"{summary['duplicates']} of {summary['test_images']} test pictures duplicate a "
              f"training picture (threshold {summary['threshold']}); "
              f"{summary['kept']} kept in {Path(args.out) / 'dedup_test.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
