"""How alike two MR pictures are: the picture similarity the leakage audit is built on.

Every picture becomes a 128x128 grayscale grid, band-passed with a difference of Gaussians;
a coarse cosine search proposes candidates and a shift-searching normalised cross-
correlation scores them, for the picture and its mirror image. The method, and why each
constant has its value, is in ``trainer.audit``'s docstring and docs/leakage/README.md.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edge.preprocess import to_8bit_picture
from trainer.errors import DataError

__all__ = ["DEFAULT_THRESHOLD", "CANDIDATES", "CONTROL_CANDIDATES", "GRID", "Match",
           "similarity_grid", "nearest_neighbours"]

log = logging.getLogger(__name__)

# Chosen on the real data set (docs/leakage/README.md, docs/leakage/calibrate.py):
# above the highest similarity of two pictures of different classes (0.853), below every
# planted copy (re-encoded, resized, shifted, mirrored, brightness/contrast/gamma changed,
# sharpened; lowest 0.914).
DEFAULT_THRESHOLD = 0.87

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
