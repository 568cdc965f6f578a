"""A restart for a stalled side thread is not the inputs' fault (docs/reliability.md, "Hangs").

When the committer, the study tracker or the SR sender is stuck, the main loop stops the
watchdog pings and systemd restarts the agent (tests/edge/test_agent_hangs.py). The next
start replayed the journal as after any crash, counting one more attempt against each
input it found there: three restarts for a hung outbox disk or PACS, and innocent scans
were set aside as "processing this file stopped the agent 3 times", with no report. The
main loop now records the stall in ``.state/stalled.json`` (``edge.liveness``), and the
next start counts nothing against the journal's inputs while that record is there.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import gray_png, make_config, run_once

from edge.errors import EX_TEMPFAIL, StorageError
from edge.outbox import Job, Outbox, Stage

PING = 0.05  # the tests' watchdog interval (WatchdogSec / 2)
BOUND = 0.5  # the tests' bound on one commit
WHY = "the committer thread has been on one piece of work for 301s (at most 300s expected)"


def _record(outbox: Path) -> Path:
    return outbox / ".state" / "stalled.json"


def _write_record(outbox: Path, **fields: Any) -> None:
    record = {"threads": ["committer"], "why": [WHY], "time": "2026-12-07T03:00:00+01:00",
              "pid": 4242, **fields}
    _record(outbox).write_text(json.dumps(record))


def _journal(outbox_root: Path, name: str, level: int, attempts: int = 0) -> Job:
    """An input the agent had claimed and not finished when it stopped."""
    outbox = Outbox(outbox_root)
    outbox.prepare()
    job = Job(token=f"20990101T000000-{name}", stage=Stage.CLAIMED, source=f"{name}.png",
              file_name=f"{name}.png", claimed_at="", attempts=attempts)
    gray_png(outbox.claimed_path(job), level)
    outbox.save(job)
    return job


def _attempts_seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Each input's attempts when the worker came to decode it (after the replay counted)."""
    from edge.worker import Worker

    seen: dict[str, int] = {}
    prepare = Worker.prepare

    def spy(self: Any, job: Job, replay: bool = False) -> Any:
        seen[job.file_name] = job.attempts
        return prepare(self, job, replay=replay)

    monkeypatch.setattr(Worker, "prepare", spy)
    return seen


def _watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as under systemd with a watchdog, its pings dropped."""
    from edge import sdnotify

    monkeypatch.setattr(sdnotify, "notify", lambda state: True)
    monkeypatch.setattr(sdnotify, "watchdog_interval", lambda: PING)


def _wait_for(condition: Callable[[], Any], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _stuck_committer(agent: Any, monkeypatch: pytest.MonkeyPatch, release: threading.Event,
                     then: Callable[[list[Any]], Any]) -> threading.Event:
    """The agent's commits hang (a disk that stopped answering) until ``release``."""
    entered = threading.Event()

    def commit(group: list[Any]) -> Any:
        entered.set()
        release.wait(30)  # the test's own bound: never for ever
        return then(group)

    agent.committer.progress.bound = BOUND
    monkeypatch.setattr(agent.worker, "commit", commit)
    return entered


# --- the start after a stall ------------------------------------------------------------

def test_a_stall_recorded_before_the_start_counts_no_crash_against_the_journal(
        folders, test_model, monkeypatch, caplog):
    """The journal's inputs keep their attempts, the one at the limit is classified (it was
    set aside as "stopped the agent 3 times"), one line says why, and the record goes."""
    outbox = folders["outbox"]
    _journal(outbox, "fresh", 40)
    _journal(outbox, "third", 200, attempts=3)  # [limits] max_attempts = 3
    _write_record(outbox)
    seen = _attempts_seen(monkeypatch)
    caplog.set_level(logging.INFO)

    counts = run_once(make_config(folders, test_model.path))

    assert seen == {"fresh.png": 0, "third.png": 3}
    assert (counts["classified"], counts["quarantined"]) == (2, 0)
    assert not os.listdir(str(outbox / "quarantine")) and not os.listdir(str(outbox / ".state"
                                                                              / "jobs"))
    assert not _record(outbox).exists()
    said = [r.getMessage() for r in caplog.records if "stalled committer thread" in
            r.getMessage()]
    assert len(said) == 1 and "not for an input" in said[0], said
    assert "2 journaled input(s) are not counted" in said[0] and "process 4242" in said[0]


