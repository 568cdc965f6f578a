"""Taking inputs from an inbox on another filesystem than the outbox (a USB disk, a share).

A rename cannot cross filesystems, so the claim copies. These tests make every rename into
the outbox's ``.state/claimed`` fail with EXDEV, as the kernel does across filesystems, so
they run the cross-filesystem path on any machine (``test_agent_backlog`` runs it for real
when a second filesystem is writable). What they guard: whatever happens to the inbox name
during the copy (a new version renamed over it, a writer going on, a FIFO put in its place,
a crash), no version of the input is lost, no stray copy is left, nothing hangs.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
from pathlib import Path

import pytest
from agent_helpers import gray_png, make_config, run_once

import edge.claim
from edge.claim import HELD_PREFIX, Claim, HeldInInbox
from edge.manifest import sha256_file
from edge.outbox import Job, Outbox


@pytest.fixture
def across(folders, monkeypatch):
    """Renames into .state/claimed fail with EXDEV; every other rename is real."""
    claimed = str(folders["outbox"] / ".state" / "claimed") + os.sep
    rename = os.rename

    def cross_device(src, dst, *args, **kwargs):
        if str(dst).startswith(claimed):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", cross_device)
    return folders


def _inputs(outbox: Path) -> dict[str, str]:
    """sha256 -> name of every input the outbox holds (archive and quarantine)."""
    found = {}
    for folder in ("archive", "quarantine"):
        for path in (outbox / folder).rglob("*"):
            if path.is_file() and not path.name.endswith(".reason.json"):
                found[sha256_file(path)] = path.name
    return found


def _clean_state(outbox: Path) -> None:
    assert not list((outbox / ".state" / "claimed").iterdir()), "a stray copy was left"
    assert not list((outbox / ".state" / "jobs").glob("*.json")), "a job was left journaled"


def test_an_inbox_on_another_filesystem_is_copied_and_taken(across, test_model):
    scan = gray_png(across["inbox"] / "scan.png", 70)
    sha = sha256_file(scan)
    counts = run_once(make_config(across, test_model.path))
    assert counts["classified"] == 1 and not list(across["inbox"].iterdir())
    assert _inputs(across["outbox"]) == {sha: "scan.png"}
    _clean_state(across["outbox"])


def test_a_new_version_renamed_over_the_name_during_the_copy_is_not_deleted(
        across, test_model, monkeypatch):
    # the exporter writes a corrected version beside it and renames it over the name (the
    # usual way to replace a file) while the agent copies the first one: before the fix the
    # agent then unlinked the name, deleting the new version unread
    inbox = across["inbox"]
    first = gray_png(inbox / "scan.png", 60)
    second = gray_png(across["root"] / "new.png", 200)
    shas = {sha256_file(first), sha256_file(second)}
    copy = edge.claim.copy_durable
    replaced = []

    def copy_then_replaced(fd, dst):
        copy(fd, dst)
        if not replaced:
            os.replace(str(second), str(inbox / "scan.png"))
            replaced.append(True)

    monkeypatch.setattr(edge.claim, "copy_durable", copy_then_replaced)
    config = make_config(across, test_model.path)
    run_once(config)
    run_once(config)  # the new version, if the first run did not take it too
    assert replaced and set(_inputs(across["outbox"])) == shas
    assert not list(inbox.iterdir())
    _clean_state(across["outbox"])


def _copy_then_written_to(inbox: Path, more: bytes):
    """copy_durable, then a writer that still holds the file appends ``more`` to it."""
    copy = edge.claim.copy_durable

    def copy_then_written(fd, dst):
        copy(fd, dst)
        (held,) = inbox.glob(HELD_PREFIX + "*")
        with open(held, "ab") as writer:
            writer.write(more)

    return copy_then_written


def test_a_file_written_to_during_the_copy_is_given_back_whole(across, test_model,
                                                               monkeypatch, caplog):
    # a slow writer that paused past settle_seconds and goes on: its last bytes land in the
    # inbox file, not in the copy; the copy is dropped and the file given back, whole
    inbox = across["inbox"]
    scan = gray_png(inbox / "scan.png", 60)
    copy_then_written = _copy_then_written_to(inbox, b"the rest of the file")

    with monkeypatch.context() as patch:
        patch.setattr(edge.claim, "copy_durable", copy_then_written)
        with caplog.at_level(logging.WARNING):
            counts = run_once(make_config(across, test_model.path))
    assert counts["classified"] == 0 and counts["not_taken"] == 1  # --once exits 75
    assert "changed while it was copied" in caplog.text and "-inum" in caplog.text
    assert sorted(p.name for p in inbox.iterdir()) == ["scan.png"]
    whole = scan.read_bytes()
    assert whole.endswith(b"the rest of the file")
    _clean_state(across["outbox"])
    counts = run_once(make_config(across, test_model.path))  # settled now: taken, whole
    assert counts["classified"] + counts["quarantined"] == 1
    assert set(_inputs(across["outbox"])) == {sha256_file_bytes(whole)}


def test_a_changed_file_whose_name_was_taken_meanwhile_comes_back_beside_it(
        across, test_model, monkeypatch, caplog):
    # both at once: the writer went on (so the copy is dropped) and a new version took the
    # name; the earlier file must not replace the new one: it comes back as name~earlier
    inbox = across["inbox"]
    gray_png(inbox / "scan.png", 60)
    newer = gray_png(across["root"] / "new.png", 200)
    newer_sha = sha256_file(newer)
    written = _copy_then_written_to(inbox, b"more")

    def copy_then_both(fd, dst):
        written(fd, dst)
        os.replace(str(newer), str(inbox / "scan.png"))

    monkeypatch.setattr(edge.claim, "copy_durable", copy_then_both)
    outbox = Outbox(across["outbox"])
    outbox.prepare()
    with caplog.at_level(logging.WARNING, logger="edge.claim"):
        taken, refused = Claim(outbox, inbox).take([str(inbox / "scan.png")])
    assert not taken and len(refused) == 1
    assert sorted(p.name for p in inbox.iterdir()) == ["scan.png", "scan~earlier.png"]
    assert sha256_file(inbox / "scan.png") == newer_sha
    assert (inbox / "scan~earlier.png").read_bytes().endswith(b"more")
    assert "-inum" in caplog.text and "scan" not in caplog.text


def sha256_file_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_folder_where_the_file_cannot_be_renamed_gets_no_copy(across, test_model,
                                                               monkeypatch):
    # a read-only or sticky folder: the file can be read but not removed; before the fix a
    # copy was made (and left behind, with no record) every retry_interval
    scan = gray_png(across["inbox"] / "scan.png", 60)
    rename = os.rename

    def refused(src, dst, *args, **kwargs):
        if os.path.basename(str(dst)).startswith(HELD_PREFIX):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src))
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", refused)
    counts = run_once(make_config(across, test_model.path, watch={"retry_interval": 0.2}))
    assert counts["not_taken"] == 1 and counts["classified"] == 0
    assert scan.is_file() and sorted(p.name for p in across["inbox"].iterdir()) == ["scan.png"]
    _clean_state(across["outbox"])


def test_a_fifo_put_in_its_place_cannot_hang_the_claim(across, test_model, monkeypatch):
    # the name swapped for a FIFO after the claim looked at it: a blocking open would wait
    # for a writer forever
    inbox = across["inbox"]
    gray_png(inbox / "scan.png", 60)
    save = Outbox.save

    def swapped_after_recording(self, job, *args, **kwargs):
        save(self, job, *args, **kwargs)
        if job.held and (inbox / "scan.png").is_file():
            os.unlink(str(inbox / "scan.png"))
            os.mkfifo(str(inbox / "scan.png"))

    def hung(signum, frame):
        raise TimeoutError("the claim hung on a FIFO")

    monkeypatch.setattr(Outbox, "save", swapped_after_recording)
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        run_once(make_config(across, test_model.path))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [p.name for p in inbox.iterdir()] == ["scan.png"]  # the FIFO, given back
    assert not (inbox / "scan.png").is_file()
    _clean_state(across["outbox"])


def _interrupted(folders, copied: bool) -> tuple[Path, str]:
    """A cross-filesystem claim interrupted after hiding the input (and copying it)."""
    outbox = Outbox(folders["outbox"])
    outbox.prepare()
    token = "20990101T000003-crossfs"
    held = folders["inbox"] / f"{HELD_PREFIX}{token}"
    gray_png(held, 90)
    job = Job(token=token, stage="claiming", source="scan.png", file_name="scan.png",
              claimed_at="", cross_filesystem=True, held=held.name)
    outbox.save(job)
    if copied:
        outbox.claimed_path(job).write_bytes(held.read_bytes())
    return held, sha256_file(held)


@pytest.mark.parametrize("copied", [False, True], ids=["hidden", "hidden-and-copied"])
def test_a_claim_interrupted_by_a_crash_loses_nothing(across, test_model, copied):
    held, sha = _interrupted(across, copied)
    counts = run_once(make_config(across, test_model.path))
    assert counts["classified"] == 1 and counts["duplicate"] == 0
    assert not list(across["inbox"].iterdir())  # hidden name gone, nothing given back twice
    assert _inputs(across["outbox"]) == {sha: "scan.png"}
    _clean_state(across["outbox"])


def test_a_hidden_file_changed_after_its_copy_is_given_back_and_its_copy_dropped(
        across, test_model):
    """The writer went on after the copy: the copy is of an earlier, partial version. As
    in a claim that sees the change, it is dropped and the file taken again (until
    2026-12-07 both were kept: one drop, two inputs; ``test_agent_crash_sweep``'s k2)."""
    held, first = _interrupted(across, copied=True)
    with open(held, "ab") as writer:
        writer.write(b"more")
    second = sha256_file(held)
    config = make_config(across, test_model.path)
    run_once(config)
    run_once(config)
    assert set(_inputs(across["outbox"])) == {second}
    assert not list(across["inbox"].iterdir())
    _clean_state(across["outbox"])


def test_a_file_that_cannot_be_put_back_stays_journaled_and_is_put_back_later(
        across, test_model, monkeypatch):
    inbox = across["inbox"]
    scan = gray_png(inbox / "scan.png", 60)
    sha = sha256_file(scan)
    outbox = Outbox(across["outbox"])
    outbox.prepare()

    def copy_fails(src, dst):
        raise OSError(errno.EIO, "input/output error", str(src))

    def stuck(held, src):
        raise OSError(errno.EIO, "input/output error", str(src))

    with monkeypatch.context() as patch:
        patch.setattr(edge.claim, "_copy_unchanged", copy_fails)
        patch.setattr(edge.claim, "_give_back", stuck)
        taken, refused = Claim(outbox, inbox).take([str(scan)])
    assert not taken and len(refused) == 1 and isinstance(refused[0][1], HeldInInbox)
    (held,) = inbox.glob(HELD_PREFIX + "*")  # safe under its hidden name, and recorded
    (record,) = outbox.pending_jobs()
    assert record.held == held.name and record.stage == "claiming"
    counts = run_once(make_config(across, test_model.path))  # recovery puts it back, then
    assert counts["classified"] == 1  # it is taken like any other file
    assert _inputs(across["outbox"]) == {sha: "scan.png"}
    assert not list(inbox.iterdir())
    _clean_state(across["outbox"])


def test_the_agent_counts_a_held_file_it_could_not_put_back_as_unfinished(
        across, test_model, monkeypatch):
    # the running agent keeps the job with the unfinished ones (retried every
    # retry_interval), so --once exits 75; the next retry or start puts the file back
    inbox = across["inbox"]
    gray_png(inbox / "scan.png", 60)
    calls = []
    give_back = edge.claim._give_back

    def stuck_once(held, src):
        calls.append(held)
        if len(calls) == 1:
            raise OSError(errno.EIO, "input/output error", str(src))
        return give_back(held, src)

    def copy_fails(src, dst):
        raise OSError(errno.EIO, "input/output error", str(src))

    monkeypatch.setattr(edge.claim, "_give_back", stuck_once)
    monkeypatch.setattr(edge.claim, "_copy_unchanged", copy_fails)
    counts = run_once(make_config(across, test_model.path))
    assert counts["unfinished"] == 1
    records = [json.loads(p.read_text()) for p in
               (across["outbox"] / ".state" / "jobs").glob("*.json")]
    assert len(records) == 1 and records[0]["held"].startswith(HELD_PREFIX)
    monkeypatch.undo()
    counts = run_once(make_config(across, test_model.path))
    assert counts["classified"] == 1 and not list(inbox.iterdir())
    _clean_state(across["outbox"])


def test_a_hidden_input_whose_record_was_lost_is_given_back_and_taken(across, test_model,
                                                                      caplog):
    # the record set aside as damaged (or removed by hand): the hidden input must not stay
    # hidden forever; its name went with the record, so it comes back as recovered-<token>
    held = gray_png(across["inbox"] / f"{HELD_PREFIX}20990101T000004-orphan", 90)
    sha = sha256_file(held)
    with caplog.at_level(logging.WARNING, logger="edge.claim"):
        counts = run_once(make_config(across, test_model.path))
    assert counts["classified"] == 1
    assert _inputs(across["outbox"]) == {sha: "recovered-20990101T000004-orphan"}
    assert "had no journal record" in caplog.text
    assert not list(across["inbox"].iterdir())
    _clean_state(across["outbox"])


def test_a_claim_refused_again_for_the_same_cause_is_said_once(folders, test_model, caplog):
    # a folder that stays read-only is retried every retry_interval: one warning, not one a
    # minute; a new cause is said again
    from concurrent.futures import Future

    from edge.classifier import Classifier
    from edge.watch import Agent

    agent = Agent(make_config(folders, test_model.path), Classifier(
        make_config(folders, test_model.path)))
    path = str(gray_png(folders["inbox"] / "scan.png", 60))

    def refused(error):
        done = Future()
        done.set_result(([], [(path, error)]))
        return done

    denied = PermissionError(errno.EACCES, "Permission denied", path)
    with caplog.at_level(logging.WARNING, logger="edge.watch"):
        for _ in range(3):
            agent._claimed(refused(denied))
        agent._claimed(refused(OSError(errno.EIO, "Input/output error", path)))
    said = [r.getMessage() for r in caplog.records if "cannot take" in r.getMessage()]
    assert len(said) == 2 and "Permission denied" in said[0] and "Input/output" in said[1]
    assert all("tried again every" in m and "scan" not in m for m in said)
