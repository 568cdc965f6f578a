"""Months of use: what must not grow with the outbox's history (``python -m benchmarks
history`` measures it at a year's scale; these check the mechanisms at a small one)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from agent_helpers import CountedFile, agent_env, gray_png, make_config, run_once

from edge import index as index_module
from edge.durable import json_bytes
from edge.fsck import check_outbox
from edge.index import DailyIndex


def _line(day: str, n: int) -> dict:
    sha = hashlib.sha256(b"%d" % n).hexdigest()
    return {"time": f"{day}T10:00:00+00:00", "token": f"t{n:08d}", "id": sha,
            "file_name": f"IM{n:05d}.dcm", "outcome": "classified", "label": "glioma",
            "confidence": 0.97, "needs_review": False, "report": f"reports/{sha}.json",
            "html": f"reports/{sha}.html", "moved_to": f"archive/{day}/IM{n:05d}.dcm",
            "reason": None}


def test_the_front_page_reads_only_what_was_appended(tmp_path, monkeypatch):
    """The front page counts each day's lines, and is rewritten every 10 s while inputs come;
    it read every day's file whole each time: a year at 1,000 inputs a day is 180 MB read
    (on an SD card, seconds, with the index locked against the committer's appends) for one
    new line. Counted in bytes read."""
    index = DailyIndex(tmp_path)
    days = [f"2026-01-{d:02d}" for d in range(1, 31)]
    for n, day in enumerate(days):
        index.append(day, [(_line(day, n * 100 + i), False) for i in range(100)])
    index.render()
    read = {"bytes": 0}
    real_open = open


    monkeypatch.setattr(index_module, "open", raising=False,
                        value=lambda *a, **k: CountedFile(real_open(*a, **k), read, "bytes"))
    today = days[-1]
    index.append(today, [(_line(today, 99999), False)])
    index.render()  # today's page (its own file, once) and the front page
    day_size = (tmp_path / "index" / f"{today}.jsonl").stat().st_size
    assert read["bytes"] <= day_size + 1000, read["bytes"]  # it was 30 days' files
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert f"{today}</a> (101 inputs)" in page and f"{days[0]}</a> (100 inputs)" in page
    # a file cut back (a failed append) or replaced (fsck) is counted again, not trusted
    path = tmp_path / "index" / f"{days[0]}.jsonl"
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:40]))
    index.render(days=[])
    assert f"{days[0]}</a> (40 inputs)" in (tmp_path / "index.html").read_text(encoding="utf-8")


def _grow(outbox: Path, count: int, per_day: int = 100) -> None:
    """Add ``count`` archived inputs, ``per_day`` a day, each with its own report and index
    line, copied from the first report of a real run (a synthetic history, as
    ``benchmarks.history`` builds it)."""
    template = json.loads(next((outbox / "reports").glob("*.json")).read_text())
    lines: dict[str, list[bytes]] = {}
    for n in range(count):
        day = f"2025-{1 + n // per_day // 28:02d}-{1 + n // per_day % 28:02d}"
        (outbox / "archive" / day).mkdir(parents=True, exist_ok=True)
        content = b"synthetic input %d\n" % n
        sha = hashlib.sha256(content).hexdigest()
        (outbox / "archive" / day / f"IM{n:05d}.dcm").write_bytes(content)
        report = dict(template, id=sha, input=dict(template["input"], sha256=sha),
                      intake={"token": f"t{n:08d}", "received_at": f"{day}T10:00:00+00:00"})
        (outbox / "reports" / f"{sha}.json").write_bytes(json_bytes(report))
        entry = dict(_line(day, n), id=sha, report=f"reports/{sha}.json",
                     token=f"t{n:08d}", moved_to=f"archive/{day}/IM{n:05d}.dcm")
        lines.setdefault(day, []).append(json_bytes(entry, compact=True))
    for day, day_lines in lines.items():
        (outbox / "index" / f"{day}.jsonl").write_bytes(b"".join(day_lines))


PEAK = """
import sys, tracemalloc
from pathlib import Path
from edge.fsck import check_outbox
check_outbox(Path(sys.argv[1]), repair=False)  # what the first call imports, caches
tracemalloc.start()
result = check_outbox(Path(sys.argv[1]), repair=False)
print(tracemalloc.get_traced_memory()[1], len(result.of("problem")))
"""


def _peak(outbox: Path) -> int:
    """fsck's peak traced memory, in a new process as `edge-agent fsck` runs (inside a long
    test run the collector's timing, which depends on everything the process holds, moved
    the figure by kilobytes per input on Python 3.9)."""
    proc = subprocess.run([sys.executable, "-c", PEAK, str(outbox)], capture_output=True,
                          text=True, timeout=300, env=agent_env())
    assert proc.returncode == 0, proc.stderr
    peak, problems = map(int, proc.stdout.split())
    assert problems == 0
    return peak


def test_fsck_memory_does_not_grow_with_the_reports(folders, test_model, tmp_path):
    """fsck kept every report parsed and every index line in memory: 457 MB for 30,000
    inputs (a month at 1,000 a day), gigabytes for a year: out of memory on a 1-4 GB board,
    so the check meant for after a crash could not run. Peak memory per input, 500 against
    2,500 inputs at 100 a day (what one day's file and folder take is not history)."""
    gray_png(folders["inbox"] / "scan.png", 120)
    run_once(make_config(folders, test_model.path))
    small, large = tmp_path / "small", tmp_path / "large"
    shutil.copytree(str(folders["outbox"]), str(small))
    shutil.copytree(str(folders["outbox"]), str(large))
    _grow(small, 500)
    _grow(large, 2500)
    per_input = (_peak(large) - _peak(small)) / 2000
    # bytes; it was about 12 kB. About 100-300 now, plus, on Python 3.9 (whose pathlib
    # interns every path part), one resize of the interned-strings table (2.6 MB once),
    # which can fall between the two sizes: 1.4 kB an input here, never 12.
    assert per_input < 3000, per_input


@pytest.mark.parametrize("lost", [1, 400])
def test_fsck_rebuilds_many_lost_lines_each_once(folders, test_model, tmp_path, lost):
    """A day's index file lost whole: each archived input gets one rebuilt line, its own
    token, and the duplicate of an earlier input is marked so."""
    gray_png(folders["inbox"] / "scan.png", 120)
    run_once(make_config(folders, test_model.path))
    outbox = folders["outbox"]
    _grow(outbox, lost, per_day=lost)
    (outbox / "index" / "2025-01-01.jsonl").unlink()
    result = check_outbox(outbox)
    assert len(result.of("repaired")) == lost and not result.of("problem")
    lines = [json.loads(raw) for raw in
             (outbox / "index" / "2025-01-01.jsonl").read_bytes().splitlines()]
    assert len(lines) == lost and len({e["token"] for e in lines}) == lost
    assert {e["token"] for e in lines} == {f"t{n:08d}" for n in range(lost)}
    assert all(e["outcome"] == "classified" and e["rebuilt_by"] == "fsck" for e in lines)
    assert not check_outbox(outbox).findings
