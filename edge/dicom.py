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
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from . import dicom_compat as compat
from . import jpeg
from .codestream import declared_size
from .config import DicomConfig, LimitsConfig
from .decoded import DecodedImage, check_decode_budget, check_dimensions, raise_if_passing
from .errors import DecodeError, InputLimitError, MissingDecoderError, UnsupportedInputError
from .images import is_effectively_gray
from .preprocess import window_to_uint8

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                         "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
_REQUIRED = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")
_TEXT_LIMIT = 128
# JPEG (baseline, extended, lossless) and JPEG-LS: frames made of JPEG marker segments and
# scans, whose scans edge.jpeg counts before decoding
_JPEG_FAMILY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}


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
    _check_inflated_size(path, limits)
    ds = _read(path, preamble)
    details = _describe(ds, preamble)
    _check_is_classifiable(ds, dicom)
    rows, columns, frames, samples = _geometry(ds)
    check_dimensions(columns, rows, limits, "DICOM image", frames, samples)
    check_decode_budget(_decode_bytes(ds, rows, columns, frames, samples), limits,
                        f"DICOM image ({columns}x{rows}, {frames} frame(s))")
    photometric = details["photometric_interpretation"]
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise UnsupportedInputError(
            f"Photometric Interpretation {photometric!r} is not supported (supported: "
            f"{', '.join(SUPPORTED_PHOTOMETRIC)})",
            log_message="its Photometric Interpretation is not supported (the value is in "
                        "the quarantine record)")
    tsyntax = ds.file_meta.TransferSyntaxUID
    problem = compat.decoder_problem(tsyntax)
    if problem:
        raise MissingDecoderError(problem, log_message="no installed decoder can read its "
                                  "compressed pixel data (details in the quarantine record)")
    index = (frames - 1) // 2 if dicom.frame == "middle" else 0
    if compat.UID(str(tsyntax)).is_compressed:
        _check_codestream(ds, columns, rows, index, frames)
    try:
        arr, photometric_out = compat.decode_frame(ds, index, frames)
    except MemoryError:
        raise InputLimitError("not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise anything on damaged data
        raise_if_passing(exc)  # deferred data read from the file now
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


def _decode_bytes(ds: Any, rows: int, columns: int, frames: int, samples: int) -> int:
    """Memory that decoding one frame takes at its peak, from the header: the decoded
    frame(s) (pydicom 2.4 decodes every frame), a copy of the stored values for the
    percentile window, and the 8-bit result; the conversion itself runs in bounded chunks.
    The encoded pixel data, read with the file, counts too."""
    stored = max(1, (_int_or_none(ds, "BitsAllocated") or 16) // 8)
    pixels = rows * columns * samples
    decoded = pixels * stored * (1 if compat.PYDICOM_3 else frames)
    try:
        encoded = len(ds.PixelData)
    except Exception:  # noqa: BLE001 - unreadable pixel data fails later, with its reason
        encoded = 0
    return encoded + decoded + pixels * stored + pixels


def _check_inflated_size(path: Path, limits: LimitsConfig) -> None:
    """Refuse a deflate-compressed data set (Deflated Explicit VR Little Endian) that would
    inflate past ``[limits] max_decode_mb``, before pydicom reads it: pydicom inflates the
    whole data set in memory at once, so a 1 MB file of deflated zeros takes gigabytes
    (measured: a 307 kB file took 700 MB). Counted in bounded chunks; nothing is kept."""
    budget = limits.max_decode_mb * 2**20
    try:
        from pydicom.filereader import _read_file_meta_info, read_preamble

        with open(str(path), "rb") as handle:
            read_preamble(handle, True)
            meta = _read_file_meta_info(handle)
            if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
                return
            inflater, inflated, data = zlib.decompressobj(-zlib.MAX_WBITS), 0, b""
            # pydicom holds the inflated bytes and the values parsed from them: twice
            while 2 * inflated <= budget and not inflater.eof:
                data = data or handle.read(1 << 20)
                if not data:
                    break
                inflated += len(inflater.decompress(data, 1 << 20))
                data = inflater.unconsumed_tail
    except Exception:  # noqa: BLE001 - not readable so far: pydicom says what is wrong
        return
    if 2 * inflated > budget:
        raise InputLimitError(
            f"the DICOM's data set is deflate-compressed and inflates to more than "
            f"{inflated / 2**20:,.0f} MB; reading it would take more than "
            f"{2 * inflated / 2**20:,.0f} MB of memory, above the limit of "
            f"{limits.max_decode_mb:g} MB ([limits] max_decode_mb): refused as a possible "
            "decompression bomb")


def _read(path: Path, preamble: bool) -> Any:
    try:
        ds = pydicom.dcmread(str(path), force=not preamble)
    except InvalidDicomError as exc:
        raise DecodeError(f"not a valid DICOM file: {exc}") from None
    except MemoryError:
        raise InputLimitError("not enough memory to read this DICOM file") from None
    except Exception as exc:  # noqa: BLE001 - truncated files raise EOFError, struct.error, ...
        raise_if_passing(exc)  # the disk failed the read, not the file
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
                "picture; only MR images are classified",
                log_message="floating-point pixel data (a parametric map), not an MR picture")
        modality = (_text(ds, "Modality") or "unknown").strip()
        raise UnsupportedInputError(
            f"no pixel data: this is a {what} (Modality {modality}), not an image. Structured "
            "reports, RT plans and structure sets carry no picture to classify",
            log_message="no pixel data: not an image (its kind is in the quarantine record)")
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
            "(an answer would be meaningless)",
            log_message=f"its Modality is not {'/'.join(accepted)} (the value is in the "
                        "quarantine record)")
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


