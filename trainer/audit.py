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
import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge.preprocess import to_8bit_picture
from trainer.errors import DataError, OptionError, TrainerError

__all__ = [
    "DEFAULT_THRESHOLD", "Match", "audit_leakage", "load_dedup_list", "similarity_grid",
    "nearest_neighbours", "main",
]

log = logging.getLogger(__name__)

# Chosen on the real data set (docs/leakage/README.md, docs/leakage/calibrate.py):
# above the highest similarity of two pictures of different classes (0.853), below every
# planted copy (re-encoded, resized, shifted, mirrored, brightness/contrast/gamma changed,
# sharpened; lowest 0.914).
DEFAULT_THRESHOLD = 0.87

FORMAT = "neuroedge-leakage-audit/1"
GRID = 128            # pictures are compared on a GRID x GRID grayscale grid
BLUR_SIGMA = 1.0      # band-pass on that grid: Gaussian(BLUR_SIGMA) minus
BACKGROUND_SIGMA = 6.0  # Gaussian(BACKGROUND_SIGMA), in grid pixels
MARGIN = 4            # the test centre window leaves MARGIN grid pixels on each side
STEP = 2              # NCC samples every STEP-th grid pixel (a 60x60 = 3600-value window)
COARSE = 32           # coarse thumbnail side for the candidate search
COARSE_SIGMA = 1.0    # extra blur on the coarse thumbnail, in its pixels
SHAPE = 16            # side of the shift-proof candidate code
CANDIDATES = 64       # training candidates per test image scored finely
CONTROL_CANDIDATES = 32  # other-class candidates scored for the control distribution
SWEEP = (0.75, 0.8, 0.82, 0.85, 0.9, 0.92, 0.95, 0.98, 0.99)
_FLAT = 1e-6          # a window whose pixel variance is below this has no structure


# ----------------------------------------------------------------------------- pictures


def similarity_grid(image: Image.Image) -> np.ndarray:
    """A picture as the audit samples it: uint8 (GRID, GRID) grayscale, aspect ratio dropped.

    Box filtering the whole picture onto a fixed grid puts a resized copy on the same grid.
    """
    gray = to_8bit_picture(image).convert("L")
    shrink = gray.width >= GRID and gray.height >= GRID
    return np.asarray(gray.resize((GRID, GRID), Image.BOX if shrink else Image.BILINEAR),
                      dtype=np.uint8)


def _detail(grids: np.ndarray) -> np.ndarray:
    """Band-pass (difference of Gaussians) of sampled grids: float32 (N, GRID, GRID).

    The narrow blur absorbs re-encoding, resizing and sub-pixel residue; subtracting the
    wide one drops what every head scan shares (a bright oval on black), which otherwise
    makes unrelated scans look alike (measured: see docs/leakage/README.md).
    """
    g = grids.astype(np.float32)
    return _blur(g, BLUR_SIGMA) - _blur(g, BACKGROUND_SIGMA)


