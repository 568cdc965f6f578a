"""``edge-agent sample-inbox DIR``: a demo inbox made only of files we may redistribute.

The DICOM files are the test files pydicom installs with itself (its own licence covers
them; nothing is downloaded); the PNG is drawn here. Nothing comes from the training data
set. Together they walk every path through the agent: classified, compressed, extensionless,
refused for modality, refused for having no pixel data, refused as not an image.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .durable import free_name, writable_folder
from .errors import ConfigError, OutputError

# (name in the sample inbox, pydicom test file, what it shows)
_PYDICOM_FILES = (
    ("mr_small.dcm", "MR_small.dcm", "MR, uncompressed: classified"),
    ("mr_abdomen.dcm", "examples_overlay.dcm",
     "MR of the abdomen: classified but flagged needs_review (not a brain)"),
    ("IM0003", "MR_small_implicit.dcm", "MR without a file extension: recognised by content"),
    ("mr_small_rle.dcm", "MR_small_RLE.dcm", "MR, RLE compressed: classified"),
    ("mr_small_jpeg2000.dcm", "MR_small_jp2klossless.dcm",
     "MR, JPEG 2000: classified with the dicom-codecs extra, else quarantined (no decoder)"),
    ("mr_small_jpegls.dcm", "MR_small_jpeg_ls_lossless.dcm",
     "MR, JPEG-LS: classified with the dicom-codecs extra, else quarantined (no decoder)"),
    ("ct_small.dcm", "CT_small.dcm", "CT: quarantined (the model is for MR only)"),
    ("structured_report.dcm", "test-SR.dcm", "SR: quarantined (no pixel data)"),
)

_OPTIONAL = {"examples_overlay.dcm"}  # pydicom >= 3.0 only


def pydicom_test_file(name: str) -> Path:
    """A file from pydicom's own test data, read from disk (never downloaded)."""
    import pydicom

    path = Path(pydicom.__file__).resolve().parent / "data" / "test_files" / name
    if not path.is_file():
        raise ConfigError(f"pydicom {pydicom.__version__} does not ship {name}; reinstall "
                          "pydicom (`pip install --force-reinstall pydicom`)")
    return path


def phantom(size: int = 256) -> np.ndarray:
    """A synthetic axial 'head': skull ring, brain, ventricles (no real patient data)."""
    y, x = np.mgrid[-1:1:complex(0, size), -1:1:complex(0, size)]
    img = np.zeros((size, size), dtype=np.float64)
    head = (x / 0.78) ** 2 + (y / 0.92) ** 2
    img[head <= 1.0] = 0.85  # skull
    img[head <= 0.86] = 0.45  # brain
    for cx in (-0.12, 0.12):
        img[((x - cx) / 0.08) ** 2 + ((y + 0.05) / 0.22) ** 2 <= 1.0] = 0.15  # ventricles
    img[((x - 0.3) / 0.1) ** 2 + ((y - 0.35) / 0.1) ** 2 <= 1.0] = 0.75  # a bright blob
    noise = np.random.default_rng(0).normal(0, 0.02, img.shape)
    return np.clip(np.rint((img + noise) * 255), 0, 255).astype(np.uint8)


def write_sample_inbox(folder: Path) -> list[tuple[str, str]]:
    """Copy the samples into ``folder`` (never overwriting); return (name, purpose) pairs."""
    writable_folder(folder, "the sample inbox")
    try:
        return _write_samples(folder)
    except OSError as exc:
        raise OutputError(f"cannot write the samples into {folder}: {exc.strerror or exc}; "
                          "give a folder this user may write") from None


def _write_samples(folder: Path) -> list[tuple[str, str]]:
    written = []
    for name, source, purpose in _PYDICOM_FILES:
        try:
            path = pydicom_test_file(source)
        except ConfigError:
            if source not in _OPTIONAL:
                raise
            continue  # only newer pydicom versions ship it
        dest = free_name(folder, name, "sample")
        shutil.copyfile(str(path), str(dest))
        written.append((dest.name, purpose))
    dest = free_name(folder, "phantom.png", "sample")
    Image.fromarray(phantom()).save(str(dest))
    written.append((dest.name, "PNG drawn by the agent (a synthetic head): classified"))
    dest = free_name(folder, "notes.txt", "sample")
    dest.write_text("This is not an image.\n", encoding="utf-8")
    written.append((dest.name, "text file: quarantined (not PNG, JPEG or DICOM)"))
    return written
