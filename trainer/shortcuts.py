"""Shortcut audit: can simple picture properties alone tell the classes apart?

A data set assembled from several sources can carry its labels in the pictures' storage
rather than their anatomy: one source's size, black frame, brightness or JPEG settings.
A network learns such a shortcut happily, and it fails on the first scanner that stores
pictures differently. This audit measures the risk before any network is trained:

1. per picture, properties that say nothing about a tumour: size and aspect ratio, file
   bytes per pixel, JPEG quality (estimated from its quantization tables), colour vs grey
   storage, black frame and border brightness, intensity histogram statistics;
   and, on the 224x224 picture the network actually sees (the device's stretch resize),
   sharpness and the head's shape: a non-square original comes out stretched;
2. per split, cross-validated classifiers on those properties alone (multinomial logistic
   regression and k-nearest neighbours, plain numpy), overall, per class and per property
   group (and the "visible" ones: those that survive the device's preprocessing), and for
   "no tumour vs tumour"; chance is the largest class's share;
3. per folder (split/class and external folders), the typical value of each property;
4. for each external folder, what a property-only classifier fitted on each split calls
   its pictures: if it calls Br35H tumour pictures "notumor", so may a network.

``python -m trainer audit-shortcuts DATA_DIR [--external DIR]``; no Keras.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainer.data import SPLITS, scan_split
from trainer.errors import DataError, OptionError

log = logging.getLogger(__name__)

FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "size": ("log_width", "log_height", "aspect", "log_pixels"),
    "file": ("bytes_per_pixel", "is_jpeg", "jpeg_quality", "rgb_storage", "colourfulness"),
    "border": ("black_frame", "border_mean", "dark_fraction"),
    "intensity": ("mean", "std", "p05", "p50", "p95", "skew", "entropy", "bright_fraction"),
    "model_input": ("sharpness", "head_aspect", "head_fill"),
}
FEATURES = tuple(name for group in FEATURE_GROUPS.values() for name in group)
# What survives the device's preprocessing (resize to 224x224, grey to RGB): size, file and
# storage properties do not reach the network; these do.
VISIBLE = FEATURE_GROUPS["border"] + FEATURE_GROUPS["intensity"] + FEATURE_GROUPS["model_input"]
# The IJG standard luminance quantization table (quality 50), for the quality estimate.
_STD_LUMA_SUM = sum((16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16,
                     24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109,
                     103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120,
                     101, 72, 92, 95, 98, 112, 100, 103, 99))
DARK, BRIGHT = 10, 245
ANALYSIS_SIDE = 256


def jpeg_quality(image: Image.Image) -> float | None:
    """The IJG quality (1-100) whose scaled standard table best matches the luminance table.

    libjpeg scales the standard table by S = 5000/Q (Q < 50) or 200 - 2Q; the ratio of the
    table sums recovers S to within rounding. None for a file that is not a JPEG.
    """
    tables = getattr(image, "quantization", None)
    if not tables:
        return None
    luma = tables.get(0) if isinstance(tables, dict) else None
    if luma is None:
        return None
    s = 100.0 * float(np.sum(luma)) / _STD_LUMA_SUM
    quality = (200.0 - s) / 2.0 if s <= 100.0 else 5000.0 / s
    return float(np.clip(quality, 1.0, 100.0))


def _frame_fraction(dark_rows: np.ndarray) -> float:
    """Share of a side taken by dark lines at both ends (a black frame)."""
    n = len(dark_rows)
    lead = int(np.argmin(dark_rows)) if not dark_rows.all() else n
    trail = int(np.argmin(dark_rows[::-1])) if not dark_rows.all() else n
    return min(1.0, (lead + trail) / n)


def model_input_features(image: Image.Image) -> dict[str, float]:
    """What survives the device's preprocessing: sharpness and the head's bounding box.

    Sharpness is the mean absolute Laplacian over the standard deviation (resolution and
    re-encoding change it); the head's box is the extent of rows and columns where more
    than 5% of the pixels are brighter than the dark background. A square head stored in
    a non-square picture comes out stretched: ``head_aspect`` (box height / width) moves.
    """
    from edge.preprocess import DEFAULT_SPEC, resize_uint8

    grey = resize_uint8(image, DEFAULT_SPEC)[..., 0].astype(np.float32)
    lap = (4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2]
           - grey[1:-1, 2:])
    bright = grey > 2 * DARK
    rows = np.flatnonzero(bright.mean(axis=1) > 0.05)
    cols = np.flatnonzero(bright.mean(axis=0) > 0.05)
    if len(rows) and len(cols):
        box_h, box_w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    else:
        box_h = box_w = 1
    return {"sharpness": float(np.abs(lap).mean() / (grey.std() + 1e-6)),
            "head_aspect": float(box_h / box_w),
            "head_fill": float(box_h * box_w / grey.size)}


def picture_features(path: Path) -> dict[str, float]:
    """The properties of one picture file (see the module docstring)."""
    with Image.open(path) as image:
        width, height = image.size
        quality = jpeg_quality(image)
        fmt = image.format or ""
        mode = image.mode
        image.load()
        seen = model_input_features(image)
        rgb = image.convert("RGB") if mode not in ("L", "RGB") else image
        if max(width, height) > ANALYSIS_SIDE:
            rgb = rgb.copy()
            rgb.thumbnail((ANALYSIS_SIDE, ANALYSIS_SIDE), Image.BILINEAR)
        pixels = np.asarray(rgb, dtype=np.float32)
    if pixels.ndim == 2:
        grey, colour = pixels, 0.0
    else:
        grey = pixels.mean(axis=2)
        colour = float(np.mean(np.abs(pixels[..., 0] - pixels[..., 1])
                               + np.abs(pixels[..., 1] - pixels[..., 2])))
    values = grey.ravel()
    std = float(values.std())
    h, w = grey.shape
    ring = max(1, round(0.04 * min(h, w)))
    border = np.concatenate([grey[:ring].ravel(), grey[-ring:].ravel(),
                             grey[:, :ring].ravel(), grey[:, -ring:].ravel()])
    dark_rows, dark_cols = grey.max(axis=1) < DARK, grey.max(axis=0) < DARK
    hist = np.bincount(np.clip(values, 0, 255).astype(np.int64) // 8, minlength=32)
    p = hist[hist > 0] / hist.sum()
    return {
        "log_width": float(np.log(width)), "log_height": float(np.log(height)),
        "aspect": width / height, "log_pixels": float(np.log(width * height)),
        "bytes_per_pixel": path.stat().st_size / (width * height),
        "is_jpeg": float(fmt == "JPEG"), "jpeg_quality": quality if quality is not None else 100.0,
        "rgb_storage": float(mode not in ("L", "I;16", "I", "F", "1", "LA")),
        "colourfulness": colour,
        "black_frame": (_frame_fraction(dark_rows) + _frame_fraction(dark_cols)) / 2,
        "border_mean": float(border.mean()) / 255, "dark_fraction": float(np.mean(values < DARK)),
        "mean": float(values.mean()) / 255, "std": std / 255,
        "p05": float(np.percentile(values, 5)) / 255, "p50": float(np.median(values)) / 255,
        "p95": float(np.percentile(values, 95)) / 255,
        "skew": float(np.mean((values - values.mean()) ** 3) / (std ** 3 + 1e-9)),
        "entropy": float(-(p * np.log2(p)).sum()),
        "bright_fraction": float(np.mean(values > BRIGHT)),
        **seen,
    }


@dataclass
class FeatureTable:
    """Features (N, F) of one folder set, with labels (or folder names) and paths."""

    name: str
    features: np.ndarray
    labels: np.ndarray  # class index; -1 for an external picture of unknown class
    folders: list[str]
    paths: list[str]


def measure_properties(root: Path, paths: Sequence[str], workers: int | None) -> np.ndarray:
    def one(rel: str) -> dict[str, float] | str:
        try:
            return picture_features(root / rel)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
            return f"{rel} ({type(exc).__name__}: {exc})"

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        rows = list(pool.map(one, paths))
    bad = [r for r in rows if isinstance(r, str)]
    if bad:
        raise DataError(f"{len(bad)} picture(s) under {root} could not be read: "
                        + "; ".join(bad[:5]) + ". Replace or remove them, then run again.")
    return np.array([[r[name] for name in FEATURES] for r in rows], dtype=np.float64)


def split_features(data_dir: Path, split: str, workers: int | None = None) -> FeatureTable:
    paths, labels, names = scan_split(data_dir, split)
    features = measure_properties(Path(data_dir) / split, [p.split("/", 1)[1] for p in paths],
                                  workers)
    return FeatureTable(split, features, labels, [f"{split}/{names[i]}" for i in labels], paths)


def external_features(root: Path, workers: int | None = None) -> FeatureTable:
    """Every picture in ``root/<folder>/`` (any folder names: the audit needs no labels)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"external folder {root} does not exist or is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths = [f"{f.name}/{p.name}" for f in folders for p in sorted(f.iterdir())
             if p.suffix.lower() in (".jpg", ".jpeg", ".png") and not p.name.startswith(".")]
    if not paths:
        raise DataError(f"external folder {root} holds no pictures in sub-folders "
                        "(expected DIR/<folder>/*.jpg|png)")
    name = root.resolve().name
    return FeatureTable(name, measure_properties(root, paths, workers), np.full(len(paths), -1),
                        [f"{name}/{p.split('/')[0]}" for p in paths], paths)


