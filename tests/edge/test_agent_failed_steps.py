"""A step that fails with a disk error (EIO, ENOSPC) leaves the job exactly where its
journal record says, and the agent goes on: found by an adversarial probe on 2026-12-07.

Before: a failed "claimed" save or folder fsync in the claim crashed the agent (a
traceback, restarted by systemd every 30 s while it lasted); a job whose "decided" save
failed was retried from the stage it had in memory, so its input moved while the record
still said "claimed" (a power cut then left an archived input with no index line, and the
log blamed someone "by hand"); a report that could not be read was taken for absent, and an
identical input's report replaced it; a job paused at a clean stop kept "paused" in its
record through its replay, so a crash there was not counted towards ``max_attempts``.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_helpers import gray_png, make_config

EIO = OSError(errno.EIO, "Input/output error")


def _run_once(folders, model: Path) -> dict[str, int]:
    from edge.classifier import Classifier
    from edge.watch import Agent

    config = make_config(folders, model, watch={"retry_interval": 0.05})
    return Agent(config, Classifier(config), once=True).run()


def _run_until(folders, model: Path, classified: int) -> dict[str, int]:
    """The running agent (retries happen while it runs), stopped once ``classified``
    inputs are; a deadline that is a bound, not a timing."""
    from edge.classifier import Classifier
    from edge.watch import Agent

    config = make_config(folders, model, watch={"retry_interval": 0.05})
    agent = Agent(config, Classifier(config), once=False)
    result: dict[str, int] = {}
    runner = threading.Thread(target=lambda: result.update(agent.run()), daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and agent.worker.counts["classified"] < classified:
        time.sleep(0.02)
    agent.stop_requested.set()
    runner.join(60)
    assert not runner.is_alive()
    return result


def _once(failing: str, failed: list[str]) -> Callable[[str], bool]:
    """``once(name)``: True the first time it is asked for the step ``failing`` (which is
    then noted in ``failed``), False ever after and for every other step."""
    def once(name: str) -> bool:
        if name != failing or failed:
            return False
        failed.append(name)
        return True

    return once


def _records(outbox: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (outbox / ".state" / "jobs").glob("*.json")]


def _index_lines(outbox: Path) -> list[dict]:
    return [json.loads(line) for f in (outbox / "index").glob("*.jsonl")
            for line in f.read_text().splitlines()]


@pytest.mark.parametrize("failing", ["jobs fsync", "claimed fsync", "claimed save"])
def test_a_disk_error_in_the_claim_is_retried_not_a_crash(folders, test_model, monkeypatch,
                                                           failing):
    """One of the claim's writes fails once with EIO: the jobs' folder fsync (nothing is
    moved yet: the inputs are taken again a moment later), the fsync of the folders the
    inputs were renamed into (their "claiming" records are kept and the jobs retried), or
    the "claimed" record, whose folder is not fsynced (ignored: recovery finishes a claim
    from its "claiming" record). No traceback; every input gets its report and one index line."""
    from edge import claim
    from edge.durable import FolderBarrier
    from edge.outbox import Outbox, Stage

    inbox, outbox = folders["inbox"], folders["outbox"]
    for i in range(4):
        gray_png(inbox / f"scan{i}.png", 30 + 40 * i)
    failed: list[str] = []
    once = _once(failing, failed)

    real_fsync, real_sync, real_save = claim.fsync_dir, FolderBarrier.sync, Outbox.save

    def fsync_dir(path, *args, **kwargs):
        if Path(path).name == "jobs" and once("jobs fsync"):
            raise EIO
        return real_fsync(path, *args, **kwargs)

    def sync(self):
        if any(Path(p).name == "claimed" for p in self._folders) and once("claimed fsync"):
            raise EIO
        return real_sync(self)

    def save(self, job, *args, **kwargs):
        if job.stage == Stage.CLAIMED and kwargs.get("sync_folder") is False and once(
                "claimed save"):
            raise EIO
        return real_save(self, job, *args, **kwargs)

    monkeypatch.setattr(claim, "fsync_dir", fsync_dir)
    monkeypatch.setattr(FolderBarrier, "sync", sync)
    monkeypatch.setattr(Outbox, "save", save)
    counts = _run_until(folders, test_model.path, classified=4)
    assert failed == [failing]
    assert counts["classified"] == 4 and counts["unfinished"] == 0, counts
    assert list(inbox.iterdir()) == [] and _records(outbox) == []
    lines = _index_lines(outbox)
    assert len(lines) == 4 and len({e["token"] for e in lines}) == 4


def test_a_job_is_retried_from_its_record_never_ahead_of_it(folders, test_model, monkeypatch):
    """Saving the "decided" record fails once. The retry must not move the input on the
    strength of the stage it had in memory: at the moment of every move, the journal record
    on disk already says "decided" with that very destination."""
    from edge import commit
    from edge.outbox import Outbox, Stage

    inbox, outbox = folders["inbox"], folders["outbox"]
    gray_png(inbox / "scan.png", 90)
    calls = {"decided": 0}
    real_save, real_move = Outbox.save, commit.move_no_replace

    def save(self, job, *args, **kwargs):
        if job.stage == Stage.DECIDED:
            calls["decided"] += 1
            if calls["decided"] == 1:
                raise EIO
        return real_save(self, job, *args, **kwargs)

    moves = []

    def move(src, dest, *args, **kwargs):
        record = json.loads((outbox / ".state" / "jobs" / f"{Path(src).name}.json").read_text())
        moves.append((record["stage"], record["dest"], str(Path(dest).relative_to(outbox))))
        return real_move(src, dest, *args, **kwargs)

    monkeypatch.setattr(Outbox, "save", save)
    monkeypatch.setattr(commit, "move_no_replace", move)
    counts = _run_until(folders, test_model.path, classified=1)
    assert calls["decided"] == 2 and counts["classified"] == 1, (calls, counts)
    assert moves and all(stage == "decided" and dest == target for stage, dest, target in moves)
    assert len(_index_lines(outbox)) == 1 and _records(outbox) == []


def test_a_report_that_cannot_be_read_is_not_written_over(folders, test_model, monkeypatch):
    """An identical copy of a reported input arrives while reading its report fails (EIO):
    it waits for a retry; its report is not written over the first input's (before, it was,
    with the copy's name and token, and both lines said "classified")."""
    from edge import durable

    inbox, outbox = folders["inbox"], folders["outbox"]
    gray_png(inbox / "first.png", 120)
    data = (inbox / "first.png").read_bytes()
    assert _run_once(folders, test_model.path)["classified"] == 1
    (report,) = (outbox / "reports").glob("*.json")
    before = report.read_bytes()

    (inbox / "copy.png").write_bytes(data)
    real_open = open

    def failing_open(path, *args, **kwargs):
        if Path(path) == report:
            raise EIO
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(durable, "open", failing_open, raising=False)
    counts = _run_once(folders, test_model.path)
    assert counts["unfinished"] == 1 and counts["classified"] == 0, counts
    assert report.read_bytes() == before
    monkeypatch.undo()

    counts = _run_once(folders, test_model.path)
    assert counts["duplicate"] == 1, counts
    assert report.read_bytes() == before
    assert sorted(e["outcome"] for e in _index_lines(outbox)) == ["classified", "duplicate"]


