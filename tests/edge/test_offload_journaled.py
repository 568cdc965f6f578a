"""Offload while an input waits in the journal (its index line not yet written: the disk
filled up, the very reason to offload): its archived file must not leave with the day, nor
the report its line will name."""

from __future__ import annotations

import errno
import json

from agent_helpers import gray_png, run_once
from test_offload import (  # noqa: F401 - history: a fixture
    DAY1,
    DAY2,
    DAY3,
    _files,
    _fsck_clean,
    _lines,
    _offload,
    history,
)

from edge import commit
from edge.index import DailyIndex


def test_an_input_waiting_in_the_journal_is_not_moved_off_its_day(history, monkeypatch):  # noqa: F811
    config, outbox, dest = history
    inbox = outbox.parent / "inbox"
    monkeypatch.setattr(commit, "local_day", lambda: DAY3)
    gray_png(inbox / "d.png", 60)
    assert not run_once(config).get("unfinished")
    real = DailyIndex.append

    def full(self, day, entries):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DailyIndex, "append", full)
    gray_png(inbox / "e.png", 160)
    assert run_once(config).get("unfinished") == 1  # e.png: archived, its line not written
    monkeypatch.setattr(DailyIndex, "append", real)
    assert (outbox / "archive" / DAY3 / "e.png").exists()

    code, out = _offload(str(outbox), "--before", "2025-03-04", "--to", str(dest))
    # the agent's next start finishes e.png: its line must name a file that is there
    run_once(config)
    lines = [json.loads(line) for f in (outbox / "index", dest / "index")
             for p in sorted(f.glob("*.jsonl")) for line in p.read_text().splitlines()]
    e = [entry for entry in lines if entry["file_name"] == "e.png"]
    assert len(e) == 1, (code, out, e)
    where = [root for root in (outbox, dest) if (root / e[0]["moved_to"]).exists()]
    home = [root for root in (outbox, dest)
            if any(x.get("file_name") == "e.png" for p in (root / "index").glob("*.jsonl")
                   for x in map(json.loads, p.read_text().splitlines()))]
    assert where == home, (code, out, where, home)


def test_a_report_a_journaled_duplicate_will_name_stays_in_the_outbox(history, monkeypatch):  # noqa: F811
    """A duplicate of the first day's a.png waits in the journal (archived, its line not
    written: the disk is full). Offloading both days that name a.png's report copies it to
    DEST and keeps it in the outbox: the line the agent writes next names it, and fsck finds
    the outbox whole."""
    config, outbox, dest = history
    inbox = outbox.parent / "inbox"
    a_id = next(e["id"] for e in _lines(outbox, DAY1) if e["file_name"] == "a.png")
    monkeypatch.setattr(commit, "local_day", lambda: DAY3)
    real = DailyIndex.append

    def full(self, day, entries):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DailyIndex, "append", full)
    gray_png(inbox / "a-third.png", 30)  # a.png's bytes again
    assert run_once(config).get("unfinished") == 1
    monkeypatch.setattr(DailyIndex, "append", real)
    jobs = [json.loads(p.read_text()) for p in (outbox / ".state" / "jobs").glob("*.json")]
    assert [(j["stage"], j["outcome"], j["sha256"]) for j in jobs] == [
        ("moved", "duplicate", a_id)]
    report = {k: v for k, v in _files(outbox).items() if k.startswith(f"reports/{a_id}.")}
    assert len(report) == 3  # its json, page and heat-map

    code, out = _offload(str(outbox), "--before", DAY3, "--to", str(dest), "--dry-run")
    assert code == 0, out
    second = next(line for line in out.splitlines() if line.startswith(f"{DAY2}: "))
    assert "; 3 report(s) copied and kept" in second, out
    assert "would move 2 day(s)" in out and "(3 report(s) copied and kept)" in out, out

    code, out = _offload(str(outbox), "--before", DAY3, "--to", str(dest))
    assert code == 0, out
    assert not (outbox / "index" / f"{DAY1}.jsonl").exists(), out
    assert not (outbox / "index" / f"{DAY2}.jsonl").exists(), out
    for name, data in report.items():
        assert (outbox / name).read_bytes() == data, (name, out)  # kept in the outbox
        assert (dest / name).read_bytes() == data, (name, out)  # and copied

    assert not run_once(config).get("unfinished")  # the agent writes the line now
    third = [e for e in _lines(outbox, DAY3) if e["file_name"] == "a-third.png"]
    assert [(e["outcome"], e["report"]) for e in third] == [
        ("duplicate", f"reports/{a_id}.json")]
    assert (outbox / third[0]["report"]).is_file()
    _fsck_clean(outbox)