def test_without_a_stall_record_the_journal_counts_a_crash_as_before(folders, test_model,
                                                                     monkeypatch):
    """The other side (passing before and after): a plain crash counts one attempt, and the
    input that stopped the agent 3 times is set aside."""
    outbox = folders["outbox"]
    _journal(outbox, "fresh", 40)
    _journal(outbox, "third", 200, attempts=3)
    seen = _attempts_seen(monkeypatch)

    counts = run_once(make_config(folders, test_model.path))

    assert seen == {"fresh.png": 1, "third.png": 4}
    assert (counts["classified"], counts["quarantined"]) == (1, 1)
    reason = json.loads((outbox / "quarantine" / "third.png.reason.json").read_text())
    assert reason["reason_code"] == "CrashedAgent"


@pytest.mark.parametrize("damage", [b'{"threads": ["comm', b"[]", b'{"threads": "committer"}',
                                    b'{"threads": [], "why": []}'])
def test_a_damaged_stall_record_counts_the_crash_with_a_warning(folders, test_model,
                                                                monkeypatch, caplog, damage):
    """A record that cannot be read is taken for none (the safe side: counted), said, and
    removed with the replay."""
    outbox = folders["outbox"]
    _journal(outbox, "fresh", 40)
    _record(outbox).write_bytes(damage)
    seen = _attempts_seen(monkeypatch)
    caplog.set_level(logging.WARNING)

    assert run_once(make_config(folders, test_model.path))["classified"] == 1

    assert seen == {"fresh.png": 1}
    assert any("stalled.json could not be read (damaged)" in r.getMessage()
               and "counted as having stopped the agent" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING), caplog.text
    assert not _record(outbox).exists()


def test_an_error_reading_the_stall_record_stops_the_start_and_counts_nothing(
        folders, test_model, monkeypatch):
    """EIO reading the record is not "no record": the start fails as for any state it
    cannot read (exit 75, systemd starts it again), the journal as it was."""
    from edge import liveness
    from edge.durable import read_json_if_there as real

    outbox = folders["outbox"]
    job = _journal(outbox, "fresh", 40)
    _write_record(outbox)

    def failing_disk(path: Path) -> Any:
        if path.name == "stalled.json":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path)

    monkeypatch.setattr(liveness, "read_json_if_there", failing_disk, raising=False)
    config = make_config(folders, test_model.path)
    with pytest.raises(StorageError, match="a disk error while starting") as raised:
        run_once(config)
    assert raised.value.exit_code == EX_TEMPFAIL
    record = json.loads((outbox / ".state" / "jobs" / f"{job.token}.json").read_text())
    assert record["attempts"] == 0 and _record(outbox).exists()

    monkeypatch.setattr(liveness, "read_json_if_there", real)  # the disk answers again
    seen = _attempts_seen(monkeypatch)
    assert run_once(config)["classified"] == 1 and seen == {"fresh.png": 0}


class _Killed(BaseException):
    """The agent killed in the middle of its replay (a segfault, systemd's timeout)."""


def test_a_start_killed_in_its_replay_finds_the_record_again_but_not_for_ever(
        folders, test_model, monkeypatch, caplog):
    """The record stays until a replay ends, so a start that dies in it (on the same stuck
    disk) is excused too; but each such start is counted in the record, and past
    ``max_attempts`` of them the inputs are counted again: an input that crashes the
    decoder, taken during the stall, must not crash every start for ever."""
    from edge.worker import Worker

    outbox = folders["outbox"]
    _journal(outbox, "poison", 40)
    _write_record(outbox)
    config = make_config(folders, test_model.path, limits={"max_attempts": 2})
    run = Worker.run
    crashes = []

    def crash(self: Any, job: Job, replay: bool = False, crashed: bool = False) -> Any:
        crashes.append(crashed)
        raise _Killed

    monkeypatch.setattr(Worker, "run", crash)
    for excused in (1, 2):
        with pytest.raises(_Killed):
            run_once(config)
        assert json.loads(_record(outbox).read_text())["excused"] == excused
    assert crashes == [False, False]

    monkeypatch.setattr(Worker, "run", run)
    seen = _attempts_seen(monkeypatch)
    caplog.set_level(logging.WARNING)
    assert run_once(config)["classified"] == 1
    assert seen == {"poison.png": 1}
    assert "2 start(s) since died before replaying the journal to its end" in caplog.text
    assert not _record(outbox).exists()


