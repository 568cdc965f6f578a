"""Helpers for the edge agent's tests (a module of its own: ``conftest`` is a name every
test folder uses, so importing from it is ambiguous in a whole-suite run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edge.config import AgentConfig, config_from_dict

REPO_ROOT = Path(__file__).resolve().parents[2]


class TestModel:
    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, path: Path, toy: bool) -> None:
        self.path = path
        self.toy = toy  # True: predictions follow toy_model.expected_label


def make_config(folders: dict[str, Path], model: Path, **sections: dict[str, Any]) -> AgentConfig:
    data: dict[str, Any] = {"paths": {"inbox": str(folders["inbox"]),
                                      "outbox": str(folders["outbox"]), "model": str(model)},
                            "watch": {"settle_seconds": 0.0, "rescan_interval": 1.0}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data, "test")


def run_once(config: AgentConfig) -> dict[str, int]:
    """The agent's backlog run, in-process."""
    from edge.classifier import Classifier
    from edge.watch import Agent

    return Agent(config, Classifier(config), once=True).run()


# --- inputs ------------------------------------------------------------------------------

def pydicom_file(name: str) -> Path:
    from edge.sample_inbox import pydicom_test_file
    try:
        return pydicom_test_file(name)
    except Exception:  # noqa: BLE001
        pytest.skip(f"this pydicom does not ship {name}")


def gray_png(path: Path, level: int, size: int = 64) -> Path:
    Image.fromarray(np.full((size, size), level, dtype=np.uint8)).save(str(path), format="PNG")
    return path


def make_dicom(path: Path, pixels: np.ndarray, *, modality: str = "MR",
               photometric: str = "MONOCHROME2", signed: bool = False,
               slope: float | None = None, intercept: float | None = None,
               window: tuple | None = None, frames: int | None = None,
               bits_stored: int | None = None, preamble: bool = True,
               **tags: Any) -> Path:
    """Write an uncompressed DICOM built from ``pixels`` (2-D, 3-D frames, or RGB)."""
    from edge.benchmark import new_mr_dataset

    ds = new_mr_dataset()
    ds.Modality = modality
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST-0001"
    colour = photometric in ("RGB", "YBR_FULL")
    arr = np.asarray(pixels)
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    if frames:
        ds.NumberOfFrames = frames
    shape = arr.shape[1:] if frames else arr.shape
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = arr.tobytes()
    if not preamble:  # a bare data set: no preamble, no 'DICM', no meta group
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        del ds.file_meta
        write_dataset(buffer, ds)
        path.write_bytes(buffer.getvalue())
        return path
    return save_dicom(ds, path)


def save_dicom(ds: Any, path: Path) -> Path:
    """Write ``ds`` as a DICOM file with its file meta, under pydicom 3 or 2.4."""
    try:
        ds.save_as(str(path), enforce_file_format=True)  # pydicom 3
    except TypeError:
        ds.is_little_endian, ds.is_implicit_VR = True, False  # pydicom 2.4
        ds.save_as(str(path), write_like_original=False)
    return path


# --- reads -----------------------------------------------------------------------------------

class CountedFile:
    """An open file that adds the bytes read from it to ``tally[key]``: for tests that a
    step reads only what it must (patch a module's ``open`` to wrap what it opens)."""

    def __init__(self, handle: Any, tally: dict[str, int], key: str) -> None:
        self.handle, self.tally, self.key = handle, tally, key

    def __enter__(self) -> CountedFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()

    def __iter__(self) -> Any:
        for line in self.handle:
            self.tally[self.key] += len(line)
            yield line

    def read(self, *args: Any) -> Any:
        data = self.handle.read(*args)
        self.tally[self.key] += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


# --- subprocesses --------------------------------------------------------------------------

def agent_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("NEUROEDGE_FAILPOINT", None)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update(extra)
    return env


# Makes one step of the agent or the offload hang, in a subprocess only (a file named
# sitecustomize on PYTHONPATH is imported by every Python that starts with it there): a
# read on a share that stopped answering, for the hang tests (test_self_watchdog.py).
HANG = '''
import os, time
def hang(*args, **kwargs):
    time.sleep(3600)
if os.environ.get("NEUROEDGE_TEST_HANG") == "classify":
    import edge.worker
    edge.worker.Worker.prepare = hang
if os.environ.get("NEUROEDGE_TEST_HANG") == "offload-copy":
    import edge.offload
    write = edge.offload._Offload._write
    def write_then_hang(self, copy, target, barrier):
        if copy.dest.startswith("archive/"):  # a report or two copied, then DEST hangs
            hang()
        return write(self, copy, target, barrier)
    edge.offload._Offload._write = write_then_hang
'''


