"""Hangs (docs/reliability.md, "Hangs: an audit of every wait"): a thread of the agent stuck
for ever must stop systemd's watchdog pings, and a stop must keep its bounds.

The pings come from the main loop. Before, a stuck committer (with nothing new to do), study
tracker or SR sender left it pinging: the agent looked alive to systemd while it wrote no
report, judged no study or sent no SR, for ever. Each test makes one of them stuck (a call
that waits on an event the test sets only at the end, as a read on a share that stopped
answering would) and checks that the pings stop, that the log says which thread, and that
the agent still stops when asked.
"""

from __future__ import annotations

import logging
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import gray_png, make_config

PING = 0.05  # the tests' watchdog interval (WatchdogSec / 2)
BOUND = 0.5  # the tests' bound on one piece of a thread's work


class Pings:
    """WATCHDOG=1 moments, captured through ``edge.sdnotify``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from edge import sdnotify

        self.times: list[float] = []
        monkeypatch.setattr(sdnotify, "notify", self._notify)
        monkeypatch.setattr(sdnotify, "watchdog_interval", lambda: PING)

    def _notify(self, state: str) -> bool:
        if state == "WATCHDOG=1":
            self.times.append(time.monotonic())
        return True

    def between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.times)


def _run_agent(agent: Any) -> threading.Thread:
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    return thread


def _stop(agent: Any, thread: threading.Thread, release: threading.Event) -> None:
    release.set()  # the stuck call returns: the agent's stop must not wait for it otherwise
    agent.stop_requested.set()
    thread.join(20)
    assert not thread.is_alive(), "the agent did not stop"


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _stuck(entered: threading.Event, release: threading.Event) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)  # the test's own bound: never for ever
        return None
    return call


def _assert_pings_stop(pings: Pings, stuck_at: float, caplog: pytest.LogCaptureFixture,
                       thread_name: str) -> None:
    """Pings while the thread is within its bound, none once it is past it (plus a ping
    interval of slack), and one error line naming the thread."""
    past = stuck_at + BOUND + 2 * PING
    _wait_for(lambda: time.monotonic() > past + 1.0, 5, "a second past the bound")
    assert pings.between(stuck_at - 1.0, stuck_at + BOUND - PING) >= 3, pings.times[-20:]
    assert pings.between(past, past + 1.0) == 0, (
        f"WATCHDOG=1 went on while the {thread_name} thread was stuck")
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
            and "no more WATCHDOG=1" in r.getMessage()]
    assert len(said) == 1 and f"the {thread_name} thread" in said[0], said


def test_a_stuck_study_tracker_stops_the_watchdog_pings(folders: dict[str, Path], test_model,
                                                        monkeypatch, caplog) -> None:
    """A study tracker stuck in a read (its reports' share stopped answering) judged no
    study and queued no SR again, while the main loop pinged systemd on: never restarted."""
    from edge.classifier import Classifier
    from edge.network import studies
    from edge.watch import Agent

    pings = Pings(monkeypatch)
    caplog.set_level(logging.INFO)
    config = make_config(folders, test_model.path)
    agent = Agent(config, Classifier(config))
    assert agent.network.tracker is not None
    agent.network.tracker.progress.bound = BOUND
    entered, release = threading.Event(), threading.Event()
    polls = []
    poll = studies.StudyTracker.poll

    def poll_then_stick(self: Any) -> int:  # healthy for a second, then stuck
        polls.append(time.monotonic())
        if polls[-1] - polls[0] < 1.0:
            return poll(self)
        return _stuck(entered, release)()

    monkeypatch.setattr(studies.StudyTracker, "poll", poll_then_stick)
    thread = _run_agent(agent)
    try:
        assert entered.wait(10), "the tracker never polled"
        _assert_pings_stop(pings, time.monotonic(), caplog, "study tracker")
    finally:
        _stop(agent, thread, release)


def test_a_stuck_sr_sender_stops_the_watchdog_pings(folders: dict[str, Path], test_model,
                                                    monkeypatch, caplog) -> None:
    """An SR sender stuck for ever (a PACS that never lets go of the association) sent no
    SR again, while the main loop pinged systemd on."""
    from edge.classifier import Classifier
    from edge.network import sender
    from edge.watch import Agent

    pings = Pings(monkeypatch)
    caplog.set_level(logging.INFO)
    config = make_config(folders, test_model.path, pacs={"send_to": "PACS@127.0.0.1:1"})
    entered, release = threading.Event(), threading.Event()
    calls = []
    send_due = sender.Sender.send_due

    def send_then_stick(self: Any, now: Any = None) -> Any:
        calls.append(time.monotonic())
        if len(calls) == 1:  # the first pass (empty queue), then stuck in the next
            self._wake.set()
            return send_due(self, now)
        time.sleep(1.0)  # a second of pings while the thread is busy within its bound
        return _stuck(entered, release)()

    monkeypatch.setattr(sender.Sender, "send_due", send_then_stick)
    agent = Agent(config, Classifier(config))
    assert agent.network.sender is not None
    agent.network.sender.progress.bound = BOUND + 1.0
    thread = _run_agent(agent)
    try:
        _wait_for(lambda: len(calls) >= 2, 10, "the sender's second pass")
        started = calls[1]
        assert entered.wait(5)
        past = started + BOUND + 1.0 + 2 * PING
        _wait_for(lambda: time.monotonic() > past + 1.0, 5, "a second past the bound")
        assert pings.between(started, started + BOUND + 1.0 - PING) >= 3, pings.times[-20:]
        assert pings.between(past, past + 1.0) == 0, "WATCHDOG=1 went on; the sender is stuck"
        assert any("the SR sender thread" in r.getMessage() for r in caplog.records
                   if r.levelno == logging.ERROR)
    finally:
        _stop(agent, thread, release)


def test_a_stuck_committer_stops_the_watchdog_pings_with_nothing_else_to_do(
        folders: dict[str, Path], test_model, monkeypatch, caplog) -> None:
    """A committer stuck on a group (a disk write that never returns) stopped the pings only
    once the main loop had filled its queue and blocked behind it; with no more inputs
    coming, the main loop idled and pinged on, the input's report never written."""
    from edge.classifier import Classifier
    from edge.watch import Agent

    pings = Pings(monkeypatch)
    caplog.set_level(logging.INFO)
    config = make_config(folders, test_model.path)
    agent = Agent(config, Classifier(config))
    agent.committer.progress.bound = BOUND
    entered, release = threading.Event(), threading.Event()
    stuck = _stuck(entered, release)
    monkeypatch.setattr(agent.worker, "commit", lambda group: stuck() or [])
    thread = _run_agent(agent)
    try:
        _wait_for(lambda: len(pings.times) >= 3, 10, "the first pings")
        gray_png(folders["inbox"] / "scan.png", 80)
        assert entered.wait(10), "the input never reached the committer"
        _assert_pings_stop(pings, time.monotonic(), caplog, "committer")
    finally:
        _stop(agent, thread, release)


def test_a_healthy_idle_agent_keeps_pinging_with_every_thread_waiting(
        folders: dict[str, Path], test_model, monkeypatch) -> None:
    """The other side: threads waiting for work (the tracker between polls, the sender for
    its next SR, the committer for an input) are not stalled, however long they wait."""
    from edge.classifier import Classifier
    from edge.watch import Agent

    pings = Pings(monkeypatch)
    config = make_config(folders, test_model.path, pacs={"send_to": "PACS@127.0.0.1:1"})
    agent = Agent(config, Classifier(config))
    for part in agent._progress():
        part.bound = 0.2
    thread = _run_agent(agent)
    try:
        gray_png(folders["inbox"] / "scan.png", 80)
        _wait_for(lambda: list((folders["outbox"] / "reports").glob("*.json")), 10,
                  "the input's report")
        start = time.monotonic()
        time.sleep(1.5)
        assert pings.between(start, start + 1.5) >= 10, pings.times[-20:]
    finally:
        _stop(agent, thread, threading.Event())


def test_closing_the_committer_keeps_its_bound_behind_a_stuck_group(monkeypatch) -> None:
    """``Committer.close(timeout)`` put its stop marker with a blocking ``put``: with the
    queue full behind a group that never finished (a hung disk), the stop (SIGTERM, or the
    end of ``watch --once``) waited for ever instead of ``timeout`` seconds."""
    from edge.pipeline import QUEUE_DEPTH, Committer

    entered, release = threading.Event(), threading.Event()

    class StuckWorker:
        def commit(self, group: list[Any]) -> list[Any]:
            entered.set()
            release.wait(30)
            return []

    committer = Committer(StuckWorker(), lambda job, exc: None)  # type: ignore[arg-type]
    committer.start()
    try:
        committer.submit("first")  # type: ignore[arg-type]
        assert entered.wait(5)
        for i in range(QUEUE_DEPTH):  # the queue full behind it
            committer._queue.put_nowait(f"queued-{i}")
        closing: list[bool] = []
        closer = threading.Thread(target=lambda: closing.append(committer.close(0.5)),
                                  daemon=True)
        started = time.monotonic()
        closer.start()
        closer.join(5)
        assert not closer.is_alive(), "close(0.5) still waits after 5 s"
        assert closing == [False] and time.monotonic() - started < 2.0
    finally:
        release.set()


def test_a_file_still_changing_after_its_claim_is_not_waited_on_past_the_watchdog(
        tmp_path, monkeypatch):
    """The re-hash of a file that changed while it was read waits ``settle_seconds`` a try,
    on the thread that pings systemd's watchdog: with a slow share's 60 s, five tries ran
    past ``WatchdogSec`` (3 min) and systemd killed the agent over one input. Each wait is
    capped (``SETTLE_WAIT_MAX``), five of them well inside it."""
    from edge import prepare

    path = tmp_path / "growing.dcm"
    path.write_bytes(b"x")
    real_hash = prepare.sha256_file

    def hash_while_it_grows(p):  # a writer still appending: each read sees it change
        digest = real_hash(p)
        with open(str(p), "ab") as handle:
            handle.write(b"x")
        return digest

    waits: list[float] = []
    monkeypatch.setattr(prepare, "sha256_file", hash_while_it_grows)
    monkeypatch.setattr(prepare, "time", types.SimpleNamespace(sleep=waits.append))
    prepare._stable_hash(path, 60.0)
    assert len(waits) == 5 and max(waits) <= prepare.SETTLE_WAIT_MAX
    assert sum(waits) < 180 * 0.6, waits  # the unit's WatchdogSec, with room to spare
    assert "WatchdogSec=3min" in (Path(__file__).resolve().parents[2] / "deploy" / "systemd"
                                  / "edge-agent.service").read_text()
