"""Hangs where no systemd watchdog watches: ``watch --once`` (a cron job), the agent in a
terminal or a container, ``edge-agent offload`` run by hand (docs/reliability.md, "Hangs:
an audit of every wait").

Under the service, a main loop that stops (a disk or share that stopped answering, a decoder
that hangs) stops the ``WATCHDOG=1`` pings and systemd restarts the agent. With no systemd
watchdog nothing did: ``--once`` waited for ever and kept the outbox's lock, so the next cron
run, the service and ``edge-agent offload`` were all refused ("another agent holds the
lock"); an offload stuck on a share that stopped answering ignored Ctrl-C.
``edge.liveness.SelfWatchdog`` now ends such an agent after ``[watch] stall_limit`` seconds
without progress, exit 75, its inputs journaled for the next start, and such an offload
after ``--stall-minutes``, exit 73, nothing removed that was not copied and verified
(``test_offload.py``).

A hang is made by a call that waits on an event the test sets at the end (in-process) or
sleeps for an hour (in a subprocess, ``agent_helpers.hanging``), as a read on a share that
stopped answering would. The offload's case is in ``test_offload.py``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import fast_config, gray_png, hanging, make_config, run_agent

from edge.manifest import sha256_file


class Ended:
    """What ``SelfWatchdog`` would end the process with, recorded instead (in-process)."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.event = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.event.set()


def _agent(config: Any, once: bool) -> tuple[Any, Ended]:
    from edge.classifier import Classifier
    from edge.watch import Agent

    agent = Agent(config, Classifier(config), once=once)
    assert agent._self_watchdog is not None, "no systemd watchdog here: the agent watches itself"
    ended = Ended()
    agent._self_watchdog._end = ended
    return agent, ended


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and "no progress for" in r.getMessage()]


def test_watch_once_with_a_hung_decoder_ends_with_exit_75_and_loses_nothing(
        tmp_path: Path, test_model: Any) -> None:
    """The real ``edge-agent watch --once``: stuck classifying, it ends itself (exit 75, one
    line saying what it was doing) instead of waiting for ever; the input stays journaled;
    the next run, healthy, finishes it with the lock free."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    digest = sha256_file(gray_png(inbox / "scan.png", 120))
    args = ["--config", str(fast_config(tmp_path, "stall_limit = 2.0\n")), "watch", str(inbox),
            "--outbox", str(outbox), "--model", str(test_model.path), "--once"]
    began = time.monotonic()
    hung = run_agent(args, timeout=90, **hanging(tmp_path, "classify"))
    took = time.monotonic() - began
    assert hung.returncode == 75, hung.stderr[-2000:]
    assert "no progress for" in hung.stderr and "classifying an input" in hung.stderr, (
        hung.stderr[-2000:])
    assert "Traceback" not in hung.stderr
    assert took < 60, f"ended after {took:.0f}s with a 2 s limit"
    jobs = [json.loads(p.read_text()) for p in (outbox / ".state" / "jobs").glob("*.json")]
    claimed = [sha256_file(outbox / ".state" / "claimed" / job["token"]) for job in jobs]
    assert claimed == [digest], "the input is not journaled"

    healthy = run_agent(args)
    assert healthy.returncode == 0, healthy.stderr[-2000:]
    archived = [p for p in (outbox / "archive").rglob("*") if p.is_file()]
    assert [sha256_file(p) for p in archived] == [digest]
    assert len(list((outbox / "reports").glob("*.json"))) == 1
    assert not list((outbox / ".state" / "jobs").glob("*.json"))
    assert not list(inbox.iterdir())


def test_watch_once_stuck_judging_its_studies_ends_itself(
        folders: dict[str, Path], test_model: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """``--once`` ends by judging every pending study on its main thread, which reads the
    study reports and the slices' reports (some on the share an offload moved them to);
    stuck in such a read, it waited for ever. Now the stop's step is named and the agent
    ended."""
    from edge.network import studies

    caplog.set_level(logging.INFO)
    config = make_config(folders, test_model.path, watch={"stall_limit": 1.0})
    entered, release = threading.Event(), threading.Event()

    def stuck_poll(self: Any) -> int:
        entered.set()
        release.wait(30)  # the test's own bound: never for ever
        return 0

    monkeypatch.setattr(studies.StudyTracker, "poll", stuck_poll)
    gray_png(folders["inbox"] / "scan.png", 120)
    agent, ended = _agent(config, once=True)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        assert ended.event.wait(15), "the agent never ended itself"
        assert entered.is_set() and ended.codes == [75]
        said = _said(caplog)
        assert len(said) == 1 and "stopping: the study reports and SRs" in said[0], said
        assert len(list((folders["outbox"] / "reports").glob("*.json"))) == 1, (
            "the input's report was not written before the stop")
    finally:
        release.set()
        thread.join(20)
    assert not thread.is_alive()


def test_a_healthy_idle_agent_without_systemd_is_not_ended(
        folders: dict[str, Path], test_model: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Waiting for new files is not a stall: an idle agent with a 1 s limit, run for four
    seconds with nothing to do, is left alone, and stops when asked."""
    caplog.set_level(logging.INFO)
    config = make_config(folders, test_model.path, watch={"stall_limit": 1.0})
    agent, ended = _agent(config, once=False)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        time.sleep(4.0)
        gray_png(folders["inbox"] / "late.png", 90)  # and work after the idle time
        deadline = time.monotonic() + 20
        while not list((folders["outbox"] / "reports").glob("*.json")):
            assert time.monotonic() < deadline, "the late input was never classified"
            time.sleep(0.05)
    finally:
        agent.stop_requested.set()
        thread.join(20)
    assert not thread.is_alive()
    assert ended.codes == [] and _said(caplog) == []


def test_under_systemds_watchdog_the_agent_does_not_watch_itself(
        folders: dict[str, Path], test_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd restarts a stuck agent (``WatchdogSec``); a second watchdog would only race
    it."""
    from edge import sdnotify
    from edge.classifier import Classifier
    from edge.watch import Agent

    monkeypatch.setattr(sdnotify, "watchdog_interval", lambda: 90.0)
    config = make_config(folders, test_model.path)
    assert Agent(config, Classifier(config))._self_watchdog is None


def test_the_self_watchdog_ends_only_after_its_limit_without_progress() -> None:
    """``alive`` calls keep it quiet however long the whole run; once they stop for longer
    than the limit, it ends the process once, with its code, naming what was being done."""
    from edge.liveness import SelfWatchdog

    ended, said = Ended(), []
    doing = ["reading the inbox"]
    dog = SelfWatchdog(0.4, lambda: doing[0], "ending it", code=73, say=said.append, end=ended)
    dog.start()
    try:
        for _ in range(15):  # 1.5 s of progress, well past the limit in all
            dog.alive()
            time.sleep(0.1)
        assert ended.codes == [] and said == []
        doing[0] = "classifying an input"
        assert ended.event.wait(5)
        time.sleep(0.5)
        assert ended.codes == [73]
        assert len(said) == 1 and "while classifying an input" in said[0], said
        assert said[0].endswith(": ending it")
    finally:
        dog.stop()


def test_stall_limit_must_be_positive() -> None:
    from edge.config import config_from_dict
    from edge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[watch\] stall_limit must be > 0 seconds"):
        config_from_dict({"watch": {"stall_limit": 0}}, "test")