def _check_codestream(ds: Any, columns: int, rows: int, index: int, frames: int) -> None:
    """Read the compressed frame that will be decoded, without decoding it, and refuse
    as a possible decompression bomb:

    - a frame whose own header declares more pixels than the DICOM header: decoders
      allocate from the frame's header;
    - a JPEG or JPEG-LS frame with more scans than any encoder writes: each scan costs a
      pass over the whole picture (``edge.jpeg.too_many_scans``; a 58 kB DICOM whose frame
      repeats one progressive scan 2,000 times took 16 s to decode).

    The frame checked is the one decoded (pydicom 3 decodes only frame ``index``, pydicom 2.4
    every frame), so a harmless first frame cannot hide a bomb in the middle one."""
    try:
        data = ds.PixelData
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(f"the pixel data cannot be read ({exc.__class__.__name__})") from None
    scans = str(ds.file_meta.TransferSyntaxUID) in _JPEG_FAMILY
    for number, frame in _encoded_frames(ds, data, index, frames):
        size = declared_size(frame)
        if size is not None and size[0] * size[1] > columns * rows:
            raise InputLimitError(
                f"the compressed frame declares {size[0]}x{size[1]} pixels but the DICOM "
                f"header says {columns}x{rows}: refused as a possible decompression bomb")
        problem = jpeg.too_many_scans(jpeg.structure_of(frame), (
            f"the DICOM's compressed frame {number}" if frames > 1 else
            "the DICOM's compressed frame")) if scans else ""
        if problem:
            raise InputLimitError(problem)


def _encoded_frames(ds: Any, data: bytes, index: int, frames: int) -> Iterator[tuple[int, bytes]]:
    """(index, encoded bytes) of each frame the decoder will be given, one at a time, cut
    from the encapsulated pixel data as pydicom cuts them: frame ``index`` with pydicom 3,
    every frame with pydicom 2.4. Nothing if pydicom cannot cut them: decoding then fails
    with pydicom's own reason."""
    from pydicom import encaps

    if compat.PYDICOM_3:
        offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
            if len(offsets[0]) != len(offsets[1]):  # pydicom ignores them too
                offsets = None
        try:
            frame = encaps.get_frame(data, index, number_of_frames=frames,
                                     extended_offsets=offsets)
        except Exception:  # noqa: BLE001
            return
        yield index, frame
        return
    number, frame_iterator = 0, encaps.generate_pixel_data_frame(data, frames)
    while True:
        try:
            frame = next(frame_iterator)
        except Exception:  # noqa: BLE001 - StopIteration, or data pydicom cannot cut
            return
        yield number, frame
        number += 1


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


class _Modality:
    """The modality LUT (PS3.3 C.11.1): stored values -> meaningful values, applied a chunk
    of rows at a time so that a big frame never exists as float64 in full."""

    def __init__(self, ds: Any, index: int) -> None:
        self.ds = ds
        self.lut = "ModalityLUTSequence" in ds
        self.slope, self.intercept = 1.0, 0.0
        if self.lut:
            self.rescale: dict[str, Any] = {"lut": True}
            return
        source = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else _functional_item(
            ds, index, "PixelValueTransformationSequence")
        if source is not None:
            try:
                self.slope = float(source.get("RescaleSlope", 1.0) or 1.0)
                self.intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
            except (TypeError, ValueError):
                self.slope, self.intercept = 1.0, 0.0
        if not (np.isfinite(self.slope) and np.isfinite(self.intercept)):
            raise DecodeError(
                f"the DICOM's Rescale Slope ({self.slope!r}) or Rescale Intercept "
                f"({self.intercept!r}) is not a finite number, so its pixel values have no "
                "meaning; the file is malformed: export it again from the scanner")
        self.rescale = {"slope": self.slope, "intercept": self.intercept}

    @property
    def identity(self) -> bool:
        return not self.lut and self.slope == 1.0 and self.intercept == 0.0

    def __call__(self, stored: np.ndarray) -> np.ndarray:
        if self.lut:
            return np.asarray(compat.apply_modality_lut(stored, self.ds), dtype=np.float64)
        values = stored.astype(np.float64)
        if not self.identity:
            values = values * self.slope + self.intercept
        return values

    def value_range(self, stored: np.ndarray) -> tuple[float, float]:
        """Smallest and largest value, checked finite (a huge slope overflows)."""
        if self.lut:
            low, high = _chunk_reduce(stored, self, np.min), _chunk_reduce(stored, self, np.max)
        else:
            ends = [float(stored.min()) * self.slope + self.intercept,
                    float(stored.max()) * self.slope + self.intercept]
            low, high = min(ends), max(ends)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise DecodeError(
                f"the DICOM's Rescale Slope ({self.slope:g}) and Intercept ({self.intercept:g}) "
                "turn its pixels into numbers too large to represent; the file is malformed: "
                "export it again from the scanner")
        return low, high

    def percentiles(self, stored: np.ndarray, low_pct: float,
                    high_pct: float) -> tuple[float, float]:
        """Percentiles of the values, from the stored integers: a linear rescale keeps their
        order (a negative slope reverses it), so no float copy of the frame is made."""
        if self.lut:
            values = self(stored)
            low, high = (float(v) for v in np.percentile(values, [low_pct, high_pct]))
            return low, high
        if self.slope >= 0:
            p_low, p_high = np.percentile(stored, [low_pct, high_pct])
        else:
            p_high, p_low = np.percentile(stored, [100.0 - high_pct, 100.0 - low_pct])
        return (float(p_low) * self.slope + self.intercept,
                float(p_high) * self.slope + self.intercept)


