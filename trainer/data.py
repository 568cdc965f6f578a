"""Class-folder image data sets, decoded once into a uint8 cache.

Layout: ``DIR/Training/<class>/*.jpg|png`` and ``DIR/Testing/<class>/*``; class order is
alphabetical and travels with every artifact. Pictures are resized with
``edge.preprocess.resize_uint8`` (the device's own function) and kept as uint8; the float
input is made per batch with ``edge.preprocess.scale``. The full data set is about 1 GB as
uint8 (4 GB as float32).

Decoding the 7,000 JPEGs takes minutes on two cores, so a decoded split is also kept on
disk (``~/.cache/neuroedge/images``, or ``cache_dir``) as one ``.npz`` whose name is a hash
of the folder, the split, every file's name/size/mtime, the preprocessing spec and the
preprocessing code: any change to these decodes afresh, never a stale cache.

No Keras here: the converters and the leakage audit import this module too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import edge.preprocess
from edge.durable import atomic_file
from edge.preprocess import DEFAULT_SPEC, PreprocessSpec, resize_uint8
from trainer.errors import DataError

__all__ = [
    "SPLITS", "IMAGE_SUFFIXES", "DataError", "Dataset", "class_names", "scan_split",
    "load_split", "stratified_indices", "stratified_split", "default_cache_dir",
]

log = logging.getLogger(__name__)

SPLITS = ("Training", "Testing")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_FORMAT = 1
LAYOUT_HINT = (
    "Expected layout: DIR/Training/<class>/*.jpg|png and DIR/Testing/<class>/*.jpg|png, "
    "one folder per class (e.g. glioma, meningioma, notumor, pituitary)."
)


@dataclass
class Dataset:
    """Decoded images of one split: uint8 (N, H, W, 3), int64 labels, relative posix paths."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        indices = np.asarray(indices, dtype=np.int64)
        return Dataset(self.images[indices], self.labels[indices],
                       [self.paths[i] for i in indices], list(self.class_names))

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _split_dir(data_dir: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist. {LAYOUT_HINT}")
    if not root.is_dir():
        raise DataError(f"data folder {root} is not a folder. {LAYOUT_HINT}")
    split_dir = root / split
    if not split_dir.is_dir():
        hint = ""
        if root.name in SPLITS:
            hint = f" It looks like a split folder itself: pass its parent {root.parent}."
        raise DataError(f"data folder {root} has no {split}/ folder.{hint} {LAYOUT_HINT}")
    return split_dir


def class_names(data_dir: str | os.PathLike, split: str = "Training") -> list[str]:
    """The class folder names of ``split``, alphabetical: index i is label i everywhere."""
    split_dir = _split_dir(data_dir, split)
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and _visible(p))
    if len(names) < 2:
        raise DataError(
            f"{split_dir} holds {len(names)} class folder(s); at least 2 are needed. {LAYOUT_HINT}"
        )
    return names


def scan_split(
    data_dir: str | os.PathLike, split: str, classes: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray, list[str]]:
    """List a split's images without decoding: (relative paths, labels, class names).

    ``classes`` fixes the label order (a trained model's labels); a class folder that is
    not among them is an error, because the model cannot predict it.
    """
    split_dir = _split_dir(data_dir, split)
    found = class_names(data_dir, split)
    names = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataError(
            f"{split_dir} has class folder(s) {', '.join(unknown)} that are not among the "
            f"model's classes ({', '.join(names)}). Remove them or train on this layout."
        )
    paths: list[str] = []
    labels: list[int] = []
    ignored = 0
    for label, name in enumerate(names):
        folder = split_dir / name
        if not folder.is_dir():
            log.warning("%s has no folder for class %r; no %s images of it", split_dir, name,
                        split)
            continue
        files = sorted(p for p in folder.iterdir() if p.is_file() and _visible(p))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        ignored += len(files) - len(images)
        if not images:
            raise DataError(
                f"class folder {folder} holds no JPEG or PNG images "
                f"({', '.join(IMAGE_SUFFIXES)}). Add images or remove the folder."
            )
        paths.extend(p.relative_to(split_dir.parent).as_posix() for p in images)
        labels.extend([label] * len(images))
    if ignored:
        log.warning("ignored %d file(s) in %s that are not %s", ignored, split_dir,
                    "/".join(IMAGE_SUFFIXES))
    return paths, np.asarray(labels, dtype=np.int64), names


def stratified_indices(labels: Sequence[int] | np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded subset of at most ``n`` indices with the class proportions of ``labels``.

    Every class present gets at least one index when ``n`` allows it (largest remainder
    allocation); the result is sorted, so the subset keeps the folder order.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n < 1:
        raise DataError(f"a subset needs at least 1 image, got {n}")
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts / counts.sum() * n
    take = np.floor(quota).astype(np.int64)
    if n >= len(classes):
        take = np.maximum(take, 1)
    remainder = n - take.sum()
    for i in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if remainder <= 0:
            break
        if take[i] < counts[i]:
            take[i] += 1
            remainder -= 1
    while take.sum() > n:  # the minimum of 1 per class overshot: trim the largest
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
              for c, k in zip(classes, take, strict=True) if k > 0]
    return np.sort(np.concatenate(chosen))