def test_a_paused_job_is_countable_again_before_it_is_decoded(folders, test_model,
                                                               monkeypatch):
    """A job left waiting for a retry at a clean stop is paused (its next start is not a
    crash). Its replay must clear that durably before decoding: if decoding then crashes
    the agent, the start after counts the attempt, as for any input."""
    from edge import commit
    from edge.classifier import Classifier

    inbox, outbox = folders["inbox"], folders["outbox"]
    gray_png(inbox / "scan.png", 60)
    real = commit.write_bytes_atomic

    def broken(path, data, *args, **kwargs):
        if path.parent.name == "reports":
            raise EIO
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(commit, "write_bytes_atomic", broken)
    counts = _run_once(folders, test_model.path)
    assert counts["unfinished"] == 1
    assert [r["paused"] for r in _records(outbox)] == [True]
    monkeypatch.undo()

    seen = []
    classify = Classifier.classify

    def looking(self, decoded):
        seen.extend(r["paused"] for r in _records(outbox))  # the record as a crash leaves it
        return classify(self, decoded)

    monkeypatch.setattr(Classifier, "classify", looking)
    assert _run_once(folders, test_model.path)["classified"] == 1
    assert seen == [False]


@pytest.mark.parametrize("failing", ["reports fsync", "jobs fsync", "archive fsync",
                                     "moved save", "record delete"])
