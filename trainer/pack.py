"""A compact, pre-resized copy of a data set, for training on a machine it must travel to.

The GPU machine lent to this project takes at most 64 MiB of files per call, and the data
set is 169 MB. ``pack`` decodes every image exactly as training does (``resize_uint8``:
224x224, the one preprocessing definition) and stores the result as lossy WebP, ~8 KB an
image at quality 85 (measured: mean absolute error ~1.8 grey levels of 255). ``unpack``
turns a pack back into an ordinary class-folder data set of lossless gray PNGs, whose file
names keep the original stem, so ``python -m trainer train --data`` reads it unchanged (a
224x224 picture is not resized again).

A model trained on a pack has seen slightly noisy copies of the training images. Scores
that are reported are always computed on the original files (``trainer evaluate --data``).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge.durable import atomic_path, write_bytes_atomic
from edge.preprocess import DEFAULT_SPEC, PreprocessSpec, resize_uint8
from trainer.data import SPLITS, scan_split
from trainer.errors import DataError, OptionError

log = logging.getLogger(__name__)

PACK_FORMAT = "neuroedge-data-pack/1"
PACK_JSON = "pack.json"
DEFAULT_QUALITY = 85

__all__ = ["PACK_FORMAT", "PACK_JSON", "DEFAULT_QUALITY", "pack", "unpack", "read_pack"]


def _gray(pixels: np.ndarray, name: str) -> np.ndarray:
    if not np.array_equal(pixels[..., 0:1].repeat(pixels.shape[2], axis=2), pixels):
        raise DataError(f"{name} is a colour picture; packs hold grayscale images only "
                        f"(this data set's are). Train on the original folder instead.")
    return pixels[..., 0]


def _pack_one(src: Path, dst: Path, spec: PreprocessSpec, quality: int) -> int:
    with Image.open(src) as image:
        image.load()
        pixels = _gray(resize_uint8(image, spec), str(src))
    with atomic_path(dst, durable=False) as tmp:  # thousands of files: no fsync each
        Image.fromarray(pixels).save(tmp, "WEBP", quality=quality, method=6)
    return dst.stat().st_size


def _check_new_folder(out: Path, what: str) -> None:
    """Refuse a destination that would mix with other files (nothing is overwritten)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{what} {out} is a file; choose a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"{what} {out} is not empty; choose a new folder or remove it")


def pack(data_dir: str | os.PathLike, out: str | os.PathLike, *, quality: int = DEFAULT_QUALITY,
         splits: tuple[str, ...] = SPLITS, spec: PreprocessSpec = DEFAULT_SPEC,
         workers: int | None = None) -> dict[str, Any]:
    """Write ``out/<split>/<class>/<stem>.webp`` and ``out/pack.json``; returns the record."""
    if not 1 <= quality <= 100:
        raise OptionError(f"--quality must be 1..100 (WebP quality; 85 is the default), "
                          f"got {quality}")
    root, out = Path(data_dir).expanduser(), Path(out).expanduser()
    _check_new_folder(out, "pack folder")
    files: dict[str, str] = {}
    jobs = []
    for split in splits:
        paths, _, _ = scan_split(root, split)
        for rel in paths:
            packed = str(Path(rel).with_suffix(".webp").as_posix())
            if packed in files:
                raise DataError(f"{rel} and {files[packed]} would share the packed name "
                                f"{packed}; rename one of them")
            files[packed] = rel
            jobs.append((root / rel, out / packed))
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL
        sizes = list(pool.map(lambda job: _pack_one(job[0], job[1], spec, quality), jobs))
    record = {"format": PACK_FORMAT, "source": str(root), "quality": quality,
              "codec": "webp-lossy-gray", "preprocess": spec.to_dict(), "splits": list(splits),
              "images": len(files), "bytes": int(sum(sizes)), "files": files}
    write_bytes_atomic(out / PACK_JSON,
                       (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    log.info("packed %d images from %s into %s: %.1f MB (%.1f KB/image, WebP q%d)",
             len(files), root, out, record["bytes"] / 1e6,
             record["bytes"] / max(1, len(files)) / 1024, quality)
    return record


def read_pack(pack_dir: str | os.PathLike) -> dict[str, Any]:
    """The pack's ``pack.json``, checked."""
    path = Path(pack_dir).expanduser() / PACK_JSON
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path.parent} is not a data pack (no {PACK_JSON}); make one with "
                        f"python -m trainer pack") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if record.get("format") != PACK_FORMAT:
        raise DataError(f"{path} has format {record.get('format')!r}, expected {PACK_FORMAT}")
    return record


def _unpack_one(src: Path, dst: Path) -> None:
    with Image.open(src) as image:
        pixels = image.convert("L")
    with atomic_path(dst, durable=False) as tmp:
        pixels.save(tmp, "PNG")


def unpack(pack_dir: str | os.PathLike, out: str | os.PathLike, *,
           workers: int | None = None) -> int:
    """Decode a pack into ``out/<split>/<class>/<original stem>.png``; returns the count."""
    pack_dir, out = Path(pack_dir).expanduser(), Path(out).expanduser()
    record = read_pack(pack_dir)
    _check_new_folder(out, "data folder")
    missing = [name for name in record["files"] if not (pack_dir / name).is_file()]
    if missing:
        raise DataError(f"pack {pack_dir} lacks {len(missing)} of its {len(record['files'])} "
                        f"files (first: {missing[0]}); copy the whole pack folder")
    jobs = [(pack_dir / name, out / Path(name).with_suffix(".png")) for name in record["files"]]
    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda job: _unpack_one(*job), jobs))
    log.info("unpacked %d images into %s", len(jobs), out)
    return len(jobs)
