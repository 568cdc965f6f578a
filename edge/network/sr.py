"""A study's verdict as a DICOM Structured Report, a new series in the same study.

Comprehensive SR (``[pacs] sr_type = "comprehensive"``, the default) or Basic Text SR
(``"basic"``, for a PACS that stores nothing else; numbers are then written as text). The
document tree, all concepts coded in the private scheme ``99NEUROEDGE``:

    CONTAINER  Brain MR triage (research, not for clinical use)
      TEXT     Notice                 the not-for-clinical-use notice
      TEXT     Verdict                a label, or "needs review"
      TEXT     How the verdict was reached
      NUM      Slices in the study / Slices confidently judged / Slices showing a tumour
      NUM      Highest slice probability: <label>     one per label
      NUM      Mean slice probability: <label>        one per label
      TEXT     Model                  name, version, sha256 prefix
      TEXT     Software               edge-agent version
      IMAGE    Suspicious slice       a reference to each of the most suspicious slices

The patient and study attributes (Patient's Name, Patient ID, Birth Date, Sex, Study
Instance UID, Study Date/Time, Accession Number, Referring Physician, Study ID) are copied
from one of the study's archived instances: a PACS files an SR by them, and mis-files or
refuses one that lacks them. They exist only in the SR file itself (in the send queue, under
``.state``), never in the agent's reports or logs. The SR's Series Instance UID is one per
study, and its SOP Instance UID one per set of instances judged, both derived from the
Study Instance UID: re-sending the same judgment is the same instance to the PACS, and a
re-judgment is a new instance of the same series (Instance Number = the study's revision)
that names the one before as its predecessor.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .. import __version__
from .settings import PacsConfig
from .verdict import Slice

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SCHEME = "99NEUROEDGE"
SERIES_NUMBER = 9901
PATIENT_STUDY_KEYS = ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID",
                      "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                      "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                      "StudyDescription")
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def sop_class_for(pacs: PacsConfig) -> str:
    return COMPREHENSIVE_SR if pacs.sr_type == "comprehensive" else BASIC_TEXT_SR


def series_uid(study_uid: str) -> str:
    """The SR series of a study: the same for every revision."""
    return str(generate_uid(entropy_srcs=[study_uid, "neuroedge-sr-series"]))


def instance_uid(study_uid: str, instances_hash: str) -> str:
    """The SR instance of one judgment (one set of instances)."""
    return str(generate_uid(entropy_srcs=[study_uid, instances_hash, "neuroedge-sr"]))


def read_header(path: Path) -> Dataset:
    """The patient and study attributes of an archived instance (no pixel data read). A file
    that holds none (empty, damaged: ``force`` reads anything) raises ``ValueError``, so
    the caller takes the study's next instance rather than send an SR with blank patient
    and study attributes."""
    source = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    if "StudyInstanceUID" not in source:
        raise ValueError(f"{path.name} holds no DICOM study attributes")
    header = Dataset()
    for keyword in PATIENT_STUDY_KEYS:
        if keyword in source:
            setattr(header, keyword, source.data_element(keyword).value)
    return header


def build_sr(doc: dict[str, Any], slices: list[Slice], header: Dataset, pacs: PacsConfig,
             predecessor: str | None = None) -> Dataset:
    """The SR data set for a judged study (``doc``: its ``studies/<uid>.json``)."""
    study = doc["study_instance_uid"]
    if str(header.get("StudyInstanceUID", study)) != study:
        raise ValueError("the header comes from an instance of another study")
    sop_class = sop_class_for(pacs)
    numeric = sop_class == COMPREHENSIVE_SR
    ds = Dataset()
    for keyword in PATIENT_STUDY_KEYS:
        if keyword in header:
            setattr(ds, keyword, header.data_element(keyword).value)
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.StudyInstanceUID = study
    now_date, now_time = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid(study, doc["instances_hash"])
    ds.InstanceCreationDate, ds.InstanceCreationTime = now_date, now_time
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_uid(study)
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = "NeuroEdge triage (research, not for clinical use)"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.Manufacturer = "NeuroEdge"
    ds.ManufacturerModelName = "edge-agent"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = int(doc["revision"])
    ds.ContentDate, ds.ContentTime = now_date, now_time
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"  # no person has verified an automated result
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(study, slices)
    if predecessor:
        name_predecessor(ds, sop_class, predecessor)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = _codes("NE-TRIAGE", "Brain MR triage (research only)")
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = Sequence(_content(doc, slices, numeric))
    return ds


def name_predecessor(ds: Dataset, sop_class: str, sop_instance_uid: str) -> None:
    """Name the SR that ``ds`` replaces at the PACS (an earlier judgment of its study, in
    the same series) in its Predecessor Documents Sequence."""
    ds.PredecessorDocumentsSequence = _evidence(str(ds.StudyInstanceUID), [], (
        ds.SeriesInstanceUID, [(sop_class, sop_instance_uid)]))


def encode(ds: Dataset) -> bytes:
    """The SR as a DICOM file (Explicit VR Little Endian), with both pydicom 2.4 and 3."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)  # pydicom 3
    except TypeError:
        ds.is_little_endian, ds.is_implicit_VR = True, False  # pydicom 2.4
        pydicom.dcmwrite(buffer, ds, write_like_original=False)
    return buffer.getvalue()