def test_a_disk_error_in_the_commit_is_retried_not_a_traceback(folders, test_model, monkeypatch,
                                                                caplog, failing):
    """One of the commit's writes fails once with EIO, after the step itself succeeded: the
    fsync of the reports folder, of the jobs folder (the "decided" records), of the day's
    archive folder (the moves), the non-durable "moved" record, or the removal of a finished
    job's record. Before, each escaped the per-input handling: a traceback ("failed
    unexpectedly"), and the inputs of a failed report fsync stayed "in flight", so an
    identical input waited on a report nobody was writing. Now the inputs of that step are
    retried from their records: each gets one report and one index line, the identical
    copy is a duplicate, nothing is held."""
    import logging

    from edge.durable import FolderBarrier
    from edge.outbox import Outbox, Stage

    inbox, outbox = folders["inbox"], folders["outbox"]
    for i in range(3):
        gray_png(inbox / f"scan{i}.png", 30 + 50 * i)
    (inbox / "copy.png").write_bytes((inbox / "scan0.png").read_bytes())
    failed: list[str] = []
    once = _once(failing, failed)

    real_sync, real_save, real_delete = FolderBarrier.sync, Outbox.save, Outbox.delete
    folder_of = {"reports fsync": lambda p: p.name == "reports",
                 "jobs fsync": lambda p: p.name == "jobs",
                 "archive fsync": lambda p: p.parent.name == "archive"}

    def sync(self):
        hit = folder_of.get(failing)
        if hit and any(hit(Path(p)) for p in self._folders) and once(failing):
            raise EIO
        return real_sync(self)

    def save(self, job, *args, **kwargs):
        if job.stage == Stage.MOVED and once("moved save"):
            raise EIO
        return real_save(self, job, *args, **kwargs)

    def delete(self, job):
        if once("record delete"):
            raise EIO
        return real_delete(self, job)

    monkeypatch.setattr(FolderBarrier, "sync", sync)
    monkeypatch.setattr(Outbox, "save", save)
    monkeypatch.setattr(Outbox, "delete", delete)
    caplog.set_level(logging.INFO)
    from edge.classifier import Classifier
    from edge.watch import Agent

    config = make_config(folders, test_model.path, watch={"retry_interval": 0.05})
    agent = Agent(config, Classifier(config), once=False)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 120  # a bound, not a timing
    counts = agent.worker.counts
    while time.monotonic() < deadline and counts["classified"] + counts["duplicate"] < 4:
        time.sleep(0.02)
    agent.stop_requested.set()
    runner.join(60)
    assert not runner.is_alive()
    assert failed == [failing]
    assert (counts["classified"], counts["duplicate"]) == (3, 1), dict(counts)
    assert agent.worker.in_flight.held() == 0
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records
                                                         if r.exc_info]
    assert list(inbox.iterdir()) == [] and _records(outbox) == []
    lines = _index_lines(outbox)
    assert sorted(e["outcome"] for e in lines) == ["classified"] * 3 + ["duplicate"]
    assert len({e["token"] for e in lines}) == 4
    assert len(list((outbox / "reports").glob("*.json"))) == 3