_CHUNK_PIXELS = 1 << 20  # rows of this many pixels are converted at a time (8 MB of float64)


def _row_chunks(arr: np.ndarray) -> Any:
    step = max(1, _CHUNK_PIXELS // max(1, int(np.prod(arr.shape[1:]))))
    for top in range(0, arr.shape[0], step):
        yield slice(top, top + step)


def _chunk_reduce(stored: np.ndarray, modality: _Modality, reduce: Any) -> float:
    return float(reduce([reduce(modality(stored[rows])) for rows in _row_chunks(stored)]))


def _to_uint8_chunked(stored: np.ndarray, convert: Any) -> np.ndarray:
    """``convert`` (float64 values -> uint8) applied to the frame a band of rows at a time."""
    out = np.empty(stored.shape, dtype=np.uint8)
    for rows in _row_chunks(stored):
        out[rows] = convert(stored[rows])
    return out


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
    modality = _Modality(ds, index)
    rescale = modality.rescale
    value_low, value_high = modality.value_range(arr)
    if dicom.use_file_window and "VOILUTSequence" in ds:
        try:
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])

            def through_lut(stored: np.ndarray) -> np.ndarray:
                lut_input = np.rint(modality(stored)).astype(np.int64)  # LUTs map integers
                return np.asarray(compat.apply_voi_lut(lut_input, ds, index=0, prefer_lut=True),
                                  dtype=np.float64)

            if 8 <= bits <= 16:
                top = float(2 ** bits - 1)
            else:
                top = _chunk_reduce(arr, through_lut, np.max) or 1.0  # type: ignore[arg-type]
            pixels = _to_uint8_chunked(arr, lambda stored: np.clip(
                np.rint(through_lut(stored) * (255.0 / top)), 0, 255).astype(np.uint8))
            return pixels, {"method": "voi_lut", "rescale": rescale}
        except Exception:  # noqa: BLE001 - a broken VOI LUT falls back to the rules below
            pass
    window = _file_window(ds, index) if dicom.use_file_window else None
    if window is not None:
        center, width, function = window
        pixels = _to_uint8_chunked(arr, lambda stored: apply_window(
            modality(stored), center, width, function))
        return pixels, {"method": "file_window", "center": center, "width": width,
                        "function": function, "rescale": rescale}
    bits = _int_or_none(ds, "BitsStored") or _int_or_none(ds, "BitsAllocated") or 16
    if bits <= 8 and _int_or_none(ds, "PixelRepresentation") != 1 and modality.identity:
        pixels = _to_uint8_chunked(arr, lambda stored: np.clip(stored, 0, 255).astype(np.uint8))
        return pixels, {"method": "as_stored", "rescale": rescale}
    if dicom.fallback_window == "minmax":
        low, high = value_low, value_high
        method: dict[str, Any] = {"method": "minmax"}
    else:
        low, high = modality.percentiles(arr, dicom.percentile_low, dicom.percentile_high)
        method = {"method": "percentile", "percentile_low": dicom.percentile_low,
                  "percentile_high": dicom.percentile_high}
    if high <= low:  # a flat image (or all outliers): fall back to the full range
        low, high = value_low, value_high
    method.update(low=low, high=high, rescale=rescale)
    pixels = _to_uint8_chunked(arr, lambda stored: window_to_uint8(modality(stored), low, high))
    return pixels, method


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
    return _to_uint8_chunked(arr, lambda stored: np.rint(
        np.clip(stored.astype(np.float64), 0, top) * (255.0 / top)).astype(np.uint8))