# --- content -------------------------------------------------------------------------

def _code(value: str, meaning: str, scheme: str = SCHEME) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = _ascii(meaning)[:64]
    return item


def _codes(value: str, meaning: str) -> Sequence:
    return Sequence([_code(value, meaning)])


def _ascii(text: Any) -> str:
    """Our own text is ASCII, whatever character set the copied patient attributes use."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in str(text))


def _text(value: str, meaning: str, text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = _codes(value, meaning)
    item.TextValue = _ascii(text)
    return item


def _number(value: str, meaning: str, number: float, unit: tuple[str, str],
            numeric: bool) -> Dataset:
    if not numeric:  # Basic Text SR has no NUM: the same fact as text
        shown = str(int(number)) if float(number).is_integer() else f"{number:.4f}"
        return _text(value, meaning, shown if unit[0] == "1" else f"{shown} {unit[1]}")
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "NUM"
    item.ConceptNameCodeSequence = _codes(value, meaning)
    measured = Dataset()
    measured.NumericValue = f"{number:.6g}"
    measured.MeasurementUnitsCodeSequence = Sequence([_code(unit[0], unit[1], "UCUM")])
    item.MeasuredValueSequence = Sequence([measured])
    return item


def _content(doc: dict[str, Any], slices: list[Slice], numeric: bool) -> list[Dataset]:
    counts = doc["counts"]
    verdict = "needs review" if doc["verdict"] == "needs_review" else doc["verdict"]
    items = [_text("NE-NOTICE", "Notice", doc["notice"]),
             _text("NE-VERDICT", "Verdict", verdict),
             _text("NE-REASON", "How the verdict was reached", doc["verdict_reason"])]
    slices_unit = ("{slices}", "slices")
    items += [_number("NE-N", "Slices in the study", counts["instances"], slices_unit, numeric),
              _number("NE-NCONF", "Slices confidently judged", counts["confident"],
                      slices_unit, numeric),
              _number("NE-NTUM", "Slices showing a tumour", counts["tumour_slices"],
                      slices_unit, numeric)]
    for i, (label, p) in enumerate(doc["probabilities"].items()):
        items.append(_number(f"NE-PMAX-{i}", f"Highest slice probability: {label}", p["max"],
                             ("1", "no units"), numeric))
        items.append(_number(f"NE-PMEAN-{i}", f"Mean slice probability: {label}", p["mean"],
                             ("1", "no units"), numeric))
    models = "; ".join(f"{m.get('name')} {m.get('version')} (sha256 {str(m.get('sha256'))[:12]})"
                       for m in doc["models"])
    items += [_text("NE-MODEL", "Model", models),
              _text("NE-SOFTWARE", "Software", f"NeuroEdge edge-agent {__version__}")]
    classes = {s.sop_instance_uid: s.sop_class_uid for s in slices}
    for s in doc["suspicious"]:
        sop_class = classes.get(s["sop_instance_uid"])
        if not sop_class or not _is_uid(s["sop_instance_uid"]):
            continue
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "IMAGE"
        item.ConceptNameCodeSequence = _codes("NE-SLICE", f"Suspicious slice: {s['label']}")
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = s["sop_instance_uid"]
        item.ReferencedSOPSequence = Sequence([ref])
        items.append(item)
    return items


def _is_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and all(part.isdigit() for part in value.split("."))


def _evidence(study: str, slices: list[Slice],
              extra: tuple[str, list[tuple[str, str]]] | None = None) -> Sequence:
    """Hierarchical SOP Instance Reference Macro: study > series > instances."""
    series: dict[str, list[tuple[str, str]]] = {}
    for s in slices:
        if s.sop_class_uid and _is_uid(s.series_instance_uid) and _is_uid(s.sop_instance_uid):
            series.setdefault(s.series_instance_uid, []).append(
                (s.sop_class_uid, s.sop_instance_uid))
    if extra is not None:
        series.setdefault(extra[0], []).extend(extra[1])
    item = Dataset()
    item.StudyInstanceUID = study
    item.ReferencedSeriesSequence = Sequence()
    for uid, refs in sorted(series.items()):
        entry = Dataset()
        entry.SeriesInstanceUID = uid
        entry.ReferencedSOPSequence = Sequence()
        for sop_class, sop_instance in sorted(set(refs)):
            ref = Dataset()
            ref.ReferencedSOPClassUID = sop_class
            ref.ReferencedSOPInstanceUID = sop_instance
            entry.ReferencedSOPSequence.append(ref)
        item.ReferencedSeriesSequence.append(entry)
    return Sequence([item])
