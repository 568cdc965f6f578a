"""An offload's DEST that stops answering (a share whose server went away, a disk half gone)
costs a study a retry, never the study tracker (``edge.network.dest_reads``).

The tracker reads at DEST for a slice an older agent marked as moved (its report) and for
the SR of a study whose archived instances all went with their day (an instance's header).
Such a read waited for ever: the tracker judged no study and queued no SR again, and under
systemd the watchdog restarted the agent every few minutes, its tracker sticking again at
the same study. Here the dead share is a FIFO at DEST: ``open`` of it waits, in the kernel,
for a writer that does not come, as a read on a dead NFS mount waits for its server. Each
test runs the judgment in a thread and fails at its own bound (10 s) on the old code.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import make_config
from network_helpers import make_study
from test_network_read_errors import _study_with_a_slice_at_dest, files, no_traceback

from edge.network.dest_reads import DestReads
from edge.network.services import NetworkServices
from edge.network.studies import instance_entry
from edge.network.verdict import Slice

LIMIT = 0.5  # seconds a read at DEST is waited for here (20 in the agent)
BOUND = 10.0  # the test's own: the old code ends only here


def within_bound(call: Callable[[], Any]) -> tuple[Any, float]:
    """``call()`` in a thread, and how long it took; fails the test if it is not done
    within ``BOUND`` (a read still stuck: the old code)."""
    done: dict[str, Any] = {}
    start = time.monotonic()
    thread = threading.Thread(target=lambda: done.update(value=call()), daemon=True)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive(), f"still waiting after {BOUND:g} s: a read at DEST hung it"
    return done["value"], time.monotonic() - start


def dead_share(path: Path) -> None:
    """``path`` becomes a FIFO: opening it for reading waits for a writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    os.mkfifo(str(path))


def share_answers(reads: DestReads, fifo: Path, content: bytes) -> None:
    """The share answers again: the waiting read gets an empty file and ends; the FIFO is
    replaced with ``content``."""
    fd = os.open(str(fifo), os.O_WRONLY)  # a reader waits in open(): this does not block
    os.close(fd)
    deadline = time.monotonic() + BOUND
    while reads.waiting() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reads.waiting() == [], "the read left waiting did not end"
    fifo.unlink()
    fifo.write_bytes(content)


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("read at ")]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_slice_report_on_a_dead_share_retries_the_judgment_instead_of_hanging(
        tmp_path, caplog):
    """An older agent's mark: the slice's report is read at DEST, which does not answer.
    The judgment fails within the limit, the study stays pending with its report as it was,
    and the line says which DEST; a retry while that read still waits fails at once without
    a second reader. Once DEST answers, the study is judged from both slices."""
    caplog.set_level(logging.INFO)
    tracker, outbox, at_dest, uid = _study_with_a_slice_at_dest(tmp_path)
    real = at_dest.read_bytes()
    dead_share(at_dest)
    tracker.dest_reads.limit = LIMIT
    before = files(outbox / "studies")

    judged, took = within_bound(lambda: tracker._judge_safely(uid))
    assert judged is False and took < LIMIT + 2.0, took
    assert uid in tracker._pending and files(outbox / "studies") == before
    dest = str(at_dest.parent.parent)
    (line,) = errors(caplog)
    assert f"a slice's report offloaded to {dest}" in line, line
    assert f"{dest} did not answer within 0.5 s" in line and "retrying" in line, line
    no_traceback(caplog)
    assert tracker.page_lines() == []  # one failure may be passing: the front page waits

    judged, took = within_bound(lambda: tracker._judge_safely(uid))  # the read still waits
    assert judged is False and took < 0.3, took
    assert "has not answered an earlier read yet" in errors(caplog)[-1]
    assert len(readers()) == 1 and tracker.dest_reads.waiting() == [dest]
    (page,) = tracker.page_lines()  # failing again: the front page says so, in words
    assert page.startswith("1 study report(s) are held back by an error that has not "
                           f"cleared: could not read or write a slice's report offloaded to "
                           f"{dest} ({dest} has not answered an earlier read yet"), page

    share_answers(tracker.dest_reads, at_dest, real)
    judged, _ = within_bound(lambda: tracker._judge_safely(uid))
    assert judged is True and uid not in tracker._pending and tracker.page_lines() == []
    doc = json.loads((outbox / "studies" / f"{uid}.json").read_text())
    assert len(doc["instances"]) == 2 and doc["notes"] == []