def hanging(tmp_path: Path, where: str) -> dict[str, str]:
    """The environment of a subprocess whose ``where`` hangs (``HANG``): for ``run_agent``."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HANG)
    return {"NEUROEDGE_TEST_HANG": where,
            "PYTHONPATH": str(hook) + os.pathsep + agent_env()["PYTHONPATH"]}


def run_agent(args: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge"] + args, capture_output=True,
                          text=True, timeout=timeout, env=agent_env(**env), cwd=str(REPO_ROOT))


def start_agent(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge"] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=agent_env(**env),
                            cwd=str(REPO_ROOT))


def fast_config(folder: Path, text: str = "") -> Path:
    """A config file for subprocess tests: files count as settled at once."""
    path = folder / "test-config.toml"
    path.write_text("[watch]\nsettle_seconds = 0.0\nrescan_interval = 1.0\n" + text)
    return path


def outbox_files(outbox: Path) -> list[Path]:
    return sorted(p for p in outbox.rglob("*") if p.is_file() and ".state" not in p.parts)


def other_filesystem(path: Path) -> Path:
    """A writable folder on another filesystem than ``path`` (an inbox across filesystems
    from the outbox), or skip the test."""
    for candidate in ("/dev/shm", "/run/user", "/run"):
        c = Path(candidate)
        if c.is_dir() and os.access(str(c), os.W_OK) and os.stat(str(c)).st_dev != os.stat(
                str(path)).st_dev:
            return c
    pytest.skip("no writable folder on another filesystem to put the inbox on")


# --- pages ---------------------------------------------------------------------------------

def page_report(file_name: str = "scan.png", *, needs_review: bool = True,
                study: str | None = None) -> dict[str, Any]:
    """A report as the agent writes it (the fields ``edge.pages.report_page`` reads), without
    running a model: for tests of the pages themselves."""
    probabilities = {"meningioma": 0.62, "glioma": 0.3, "notumor": 0.05, "pituitary": 0.03}
    return {
        "schema": "neuroedge.report/2", "id": "ab" * 32,
        "notice": "NOT FOR CLINICAL USE. A test page.",
        "created_at": "2026-12-06T10:00:01+01:00",
        "input": {"file_name": file_name, "sha256": "ab" * 32, "size_bytes": 1234,
                  "format": "dicom" if study else "png"},
        "dicom": {"study_instance_uid": study, "modality": "MR"} if study else None,
        "prediction": {"label": "meningioma", "confidence": 0.62,
                       "probabilities": probabilities},
        "needs_review": needs_review,
        "review_reasons": ["confidence 0.62 is below the review threshold 0.90"]
        if needs_review else [],
        "trust": None, "heatmap": {"kind": "occlusion", "peak_effect": 0.4}, "notes": [],
        "model": {"name": "brain-mri-test", "version": "9.8.7", "architecture": "toy",
                  "quantization": "int8", "sha256": "cd" * 32, "runtime": "test"},
        "agent": {"version": "0"}, "timings_ms": {"total": 1.0},
        "intake": {"token": "20261206T100000-abcdef", "received_at": "2026-12-06T10:00:00+01:00"},
    }


def page_day_entries(long_name: str) -> list[dict[str, Any]]:
    """A day's index lines: one needing review with ``long_name``, one refused, one fine."""
    report = {"report": f"reports/{'ab' * 32}.json", "html": f"reports/{'ab' * 32}.html"}
    return [
        {"time": "2026-12-06T10:00:00+01:00", "file_name": long_name, "outcome": "classified",
         "label": "meningioma", "confidence": 0.62, "needs_review": True,
         "moved_to": f"archive/2026-12-06/{long_name}", **report},
        {"time": "2026-12-06T10:01:00+01:00", "file_name": "notes.txt",
         "outcome": "quarantined", "reason": "the file is a text file, not a PNG, JPEG or DICOM "
         "file", "moved_to": "quarantine/notes.txt"},
        {"time": "2026-12-06T10:02:00+01:00", "file_name": "ok.png", "outcome": "classified",
         "label": "glioma", "confidence": 0.97, "needs_review": False,
         "moved_to": "archive/2026-12-06/ok.png", **report},
    ]


def page_study(created_at: str = "2026-12-06T10:05:00+01:00") -> dict[str, Any]:
    """A study report as ``edge.network.studies`` writes it (the fields the study pages
    read), without judging one: for tests of the pages themselves."""
    uid = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901"  # 57 characters
    labels = {"glioma": 4, "meningioma": 0, "notumor": 6, "pituitary": 0}
    return {
        "notice": "NOT FOR CLINICAL USE. A test page.", "study_date": "20261206",
        "study_instance_uid": uid, "verdict": "needs_review",
        "verdict_reason": "only 4 confident tumour slices", "revision": 1,
        "created_at": created_at, "suspicious": [], "notes": [],
        "counts": {"instances": 10, "confident": 8, "needs_review": 2, "tumour_slices": 4,
                   "by_label": labels},
        "probabilities": {k: {"max": 0.9, "mean": 0.25} for k in labels},
        "series": [{"series_instance_uid": f"{uid}.1", "series_description": "T1 axial post "
                    "contrast, 3 mm", "instances": 10, "needs_review": 2, "by_label": labels}],
        "rule": {"normal_label": "notumor", "min_slices": 3, "agreement": 0.6,
                 "max_review_share": 0.3, "review_threshold": 0.9},
        "models": [{"name": "brain-mri-test", "version": "9.8.7", "sha256": "cd" * 32}],
        "instances": [{"report": "ab" * 32, "label": "glioma", "confidence": 0.95,
                       "needs_review": False, "sop_instance_uid": f"{uid}.1.{n}"}
                      for n in range(3)],
    }


def page_studies_rows(n: int = 3) -> list[dict[str, Any]]:
    """``studies/index.html``'s rows (``edge.network.studies.index_row`` of each report)."""
    uid = page_study()["study_instance_uid"]
    return [{"created_at": f"2026-12-06T10:0{i}:00+01:00", "study_date": "20261206",
             "verdict": "needs_review" if i % 2 else "glioma",
             "study_instance_uid": f"{uid}{i}", "instances": 24, "series": 3}
            for i in range(n)]
