"""``python -m benchmarks soak``: kill -9 the agent at random moments, round after round.

Each round drops a burst of mixed inputs into the inbox (good PNG and DICOM scans, exact
duplicates, and the bad kinds the adversarial probe used: text, empty and truncated files,
JPEGs cut in half with their end marker put back, a CT, a DICOM with a NaN Rescale Slope,
names that are not UTF-8, names of reason records, a right-to-left override, sub-folders),
starts ``edge-agent watch --once`` as a real process and SIGKILLs it after a random delay
(if it has not finished by then). After the last round one more run must finish the
backlog, and then the books must balance:

- every input's bytes are in the outbox exactly once (archive or quarantine), none in the
  inbox: nothing lost, nothing duplicated;
- every archived input has its report, every quarantined one its reason record;
- ``edge-agent fsck --dry-run --deep`` finds no problem and nothing pending;
- no run outlived its time limit (a hang).

The inputs are made in a scratch folder from synthetic pictures (no data set images).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import table

log = logging.getLogger(__name__)
RUN_LIMIT_S = 300.0  # a run that takes longer than this is counted as a hang


def _png(picture: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(picture: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _dicom(picture: np.ndarray, modality: str = "MR", slope: str | None = None) -> bytes:
    from pydicom import dcmread

    from edge.benchmark import synthetic_mr

    with _scratch() as folder:
        path = synthetic_mr(folder / "x.dcm", pixels=picture)
        if modality != "MR" or slope is not None:
            ds = dcmread(str(path))
            ds.Modality = modality
            if slope is not None:
                from pydicom.dataelem import RawDataElement
                from pydicom.tag import Tag

                value = slope.encode() + b" " * (len(slope) % 2)
                ds._dict[Tag(0x00281053)] = RawDataElement(Tag(0x00281053), "DS", len(value),
                                                           value, 0, False, True)
            ds.save_as(str(path))
        return path.read_bytes()


class _scratch:
    def __enter__(self) -> Path:
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="neuroedge-soak-")
        return Path(self._dir.name)

    def __exit__(self, *exc: Any) -> None:
        self._dir.cleanup()


def burst(rng: np.random.Generator, round_no: int, size: int) -> list[tuple[bytes, bytes]]:
    """``size`` inputs as (relative path as bytes, content): about 70% good, 30% bad."""
    from edge.sample_inbox import phantom

    base = phantom(256).astype(np.int16)
    items: list[tuple[bytes, bytes]] = []
    for i in range(size):
        picture = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
        stem = f"r{round_no:02d}-{i:03d}".encode()
        kind = rng.choice(["png", "png", "jpeg", "dicom", "dicom", "duplicate", "text", "empty",
                           "truncated", "half-jpeg", "ct", "nan-slope", "reason-name"],
                          p=[.2, .15, .1, .15, .1, .05, .04, .03, .04, .04, .04, .03, .03])
        if kind == "png":
            items.append((stem + b".png", _png(picture)))
        elif kind == "jpeg":
            items.append((stem + b".jpg", _jpeg(picture)))
        elif kind == "dicom":
            items.append((b"sub/" + stem, _dicom(picture)))  # no extension, in a sub-folder
        elif kind == "duplicate" and items:
            name, data = items[int(rng.integers(len(items)))]
            items.append((stem + b"-copy" + os.path.splitext(name)[1], data))
        elif kind == "text":
            items.append((stem + b".png", b"not an image, round %d item %d" % (round_no, i)))
        elif kind == "empty":
            items.append((stem + b".dcm", b""))
        elif kind == "truncated":
            data = _png(picture)
            items.append((stem + b".png", data[: len(data) // 2]))
        elif kind == "half-jpeg":
            data = _jpeg(picture)
            items.append((stem + b"-cut.jpg", data[: len(data) // 2] + b"\xff\xd9"))
        elif kind == "ct":
            items.append((stem + b"-ct.dcm", _dicom(picture, modality="CT")))
        elif kind == "nan-slope":
            items.append((stem + b"-nan.dcm", _dicom(picture, slope="NaN")))
        else:  # names that once lost an input or broke the agent
            name = rng.choice([b"x.png.reason.json", b"M\xfcller-" + stem + b".png",
                               "scan\u202egnp.exe".encode() + stem])
            items.append((name, b"refused " + stem))
    return items


def _place(inbox: Path, items: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Write the burst (a taken name gets a suffix); return the contents placed."""
    placed = []
    for rel, data in items:
        path = os.path.join(os.fsencode(str(inbox)), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        n = 0
        while os.path.lexists(path):
            n += 1
            path = os.path.join(os.fsencode(str(inbox)), rel + b".%d" % n)
        with open(path, "wb") as handle:
            handle.write(data)
        placed.append(data)
    return placed


def _agent(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "NEUROEDGE_FAILPOINT"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, "-m", "edge", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def measure(model: str, rounds: int, files: int, seed: int, work: Path,
            max_delay_s: float) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    delays = random.Random(seed)
    inbox, outbox = work / "soak-inbox", work / "soak-outbox"
    inbox.mkdir(parents=True)
    config = work / "soak.toml"
    config.write_text("[watch]\nsettle_seconds = 0.0\nrescan_interval = 1.0\n")
    args = ["--config", str(config), "watch", str(inbox), "--outbox", str(outbox), "--model",
            model, "--once"]
    placed: list[bytes] = []
    killed = finished = hangs = tracebacks = interrupted = journaled = 0
    started = time.perf_counter()
    for round_no in range(rounds):
        placed += _place(inbox, burst(rng, round_no, files))
        delay = delays.uniform(0.0, max_delay_s)
        proc = _agent(args)
        try:
            proc.wait(timeout=delay)
            finished += 1
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        _, err = proc.communicate(timeout=60)
        tracebacks += "Traceback" in (err or "")
        jobs = outbox / ".state" / "jobs"
        left = len(os.listdir(str(jobs))) if jobs.is_dir() else 0
        interrupted += left > 0  # the kill landed while inputs were half done
        journaled += left
        log.info("round %d/%d: %s after %.2f s", round_no + 1, rounds,
                 "finished" if proc.returncode != -signal.SIGKILL else "killed", delay)
    proc = _agent(args)
    try:
        _, err = proc.communicate(timeout=RUN_LIMIT_S)
        final_rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        hangs += 1
        final_rc = None
    tracebacks += "Traceback" in (err or "")
    books = _books(inbox, outbox, placed)
    fsck = subprocess.run([sys.executable, "-m", "edge", "fsck", str(outbox), "--dry-run",
                           "--deep", "--json"], capture_output=True, text=True, timeout=600)
    checked = json.loads(fsck.stdout) if fsck.stdout.strip() else {}
    return {"rounds": rounds, "files_per_round": files, "seed": seed,
            "max_delay_s": max_delay_s, "inputs": len(placed), "killed": killed,
            "kills_mid_job": interrupted, "jobs_interrupted": journaled,
            "finished_before_kill": finished, "final_exit": final_rc, "hangs": hangs,
            "tracebacks": tracebacks, **books, "fsck_exit": fsck.returncode,
            "fsck_problems": checked.get("problems"), "fsck_pending": checked.get("pending"),
            "seconds": round(time.perf_counter() - started, 1)}


def _books(inbox: Path, outbox: Path, placed: list[bytes]) -> dict[str, Any]:
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    expected = collections.Counter(digest(d) for d in placed)
    stored: collections.Counter = collections.Counter()
    missing_reports = missing_records = 0
    for path in (outbox / "archive").rglob("*"):
        if path.is_file():
            sha = digest(path.read_bytes())
            stored[sha] += 1
            missing_reports += not (outbox / "reports" / f"{sha}.json").is_file()
    quarantine = outbox / "quarantine"
    names = {p.name for p in quarantine.iterdir()} if quarantine.is_dir() else set()
    for name in names:
        if name + ".reason.json" in names:
            stored[digest((quarantine / name).read_bytes())] += 1
        elif not name.endswith(".reason.json"):
            missing_records += 1
            stored[digest((quarantine / name).read_bytes())] += 1
    left = sum(len(files) for _, _, files in os.walk(str(inbox)))
    lost = sum((expected - stored).values())
    duplicated = sum((stored - expected).values())
    return {"archived": sum(1 for p in (outbox / "archive").rglob("*") if p.is_file()),
            "quarantined": sum(1 for n in names if n + ".reason.json" in names),
            "left_in_inbox": left, "lost": lost, "duplicated": duplicated,
            "missing_reports": missing_reports, "missing_records": missing_records}


def markdown(r: dict[str, Any]) -> str:
    ok = (r["lost"] == 0 and r["duplicated"] == 0 and r["hangs"] == 0 and r["tracebacks"] == 0
          and r["fsck_exit"] == 0 and r["left_in_inbox"] == 0)
    rows = [
        ["rounds (burst, start, kill -9 at a random moment)", r["rounds"]],
        ["inputs per burst / in all", f"{r['files_per_round']} / {r['inputs']}"],
        ["runs killed / finished before their kill", f"{r['killed']} / "
                                                    f"{r['finished_before_kill']}"],
        ["kills that left inputs half done (journaled) / such inputs, all resumed",
         f"{r.get('kills_mid_job', '-')} / {r.get('jobs_interrupted', '-')}"],
        ["kill delay", f"uniform 0-{r['max_delay_s']:g} s (seed {r['seed']})"],
        ["archived / quarantined at the end", f"{r['archived']} / {r['quarantined']}"],
        ["**lost** / duplicated / left in the inbox",
         f"**{r['lost']}** / {r['duplicated']} / {r['left_in_inbox']}"],
        ["archived without report / quarantined without record",
         f"{r['missing_reports']} / {r['missing_records']}"],
        ["**hangs** (a run over the limit) / tracebacks", f"**{r['hangs']}** / "
                                                           f"{r['tracebacks']}"],
        ["final run's exit code", r["final_exit"]],
        ["`edge-agent fsck --deep`: exit, problems, pending",
         f"{r['fsck_exit']}, {r['fsck_problems']}, {r['fsck_pending']}"],
        ["verdict", "books balance" if ok else "**FAILED**"],
        ["wall time", f"{r['seconds']:.0f} s"],
    ]
    return table(["", "value"], rows, ["l", "r"])
