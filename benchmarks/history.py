"""Months of use: what the agent costs when its outbox holds a year of a clinic's history.

A clinic box sees 200-2,000 images a day for years: an outbox with hundreds of thousands of
reports, hundreds of daily index files, a large archive and quarantine. No test reaches
that scale, so this builds such an outbox synthetically, from one seed outbox written by the
agent itself (a classified PNG, a DICOM of a study, a refused text file): every report is
the seed's report with its own id, input and token; its HTML page and heat-map are hard links
to the seed's (the folder holds the real number of entries, the disk does not fill); every
archived input is a small file of its own content, so ``fsck --deep`` can hash it; index
lines, reason records and study reports are the agent's own shapes. Some inputs are
duplicates (the same content again, often under the same name), some are refused, and some
of those are the same empty "export finished" marker file every time. ``edge-agent fsck``
passes on the result before anything is measured.

Then, for each scale (days x inputs a day), as fresh processes of this environment:
``edge-agent watch --once`` with a few new inputs (start-up, per-input cost, peak memory),
``edge-agent fsck`` (time, peak memory), and in this process the pieces that could grow with
history: rendering the front page and a day page, the start-up sweep for temporary files,
choosing a quarantine name for a marker file seen N times before, the disk-space check.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import statistics
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from benchmarks import edge_env
from benchmarks.errors import BenchmarkError
from benchmarks.report import table

MARKER = "export.done"  # an empty file an exporter drops after each batch: refused, same content
_START = date(2025, 1, 1)


def seed_outbox(model: str, work: Path, heatmap: str = "model") -> Path:
    """Run the agent once on a PNG, a DICOM and a text file: the shapes to copy."""
    from PIL import Image

    from edge.benchmark import synthetic_mr
    from edge.sample_inbox import phantom

    inbox, outbox = work / "seed-inbox", work / "seed-outbox"
    inbox.mkdir(parents=True)
    Image.fromarray(phantom(256)).save(str(inbox / "scan.png"))
    synthetic_mr(inbox / "slice.dcm", pixels=phantom(256))
    (inbox / "notes.txt").write_bytes(b"not an image\n")
    past = time.time() - 3600
    for path in inbox.iterdir():
        os.utime(str(path), (past, past))
    _agent(model, inbox, outbox, heatmap)
    return outbox


def _agent(model: str, inbox: Path, outbox: Path, heatmap: str,
           launcher: bool = False) -> dict[str, Any]:
    cmd, python = edge_env.agent_command(None)
    config = outbox.parent / f"{outbox.name}.toml"
    config.write_text(f"[report]\nheatmap = \"{heatmap}\"\n[watch]\nmin_free_mb = 0\n",
                      encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "NEUROEDGE_CONFIG"}
    from edge.report import local_day

    # the first input done: archived (after its report), in today's folder (the synthetic
    # history's days are in the past)
    return edge_env.run_measured(
        cmd + ["--config", str(config), "watch", str(inbox), "--outbox", str(outbox), "--once",
               "--model", model], env=env, first_file=outbox / "archive" / local_day(),
        pattern="*", launcher_python=python if launcher else None)


class _Seed:
    """The seed outbox's report (PNG and DICOM), page, heat-map and reason record."""

    def __init__(self, outbox: Path) -> None:
        reports = [json.loads(p.read_text(encoding="utf-8"))
                   for p in sorted((outbox / "reports").glob("*.json"))]
        self.png = next(r for r in reports if r["input"]["format"] == "png")
        self.dicom = next(r for r in reports if r["input"]["format"] == "dicom")
        self.files = {r["id"]: outbox / "reports" for r in reports}
        record = next((outbox / "quarantine").glob("*.reason.json"))
        self.reason = json.loads(record.read_text(encoding="utf-8"))
        study = next((outbox / "studies").glob("*.json"), None)
        self.study = json.loads(study.read_text(encoding="utf-8")) if study else None
        self.study_page = study.with_suffix(".html") if study else None
        self.outbox = outbox
        self._copies: dict[Path, Path] = {}  # a seed file -> the copy now linked to

    def link(self, source: Path, dest: Path) -> None:
        """Hard-link ``dest`` to ``source``; past the file system's limit on links to one
        file (65,000 on ext4) to a fresh copy of it."""
        current = self._copies.get(source, source)
        try:
            os.link(str(current), str(dest))
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
            spare = self.outbox.parent / "spares" / f"{time.monotonic_ns()}-{source.name}"
            spare.parent.mkdir(exist_ok=True)
            shutil.copyfile(str(source), str(spare))
            self._copies[source] = spare
            os.link(str(spare), str(dest))


