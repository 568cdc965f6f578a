"""Offload while an input waits in the journal (its index line not yet written: the disk
filled up, the very reason to offload): its archived file must not leave with the day."""

from __future__ import annotations

import errno
import json

from agent_helpers import gray_png, run_once
from test_offload import DAY3, _offload, history  # noqa: F401 - a fixture

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
