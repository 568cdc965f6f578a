"""DICOM inputs: which ones are classified, and how their pixels become an 8-bit picture.

Refused before any pixel is decoded: files without pixel data (structured reports, RT
plans and structure sets), a Modality other than the configured ones (MR), absurd or
bomb-sized dimensions, and compressed data no installed decoder can read.

The display pipeline follows DICOM PS3.3 C.11: modality LUT (Rescale Slope/Intercept or a
Modality LUT Sequence), then the VOI transform, then MONOCHROME1 inversion. The VOI rule:

1. a VOI LUT Sequence in the file, else
2. the file's first Window Center/Width (LINEAR, LINEAR_EXACT or SIGMOID), else
3. 8-bit unsigned data with no rescale is used as stored (0..255), else
4. a percentile window (0.5th to 99.5th percentile by default) or the min-max range,
   as ``[dicom] fallback_window`` says.

Multi-frame files: one frame is classified, the middle one (index (N-1)//2) by default, or
the first (``[dicom] frame``). The report says which.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from . import dicom_compat as compat
from .codestream import declared_size, first_fragment
from .config import DicomConfig, LimitsConfig
from .errors import DecodeError, InputLimitError, MissingDecoderError, UnsupportedInputError
from .images import is_effectively_gray
from .inputs import DecodedImage, check_dimensions
from .preprocess import window_to_uint8

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                         "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
_REQUIRED = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")
_TEXT_LIMIT = 128


def uid_hash(uid: str) -> str:
    """A short, stable, non-identifying tag for a UID, for logs."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:10]


def decode_dicom(path: Path, preamble: bool, dicom: DicomConfig,
                 limits: LimitsConfig) -> DecodedImage:
    with warnings.catch_warnings():
        # pydicom's warnings can quote element values (names, IDs): never let them reach logs
        warnings.simplefilter("ignore")
        return _decode(path, preamble, dicom, limits)


def _decode(path: Path, preamble: bool, dicom: DicomConfig, limits: LimitsConfig) -> DecodedImage:
    ds = _read(path, preamble)
    details = _describe(ds, preamble)
    _check_is_classifiable(ds, dicom)
    rows, columns, frames, samples = _geometry(ds)
    check_dimensions(columns, rows, limits, "DICOM image", frames, samples)
    photometric = details["photometric_interpretation"]
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise UnsupportedInputError(
            f"Photometric Interpretation {photometric!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_PHOTOMETRIC)})")
    tsyntax = ds.file_meta.TransferSyntaxUID
    problem = compat.decoder_problem(tsyntax)
    if problem:
        raise MissingDecoderError(problem)
    if compat.UID(str(tsyntax)).is_compressed:
        _check_codestream(ds, columns, rows)
    index = (frames - 1) // 2 if dicom.frame == "middle" else 0
    try:
        arr, photometric_out = compat.decode_frame(ds, index, frames)
    except MemoryError:
        raise InputLimitError("not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise anything on damaged data
        raise DecodeError(_decode_failure(exc, tsyntax)) from None
    expected: tuple[int, ...] = (rows, columns) if samples == 1 else (rows, columns, samples)
    if tuple(arr.shape) != expected:
        raise DecodeError(f"the decoded frame has shape {tuple(arr.shape)}, the header "
                          f"promises {expected}; the file is inconsistent")
    notes: list[str] = []
    details.update(frames=frames, frame_index=index)
    if frames > 1:
        notes.append(f"multi-frame DICOM with {frames} frames: frame {index} (0-based, the "
                     f"{dicom.frame} one) was classified")
    if not preamble:
        notes.append("the file has no DICOM preamble; it was read as a raw data set")
    if samples == 1 and photometric_out != "PALETTE COLOR":
        pixels, window = _grayscale_to_uint8(arr, ds, index, dicom)
        details["window"] = window
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels
            notes.append("MONOCHROME1: inverted so that higher values are brighter")
        picture = Image.fromarray(pixels)  # 2-D uint8: mode "L"
    else:
        pixels = _colour_to_uint8(arr, ds, photometric_out)
        details["window"] = {"method": "colour"}
        picture = Image.fromarray(pixels)
        if not is_effectively_gray(picture):
            notes.append("colour DICOM: the model was trained on grayscale MR slices")
    return DecodedImage(kind="dicom", picture=picture, details=details, notes=notes)


def _read(path: Path, preamble: bool) -> Any:
    try:
        ds = pydicom.dcmread(str(path), force=not preamble)
    except InvalidDicomError as exc:
        raise DecodeError(f"not a valid DICOM file: {exc}") from None
    except MemoryError:
        raise InputLimitError("not enough memory to read this DICOM file") from None
    except Exception as exc:  # noqa: BLE001 - truncated files raise EOFError, struct.error, ...
        raise DecodeError(f"the DICOM file is damaged or truncated and cannot be parsed "
                          f"({exc.__class__.__name__}); copy it again from the scanner") from None
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        # A raw data set (no meta header): what the parser found is what the pixels use.
        little = getattr(ds, "is_little_endian", True)
        implicit = getattr(ds, "is_implicit_VR", False)
        if little is None or implicit is None:  # pydicom 3 keeps these in original_encoding
            implicit, little = getattr(ds, "original_encoding", (False, True))
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit
            else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian))
    return ds