# --- the running agent ------------------------------------------------------------------

def test_a_stalled_committer_is_recorded_and_the_record_removed_once_it_goes_on(
        folders, test_model, monkeypatch):
    """The record names the thread, why, when and the process; pings resuming remove it."""
    from edge.classifier import Classifier
    from edge.watch import Agent

    _watchdog(monkeypatch)
    config = make_config(folders, test_model.path)
    agent = Agent(config, Classifier(config))
    release = threading.Event()
    entered = _stuck_committer(agent, monkeypatch, release, agent.worker.commit)
    record = _record(folders["outbox"])
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    try:
        gray_png(folders["inbox"] / "scan.png", 80)
        assert entered.wait(10), "the input never reached the committer"
        _wait_for(record.exists, 5, "the stall record")
        data = json.loads(record.read_text())
        assert data["threads"] == ["committer"] and data["pid"] == os.getpid()
        assert data["why"][0].startswith("the committer thread has been on one piece of work")
        assert data["time"][:2] == "20" and data["excused"] == 0
        release.set()
        _wait_for(lambda: not record.exists(), 5, "the record's removal")
        _wait_for(lambda: list((folders["outbox"] / "reports").glob("*.json")), 10,
                  "the input's report")
    finally:
        release.set()
        agent.stop_requested.set()
        thread.join(20)
    assert not thread.is_alive(), "the agent did not stop"


def test_inputs_taken_when_a_stalled_committer_got_the_agent_restarted_are_not_counted(
        folders, test_model, monkeypatch):
    """The whole story: the committer hangs on an input's report, the agent is stopped
    with it journaled (systemd's restart), and the next start classifies it without
    counting a crash (it counted one: three such restarts set it aside)."""
    from edge import watch
    from edge.classifier import Classifier

    _watchdog(monkeypatch)
    monkeypatch.setattr(watch, "_CLOSE_TIMEOUT", 0.5)  # the stop gives up on the committer
    config = make_config(folders, test_model.path)
    agent = watch.Agent(config, Classifier(config))
    release = threading.Event()
    entered = _stuck_committer(agent, monkeypatch, release, lambda group: [])
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    try:
        gray_png(folders["inbox"] / "scan.png", 80)
        assert entered.wait(10), "the input never reached the committer"
        _wait_for(lambda: agent._stalled_said, 5, "the stall")  # the pings stopped
        agent.stop_requested.set()
        thread.join(20)
        assert not thread.is_alive(), "the agent did not stop"
        [journaled] = (folders["outbox"] / ".state" / "jobs").glob("*.json")
        job = json.loads(journaled.read_text())
        # its claim counted its first attempt
        assert (job["stage"], job["attempts"], job["paused"]) == ("claimed", 1, False)

        seen = _attempts_seen(monkeypatch)
        counts = run_once(config)  # the committer of the first run is still stuck
    finally:
        release.set()
    assert seen == {"scan.png": 1} and counts["classified"] == 1
    assert not _record(folders["outbox"]).exists()


# --- what the other commands make of it ---------------------------------------------------

def test_check_warns_of_a_stall_record_and_fsck_finds_nothing_wrong(folders, test_model):
    from edge.checks import run_checks
    from edge.fsck import check_outbox

    outbox = folders["outbox"]
    Outbox(outbox).prepare()
    _write_record(outbox)
    config = make_config(folders, test_model.path)
    lines: list[str] = []
    assert run_checks(config, lines.append) == []  # a warning, not a failed check
    [line] = [line for line in lines if "stalled thread:" in line]
    assert line.startswith("WARNING stalled thread: the agent's committer thread stalled "
                           "(process 4242, 2026-12-07T03:00:00+01:00): " + WHY), line
    assert "does not count the inputs it had taken" in line

    _write_record(outbox, threads=["SR sender", "study tracker"], why=["a", "b"])
    lines.clear()
    run_checks(config, lines.append)
    [line] = [line for line in lines if "stalled thread:" in line]
    assert "the agent's SR sender and study tracker threads stalled" in line and ": a; b." in line

    _record(outbox).write_text("{")
    lines.clear()
    run_checks(config, lines.append)
    [line] = [line for line in lines if "stalled thread:" in line]
    assert "is damaged" in line and "counts the inputs" in line

    _write_record(outbox)
    result = check_outbox(outbox, repair=False)
    assert not result.of("problem") and not result.of("pending"), result.findings
    assert _record(outbox).exists()
