"""Pictures that are not brain MR slices, for measuring the "unlike the training data" flag.

Everything is made here or comes with an installed package; nothing is downloaded:

- pydicom's own test files of other modalities (CT, NM, US, RT dose, segmentation, colour
  secondary captures), and, when the ``pydicom-data`` package is installed (the ``dev``
  extra), its larger ones too: two computed radiographs (a chest and an extremity X-ray),
  more CT and ultrasound; decoded by the agent's own DICOM pipeline with every modality
  allowed, and saved as PNG and as JPEG: the flag must hold for a CT exported as a picture;
- the photographs matplotlib ships as sample data (``grace_hopper.jpg`` and others), whole
  and as seeded crops, in colour and in grey;
- synthetic photographs drawn with a seed: outdoor scenes, coloured objects, textures,
  documents, each in colour and some in grey.

Identical pictures (pydicom ships the same test pattern in many encodings) are kept once:
the figures count distinct pictures, not files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

# Modality -> group name in the tables. MR is left out: those are the sort of file we classify.
_DICOM_GROUPS = {"CT": "CT", "NM": "nuclear medicine", "US": "ultrasound",
                 "OT": "colour secondary capture", "RTDOSE": "RT dose", "SEG": "segmentation",
                 "CR": "X-ray", "DX": "X-ray", "MG": "mammography"}
_MATPLOTLIB_PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")


@dataclass(frozen=True)
class NonBrainImage:
    path: Path
    group: str  # "CT", "ultrasound", "photograph", "synthetic photograph", ...
    source: str  # where it came from, in words


def _save_both(picture: Image.Image, out: Path, stem: str) -> list[Path]:
    """The picture as PNG and as JPEG (quality 90), the two formats the agent takes."""
    picture = picture.convert("L") if picture.mode in ("L", "I;16", "I", "F", "1") else (
        picture.convert("RGB"))
    png, jpeg = out / f"{stem}.png", out / f"{stem}.jpg"
    picture.save(png, format="PNG")
    picture.save(jpeg, format="JPEG", quality=90)
    return [png, jpeg]


def _thumbnail(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB").resize((64, 64), Image.BILINEAR), dtype=np.float32)


def _seen_before(thumbnail: np.ndarray, seen: list[np.ndarray]) -> bool:
    """The same picture in another encoding: within 3 grey levels on average and correlated
    above 0.99 (a lossy JPEG 2000 copy of a lossless one is not byte-identical; two mostly
    black pictures are close in grey levels without being the same)."""
    for other in seen:
        if np.abs(thumbnail - other).mean() >= 3.0:
            continue
        a, b = thumbnail - thumbnail.mean(), other - other.mean()
        norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
        if norm == 0.0 or float((a * b).sum()) / norm > 0.99:
            return True
    return False


def _local_test_files() -> list[str]:
    """pydicom's test files and those of installed data packages (pydicom-data), without
    ``get_testdata_files``, which also tries to download the rest from GitHub."""
    from pydicom.data import data_manager

    files = {str(p) for p in (Path(data_manager.DATA_ROOT) / "test_files").glob("*.dcm")}
    for source in data_manager.external_data_sources().values():
        try:
            files.update(str(p) for p in source.get_paths("*.dcm", data_manager.DataTypes.DATASET))
        except Exception:  # noqa: BLE001 - a broken data package is left out, not fatal
            log.warning("could not list the files of a pydicom data package", exc_info=True)
    return sorted(files)


def pydicom_pictures() -> list[tuple[str, str, Image.Image]]:
    """(group, file name, 8-bit picture) for each distinct non-MR picture pydicom ships."""
    import pydicom

    from edge.config import DicomConfig, LimitsConfig
    from edge.dicom import decode_dicom
    from edge.errors import EdgeError

    # The agent refuses these modalities; here every one is decoded, to make pictures.
    every_modality = DicomConfig(modalities=tuple(_DICOM_GROUPS), body_parts=())
    seen: list[np.ndarray] = []
    found = []
    import warnings

    files = _local_test_files()
    # pydicom logs a traceback for each deliberately broken test file it cannot decode;
    # those files are skipped below, and their tracebacks would bury the benchmark's output.
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.CRITICAL)
    try:
        for name in files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(name, stop_before_pixels=True, force=True)
            except Exception:  # noqa: BLE001 - not every test file is a readable data set
                continue
            modality = str(getattr(ds, "Modality", "") or "")
            if modality not in _DICOM_GROUPS or "Rows" not in ds:
                continue
            try:
                decoded = decode_dicom(Path(name), True, every_modality, LimitsConfig())
            except EdgeError:
                continue  # no decoder here for that syntax, or a deliberately broken file
            picture = decoded.picture
            if min(picture.size) < 16:
                continue
            thumbnail = _thumbnail(picture)
            if _seen_before(thumbnail, seen):
                continue
            seen.append(thumbnail)
            found.append((_DICOM_GROUPS[modality], os.path.basename(name), picture))
    finally:
        pydicom_log.setLevel(level)
    return found


def matplotlib_photographs(rng: np.random.Generator,
                           crops: int) -> list[tuple[str, str, Image.Image]]:
    """Real photographs shipped by matplotlib: whole, in grey, and ``crops`` seeded crops."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed: no real photographs in the set")
        return []
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    found = []
    for name in _MATPLOTLIB_PHOTOS:
        path = folder / name
        if not path.is_file():
            continue
        with Image.open(path) as image:
            photo = image.convert("RGB")
        found.append(("photograph", name, photo))
        found.append(("photograph", f"{name} (grey)", photo.convert("L")))
        width, height = photo.size
        for k in range(crops):
            side = int(rng.integers(min(width, height) // 3, min(width, height)))
            left = int(rng.integers(0, width - side + 1))
            top = int(rng.integers(0, height - side + 1))
            crop = photo.crop((left, top, left + side, top + side))
            if k % 2:
                crop = crop.convert("L")
            found.append(("photograph", f"{name} crop {k}", crop))
    return found


def _scene(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Sky, ground, a sun and a few buildings."""
    horizon = int(height * rng.uniform(0.4, 0.7))
    top, low = rng.integers(60, 255, 3), rng.integers(120, 255, 3)
    ramp = np.linspace(0.0, 1.0, horizon)[:, None, None]
    sky = (top[None, None, :] * (1 - ramp) + low[None, None, :] * ramp).repeat(width, 1)
    ground = np.broadcast_to(rng.integers(20, 160, 3), (height - horizon, width, 3))
    pixels = np.concatenate([sky, ground], axis=0).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    r = int(rng.integers(10, max(11, height // 6)))
    cx, cy = int(rng.integers(r, width - r)), int(rng.integers(r, max(r + 1, horizon - r)))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in
                                                              rng.integers(180, 256, 3)))
    for _ in range(int(rng.integers(2, 7))):
        w, h = int(rng.integers(20, width // 3)), int(rng.integers(20, horizon))
        x = int(rng.integers(0, width - w))
        draw.rectangle((x, horizon - h, x + w, horizon + 5),
                       fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.5)))


def _objects(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Coloured ellipses and polygons on a plain or noisy background."""
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 12))):
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            points = [(int(rng.integers(0, width)), int(rng.integers(0, height)))
                      for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(points, fill=fill)
    noise = rng.normal(0.0, rng.uniform(0, 12), (height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _texture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth coloured noise at a random scale (foliage, fabric, gravel, clouds)."""
    cells = int(rng.integers(4, 64))
    coarse = rng.integers(0, 256, (cells, max(2, cells * width // height), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    fine = rng.normal(0.0, rng.uniform(2, 25), (height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + fine, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _document(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A light page with dark lines of "text" and a few boxes."""
    paper = int(rng.integers(200, 256))
    image = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(image)
    y = int(rng.integers(5, 30))
    while y < height - 10:
        x = int(rng.integers(5, 30))
        while x < width - 20:
            word = int(rng.integers(8, 50))
            draw.rectangle((x, y, min(width - 5, x + word), y + int(rng.integers(4, 9))),
                           fill=int(rng.integers(0, 90)))
            x += word + int(rng.integers(4, 12))
        y += int(rng.integers(12, 24))
    return image


_SYNTHETIC = (("scene", _scene), ("objects", _objects), ("texture", _texture),
              ("document", _document))


def synthetic_photographs(rng: np.random.Generator,
                          per_kind: int) -> list[tuple[str, str, Image.Image]]:
    found = []
    for kind, draw in _SYNTHETIC:
        for k in range(per_kind):
            width, height = int(rng.integers(160, 800)), int(rng.integers(160, 800))
            picture = draw(rng, width, height)
            if k % 3 == 2 and picture.mode != "L":
                picture = picture.convert("L")
            found.append(("synthetic photograph", f"{kind} {k}", picture))
    return found


def build_nonbrain_set(out: Path, seed: int = 0, crops: int = 8,
                       per_kind: int = 15) -> list[NonBrainImage]:
    """Write every picture as PNG and JPEG under ``out``; return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pictures = (pydicom_pictures() + matplotlib_photographs(rng, crops)
                + synthetic_photographs(rng, per_kind))
    written = []
    for i, (group, source, picture) in enumerate(pictures):
        stem = f"{i:03d}-{group.replace(' ', '_').replace('/', '')}"
        for path in _save_both(picture, out, stem):
            written.append(NonBrainImage(path, group, source))
    return written

