"""Helpers for the DICOM network tests: free ports, studies built by the tests, dcmtk, and
pynetdicom clients (a module of its own, like agent_helpers)."""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_helpers import make_dicom

from benchmarks.network import dcmtk as dcmtk_path

DCMTK_TOOLS = ("echoscu", "storescu", "storescp", "dsrdump")
PATIENT_NAME, PATIENT_ID = "SECRETNAME^JANE", "MRN-5551234"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tool(name: str) -> str:
    """dcmtk's program ``name`` (never pynetdicom's script of the same name)."""
    path = dcmtk_path(name)
    if path is None:
        pytest.skip(f"dcmtk's {name} is not installed: apt-get install -y dcmtk")
    return path


def dcmtk() -> None:
    """Skip, with the reason, where dcmtk's tools are not installed."""
    missing = [tool for tool in DCMTK_TOOLS if dcmtk_path(tool) is None]
    if missing:
        pytest.skip(f"dcmtk is not installed ({', '.join(missing)} missing): "
                    "apt-get install -y dcmtk (.ci/run installs it when it can)")


def brightness_pixels(level: float, size: int = 64) -> np.ndarray:
    """16-bit pixels that the window (500, 1000) shows at ``level`` (0..1) mean brightness:
    the toy model labels by brightness (glioma < 0.25 <= meningioma < 0.5 <= notumor < 0.75)."""
    return np.full((size, size), int(round(level * 1000)), dtype=np.uint16)


def make_study(folder: Path, levels: list[float], study_uid: str | None = None,
               series: int = 1, **tags: Any) -> tuple[str, list[Path]]:
    """A multi-slice MR study: one DICOM per brightness level, spread over ``series``."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or str(generate_uid())
    series_uids = [str(generate_uid()) for _ in range(series)]
    paths = []
    for i, level in enumerate(levels):
        path = folder / f"slice{i:03d}.dcm"
        make_dicom(path, brightness_pixels(level), window=(500, 1000),
                   StudyInstanceUID=study_uid, SeriesInstanceUID=series_uids[i % series],
                   SeriesDescription=f"axial {i % series}", InstanceNumber=i + 1,
                   PatientName=PATIENT_NAME, PatientID=PATIENT_ID, StudyDate="20261120",
                   AccessionNumber="ACC42", **tags)
        paths.append(path)
    return study_uid, paths


def send_with_pynetdicom(port: int, paths: list[Path], calling: str = "SCANNER",
                         called: str = "NEUROEDGE",
                         on_status: Callable[[Path, int], None] | None = None,
                         dimse_timeout: float | None = None) -> list[int]:
    """C-STORE each file over one association; return the statuses (-1: no answer).
    ``dimse_timeout``: how long to wait for each answer (pynetdicom's default: 30 s; a
    receiver killed while an instance is sent is noticed only then)."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(str(p)) for p in paths]
    ae = AE(ae_title=calling)
    if dimse_timeout is not None:
        ae.dimse_timeout = dimse_timeout
    for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                                     for ds in datasets}):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "the receiver refused the association"
    statuses = []
    try:
        for i, path in enumerate(paths):
            ds = datasets[i]
            try:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status and "Status" in status else -1
            except Exception:  # noqa: BLE001 - the receiver died: no answer
                code = -1
            statuses.append(code)
            if on_status is not None:
                on_status(path, code)
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def settle_in_doubt(inbox: Path, outbox: Path) -> list[str]:
    """What is wrong with the receiver's instances in doubt (``edge.network.receiver``): a
    temporary file in the inbox with a second link, kept for a day in case its sender did
    not get the answer (a kill or an abort after the answer went out, before the sender's
    next request confirmed it). Each must be a link to an archived instance (no space of
    its own); it is removed here, as its day out would."""
    archived = {(p.stat().st_dev, p.stat().st_ino) for p in (outbox / "archive").rglob("*")
                if p.is_file()}
    wrong = []
    for path in inbox.glob(".neuroedge-*.tmp"):
        info = path.stat()
        if info.st_nlink > 1:
            if (info.st_dev, info.st_ino) not in archived:
                wrong.append(f"an instance in doubt that is not archived: {path.name}")
            path.unlink()
    return wrong


def echo_with_pynetdicom(port: int, calling: str = "SCANNER") -> tuple[bool, int | None]:
    """(association accepted, C-ECHO status or None)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="NEUROEDGE")
    if not assoc.is_established:
        return False, None
    status = assoc.send_c_echo()
    assoc.release()
    return True, int(status.Status)


class StoreSCP:
    """dcmtk's storescp playing the PACS: every instance it receives lands in ``folder``."""

    def __init__(self, folder: Path, port: int, aet: str = "PACS",
                 options: tuple[str, ...] = ()) -> None:
        self.folder, self.port, self.aet, self.options = folder, port, aet, options
        self.proc: subprocess.Popen | None = None

    def start(self) -> StoreSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.done.mkdir(exist_ok=True)
        # storescp writes each file in place: a name in ``done`` (touched once the file is
        # saved) says it is whole, so ``received`` never hands a test a file still written
        done = shlex.quote(str(self.done))
        self.proc = subprocess.Popen([tool("storescp"), "-aet", self.aet, "-od", str(self.folder),
                                      "--exec-on-reception", f"touch {done}/#f",
                                      *self.options, str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # listening once echoscu gets through
            if subprocess.run([tool("echoscu"), "-aec", self.aet, "127.0.0.1", str(self.port)],
                              capture_output=True).returncode == 0:
                return self
            time.sleep(0.1)
        raise AssertionError("storescp did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def connected(self) -> bool:
        """Whether a TCP connection to this PACS is open now (Linux: /proc/net/tcp)."""
        port = f":{self.port:04X} "
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if f"{fields[1]} ".endswith(port) and fields[3] == "01":  # ESTABLISHED
                    return True
        return False

    @property
    def done(self) -> Path:
        return self.folder.with_name(self.folder.name + ".done")

    def received(self) -> list[Path]:
        """The instances received whole (not one storescp is still writing)."""
        whole = {p.name for p in self.done.iterdir()}
        return sorted(p for p in self.folder.iterdir() if p.is_file() and p.name in whole)


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {condition}")