def stratified_split(
    labels: Sequence[int] | np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified (train, validation) index split; ``fraction`` goes to validation.

    Each class gives round(fraction * count) images, at least one, and keeps at least one.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 < fraction < 1.0:
        raise DataError(f"the validation fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            raise DataError(
                f"class {int(c)} has {len(members)} training image(s); a validation split "
                f"needs at least 2 per class. Use more images (or a larger --limit)."
            )
        k = min(max(1, round(fraction * len(members))), len(members) - 1)
        val.append(rng.choice(members, size=k, replace=False))
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def default_cache_dir() -> Path:
    """``$NEUROEDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/neuroedge``, else ~/.cache/neuroedge."""
    if os.environ.get("NEUROEDGE_CACHE_DIR"):
        return Path(os.environ["NEUROEDGE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "neuroedge"


def _cache_key(root: Path, split: str, paths: Iterable[str], spec: PreprocessSpec) -> str:
    digest = hashlib.sha256()
    code = Path(edge.preprocess.__file__).read_bytes()
    header = {"format": CACHE_FORMAT, "root": str(root.resolve()), "split": split,
              "spec": spec.to_dict(), "preprocess_code": hashlib.sha256(code).hexdigest()}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for rel in paths:
        stat = (root / rel).stat()
        digest.update(f"\n{rel}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _read_cache(path: Path, n: int, spec: PreprocessSpec) -> np.ndarray | None:
    try:
        with np.load(path) as cached:
            pixels = cached["pixels"]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable image cache %s (%s)", path, exc)
        return None
    if pixels.ndim == 3:  # stored as one channel because every image was gray
        pixels = np.repeat(pixels[..., None], 3, axis=3)
    if pixels.shape != (n, *spec.shape) or pixels.dtype != np.uint8:
        log.warning("ignoring image cache %s with unexpected shape %s", path, pixels.shape)
        return None
    return pixels


def _write_cache(path: Path, images: np.ndarray) -> None:
    gray = bool(np.all(images[..., 0:1] == images[..., 1:]))  # grayscale: store one channel
    pixels = images[..., 0] if gray else images
    try:  # a cache: atomic, but not worth an fsync (it is rebuilt if lost)
        with atomic_file(path, durable=False) as handle:
            np.savez(handle, pixels=pixels)
    except OSError as exc:
        log.warning("could not write image cache %s (%s); continuing without it", path, exc)


def _decode(path: Path, spec: PreprocessSpec) -> np.ndarray | str:
    try:
        with Image.open(path) as image:
            image.load()
            return resize_uint8(image, spec)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file for the user
        return f"{type(exc).__name__}: {exc}"


def _decode_all(root: Path, paths: list[str], spec: PreprocessSpec, progress: bool,
                workers: int | None) -> np.ndarray:
    images = np.empty((len(paths), *spec.shape), dtype=np.uint8)
    failures: list[str] = []
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(paths), desc="decoding", unit="img", leave=False)
        except ImportError:
            bar = None
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL
        for i, result in enumerate(pool.map(lambda p: _decode(root / p, spec), paths)):
            if isinstance(result, str):
                failures.append(f"{paths[i]} ({result})")
            else:
                images[i] = result
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if failures:
        shown = "\n  ".join(failures[:5])
        more = f"\n  ... and {len(failures) - 5} more" if len(failures) > 5 else ""
        raise DataError(
            f"{len(failures)} image(s) in {root} could not be read:\n  {shown}{more}\n"
            f"Replace or remove these files, then run again."
        )
    return images


def load_split(
    data_dir: str | os.PathLike,
    split: str,
    spec: PreprocessSpec = DEFAULT_SPEC,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = False,
    *,
    classes: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    workers: int | None = None,
) -> Dataset:
    """Decode one split into memory as uint8, from the on-disk cache when it is current.

    ``limit`` keeps a seeded, stratified subset of at most that many images (only those are
    decoded). ``classes`` fixes the label order (see ``scan_split``).
    """
    root = Path(data_dir).expanduser()
    paths, labels, names = scan_split(root, split, classes)
    if limit is not None:
        keep = stratified_indices(labels, int(limit), seed)
        paths, labels = [paths[i] for i in keep], labels[keep]
    images = None
    cache_file = None
    if use_cache:
        cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        key = _cache_key(root, split, paths, spec)
        cache_file = cache_root / "images" / f"{split.lower()}-{key}.npz"
        if cache_file.is_file():
            images = _read_cache(cache_file, len(paths), spec)
            if images is not None:
                log.info("loaded %d %s images from cache %s", len(paths), split, cache_file)
    if images is None:
        log.info("decoding %d %s images from %s", len(paths), split, root)
        images = _decode_all(root, paths, spec, progress, workers)
        if cache_file is not None:
            _write_cache(cache_file, images)
    return Dataset(images, labels, paths, names)
