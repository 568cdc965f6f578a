"""A passing read error (EIO) on the network side's own files is never taken for a file that
is absent or damaged: the SR queue's records, the study tracker's cursor and pending
studies, study reports and the slice reports they were judged from.

Each of these read its file leniently (``read_json``: None for absent, unreadable or not
JSON), and each then did harm with a file that was only unreadable for a moment: an SR set
aside as damaged (never sent), a cursor written over, a pending study dropped, a study
judged from fewer slices, a study report left unmarked by an offload. Each test failed
before its fix, but the one with EACCES (about the file, not the disk), which pins what did
not change. The error is injected as the other disk-fault tests do: ``open`` in
``edge.durable`` (through which both readers read) raising EIO for one path.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from agent_helpers import make_config, run_once
from network_helpers import make_study
from test_network_sendqueue import DOC, PEER, SLICES, header, item
from test_network_studies import _minimal_report, _tracker_with_two_studies

from edge.dicom import uid_hash
from edge.errors import EX_TEMPFAIL, StorageError
from edge.network.sender import Sender
from edge.network.sendqueue import SendQueue
from edge.network.settings import NetworkConfig, PacsConfig, StudiesConfig
from edge.network.sr import build_sr, encode
from edge.network.studies import STUDY_SCHEMA, StudyTracker

PACS = PacsConfig(send_to="PACS@127.0.0.1:104")


def failing_reads(monkeypatch: pytest.MonkeyPatch, *paths: Path,
                  error: int = errno.EIO) -> None:
    """Reading any of ``paths`` through ``edge.durable`` fails with ``error``."""
    from edge import durable

    failing = {str(p) for p in paths}
    real_open = open

    def failing_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) in failing:
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(durable, "open", failing_open, raising=False)


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


# --- the SR queue -----------------------------------------------------------------------

def _queue_of_three(tmp_path: Path) -> SendQueue:
    """k1 (an SR that reads back) and k2 (one that would not: not DICOM) each failed once;
    k3 waits for its first attempt."""
    queue = SendQueue(tmp_path)
    queue.open()
    queue.enqueue(item("k1", group="g1"), encode(build_sr(DOC, SLICES, header(), PACS)))
    queue.enqueue(item("k2", group="g2"), b"an SR whose bytes are not DICOM")
    queue.enqueue(item("k3", group="g3"), b"the third SR")
    for waiting in queue.items()[:2]:
        queue.failed(waiting, "the PACS was busy", PACS)
    return queue


def test_a_queue_record_that_cannot_be_read_is_left_as_it_is_and_read_again(
        tmp_path, monkeypatch, caplog):
    """Reading two records fails with EIO. Each was taken for a damaged record: k1 was
    rebuilt from its SR (its attempts and last error lost), k2, whose SR does not read as
    DICOM, was moved to ``damaged/`` with it: an SR for the PACS never sent, for a disk
    error that lasted a moment. Now both stay as they are, are not sent this time, are said
    in one line each (not at every look), and are read again at the next look."""
    caplog.set_level(logging.DEBUG)
    _queue_of_three(tmp_path)
    restarted = SendQueue(tmp_path)
    restarted.open()
    folder = restarted.folder
    before = files(folder)
    with monkeypatch.context() as m:
        failing_reads(m, folder / "k1.json", folder / "k2.json")
        assert [i.key for i in restarted.items()] == ["k3"]
        assert [i.key for i in restarted.items()] == ["k3"]  # the next look: the same
    assert files(folder) == before and not (folder / "damaged").exists()
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(k for r in said for k in ("k1", "k2") if k in r.getMessage()) == ["k1", "k2"]
    assert all("tried again" in r.getMessage() for r in said), [r.getMessage() for r in said]
    no_traceback(caplog)

    waiting = {i.key: i for i in restarted.items()}  # the disk is back
    assert sorted(waiting) == ["k1", "k2", "k3"]
    assert [(waiting[k].attempts, waiting[k].last_error) for k in ("k1", "k2")] == [
        (1, "the PACS was busy")] * 2
    assert "rebuilt" not in caplog.text and "damaged" not in caplog.text


def test_check_counts_a_queue_record_it_cannot_read_apart_not_as_no_sr(tmp_path, monkeypatch):
    """``edge-agent check`` reads the queue as it is on disk: a record the disk failed to
    give was skipped, so the queue looked shorter (or empty: "no SR waiting"). Now it is
    counted apart and said as a warning."""
    from edge.network.sendqueue import read_queue_state

    queue = _queue_of_three(tmp_path)
    assert read_queue_state(tmp_path).waiting == 3
    from edge.checks import _check_sr_queue

    lines: list[tuple[str, str]] = []
    with monkeypatch.context() as m:
        failing_reads(m, queue.folder / "k1.json")
        state = read_queue_state(tmp_path)
        _check_sr_queue(tmp_path, "PACS@10.0.0.5:104", lambda *a: lines.append(("ok", *a)),
                        lambda *a: lines.append(("WARNING", *a)))
    assert (state.waiting, state.unreadable) == (2, 1)
    warning = [text for level, _, text in lines if level == "WARNING"]
    assert len(warning) == 1 and warning[0].startswith("1 SR record(s) in ")
    assert "could not be read just now (a disk error)" in warning[0]
    assert ("ok", "sr queue") in [(level, what) for level, what, _ in lines]  # the 2 waiting


@pytest.mark.parametrize("failing", ["SR read", "record write"])
def test_a_damaged_record_is_set_aside_only_for_real_damage(tmp_path, monkeypatch, caplog,
                                                            failing):
    """A damaged record is rebuilt from its SR; if the SR cannot be read either, both go to
    ``damaged/``. Reading the SR failing with EIO (or writing the rebuilt record failing with
    ENOSPC) was taken for an SR that cannot be read: both were set aside, never to be sent.
    Now both stay, and the record is rebuilt at the next look once the disk answers."""
    from edge.network import sendqueue

    caplog.set_level(logging.INFO)
    queue = _queue_of_three(tmp_path)
    (queue.folder / "k1.json").write_text("{")  # damaged for real: rebuilt from its SR
    restarted = SendQueue(tmp_path)
    restarted.open()
    before = files(restarted.folder)
    with monkeypatch.context() as m:
        if failing == "SR read":
            real_dcmread = pydicom.dcmread

            def dcmread(path: Any, *args: Any, **kwargs: Any) -> Any:
                if str(path) == str(restarted.folder / "k1.dcm"):
                    raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
                return real_dcmread(path, *args, **kwargs)

            m.setattr(pydicom, "dcmread", dcmread)
        else:
            def full(*args: Any, **kwargs: Any) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            m.setattr(sendqueue, "write_json_atomic", full)
        assert [i.key for i in restarted.items()] == ["k2", "k3"]
    assert files(restarted.folder) == before and not (restarted.folder / "damaged").exists()
    no_traceback(caplog)
    assert sorted(i.key for i in restarted.items()) == ["k1", "k2", "k3"]
    assert "rebuilt from its SR" in caplog.text


def test_a_queue_record_that_cannot_be_looked_at_does_not_hold_back_the_others(
        tmp_path, monkeypatch):
    """Looking at one record (``stat``) fails with EIO: the OSError left ``items()``, so
    the sender sent nothing at all until the disk answered. Now that record waits for the
    next look, and the others are sent."""
    from edge.network import sendqueue

    queue = _queue_of_three(tmp_path)
    real_scandir = os.scandir

    class Unlookable:
        def __init__(self, entry: os.DirEntry) -> None:
            self._entry, self.name, self.path = entry, entry.name, entry.path

        def is_file(self) -> bool:
            return self._entry.is_file()

        def stat(self) -> os.stat_result:
            if self.name == "k1.json":
                raise OSError(errno.EIO, os.strerror(errno.EIO), self.path)
            return self._entry.stat()

    class Listing:
        def __init__(self, path: Any) -> None:
            with real_scandir(path) as entries:
                self.entries = [Unlookable(e) for e in entries]

        def __enter__(self) -> Iterator[Unlookable]:
            return iter(self.entries)

        def __exit__(self, *exc: Any) -> None:
            return None

    sent: list[str] = []
    sender = Sender(queue, PEER, NetworkConfig(), PACS,
                    send=lambda path, *a: sent.append(path.name) or 0)
    with monkeypatch.context() as m:
        m.setattr(sendqueue.os, "scandir", lambda path: Listing(path) if Path(path) == (
            queue.folder) else real_scandir(path))
        sender.send_due(now=time.time() + 10 ** 6)
    assert sorted(sent) == ["k2.dcm", "k3.dcm"]
    assert [i.key for i in queue.items()] == ["k1"]


# --- the study tracker's state, read at start ------------------------------------------

def _study_with_state(folders: dict[str, Path], model: Path) -> tuple[Any, str]:
    """A study judged from two slices, a third slice pending (noted, the cursor past its
    index line), and a fourth indexed after the cursor was saved (as after a crash, or
    with study reports off): the next start must judge the study from all four."""
    config = make_config(folders, model, studies={"settle_seconds": 0, "min_slices": 1})
    off = make_config(folders, model, studies={"enabled": False})
    inbox, outbox = folders["inbox"], folders["outbox"]
    uid, _ = make_study(inbox / "first", [0.6, 0.6])
    run_once(config)
    assert len(json.loads((outbox / "studies" / f"{uid}.json").read_text())["instances"]) == 2
    make_study(inbox / "third", [0.6], study_uid=uid)
    run_once(off)
    (day,) = (outbox / "index").glob("*.jsonl")
    lines = day.read_bytes()
    third = json.loads(lines.splitlines()[-1])
    state = outbox / ".state" / "studies"
    (state / "cursor.json").write_text(json.dumps(
        {"offsets": {day.name: len(lines)}, "tails": {day.name: lines[-64:].hex()}}))
    (state / f"{uid}.json").write_text(json.dumps(
        {"study": uid, "members": {third["id"]: third["moved_to"]}, "changed_at": time.time()}))
    make_study(inbox / "fourth", [0.6], study_uid=uid)
    run_once(off)
    return config, uid


@pytest.mark.parametrize("failing", ["cursor", "pending study"])
def test_a_study_state_that_cannot_be_read_at_start_is_exit_75_and_nothing_is_written_over(
        folders, test_model, monkeypatch, failing):
    """Reading ``.state/studies/cursor.json`` fails with EIO at start: it was taken for a
    first start, the offsets reset to the end of the index (the fourth slice never grouped)
    and the good cursor written over. Reading a pending study's state fails: the study was
    dropped for the run, and the fourth slice's line started it anew, writing its state
    over the third slice's (never judged). Now the agent stops at start with a
    ``StorageError`` (exit 75: the service is started again), having written nothing, and
    the next start judges the study from all four slices."""
    config, uid = _study_with_state(folders, test_model.path)
    outbox = folders["outbox"]
    state = outbox / ".state" / "studies"
    path = state / ("cursor.json" if failing == "cursor" else f"{uid}.json")
    before = files(outbox / ".state" / "studies"), files(outbox / "studies")
    with monkeypatch.context() as m:
        failing_reads(m, path)
        with pytest.raises(StorageError) as raised:
            run_once(config)
    assert raised.value.exit_code == EX_TEMPFAIL
    assert str(path) in str(raised.value) and "disk error while starting" in str(raised.value)
    assert (files(outbox / ".state" / "studies"), files(outbox / "studies")) == before

    run_once(config)  # the disk answers again
    doc = json.loads((outbox / "studies" / f"{uid}.json").read_text())
    assert len(doc["instances"]) == 4 and doc["revision"] == 2 and not doc["notes"]


def test_a_study_state_this_user_may_not_read_says_whose_it_is_and_writes_nothing(
        folders, test_model, monkeypatch):
    """The cursor owned by root (a command run as root in the outbox): not "a disk error,
    check the cable" but who may not open what, and the chown that cures it; exit 75, so
    the agent goes on by itself once it is given back."""
    config, _ = _study_with_state(folders, test_model.path)
    outbox = folders["outbox"]
    path = outbox / ".state" / "studies" / "cursor.json"
    before = files(outbox / ".state" / "studies")
    with monkeypatch.context() as m:
        failing_reads(m, path, error=errno.EACCES)
        with pytest.raises(StorageError) as raised:
            run_once(config)
    said = str(raised.value)
    assert raised.value.exit_code == EX_TEMPFAIL and str(path) in said
    assert "may not open" in said and "chown -R neuroedge:" in said and "disk error" not in said
    assert files(outbox / ".state" / "studies") == before


def test_an_index_that_cannot_be_listed_at_the_first_start_is_not_taken_for_none(
        tmp_path, monkeypatch):
    """The first start with study reports begins at the end of the index. Listing the index
    failing (EIO) read as no index at all: the cursor saved empty, and the next look grouped
    every input ever indexed into studies. Now the error is raised (exit 75 at start)."""
    from edge.network import studies

    outbox = tmp_path / "outbox"
    (outbox / "index").mkdir(parents=True)
    (outbox / "index" / "2026-11-20.jsonl").write_text(json.dumps(
        {"outcome": "classified", "id": "a" * 64, "study": "1.2.3", "moved_to": None}) + "\n")
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path) == outbox / "index":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real_scandir(path)

    tracker = StudyTracker(outbox, StudiesConfig(), ["a", "notumor"], {})
    with monkeypatch.context() as m:
        m.setattr(studies.os, "scandir", scandir)
        with pytest.raises(OSError):
            tracker.open()
    assert not (outbox / ".state" / "studies" / "cursor.json").exists()
    tracker.finish()  # as the agent's --once does when it stops: nothing read, nothing written
    assert not (outbox / ".state" / "studies" / "cursor.json").exists()
    restarted = StudyTracker(outbox, StudiesConfig(), ["a", "notumor"], {})
    restarted.open()
    assert restarted.poll() == 0 and restarted._pending == {}


# --- judging, and the studies page ------------------------------------------------------

def _study_with_a_slice_at_dest(tmp_path: Path) -> tuple[StudyTracker, Path, Path, str]:
    """A study report whose first slice was marked offloaded by an older agent (no kept
    fields: its report is read from DEST), and a second slice pending."""
    outbox, dest, uid = tmp_path / "outbox", tmp_path / "usb", "1.2.3"
    (outbox / "index").mkdir(parents=True)
    (outbox / ".state" / "studies").mkdir(parents=True)
    (outbox / ".state" / "studies" / "cursor.json").write_text('{"offsets": {}}')
    first, second = "1" * 64, "2" * 64
    dest.mkdir()
    _minimal_report(dest, first, uid, f"{uid}.1.1")
    _minimal_report(outbox, second, uid, f"{uid}.1.2")
    (outbox / "studies").mkdir()
    previous = {"schema": STUDY_SCHEMA, "study_instance_uid": uid, "revision": 1,
                "instances_hash": "0" * 64, "created_at": "2026-11-20T10:00:00+00:00",
                "instances": [{"report": first, "archived_as": None, "offloaded_to": str(dest),
                               "sop_instance_uid": f"{uid}.1.1", "label": "notumor"}]}
    (outbox / "studies" / f"{uid}.json").write_text(json.dumps(previous))
    tracker = StudyTracker(outbox, StudiesConfig(settle_seconds=0, min_slices=1),
                           ["a", "notumor"], {}, html=False)
    tracker.open()
    tracker._pending[uid] = {"study": uid, "members": {second: None}, "changed_at": 0.0}
    return tracker, outbox, dest / "reports" / f"{first}.json", uid


def test_a_slice_report_at_dest_that_cannot_be_read_retries_the_judgment(tmp_path,
                                                                        monkeypatch, caplog):
    """Reading an offloaded slice's report from DEST fails with EIO: the slice was left out
    as unreadable, and the study judged (and its SR sent) from the others, with a note.
    Now the judgment fails and is retried, as for a slice report in the outbox; the error
    line says where."""
    caplog.set_level(logging.INFO)
    tracker, outbox, at_dest, uid = _study_with_a_slice_at_dest(tmp_path)
    before = files(outbox / "studies")
    with monkeypatch.context() as m:
        failing_reads(m, at_dest)
        assert tracker._judge_safely(uid) is False
    assert files(outbox / "studies") == before and uid in tracker._pending
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert str(at_dest.parent.parent) in line and "retrying later" in line, line
    no_traceback(caplog)

    assert tracker._judge_safely(uid) is True
    doc = json.loads((outbox / "studies" / f"{uid}.json").read_text())
    assert len(doc["instances"]) == 2 and doc["notes"] == []


def test_a_study_held_back_by_a_disk_error_that_stays_is_on_the_front_page(tmp_path,
                                                                            monkeypatch):
    """A study whose judgment fails again and again (a disk error that stays) was held back
    for ever with a line in the log at each retry, and nothing on the pages a person reads.
    Now, from its second failure on, the front page says so (``page_lines``, under "Needs
    attention"), until it is judged."""
    tracker, outbox, at_dest, uid = _study_with_a_slice_at_dest(tmp_path)
    with monkeypatch.context() as m:
        failing_reads(m, at_dest)
        assert tracker._judge_safely(uid) is False
        assert tracker.page_lines() == []  # the first may be passing
        assert tracker._judge_safely(uid) is False
    (line,) = tracker.page_lines()
    assert line.startswith("1 study report(s) are held back by an error that has not cleared: "
                           "could not read or write a slice's report offloaded to "
                           f"{at_dest.parent.parent} (Input/output error), since "), line
    assert tracker._judge_safely(uid) is True and tracker.page_lines() == []


def test_a_slice_report_at_dest_this_user_may_not_read_is_left_out_with_a_note(
        tmp_path, monkeypatch):
    """EACCES is about the file, not the disk: retrying cannot help, so the slice is left
    out with a note, as one whose disk is not at hand (the study is not held back)."""
    tracker, outbox, at_dest, uid = _study_with_a_slice_at_dest(tmp_path)
    with monkeypatch.context() as m:
        failing_reads(m, at_dest, error=errno.EACCES)
        assert tracker._judge_safely(uid) is True
    doc = json.loads((outbox / "studies" / f"{uid}.json").read_text())
    assert len(doc["instances"]) == 1
    assert doc["notes"] == ["1 report(s) of this study could not be read and were left out"]


def test_a_study_report_that_cannot_be_read_keeps_its_row_and_is_read_again(
        tmp_path, monkeypatch, caplog):
    """Reading a changed study report for ``studies/index.html`` fails with EIO: it was
    cached as "not a study report" under the file's new (mtime, size, inode), so the study
    stayed off the page until its report changed again. Now the page keeps the row it
    had, the failure is one line, and the tracker renders the page again soon after."""
    from edge.dicom import uid_hash
    from edge.network import studies

    caplog.set_level(logging.INFO)
    outbox, tracker = _tracker_with_two_studies(tmp_path)
    tracker.finish()
    path = outbox / "studies" / "1.2.1.json"
    doc = json.loads(path.read_text())
    doc["verdict"] = "needs_review"
    path.write_text(json.dumps(doc, indent=1))
    page = outbox / "studies" / "index.html"
    monkeypatch.setattr(studies, "_RETRY_FIRST", 0.0)  # written again at the next pass
    with monkeypatch.context() as m:
        failing_reads(m, path)
        tracker._render_index()
    flag = '<strong class="flag">needs review</strong>'
    text = page.read_text()
    assert "1.2.1" in text and "1.2.2" in text and flag not in text
    no_traceback(caplog)
    assert f"could not read the report of study {uid_hash('1.2.1')}" in caplog.text
    assert "left out" not in caplog.text

    monkeypatch.setattr(studies, "_POLL", 0.02)
    tracker.start()  # nothing to judge: the page is written again only because it failed
    try:
        deadline = time.monotonic() + 10
        while flag not in page.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        tracker.stop()
    assert flag in page.read_text() and "1.2.2" in page.read_text()


# --- edge-agent offload: marking the study reports ----------------------------------------

def _study_report_to_mark(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    outbox, dest, uid, report_id = tmp_path / "outbox", tmp_path / "usb", "1.2.3", "1" * 64
    dest.mkdir()
    _minimal_report(dest, report_id, uid, f"{uid}.1.1")
    (outbox / "studies").mkdir(parents=True)
    doc = {"schema": STUDY_SCHEMA, "study_instance_uid": uid, "verdict": "notumor",
           "counts": {"instances": 1}, "series": [],
           "instances": [{"report": report_id, "sop_instance_uid": f"{uid}.1.1"}]}
    path = outbox / "studies" / f"{uid}.json"
    path.write_text(json.dumps(doc))
    return outbox, dest, path, report_id


@pytest.mark.parametrize("failing", ["study report", "copy at DEST"])
def test_a_study_report_offload_cannot_read_stops_the_step_instead_of_staying_unmarked(
        tmp_path, monkeypatch, failing):
    """``edge-agent offload`` marks the moved slices in their study reports. Reading a study
    report failing with EIO read as "not a study report we wrote": it stayed unmarked, the
    run succeeded and its record was deleted, so the study judged again counted the moved
    slices as missing. Reading the slice's copy at DEST failing marked it without what a
    judgment needs (kept fields). Now the error is raised: the offload stops with its
    record kept (``OutputError``: run it again), and the rerun marks the study."""
    from edge.network.study_offload import note_offloaded

    outbox, dest, path, report_id = _study_report_to_mark(tmp_path)
    before = path.read_bytes()
    failing_path = path if failing == "study report" else dest / "reports" / f"{report_id}.json"
    with monkeypatch.context() as m:
        failing_reads(m, failing_path)
        with pytest.raises(OSError) as raised:
            note_offloaded(outbox, dest, {report_id}, ["1.2.3"])
    assert raised.value.errno == errno.EIO and path.read_bytes() == before

    assert note_offloaded(outbox, dest, {report_id}, ["1.2.3"]) == 1
    (entry,) = json.loads(path.read_text())["instances"]
    assert entry["offloaded_to"] == str(dest) and entry["probabilities"] == {
        "a": 0.03, "notumor": 0.97}


def test_an_offload_that_cannot_read_a_study_report_stops_and_its_rerun_marks_it(
        folders, test_model, monkeypatch):
    """The whole command: the step fails with exit 73 and a line naming the file, the
    offload's record stays (the agent and ``fsck`` say it is pending), and running the same
    command again finishes the removal and marks the study's moved slices."""
    from test_offload import DAY1, DAY2, _offload, _study_day

    from edge.offload import RECORD_NAME

    config = make_config(folders, test_model.path, studies={"settle_seconds": 0})
    outbox = folders["outbox"]
    uid = _study_day(config, folders["inbox"], DAY1, monkeypatch, [0.1, 0.1, 0.6])
    usb = folders["root"] / "usb"
    usb.mkdir()
    path = outbox / "studies" / f"{uid}.json"
    before = path.read_bytes()
    with monkeypatch.context() as m:
        failing_reads(m, path)
        code, out = _offload(str(outbox), "--before", DAY2, "--to", str(usb))
    assert code == 73 and "the offload stopped" in out and str(path) in out, out
    assert (outbox / ".state" / RECORD_NAME).is_file() and path.read_bytes() == before

    code, out = _offload(str(outbox), "--before", DAY2, "--to", str(usb))
    assert code == 0, out
    doc = json.loads(path.read_text())
    assert [i.get("offloaded_to") for i in doc["instances"]] == [str(usb)] * 3
    assert all("probabilities" in i for i in doc["instances"])


# --- the SR's patient and study attributes, read from the archive -----------------------

def test_an_archived_header_the_disk_fails_to_give_retries_the_judgment_not_drops_the_sr(
        folders, test_model, monkeypatch, caplog):
    """Reading the archived instances' headers for the SR failed (EIO, or ENOSPC from a
    share): that was taken for "none of its instances is in the archive any more", and the
    study was judged with its SR never queued, for good (found by the network fault sweep
    under load). Now the study stays pending, its judgment is retried, and the SR is queued
    once the disk answers. An instance that is gone, or not DICOM, still passes to the
    next."""
    from edge.network import sr

    config = make_config(folders, test_model.path, studies={"settle_seconds": 0,
                                                            "min_slices": 1},
                         pacs={"send_to": "PACS@127.0.0.1:1", "timeout": 1.0})
    uid, _ = make_study(folders["inbox"] / "s", [0.6, 0.6])
    outbox = folders["outbox"]
    read_header = sr.read_header

    def failing(path: Path) -> Any:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    with monkeypatch.context() as m:
        m.setattr(sr, "read_header", failing)
        run_once(config)
    assert SendQueue(outbox).items() == []
    assert (outbox / ".state" / "studies" / f"{uid}.json").is_file()  # still pending
    assert not any("none of its instances is in the archive" in r.getMessage()
                   for r in caplog.records)
    assert any("an archived instance, read for the SR" in r.getMessage()
               for r in caplog.records)

    calls = []

    def first_gone(path: Path) -> Any:  # the first instance offloaded: the second serves
        calls.append(path)
        if len(calls) == 1:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        return read_header(path)

    with monkeypatch.context() as m:
        m.setattr(sr, "read_header", first_gone)
        run_once(config)  # the disk answers again
    assert len(calls) == 2
    (queued,) = SendQueue(outbox).items()
    assert queued.study == uid_hash(uid)
    assert not (outbox / ".state" / "studies" / f"{uid}.json").exists()


def test_an_archived_instance_that_holds_no_dicom_header_passes_to_the_next(tmp_path):
    """``dcmread(force=True)`` reads an empty or damaged file as an empty data set: the SR
    was built from it with blank patient and study attributes. Now such a file raises, and
    the study's next instance gives the header."""
    from edge.network.sr import read_header

    empty, garbage = tmp_path / "empty.dcm", tmp_path / "garbage.dcm"
    empty.write_bytes(b"")
    garbage.write_bytes(b"x" * 10)
    for path in (empty, garbage):
        with pytest.raises(ValueError, match="holds no DICOM study attributes"):
            read_header(path)
