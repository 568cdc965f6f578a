"""The per-input report: ``<outbox>/reports/<id>.json`` (schema ``neuroedge.report/2``).

``id`` is the sha256 of the input's bytes, so the same content always maps to the same
report and is never classified twice. The schema is documented field by field in
docs/schemas/report.md; a change to a field's meaning bumps the schema version. Version 2
(issue 13): ``prediction.probabilities`` are calibrated when the model has a temperature,
and ``trust`` and ``heatmap`` were added. Readers take both versions (``REPORT_SCHEMAS``).
"""

from __future__ import annotations

import platform
import re
import time
from datetime import datetime
from typing import Any

from . import __version__
from .decoded import DecodedImage

REPORT_SCHEMA = "neuroedge.report/2"
REPORT_SCHEMAS = ("neuroedge.report/1", REPORT_SCHEMA)  # what readers accept
NOTICE = ("NOT FOR CLINICAL USE. This is an automated research classification of one image by "
          "a machine-learning model. It is not a diagnosis, may be wrong, and must not be used "
          "to make decisions about a patient's care.")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")  # a date alone is no time


def now_iso() -> str:
    """Local time with its UTC offset, to the second (what a clinic's staff read)."""
    return datetime.now().astimezone().replace(microsecond=0).isoformat()


def shown_time(value: Any) -> str:
    """A stored time as every page shows it: ``2026-12-07 14:03:05 +01:00``, the clock it
    was recorded by and that clock's offset from UTC, so a reader on a PC set to another
    zone, or on the night the clocks go back, can tell which moment it was. A time stored
    without an offset (the agent writes none) says so; text that is no time stays as it is."""
    text = "" if value is None else str(value)
    try:
        moment = datetime.fromisoformat(_iso_for_38(text)) if _TIME.match(text) else None
    except ValueError:
        moment = None
    if moment is None:
        return text
    clock = moment.strftime("%Y-%m-%d %H:%M:%S")
    offset = moment.utcoffset()
    if offset is None:
        return f"{clock} (time zone not recorded)"
    minutes = round(offset.total_seconds() / 60)
    hours, minutes = divmod(abs(minutes), 60)
    return f"{clock} {'-' if offset.total_seconds() < 0 else '+'}{hours:02d}:{minutes:02d}"


def _iso_for_38(text: str) -> str:
    """Written the way Python 3.8's ``fromisoformat`` reads it (newer ones read more): a
    ``Z`` as ``+00:00``, an offset ``+0100`` as ``+01:00``, a fraction of a second as 6
    digits. The agent writes its own times that way; a time from elsewhere may not be."""
    text = re.sub(r"Z$", "+00:00", text)
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text)
    return re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)


def local_day() -> str:
    return time.strftime("%Y-%m-%d")


def agent_info() -> dict[str, Any]:
    versions = {"name": "edge-agent", "version": __version__,
                "python": platform.python_version()}
    for module in ("numpy", "pydicom", "PIL"):
        try:
            versions[module.lower() if module != "PIL" else "pillow"] = __import__(
                module).__version__
        except Exception:  # noqa: BLE001 - informative only
            pass
    return versions


def build_report(*, sha256: str, file_name: str, size: int, decoded: DecodedImage,
                 prediction: Any, model: dict[str, Any], timings_ms: dict[str, float],
                 token: str, received_at: str) -> dict[str, Any]:
    """The report as a JSON-ready dict (the HTML page is rendered from the same dict)."""
    return {
        "schema": REPORT_SCHEMA,
        "id": sha256,
        "notice": NOTICE,
        "created_at": now_iso(),
        "input": {"file_name": file_name, "sha256": sha256, "size_bytes": size,
                  "format": decoded.kind},
        "dicom": decoded.details if decoded.kind == "dicom" else None,
        "image": decoded.details if decoded.kind != "dicom" else None,
        "prediction": {"label": prediction.label, "confidence": prediction.confidence,
                       "probabilities": prediction.probabilities},
        "needs_review": prediction.needs_review,
        "review_reasons": list(prediction.review_reasons),
        "trust": getattr(prediction, "trust", None),
        "heatmap": heatmap_section(sha256, prediction),
        "notes": list(decoded.notes),
        "model": model,
        "agent": agent_info(),
        "timings_ms": {k: round(v, 2) for k, v in timings_ms.items()},
        "intake": {"token": token, "received_at": received_at},
    }


def heatmap_section(sha256: str, prediction: Any) -> dict[str, Any] | None:
    """The report's ``heatmap``: which map, the PNG beside the report, and where it peaks."""
    heat = getattr(prediction, "heatmap", None)
    if heat is None:
        return None
    from .heatmap import peak

    section = {"kind": prediction.heatmap_kind, "file": f"{sha256}.heatmap.png",
               "map_size": [int(d) for d in heat.shape], "peak": peak(heat)}
    effect = getattr(prediction, "heatmap_effect", None)
    if effect is not None:
        section["peak_effect"] = round(float(effect), 4)
    return section


def valid_uid(value: Any) -> bool:
    """A DICOM UID (PS3.5 9.1: digits and dots, at most 64 characters): safe as a file name."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


def study_of(report: dict[str, Any] | None) -> str | None:
    """The StudyInstanceUID a report belongs to, if it has a valid one."""
    uid = ((report or {}).get("dicom") or {}).get("study_instance_uid")
    return uid if valid_uid(uid) else None


def summary_line(report: dict[str, Any] | None) -> dict[str, Any]:
    """The fields of a report the daily index repeats (``study``: the StudyInstanceUID of a
    DICOM input that has a valid one, for the study reports of ``edge.network.studies``)."""
    if not report:
        return {"label": None, "confidence": None, "needs_review": None}
    summary = {"label": report["prediction"]["label"],
               "confidence": report["prediction"]["confidence"],
               "needs_review": report["needs_review"]}
    study = study_of(report)
    if study:
        summary["study"] = study
    return summary