# -- classifiers (numpy only) ------------------------------------------------------------

def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std < 1e-9] = 1.0  # a constant property carries no information
    return [(x - mean) / std for x in (train, *others)]


def logistic_fit(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-2,
                 steps: int = 400) -> np.ndarray:
    """Multinomial logistic regression by full-batch gradient descent on standardized x."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros((xb.shape[1], classes))
    target = np.eye(classes)[y]
    lr = 0.5
    for _ in range(steps):
        z = xb @ w
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        grad = xb.T @ (p - target) / len(x) + l2 * np.vstack([w[:-1], np.zeros((1, classes))])
        w -= lr * grad
    return w


def logistic_predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    z = np.hstack([x, np.ones((len(x), 1))]) @ w
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, classes: int,
                k: int = 15) -> np.ndarray:
    """Class shares among the k nearest training pictures (Euclidean, standardized)."""
    probs = np.zeros((len(x), classes))
    for start in range(0, len(x), 512):
        chunk = x[start:start + 512]
        d = (chunk ** 2).sum(1)[:, None] - 2 * chunk @ train_x.T + (train_x ** 2).sum(1)[None]
        nearest = np.argpartition(d, min(k, len(train_x) - 1), axis=1)[:, :k]
        for i, row in enumerate(train_y[nearest]):
            probs[start + i] = np.bincount(row, minlength=classes) / len(row)
    return probs


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number of each picture, every class spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % folds
    return fold


def cross_validate(x: np.ndarray, y: np.ndarray, classes: int, folds: int,
                   seed: int) -> dict[str, np.ndarray]:
    """Out-of-fold class probabilities of both classifiers."""
    fold = stratified_folds(y, folds, seed)
    out = {"logistic": np.zeros((len(y), classes)), "knn": np.zeros((len(y), classes))}
    for f in range(folds):
        train, test = fold != f, fold == f
        xt, xv = standardize(x[train], x[test])
        out["logistic"][test] = logistic_predict(logistic_fit(xt, y[train], classes), xv)
        out["knn"][test] = knn_predict(xt, y[train], xv, classes)
    return out


def _auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    from trainer.metrics import roc_auc

    return roc_auc(score, positive)


def _scores(y: np.ndarray, probs: np.ndarray, names: list[str],
            negative: int | None) -> dict[str, Any]:
    predicted = probs.argmax(axis=1)
    result: dict[str, Any] = {
        "accuracy": float(np.mean(predicted == y)),
        "recall": {name: float(np.mean(predicted[y == i] == i)) if np.any(y == i) else None
                   for i, name in enumerate(names)},
    }
    if negative is not None:
        is_neg = y == negative
        result["notumor_vs_tumour_auc"] = _auc(probs[:, negative], is_neg)
        result["notumor_vs_tumour_accuracy"] = float(np.mean((predicted == negative) == is_neg))
    return result


def audit_split(table: FeatureTable, names: list[str], folds: int = 5,
                seed: int = 0) -> dict[str, Any]:
    """How well the properties predict the class in one split: all, and per group."""
    from trainer.external import no_tumour_index

    negative = no_tumour_index(names)
    y = table.labels
    counts = np.bincount(y, minlength=len(names))
    result: dict[str, Any] = {
        "n": int(len(y)), "per_class": {n: int(c) for n, c in zip(names, counts, strict=True)},
        "chance_accuracy": float(counts.max() / counts.sum()),
        "chance_notumor_vs_tumour": (float(max(counts[negative], len(y) - counts[negative])
                                           / len(y)) if negative is not None else None),
        "groups": {},
    }
    for group, columns in [("all", FEATURES), ("visible", VISIBLE), *FEATURE_GROUPS.items()]:
        idx = [FEATURES.index(c) for c in columns]
        probs = cross_validate(table.features[:, idx], y, len(names), folds, seed)
        result["groups"][group] = {clf: _scores(y, p, names, negative)
                                   for clf, p in probs.items()}
    return result


def folder_summary(tables: Sequence[FeatureTable]) -> dict[str, dict[str, float]]:
    """Median of each property per folder (split/class, or external/folder)."""
    summary: dict[str, dict[str, float]] = {}
    for table in tables:
        folders = np.asarray(table.folders)
        for folder in dict.fromkeys(table.folders):
            rows = table.features[folders == folder]
            summary[folder] = {"n": int(len(rows)),
                               **{f: float(np.median(rows[:, i])) for i, f in enumerate(FEATURES)},
                               "share_rgb_storage": float(rows[:, FEATURES.index(
                                   "rgb_storage")].mean()),
                               "share_square": float(np.mean(np.abs(rows[:, FEATURES.index(
                                   "aspect")] - 1) < 0.01))}
    return summary


def external_calls(reference: FeatureTable, external: FeatureTable, names: list[str],
                   columns: Sequence[str] = FEATURES, group: str = "all") -> dict[str, Any]:
    """What property-only classifiers fitted on ``reference`` call the external pictures."""
    idx = [FEATURES.index(c) for c in columns]
    xt, xe = standardize(reference.features[:, idx], external.features[:, idx])
    w = logistic_fit(xt, reference.labels, len(names))
    calls = {}
    for clf, probs in (("logistic", logistic_predict(w, xe)),
                       ("knn", knn_predict(xt, reference.labels, xe, len(names)))):
        predicted = np.bincount(probs.argmax(axis=1), minlength=len(names))
        calls[clf] = {n: float(c / len(xe)) for n, c in zip(names, predicted, strict=True)}
    return {"fitted_on": reference.name, "properties": group, "n": int(len(xe)),
            "called": calls}


def audit_shortcuts(data_dir: str | os.PathLike, external: Sequence[str | os.PathLike] = (),
                    *, folds: int = 5, seed: int = 0,
                    workers: int | None = None) -> tuple[dict[str, Any], list[FeatureTable]]:
    """The whole audit (see the module docstring); returns the record and the features."""
    if folds < 2:
        raise OptionError(f"--folds must be at least 2, got {folds}")
    data_dir = Path(data_dir).expanduser()
    names = scan_split(data_dir, "Training")[2]
    splits = [s for s in SPLITS if (data_dir / s).is_dir()]
    tables = []
    for split in splits:
        log.info("measuring %s pictures", split)
        tables.append(split_features(data_dir, split, workers))
    ext_tables = [external_features(Path(e), workers) for e in external]
    record: dict[str, Any] = {
        "data_dir": str(data_dir.resolve()), "labels": names, "features": FEATURE_GROUPS,
        "folds": folds, "seed": seed,
        "splits": {t.name: audit_split(t, names, folds, seed) for t in tables},
        "folders": folder_summary([*tables, *ext_tables]),
        "external": {e.name: [external_calls(t, e, names, cols, group) for t in tables
                              for group, cols in (("all", FEATURES), ("visible", VISIBLE))]
                     for e in ext_tables},
    }
    return record, [*tables, *ext_tables]


def write_audit(out: Path, record: dict[str, Any], tables: Sequence[FeatureTable]) -> None:
    """audit.json, features.csv (one row per picture) and report.md into ``out``."""
    from trainer.runs import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "audit.json", record)
    lines = ["set,path,folder," + ",".join(FEATURES)]
    for t in tables:
        for i, path in enumerate(t.paths):
            lines.append(f"{t.name},{path},{t.folders[i]},"
                         + ",".join(f"{v:.6g}" for v in t.features[i]))
    write_text_atomic(out / "features.csv", "\n".join(lines) + "\n")
    write_text_atomic(out / "report.md", report_markdown(record))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def report_markdown(record: dict[str, Any]) -> str:
    """The audit's tables, as docs/shortcuts.md quotes them."""
    names = record["labels"]
    out = [f"# Shortcut audit of {record['data_dir']}", "",
           f"{record['folds']}-fold stratified cross-validation (seed {record['seed']}); "
           "accuracy in percent; L = logistic regression, k = 15-nearest neighbours.", ""]
    for split, result in record["splits"].items():
        out += [f"## {split} ({result['n']} pictures; chance {_pct(result['chance_accuracy'])}%, "
                f"no tumour vs tumour chance {_pct(result['chance_notumor_vs_tumour'])}%)", "",
                "| properties | accuracy L / k | " + " | ".join(
                    f"recall {n} L / k" for n in names) + " | no tumour vs tumour AUC L / k |",
                "|---|---:|" + "---:|" * len(names) + "---:|"]
        for group, g in result["groups"].items():
            lr, nn = g["logistic"], g["knn"]
            recalls = " | ".join(f"{_pct(lr['recall'][n])} / {_pct(nn['recall'][n])}"
                                 for n in names)
            auc = " / ".join("n/a" if c.get("notumor_vs_tumour_auc") is None
                             else f"{c['notumor_vs_tumour_auc']:.3f}" for c in (lr, nn))
            out.append(f"| {group} | {_pct(lr['accuracy'])} / {_pct(nn['accuracy'])} | "
                       f"{recalls} | {auc} |")
        out.append("")
    shown = ("log_width", "aspect", "bytes_per_pixel", "jpeg_quality", "black_frame",
             "border_mean", "mean", "std", "p95", "sharpness", "head_aspect", "head_fill")
    out += ["## Typical values per folder (medians; shares where named)", "",
            "| folder | n | width | aspect | square % | bytes/pixel | JPEG quality | RGB storage % "
            "| black frame | border | mean | std | p95 | sharpness | head h/w | head fill |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for folder, s in record["folders"].items():
        vals = [f"{np.exp(s['log_width']):.0f}", f"{s['aspect']:.2f}",
                f"{100 * s['share_square']:.0f}", f"{s['bytes_per_pixel']:.3f}",
                f"{s['jpeg_quality']:.0f}", f"{100 * s['share_rgb_storage']:.0f}"]
        vals += [f"{s[k]:.3f}" for k in shown[4:]]
        out.append(f"| {folder} | {s['n']} | " + " | ".join(vals) + " |")
    out.append("")
    for name, calls in record["external"].items():
        out += [f"## What property-only classifiers call {name}", "",
                "| fitted on | properties | classifier | " + " | ".join(names) + " |",
                "|---|---|---|" + "---:|" * len(names)]
        for c in calls:
            for clf, shares in c["called"].items():
                out.append(f"| {c['fitted_on']} | {c['properties']} | {clf} | "
                           + " | ".join(f"{100 * shares[n]:.1f}%" for n in names) + " |")
        out.append("")
    return "\n".join(out)


def default_out(data_dir: str | os.PathLike) -> Path:
    return Path("runs") / "shortcut-audit" / Path(data_dir).expanduser().resolve().name