def build(root: Path, seed: _Seed, days: int, per_day: int, duplicates: float = 0.1,
          refused: float = 0.06, markers_per_day: int = 4, study_size: int = 100,
          seed_value: int = 0) -> dict[str, int]:
    """Write an outbox of ``days`` days of ``per_day`` inputs at ``root``; return counts."""
    import numpy as np

    from edge import pages
    from edge.durable import json_bytes
    from edge.report import summary_line

    rng = np.random.default_rng(seed_value)
    for sub in ("reports", "archive", "quarantine", "index", "studies", ".state/jobs",
                ".state/claimed", ".state/studies"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    reports, quarantine = root / "reports", root / "quarantine"
    earlier: list[tuple[bytes, str, dict[str, Any]]] = []  # (content, name, summary)
    q_names: dict[str, int] = {}
    counts = {"classified": 0, "duplicate": 0, "quarantined": 0, "studies": 0}
    offsets: dict[str, int] = {}
    serial = 0
    for d in range(days):
        day = (_START + timedelta(days=d)).isoformat()
        folder = root / "archive" / day
        folder.mkdir()
        used: dict[str, int] = {}
        lines: list[bytes] = []
        study_uid = None
        for i in range(per_day + markers_per_day):
            serial += 1
            token = f"{day.replace('-', '')}T{i % 86400 // 3600:02d}0000-{serial:012x}"
            stamp = f"{day}T{i % 86400 // 3600:02d}:00:00+00:00"
            roll = rng.random()
            if i >= per_day or roll < refused:  # refused: a marker file, or a text file
                marker = i >= per_day
                content = b"" if marker else b"refused %d\n" % serial
                name = MARKER if marker else f"notes{serial}.txt"
                sha = hashlib.sha256(content).hexdigest()
                n = q_names.get(name, 0)
                q_names[name] = n + 1
                dest = name if n == 0 else (f"{name}~{sha[:8]}" if n == 1 else
                                            f"{name}~{sha[:8]}-{n}")
                if "." in name and n:
                    stem, ext = name.rsplit(".", 1)
                    dest = f"{stem}~{sha[:8]}.{ext}" if n == 1 else f"{stem}~{sha[:8]}-{n}.{ext}"
                (quarantine / dest).write_bytes(content)
                record = dict(seed.reason, file_name=name, sha256=sha, size_bytes=len(content),
                              received_at=stamp, quarantined_at=stamp, token=token,
                              moved_to=f"quarantine/{dest}")
                (quarantine / (dest + ".reason.json")).write_bytes(json_bytes(record))
                entry = {"time": stamp, "token": token, "id": sha, "file_name": name,
                         "outcome": "quarantined", "label": None, "confidence": None,
                         "needs_review": None, "report": None, "html": None,
                         "moved_to": f"quarantine/{dest}", "reason": record["reason"]}
                counts["quarantined"] += 1
            else:
                if earlier and roll < refused + duplicates:  # the same content again
                    content, name, summary = earlier[int(rng.integers(len(earlier)))]
                    sha = hashlib.sha256(content).hexdigest()
                    outcome = "duplicate"
                else:
                    dicom = i % 2 == 1
                    template = seed.dicom if dicom else seed.png
                    content = b"synthetic input %d\n" % serial
                    sha = hashlib.sha256(content).hexdigest()
                    name = f"IM{i:05d}.dcm" if dicom else f"scan{i:05d}.png"
                    report = dict(template, id=sha, created_at=stamp,
                                  input=dict(template["input"], sha256=sha, file_name=name,
                                             size_bytes=len(content)),
                                  intake={"token": token, "received_at": stamp})
                    if dicom:
                        if i % study_size == 1:
                            study_uid = f"1.2.826.0.1.3680043.9.{d}.{i}"
                        report["dicom"] = dict(template["dicom"], study_instance_uid=study_uid,
                                               sop_instance_uid=f"{study_uid}.{i}")
                    if template.get("heatmap"):
                        report["heatmap"] = dict(template["heatmap"], file=f"{sha}.heatmap.png")
                        seed.link(seed.files[template["id"]] / template["heatmap"]["file"],
                                  reports / f"{sha}.heatmap.png")
                    seed.link(seed.files[template["id"]] / f"{template['id']}.html",
                              reports / f"{sha}.html")
                    (reports / f"{sha}.json").write_bytes(json_bytes(report))
                    summary = summary_line(report)
                    earlier.append((content, name, summary))
                    outcome = "classified"
                n = used.get(name, 0)
                used[name] = n + 1
                stem, ext = os.path.splitext(name)
                dest = name if n == 0 else (f"{stem}~{sha[:8]}{ext}" if n == 1 else
                                            f"{stem}~{sha[:8]}-{n}{ext}")
                (folder / dest).write_bytes(content)
                entry = {"time": stamp, "token": token, "id": sha, "file_name": name,
                         "outcome": outcome, **summary, "report": f"reports/{sha}.json",
                         "html": f"reports/{sha}.html", "moved_to": f"archive/{day}/{dest}",
                         "reason": None}
                counts[outcome] += 1
            lines.append(json_bytes(entry, compact=True))
        index = root / "index" / f"{day}.jsonl"
        index.write_bytes(b"".join(lines))
        offsets[index.name] = index.stat().st_size
        (root / "index" / f"{day}.html").write_bytes(
            pages.day_page(day, [json.loads(line) for line in lines]))
        counts["studies"] += _studies(root, seed, day, d, per_day, study_size)
    (root / ".state" / "studies" / "cursor.json").write_bytes(json_bytes({"offsets": offsets}))
    (root / ".state" / "lock").write_bytes(b"")
    return counts


def _studies(root: Path, seed: _Seed, day: str, d: int, per_day: int, study_size: int) -> int:
    """The day's study reports (every ``study_size`` DICOM slices make one)."""
    if seed.study is None or seed.study_page is None:
        return 0
    from edge.durable import json_bytes

    made = 0
    for i in range(1, per_day, study_size):
        uid = f"1.2.826.0.1.3680043.9.{d}.{i}"
        doc = dict(seed.study, study_instance_uid=uid, created_at=f"{day}T12:00:00+00:00")
        (root / "studies" / f"{uid}.json").write_bytes(json_bytes(doc))
        seed.link(seed.study_page, root / "studies" / f"{uid}.html")
        made += 1
    return made


def _du_mb(root: Path) -> float:
    """Disk blocks the outbox really takes (hard links counted once)."""
    seen, total = set(), 0
    for folder, _subs, files in os.walk(str(root)):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total / 1e6


def _fsck(root: Path, *extra: str) -> dict[str, Any]:
    cmd, python = edge_env.agent_command(None)
    env = {k: v for k, v in os.environ.items() if k != "NEUROEDGE_CONFIG"}
    return edge_env.run_measured(cmd + ["fsck", str(root), *extra], env=env, timeout=3600,
                                 launcher_python=python)


def _timed(fn: Any, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (page cache warm after the first)."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _pieces(root: Path) -> dict[str, float]:
    """The steps that could grow with history, timed in this process."""
    from edge.commit import REASON_SUFFIX
    from edge.diskspace import SpaceGuard
    from edge.durable import free_name
    from edge.index import DailyIndex
    from edge.outbox import Outbox

    index = DailyIndex(root)
    days = sorted(p.stem for p in (root / "index").glob("*.jsonl"))
    last = days[-1]
    guard = SpaceGuard(root, 200, every=0.0)
    return {
        "front page (index.html), ms": 1000 * _timed(lambda: index.render(days=[])),
        "front page + today's page, ms": 1000 * _timed(lambda: index.render(days=[last])),
        "start-up sweep for temporary files, ms": 1000 * _timed(
            Outbox(root).remove_temp_files),
        "quarantine name for a marker seen before, ms": 1000 * _timed(
            lambda: free_name(root / "quarantine", MARKER, hashlib.sha256(b"").hexdigest()[:8],
                              set(), (REASON_SUFFIX,))),
        "disk-space check, ms": 1000 * _timed(lambda: guard.room(), 20),
    }


def _new_inputs(folder: Path, count: int, start: int) -> None:
    import numpy as np
    from PIL import Image

    from edge.sample_inbox import phantom

    folder.mkdir(parents=True, exist_ok=True)
    base = phantom(256).astype(np.int16)
    past = time.time() - 3600
    for i in range(count):
        rng = np.random.default_rng(start + i)
        pixels = np.clip(base + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"new{start + i:05d}.png"
        Image.fromarray(pixels).save(str(path))
        os.utime(str(path), (past, past))


def measure(model: str, scales: list[tuple[int, int]], work: Path, new_files: int = 20,
            heatmap: str = "model", keep: bool = False) -> dict[str, Any]:
    """Build an outbox per (days, inputs a day) in ``scales`` and measure each; ``keep``
    leaves the outboxes in ``work`` (else each is deleted once measured)."""
    seed = _Seed(seed_outbox(model, work, heatmap))
    rows = []
    for days, per_day in scales:
        root = work / f"outbox-{days}x{per_day}"
        start = time.perf_counter()
        counts = build(root, seed, days, per_day)
        built_s = time.perf_counter() - start
        entries = {sub: len(os.listdir(str(root / sub))) for sub in ("reports", "quarantine",
                                                                       "index", "studies")}
        check = _fsck(root, "--dry-run")
        row: dict[str, Any] = {"days": days, "per_day": per_day, **counts,
                               "inputs": counts["classified"] + counts["duplicate"]
                               + counts["quarantined"], "entries": entries,
                               "disk_mb": round(_du_mb(root), 1), "build_s": round(built_s, 1),
                               "fsck_dry_run": check}
        row["pieces_ms"] = _pieces(root)
        run = _agent(model, _inbox(work, new_files, 0), root, heatmap, launcher=True)
        row["watch_once"] = run
        row["fsck"] = _fsck(root)
        row["fsck_deep"] = _fsck(root, "--deep")
        rows.append(row)
        if not keep:
            shutil.rmtree(str(root), ignore_errors=True)
        shutil.rmtree(str(work / "inbox"), ignore_errors=True)
    return {"model": model, "heatmap": heatmap, "new_files": new_files, "rows": rows}


def _inbox(work: Path, count: int, start: int) -> Path:
    inbox = work / "inbox"
    shutil.rmtree(str(inbox), ignore_errors=True)
    _new_inputs(inbox, count, start)
    return inbox


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    if not rows:
        raise BenchmarkError("no scale was measured")
    heads = ["history"] + [f"{r['days']} d x {r['per_day']}" for r in rows]

    def line(label: str, values: list[Any]) -> list[Any]:
        return [label] + values

    body = [
        line("inputs in the outbox", [f"{r['inputs']:,}" for r in rows]),
        line("entries in reports/ / quarantine/", [
            f"{r['entries']['reports']:,} / {r['entries']['quarantine']:,}" for r in rows]),
        line("disk used (MB, hard links once)", [f"{r['disk_mb']:,.0f}" for r in rows]),
        line(f"watch --once, {result['new_files']} new PNGs: first report (s)", [
            _s(r["watch_once"]["first_result_s"]) for r in rows]),
        line("... exit (s)", [_s(r["watch_once"]["seconds"]) for r in rows]),
        line("... peak RSS (MB)", [_mb(r["watch_once"]["peak_rss_mb"]) for r in rows]),
    ]
    for piece in rows[0]["pieces_ms"]:
        body.append(line(piece, [f"{r['pieces_ms'][piece]:.1f}" for r in rows]))
    for key, label in (("fsck_dry_run", "fsck --dry-run"), ("fsck", "fsck"),
                       ("fsck_deep", "fsck --deep")):
        body.append(line(f"{label}: s / peak RSS MB", [
            f"{_s(r[key]['seconds'])} / {_mb(r[key]['peak_rss_mb'])}" for r in rows]))
    return table(heads, body, ["l"] + ["r"] * len(rows)) + (
        f"\n\n- model: {result['model']}, `[report] heatmap = \"{result['heatmap']}\"`; each "
        "outbox built from one seed outbox the agent wrote (pages and heat-maps hard-linked); "
        "10% duplicates, 6% refused, 4 empty marker files a day; the pieces: median of 3 "
        "calls in this process, page cache warm")


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mb(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"
