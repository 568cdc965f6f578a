"""A study over the network, scanner to PACS: how long until the SR is back.

Per run: a fresh ``edge-agent watch --dicom-port`` (a subprocess, the shipped model unless
``--model``), dcmtk's ``storescp`` as the PACS, and dcmtk's ``storescu`` sending one study
of N 12-bit MR slices (synthetic 512x512 phantom heads, 0.5 MB each, or the data set's
Testing images at their own sizes with ``--data``) over one association, as a scanner does.
Measured from the moment storescu starts (its first instance goes out within milliseconds):

- received: storescu's wall time (every instance acknowledged, so on the agent's disk);
- classified: the last per-slice report written;
- judged: ``studies/<uid>.json`` written (includes ``[studies] settle_seconds``, the wait
  for more instances that a real study needs: set low here, shown separately);
- SR at the PACS: the SR file complete in storescp's folder.

Instances per second = slices / time to the last report. Peak RSS: the agent's VmHWM.
Needs dcmtk (``apt-get install -y dcmtk``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.errors import BenchmarkError
from benchmarks.report import table

log = logging.getLogger(__name__)
TOOLS = ("storescu", "storescp", "echoscu")


def dcmtk(tool: str) -> str | None:
    """The path of dcmtk's ``tool``, or None. Not simply the first on ``PATH``: pynetdicom
    installs Python scripts with the same names (storescu, storescp, echoscu) into the
    virtual environment, which comes first on ``PATH`` once it is activated, and a test
    against an independent DICOM implementation must not end up talking to our own
    library. dcmtk's tools are compiled programs: the first executable found on ``PATH``
    (then /usr/bin) that starts with the ELF signature is dcmtk's."""
    folders = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]
    for folder in folders:
        path = os.path.join(folder, tool)
        if not (folder and os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        try:
            with open(path, "rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    return path
        except OSError:
            continue
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_study(folder: Path, pictures: list[np.ndarray]) -> tuple[str, int]:
    """One study, one series, one 12-bit MR slice per picture; returns (uid, bytes)."""
    from pydicom.uid import generate_uid

    from edge.benchmark import synthetic_mr

    folder.mkdir(parents=True, exist_ok=True)
    study, series = str(generate_uid()), str(generate_uid())
    total = 0
    for i, picture in enumerate(pictures):
        path = synthetic_mr(folder / f"slice{i:04d}.dcm", pixels=picture,
                            StudyInstanceUID=study, SeriesInstanceUID=series,
                            PatientName="Bench^Mark", PatientID="BENCH-1", StudyDate="20261120",
                            InstanceNumber=i + 1, BodyPartExamined="BRAIN")
        total += path.stat().st_size
    return study, total


def _wait(condition: Any, timeout: float, what: str, every: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(every)
    raise BenchmarkError(f"timed out after {timeout:.0f}s waiting for {what}")


def _peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def one_run(model: str, study_dir: Path, study_uid: str, slices: int, work: Path,
            settle: float) -> dict[str, Any]:
    agent_port, pacs_port = _free_port(), _free_port()
    inbox, outbox, pacs_dir = work / "inbox", work / "outbox", work / "pacs"
    for folder in (inbox, pacs_dir):
        folder.mkdir(parents=True)
    config = work / "config.toml"
    config.write_text("[watch]\nsettle_seconds = 0.0\n[studies]\n"
                      f"settle_seconds = {settle}\n[pacs]\n"
                      f"send_to = \"PACS@127.0.0.1:{pacs_port}\"\n")
    agent_log = open(work / "agent.log", "wb")
    storescp, echoscu, storescu = (str(dcmtk(t)) for t in ("storescp", "echoscu", "storescu"))
    pacs = subprocess.Popen([storescp, "-aet", "PACS", "-od", str(pacs_dir), str(pacs_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    agent = subprocess.Popen([sys.executable, "-m", "edge", "--config", str(config), "watch",
                              str(inbox), "--outbox", str(outbox), "--model", model,
                              "--dicom-port", str(agent_port)], stdout=agent_log,
                             stderr=subprocess.STDOUT, env=env)
    try:
        def listening() -> bool:
            if agent.poll() is not None:
                tail = (work / "agent.log").read_text()[-800:]
                raise BenchmarkError(f"the agent stopped: {tail}")
            return subprocess.run([echoscu, "-aec", "NEUROEDGE", "127.0.0.1", str(agent_port)],
                                  capture_output=True).returncode == 0
        _wait(listening, 120, "the agent's receiver", every=0.2)
        files = sorted(str(p) for p in study_dir.glob("*.dcm"))
        reports = outbox / "reports"
        study_json = outbox / "studies" / f"{study_uid}.json"
        t0 = time.monotonic()
        sent = subprocess.run([storescu, "-aec", "NEUROEDGE", "127.0.0.1", str(agent_port),
                               *files], capture_output=True, text=True, timeout=600)
        t_received = time.monotonic()
        if sent.returncode != 0:
            raise BenchmarkError(f"storescu failed: {sent.stderr[-800:]}")
        t_classified = _wait(lambda: reports.is_dir() and sum(
            1 for _ in reports.glob("*.json")) >= slices, 600, "the reports")
        t_judged = _wait(study_json.exists, 600, "the study report")
        t_sr = _wait(lambda: any(pacs_dir.iterdir()), 600, "the SR at the PACS")
        peak = _peak_rss_mb(agent.pid)
        doc = json.loads(study_json.read_text())
    finally:
        if agent.poll() is None:
            agent.terminate()
        agent.wait(120)
        pacs.terminate()
        pacs.wait(30)
        agent_log.close()
    return {"received_s": t_received - t0, "classified_s": t_classified - t0,
            "judged_s": t_judged - t0, "sr_s": t_sr - t0, "peak_rss_mb": peak,
            "instances_per_s_received": slices / (t_received - t0),
            "instances_per_s": slices / (t_classified - t0), "verdict": doc["verdict"],
            "instances_judged": doc["counts"]["instances"]}


def measure(model: str, slices: int, runs: int, data_dir: Path | None, work: Path,
            settle: float) -> dict[str, Any]:
    missing = [t for t in TOOLS if dcmtk(t) is None]
    if missing:
        raise BenchmarkError(f"dcmtk is not installed ({', '.join(missing)} missing): "
                             "apt-get install -y dcmtk")
    from benchmarks.agent import _source_pictures

    pictures = _source_pictures(slices, data_dir)
    study_dir = work / "network-study"
    study_uid, size = make_study(study_dir, pictures)
    results = []
    for n in range(runs):
        log.info("network run %d of %d: %d slices", n + 1, runs, slices)
        run_dir = work / f"network-run{n}"
        run_dir.mkdir()
        results.append(one_run(model, study_dir, study_uid, slices, run_dir, settle))
        shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(study_dir, ignore_errors=True)
    return {"slices": slices, "study_mb": round(size / 1e6, 1), "runs": results,
            "settle_seconds": settle, "model": model,
            "source": (f"Testing images of {data_dir} at their own sizes, all four classes "
                       "mixed" if data_dir else "synthetic 512x512 phantom heads")}


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    keys = [("received_s", "all instances received (storescu done), s"),
            ("classified_s", "last slice classified, s"),
            ("judged_s", "study report written, s"),
            ("sr_s", "**SR at the PACS (storescp), s**"),
            ("instances_per_s_received", "instances/s received"),
            ("instances_per_s", "**instances/s, first instance to last report**"),
            ("peak_rss_mb", "agent peak RSS, MB")]
    headers = ["from the first instance"] + [f"run {i + 1}" for i in range(len(runs))] + [
        "median"]
    rows = []
    for key, name in keys:
        values = [r[key] for r in runs]
        shown = [v for v in values if v is not None]
        rows.append([name, *values, statistics.median(shown) if shown else None])
    notes = (f"\n\n- {result['slices']} slices of 12-bit MR ({result['study_mb']} MB, "
             f"{result['source']}) in one study, one association (`storescu`), to "
             f"`edge-agent watch --dicom-port` on this machine (loopback), model "
             f"{result['model']}; the SR goes to `storescp`\n"
             f"- [studies] settle_seconds = {result['settle_seconds']:g}: the study is judged "
             "once no instance arrived for that long, so it is part of every time from "
             f"'study report written' on (the default, 60 s, would add "
             f"{60 - result['settle_seconds']:g} s to them)\n"
             f"- verdicts: {', '.join(r['verdict'] for r in runs)}; instances judged: "
             f"{', '.join(str(r['instances_judged']) for r in runs)}")
    return table(headers, rows) + notes