def _text(ds: Any, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed element must not stop the report
        return None
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    # no control characters: a tag value must not be able to forge a log line or a report row
    return "".join(c if c.isprintable() else "?" for c in str(value)[:_TEXT_LIMIT])


def _describe(ds: Any, preamble: bool) -> dict[str, Any]:
    """The report's ``dicom`` section: identifiers and technical facts, never patient data."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    sop_class = ds.get("SOPClassUID")
    return {
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "sop_class_uid": str(sop_class) if sop_class else None,
        "sop_class": _uid_name(sop_class),
        "modality": (_text(ds, "Modality") or "").strip().upper() or None,
        "study_date": _text(ds, "StudyDate"),
        "body_part_examined": (_text(ds, "BodyPartExamined") or "").strip().upper() or None,
        "series_description": _text(ds, "SeriesDescription"),
        "transfer_syntax_uid": str(tsyntax) if tsyntax else None,
        "transfer_syntax": _uid_name(tsyntax),
        "photometric_interpretation": (_text(ds, "PhotometricInterpretation") or "").strip(
            ).upper() or None,
        "rows": _int_or_none(ds, "Rows"),
        "columns": _int_or_none(ds, "Columns"),
        "bits_stored": _int_or_none(ds, "BitsStored") or _int_or_none(ds, "BitsAllocated"),
        "signed": _int_or_none(ds, "PixelRepresentation") == 1,
        "preamble": preamble,
    }


def _uid_name(uid: Any) -> str | None:
    if not uid:
        return None
    try:
        name = compat.UID(str(uid)).name
    except Exception:  # noqa: BLE001
        return str(uid)
    return str(name)[:_TEXT_LIMIT]


def _int_or_none(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _check_is_classifiable(ds: Any, dicom: DicomConfig) -> None:
    if not any(k in ds for k in ("SOPClassUID", "Modality", "PixelData", "StudyInstanceUID")):
        raise DecodeError("the file is marked as DICOM but holds no readable DICOM elements: it "
                          "is damaged or truncated; copy it again from the scanner")
    if "PixelData" not in ds:
        what = _uid_name(ds.get("SOPClassUID")) or "DICOM object"
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedInputError(
                f"this {what} holds floating-point pixel data (a parametric map), not an MR "
                "picture; only MR images are classified")
        modality = (_text(ds, "Modality") or "unknown").strip()
        raise UnsupportedInputError(
            f"no pixel data: this is a {what} (Modality {modality}), not an image. Structured "
            "reports, RT plans and structure sets carry no picture to classify")
    modality = (_text(ds, "Modality") or "").strip().upper()
    accepted = tuple(m.strip().upper() for m in dicom.modalities)
    if not modality:
        raise UnsupportedInputError(
            "the DICOM has no Modality (0008,0060); only "
            f"{'/'.join(accepted)} images are classified. Export it from the scanner with its "
            "Modality set")
    if modality not in accepted:
        raise UnsupportedInputError(
            f"Modality is {modality}, but this model was trained on brain "
            f"{'/'.join(accepted)} slices only; a {modality} image is not classified "
            "(an answer would be meaningless)")
    missing = [k for k in _REQUIRED if k not in ds]
    if missing:
        raise DecodeError(f"the DICOM image lacks {', '.join(missing)}; the file is incomplete")


def _geometry(ds: Any) -> tuple[int, int, int, int]:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.SamplesPerPixel)
        raw_frames = ds.get("NumberOfFrames", 1)
        frames = int(raw_frames) if raw_frames not in (None, "") else 1
    except (TypeError, ValueError):
        raise DecodeError("the DICOM's Rows, Columns, Samples per Pixel or Number of Frames "
                          "is not a number; the file is malformed") from None
    if frames < 1:
        raise DecodeError(f"Number of Frames is {frames}; the file is malformed")
    if samples not in (1, 3):
        raise UnsupportedInputError(f"Samples per Pixel is {samples}; only 1 (grayscale) or 3 "
                                    "(colour) are supported")
    return rows, columns, frames, samples


def _check_codestream(ds: Any, columns: int, rows: int) -> None:
    try:
        data = ds.PixelData
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(f"the pixel data cannot be read ({exc.__class__.__name__})") from None
    size = declared_size(first_fragment(bytes(data)))
    if size is not None and size[0] * size[1] > columns * rows:
        raise InputLimitError(
            f"the compressed frame declares {size[0]}x{size[1]} pixels but the DICOM header "
            f"says {columns}x{rows}: refused as a possible decompression bomb")


def _decode_failure(exc: Exception, tsyntax: Any) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    if "length" in text.lower() and ("expected" in text.lower() or "match" in text.lower()):
        return ("the pixel data is shorter than the header promises: the file is truncated; "
                f"copy it again ({text[:200]})")
    return (f"the pixel data ({_uid_name(tsyntax)}) cannot be decoded: "
            f"{exc.__class__.__name__}: {text[:300]}")


# --- grayscale -----------------------------------------------------------------------

def _functional_item(ds: Any, index: int, sequence: str) -> Any | None:
    """An item of ``sequence`` from the per-frame or shared functional groups (enhanced MR)."""
    for groups, item_index in (("PerFrameFunctionalGroupsSequence", index),
                               ("SharedFunctionalGroupsSequence", 0)):
        try:
            group = ds.get(groups)
            if group and len(group) > item_index and sequence in group[item_index]:
                return group[item_index][sequence][0]
        except Exception:  # noqa: BLE001
            continue
    return None


def _modality_values(arr: np.ndarray, ds: Any, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    if "ModalityLUTSequence" in ds:
        return np.asarray(compat.apply_modality_lut(arr, ds), dtype=np.float64), {"lut": True}
    source = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else _functional_item(
        ds, index, "PixelValueTransformationSequence")
    slope, intercept = 1.0, 0.0
    if source is not None:
        try:
            slope = float(source.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
        except (TypeError, ValueError):
            slope, intercept = 1.0, 0.0
    values = arr.astype(np.float64)
    if slope != 1.0 or intercept != 0.0:
        values = values * slope + intercept
    return values, {"slope": slope, "intercept": intercept}


def _file_window(ds: Any, index: int) -> tuple[float, float, str] | None:
    source = ds if "WindowCenter" in ds else _functional_item(ds, index, "FrameVOILUTSequence")
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return None
    try:
        center, width = source.WindowCenter, source.WindowWidth
        center = float(center[0] if _is_multi(center) else center)
        width = float(width[0] if _is_multi(width) else width)
        function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    except (TypeError, ValueError, IndexError):
        return None
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0 or (
            function == "LINEAR" and width < 1):
        return None
    return center, width, function


def _is_multi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 window to 8 bits (output range 0..255)."""
    if function == "LINEAR_EXACT":
        out = (values - center) / width + 0.5
    elif function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
    else:  # LINEAR
        out = (values - (center - 0.5)) / (width - 1.0) + 0.5 if width > 1 else (
            (values > center - 0.5).astype(np.float64))
    return np.clip(np.rint(np.clip(out, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)


def _grayscale_to_uint8(arr: np.ndarray, ds: Any, index: int,
                        dicom: DicomConfig) -> tuple[np.ndarray, dict[str, Any]]:
    values, rescale = _modality_values(arr, ds, index)
    if dicom.use_file_window and "VOILUTSequence" in ds:
        try:
            lut_input = np.rint(values).astype(np.int64)  # LUTs map integer values
            out = np.asarray(compat.apply_voi_lut(lut_input, ds, index=0, prefer_lut=True),
                             dtype=np.float64)
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            top = float(2 ** bits - 1) if 8 <= bits <= 16 else float(out.max() or 1)
            pixels = np.clip(np.rint(out * (255.0 / top)), 0, 255).astype(np.uint8)
            return pixels, {"method": "voi_lut", "rescale": rescale}
        except Exception:  # noqa: BLE001 - a broken VOI LUT falls back to the rules below
            pass
    window = _file_window(ds, index) if dicom.use_file_window else None
    if window is not None:
        center, width, function = window
        return apply_window(values, center, width, function), {
            "method": "file_window", "center": center, "width": width, "function": function,
            "rescale": rescale}
    bits = _int_or_none(ds, "BitsStored") or _int_or_none(ds, "BitsAllocated") or 16
    if bits <= 8 and _int_or_none(ds, "PixelRepresentation") != 1 and rescale.get(
            "slope", 1.0) == 1.0 and rescale.get("intercept", 0.0) == 0.0:
        return np.clip(values, 0, 255).astype(np.uint8), {"method": "as_stored",
                                                           "rescale": rescale}
    if dicom.fallback_window == "minmax":
        low, high = float(values.min()), float(values.max())
        method: dict[str, Any] = {"method": "minmax"}
    else:
        low, high = (float(v) for v in np.percentile(
            values, [dicom.percentile_low, dicom.percentile_high]))
        method = {"method": "percentile", "percentile_low": dicom.percentile_low,
                  "percentile_high": dicom.percentile_high}
    if high <= low:  # a flat image (or all outliers): fall back to the full range
        low, high = float(values.min()), float(values.max())
    method.update(low=low, high=high, rescale=rescale)
    return window_to_uint8(values, low, high), method


# --- colour --------------------------------------------------------------------------

def _colour_to_uint8(arr: np.ndarray, ds: Any, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        try:
            arr = compat.apply_color_lut(arr, ds)
        except Exception as exc:  # noqa: BLE001
            raise DecodeError(f"the palette colour lookup table cannot be applied "
                              f"({exc.__class__.__name__}: {exc})") from None
        top = 255.0 if arr.dtype.itemsize == 1 else 65535.0
    else:
        bits = _int_or_none(ds, "BitsStored") or 8
        top = float(2 ** min(bits, 32) - 1)
    if arr.dtype == np.uint8 and top == 255.0:
        return np.ascontiguousarray(arr)
    out = np.rint(np.clip(arr.astype(np.float64), 0, top) * (255.0 / top))
    return out.astype(np.uint8)