def _blur(grids: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (N, H, W) with edge padding (numpy only, no scipy)."""
    radius = max(1, int(3 * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    out = grids.astype(np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(
            k * np.take(padded, np.arange(i, i + n), axis=axis) for i, k in enumerate(kernel)
        )
    return out.astype(np.float32)


def _read(root: Path, rel: str) -> tuple[str, np.ndarray | None, str | None]:
    """(sha256, grid, error) of one file; errors are collected, not raised, per file."""
    try:
        data = (root / rel).read_bytes()
    except OSError as exc:
        return "", None, f"cannot read ({exc.strerror or exc})"
    sha = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return sha, similarity_grid(image), None
    except Exception as exc:  # PIL raises many types for a broken picture
        return sha, None, f"not a readable image ({type(exc).__name__}: {exc})"


def _list_split(root: Path, split: str) -> tuple[list[str], list[str]]:
    """(relative paths, class names) of a split's pictures; clear errors for bad layouts."""
    from trainer.data import scan_split

    paths, labels, names = scan_split(root, split)
    return paths, [names[i] for i in labels]


def _load_split(root: Path, split: str, listing: tuple[list[str], list[str]] | None = None
                ) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """(paths, classes, sha256s, grids) of every picture in one split."""
    paths, classes = listing if listing is not None else _list_split(root, split)
    started = time.monotonic()
    grids = np.zeros((len(paths), GRID, GRID), dtype=np.uint8)
    shas: list[str] = []
    failures: list[str] = []
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for i, (sha, grid, error) in enumerate(pool.map(lambda p: _read(root, p), paths)):
            shas.append(sha)
            if error is not None:
                failures.append(f"{paths[i]}: {error}")
            else:
                grids[i] = grid
    if failures:
        shown = "; ".join(failures[:5]) + (f"; and {len(failures) - 5} more"
                                           if len(failures) > 5 else "")
        raise DataError(f"{len(failures)} picture(s) in {root / split} cannot be read: {shown}. "
                        "Fix or remove them, then rerun the audit.")
    log.info("%s: %d pictures read in %.1f s", split, len(paths), time.monotonic() - started)
    return paths, classes, shas, grids


# ----------------------------------------------------------------------------- similarity


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm rows (a flat row stays all zero)."""
    v = vectors.reshape(len(vectors), -1).astype(np.float32)
    v = v - v.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > _FLAT)


def _coarse(detail: np.ndarray) -> np.ndarray:
    """Candidate code that tells scans apart: the band-passed grid at 32x32."""
    f = GRID // COARSE
    small = detail.reshape(len(detail), COARSE, f, COARSE, f).mean(axis=(2, 4))
    return _unit(_blur(small, COARSE_SIGMA))


def _shape(grids: np.ndarray) -> np.ndarray:
    """Candidate code that survives shifts: the plain picture at 16x16, blurred."""
    f = GRID // SHAPE
    small = grids.astype(np.float32).reshape(len(grids), SHAPE, f, SHAPE, f).mean(axis=(2, 4))
    return _unit(_blur(small, 1.0))


def _phases(grids: np.ndarray) -> np.ndarray:
    """(N, GRID, GRID) -> (N, 4, GRID/2, GRID/2): the four STEP-2 subsamplings."""
    return np.stack([grids[:, a::STEP, b::STEP] for a in range(STEP) for b in range(STEP)], 1)


_SIDE = (GRID - 2 * MARGIN) // STEP          # 60: side of a compared window
_POSITIONS = GRID // STEP - _SIDE + 1         # 5: window positions per axis in each phase


def _window_spread(grids: np.ndarray) -> np.ndarray:
    """Root of the centred sum of squares of every compared window: (N, 4, 5, 5).

    With a zero-mean, unit-norm query q, NCC(q, w) = q.w / spread(w); integral images give
    every window's sum and sum of squares at once.
    """
    out = np.empty((len(grids), STEP * STEP, _POSITIONS, _POSITIONS), dtype=np.float32)
    for start in range(0, len(grids), 256):
        ph = _phases(grids[start:start + 256]).astype(np.float64)
        sums, squares = _window_sums(ph), _window_sums(ph * ph)
        var = np.maximum(squares - sums * sums / (_SIDE * _SIDE), 0.0)
        out[start:start + 256] = np.sqrt(var)
    return out


def _window_sums(values: np.ndarray) -> np.ndarray:
    c = np.pad(values.cumsum(-1).cumsum(-2), [(0, 0), (0, 0), (1, 0), (1, 0)])
    return (c[..., _SIDE:, _SIDE:] - c[..., :-_SIDE, _SIDE:]
            - c[..., _SIDE:, :-_SIDE] + c[..., :-_SIDE, :-_SIDE])


def _query_windows(grids: np.ndarray) -> np.ndarray:
    """The test pictures' centre windows, zero-mean and unit-norm: (N, 60, 60)."""
    centre = grids[:, MARGIN:GRID - MARGIN:STEP, MARGIN:GRID - MARGIN:STEP]
    return _unit(centre).reshape(len(grids), _SIDE, _SIDE)


def _shifted_queries(queries: np.ndarray) -> np.ndarray:
    """Each query window placed at every position of a phase grid: (N, 25, 64*64).

    A window's raw correlation with all 25 positions of one phase grid is then one matrix
    product, so the fine score of a query and its candidates is a single BLAS call.
    """
    side = GRID // STEP
    out = np.zeros((len(queries), _POSITIONS, _POSITIONS, side, side), dtype=np.float32)
    for y in range(_POSITIONS):
        for x in range(_POSITIONS):
            out[:, y, x, y:y + _SIDE, x:x + _SIDE] = queries
    return out.reshape(len(queries), _POSITIONS * _POSITIONS, side * side)


def _fine_scores(queries: np.ndarray, phases: np.ndarray, spread: np.ndarray,
                 candidates: np.ndarray, batch: int = 64) -> np.ndarray:
    """Best NCC over all shifts of each (query, candidate) pair: (Nq, K).

    ``phases`` are the training grids' :func:`_phases`, ``spread`` their window spreads.
    """
    out = np.zeros(candidates.shape, dtype=np.float32)
    k = candidates.shape[1]
    for start in range(0, len(queries), batch):
        cand = candidates[start:start + batch]
        shifted = _shifted_queries(queries[start:start + batch])      # (B, 25, 4096)
        grids = phases[cand].reshape(len(cand), k * STEP * STEP, -1)
        raw = np.matmul(grids, shifted.transpose(0, 2, 1))              # (B, K*4, 25)
        raw = raw.reshape(len(cand), k, -1)                             # (B, K, 4*25)
        sd = spread[cand].reshape(len(cand), k, -1)
        ncc = np.divide(raw, sd, out=np.zeros_like(raw), where=sd > _FLAT)
        out[start:start + batch] = ncc.max(axis=-1)
    return np.clip(out, -1.0, 1.0)


def _top(similarity: np.ndarray, k: int) -> np.ndarray:
    k = min(k, similarity.shape[1])
    return np.argpartition(-similarity, k - 1, axis=1)[:, :k]


@dataclass
class Match:
    """Per test picture: best training index (-1: none), its similarity (nan: none),
    whether the mirror image gave it, and the best similarity without mirroring."""

    index: np.ndarray
    similarity: np.ndarray
    mirrored: np.ndarray
    direct: np.ndarray


class _TrainingIndex:
    """Training pictures with what every query needs precomputed.

    Built from sampled grids (:func:`similarity_grid`); keeps the band-passed grids only
    as their four half-resolution phases (what the fine score reads) and window spreads.
    """

    def __init__(self, grids: np.ndarray) -> None:
        coarse, shape, phases, spread = [], [], [], []
        for start in range(0, len(grids), 512):
            detail = _detail(grids[start:start + 512])
            coarse.append(_coarse(detail))
            shape.append(_shape(grids[start:start + 512]))
            phases.append(_phases(detail))
            spread.append(_window_spread(detail))
        self.coarse = np.concatenate(coarse)
        self.shape = np.concatenate(shape)
        self.phases = np.concatenate(phases)
        self.spread = np.concatenate(spread)

    def __len__(self) -> int:
        return len(self.phases)

    def _candidates(self, detail: np.ndarray, grids: np.ndarray, k: int,
                    mask: np.ndarray | None) -> np.ndarray:
        """The best ``k`` by the detail code, plus ``k // 4`` by the shift-proof code.

        Measured on the real data: the detail code alone finds the real pairs (a 4x larger
        pool changes no decision); the shape code recovers planted shifted copies of small
        pictures, whose detail code moves (docs/leakage/calibration.md).
        """
        picks = []
        for codes, own, n in ((_coarse(detail), self.coarse, k),
                              (_shape(grids), self.shape, k // 4)):
            if n:
                sim = codes @ own.T
                if mask is not None:
                    sim = np.where(mask, -np.inf, sim)
                picks.append(_top(sim, n))
        return np.concatenate(picks, axis=1)

    def nearest(self, test_grids: np.ndarray, candidates: int,
                exclude: np.ndarray | None = None, mirror: bool = True) -> Match:
        """Each test grid's most similar training picture.

        With ``mirror`` the left-right mirror image of each test picture is searched too
        (the Kaggle data set holds mirrored copies) and the better of the two wins.
        """
        index, value = self._search(test_grids, candidates, exclude)
        direct = value.copy()
        mirrored = np.zeros(len(test_grids), dtype=bool)
        if mirror:
            m_index, m_value = self._search(np.ascontiguousarray(test_grids[:, :, ::-1]),
                                            candidates, exclude)
            mirrored = np.nan_to_num(m_value, nan=-np.inf) > np.nan_to_num(value, nan=-np.inf)
            index = np.where(mirrored, m_index, index)
            value = np.where(mirrored, m_value, value)
        return Match(index, value, mirrored, direct)

    def _search(self, test_grids: np.ndarray, candidates: int,
                exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        index = np.full(len(test_grids), -1, dtype=np.int64)
        value = np.full(len(test_grids), np.nan, dtype=np.float64)
        for start in range(0, len(test_grids), 512):
            rows = slice(start, start + 512)
            detail = _detail(test_grids[rows])
            mask = exclude[rows] if exclude is not None else None
            cand = self._candidates(detail, test_grids[rows], candidates, mask)
            scores = _fine_scores(_query_windows(detail), self.phases, self.spread,
                                  cand).astype(np.float64)
            if mask is not None:
                scores = np.where(np.take_along_axis(mask, cand, axis=1), -np.inf, scores)
            best = scores.argmax(axis=1)
            pick = np.arange(len(cand))
            found = np.isfinite(scores[pick, best])
            index[rows] = np.where(found, cand[pick, best], -1)
            value[rows] = np.where(found, scores[pick, best], np.nan)
        return index, value


def nearest_neighbours(test_grids: np.ndarray, train_grids: np.ndarray,
                       candidates: int = CANDIDATES, exclude: np.ndarray | None = None,
                       mirror: bool = True) -> Match:
    """For each test grid, its most similar training grid (both from :func:`similarity_grid`).

    ``exclude`` is an optional boolean (Nq, Nt) mask of pairs not to consider; a query
    with every pair excluded gets index -1 and similarity nan.
    """
    return _TrainingIndex(train_grids).nearest(test_grids, candidates, exclude, mirror)


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
        return 130
    if not args.quiet:
        print(f"{summary['duplicates']} of {summary['test_images']} test pictures duplicate a "
              f"training picture (threshold {summary['threshold']}); "
              f"{summary['kept']} kept in {Path(args.out) / 'dedup_test.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