def _study_offloaded_while_pending(tmp_path: Path) -> tuple[NetworkServices, str, Path]:
    """A study noted but not judged when its day went to DEST (``edge.network.
    study_offload`` kept its slices' entries in its state), with an SR to send: its only
    archived instance is at DEST."""
    folders = {"inbox": tmp_path / "inbox", "outbox": tmp_path / "outbox"}
    folders["inbox"].mkdir()
    config = make_config(folders, tmp_path / "model", pacs={"send_to": "PACS@127.0.0.1:1"},
                         studies={"settle_seconds": 0, "min_slices": 1})
    services = NetworkServices(config, folders["inbox"], folders["outbox"],
                               ["glioma", "meningioma", "notumor", "pituitary"], lambda _: None)
    assert services.tracker is not None and services.queue is not None
    services.dest_reads.limit = LIMIT
    services.queue.open()
    services.tracker.open()
    dest = tmp_path / "usb"
    uid, (instance,) = make_study(tmp_path / "scanner", [0.5])
    archived_as = "archive/2026-11-20/" + "1" * 64 + ".dcm"
    (dest / archived_as).parent.mkdir(parents=True)
    (dest / archived_as).write_bytes(instance.read_bytes())
    slice_ = Slice(report_id="1" * 64, sop_instance_uid=f"{uid}.1",
                   series_instance_uid=f"{uid}.2", series_description="axial",
                   label="glioma", confidence=0.9,
                   probabilities={"glioma": 0.9, "meningioma": 0.05, "notumor": 0.03,
                                  "pituitary": 0.02},
                   needs_review=False, archived_as=archived_as, sop_class_uid=None,
                   offloaded_to=str(dest))
    services.tracker._pending[uid] = {"study": uid, "changed_at": 0.0,
                                      "members": {slice_.report_id: archived_as},
                                      "offloaded": {slice_.report_id: instance_entry(slice_)}}
    return services, uid, dest / archived_as


def test_an_sr_whose_instance_is_on_a_dead_share_waits_instead_of_hanging(tmp_path, caplog):
    """The SR needs an archived instance's patient and study attributes, and the only one
    is at DEST, which does not answer: the judgment fails within the limit (no SR queued),
    the line names the instance's DEST, and the study is judged again, its SR queued, once
    DEST answers."""
    caplog.set_level(logging.INFO)
    services, uid, at_dest = _study_offloaded_while_pending(tmp_path)
    tracker, queue = services.tracker, services.queue
    assert tracker is not None and queue is not None
    real = at_dest.read_bytes()
    dead_share(at_dest)

    judged, took = within_bound(lambda: tracker._judge_safely(uid))
    assert judged is False and took < LIMIT + 2.0, took
    assert uid in tracker._pending and queue.items() == []
    (line,) = errors(caplog)
    dest = str(tmp_path / "usb")
    assert f"an instance offloaded to {dest}, read for the SR" in line, line
    assert "did not answer within" in line, line
    no_traceback(caplog)
    assert within_bound(lambda: tracker._judge_safely(uid))[0] is False
    (page,) = services.page_alerts()
    assert f"an instance offloaded to {dest}, read for the SR" in page, page

    share_answers(services.dest_reads, at_dest, real)
    judged, _ = within_bound(lambda: tracker._judge_safely(uid))
    assert judged is True and uid not in tracker._pending
    assert len(queue.items()) == 1 and services.page_alerts() == []


def test_a_read_at_dest_gives_what_the_read_gave_or_raised(tmp_path):
    """Within the limit the bounded read is the read: its value, or its error (a missing
    file stays a missing file: the SR takes the study's next instance)."""
    reads = DestReads(limit=LIMIT)
    there = tmp_path / "there.json"
    there.write_text("{}")
    assert reads.read(str(tmp_path), there, there.read_text) == "{}"
    gone = tmp_path / "gone.json"
    with pytest.raises(FileNotFoundError):
        reads.read(str(tmp_path), gone, gone.read_text)
    assert reads.waiting() == []
