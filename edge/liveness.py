"""Whether the agent's own threads make progress: systemd's watchdog is pinged only if so.

The main loop sends ``WATCHDOG=1`` between files, so a main loop that hangs (a decoder, the
inbox's share) stops the pings and systemd restarts the agent. The committer, the study
tracker and the SR sender run on threads of their own; one of them stuck for ever (a read on
a share that stopped answering, a PACS that never lets go, a lost wake-up) used to leave the
main loop pinging: the agent alive, its reports never written, its studies never judged or
its SRs never sent, and nothing said. Each such thread now marks the piece of work it
begins (``begin``) and when it goes back to waiting (``end``); one busy on the same piece
longer than its ``bound``, or ended while it should run, is stalled, and the main loop
stops pinging (``edge.watch.Agent._ping_watchdog``).

That restart is not the fault of the inputs the agent had taken: the main loop records the
stall in ``.state/stalled.json`` (``record_stall``; removed when the stall clears), and the
next start replays the journal without counting a crash against them (``excused_by_stall``,
``[limits] max_attempts``), so a hung outbox disk or PACS does not set innocent scans aside
as "stopped the agent 3 times". A stall of the main loop itself (a hung decoder: a poison
input) is never recorded, since the main loop would be the one to write it: its input is
counted, as ``max_attempts`` needs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .durable import fsync_dir, lexists, read_json_if_there, write_json_atomic
from .errors import EX_TEMPFAIL
from .report import now_iso

log = logging.getLogger(__name__)

STALL_RECORD = "stalled.json"  # in the outbox's .state: a side thread is (or was) stalled


class Progress:
    """One thread's progress: when its current piece of work began (None: it is waiting).

    ``bound``: the longest a healthy piece of work takes, in seconds; generous (a slow SD
    card, a PACS at its timeouts), since a thread past it gets the agent restarted."""

    def __init__(self, name: str, bound: float) -> None:
        self.name = name
        self.bound = bound
        self._since: float | None = None
        self._thread: threading.Thread | None = None

    def running(self, thread: threading.Thread | None) -> None:
        """The thread that does the work (None: stopped on purpose; not watched). Called
        once it is started: it may have begun its first piece of work already."""
        self._thread = thread

    def begin(self) -> None:
        """A new piece of work starts now (the previous one, if any, is done)."""
        self._since = time.monotonic()

    def end(self) -> None:
        """Back to waiting for work (a wait with a timeout of its own)."""
        self._since = None

    def stalled(self, now: float | None = None) -> str | None:
        """Why this thread does not make progress, in words; None if it does."""
        thread, since = self._thread, self._since
        if thread is None:
            return None
        if not thread.is_alive():
            return f"the {self.name} thread has ended"
        now = time.monotonic() if now is None else now
        if since is not None and now - since > self.bound:
            return (f"the {self.name} thread has been on one piece of work for "
                    f"{now - since:.0f}s (at most {self.bound:g}s expected)")
        return None


@dataclass(frozen=True)
class Stall:
    """A stall the agent recorded: which threads, why, when, which process; ``excused``:
    starts that replayed the journal without counting a crash because of it (and did not
    finish their recovery: the record is removed once one does)."""

    threads: list[str]
    why: list[str]
    time: str
    pid: int | None
    excused: int = 0

    def names(self) -> str:
        """The threads for a sentence: "committer thread", "study tracker and SR sender
        threads"."""
        if len(self.threads) == 1:
            return f"{self.threads[0]} thread"
        return ", ".join(self.threads[:-1]) + f" and {self.threads[-1]} threads"

    def to_dict(self) -> dict[str, object]:
        return {"threads": self.threads, "why": self.why, "time": self.time, "pid": self.pid,
                "excused": self.excused}


def record_stall(state: Path, stalled: dict[str, str]) -> None:
    """Record durably in the folder ``state`` that the threads of ``stalled`` (name: why)
    are stalled. Never raises: it runs on the main loop, whose pings are stopped already
    (systemd restarts the agent); a disk error is logged, and the next start, finding no
    record, counts a crash against the journal's inputs as before. Where the stuck disk is
    the outbox's, the write may hang too: the pings are stopped either way."""
    names = sorted(stalled)
    record = Stall(names, [stalled[name] for name in names], now_iso(), os.getpid())
    try:
        write_json_atomic(state / STALL_RECORD, record.to_dict())
    except OSError as exc:
        log.error("could not record the stall in %s (%s): the inputs the agent has taken will "
                  "be counted as having stopped it at the next start", state / STALL_RECORD,
                  exc.strerror or exc)


def forget_stall(state: Path) -> None:
    """The stall cleared (the main loop pings again): remove its record, so that a real
    crash from now on is counted. Never raises (the main loop goes on); logged instead."""
    try:
        clear_stall(state)
    except OSError as exc:
        log.warning("could not remove %s (%s): should the agent stop before it is removed, "
                    "its next start will not count the journal's inputs as crashes",
                    state / STALL_RECORD, exc.strerror or exc)


def clear_stall(state: Path) -> None:
    """Remove the record durably (none there: nothing to do); an error is raised."""
    try:
        os.unlink(str(state / STALL_RECORD))
    except FileNotFoundError:
        return
    fsync_dir(state)


def read_stall(state: Path) -> Stall | None:
    """The stall recorded in the folder ``state``; None if there is none. A record that is
    not one (damaged, edited by hand) raises ValueError; an error reading it (EIO) raises
    OSError, never taken for "none"."""
    path = state / STALL_RECORD
    data = read_json_if_there(path)
    if data is None:
        if lexists(path):
            raise ValueError(f"{path} holds no JSON")
        return None
    try:
        threads, why = data["threads"], data["why"]
        pid, excused = data.get("pid"), data.get("excused", 0)
        if not (isinstance(threads, list) and threads and all(isinstance(t, str) for t in threads)
                and isinstance(why, list) and all(isinstance(w, str) for w in why)
                and isinstance(excused, int) and (pid is None or isinstance(pid, int))):
            raise TypeError
        return Stall(threads, why, str(data.get("time")), pid, excused)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a stall record") from exc


def excused_by_stall(state: Path, charged: int, max_attempts: int) -> bool:
    """At start-up, before the journal is replayed: whether the previous run recorded a
    stalled side thread, so the ``charged`` inputs that would count a crash do not. The
    caller removes the record once the replay is over (``clear_stall``), not before: a start
    that dies in the replay, on the same stuck disk, finds it again. Each such start is
    counted in the record; past ``max_attempts`` of them the inputs are counted again, or a
    poison input taken during the stall would crash every start for ever. A damaged record
    counts as none (the inputs are counted), with a warning. An error reading or updating
    it (EIO) is raised: the start fails (exit 75) rather than guess."""
    path = state / STALL_RECORD
    try:
        stall = read_stall(state)
    except ValueError:
        log.warning("%s could not be read (damaged); the inputs found in the journal are "
                    "counted as having stopped the agent, as after a crash", path)
        return False
    if stall is None:
        return False
    if stall.excused >= max_attempts:
        log.warning("the agent was restarted for a stalled %s, but %d start(s) since "
                    "died before replaying the journal to its end: its %d input(s) are counted "
                    "as having stopped the agent", stall.names(), stall.excused, charged)
        return False
    if charged:  # durably, before the first input is replayed
        write_json_atomic(path, Stall(stall.threads, stall.why, stall.time, stall.pid,
                                      stall.excused + 1).to_dict())
    log.warning("the agent was restarted for a stalled %s (process %s, %s), not for an "
                "input: %d journaled input(s) are not counted as having stopped it ([limits] "
                "max_attempts)", stall.names(), stall.pid, stall.time, charged)
    return True


class SelfWatchdog:
    """systemd's watchdog for a process that has none: ``watch --once`` (a cron job), the
    agent run in a terminal, a container or a unit without ``WatchdogSec``, and ``edge-agent
    offload`` run by hand.

    The main thread calls ``alive`` between two pieces of its work (the agent: at every tick
    of its loop, between inputs, between the steps of its stop). If ``limit`` seconds pass
    without a call, it is stuck (a disk or share that stopped answering, a decoder that
    hangs, a lock a stuck thread holds), and this thread says what it was doing (``say``:
    the line, then ``then``: what happens now) and ends the process with ``code``, as
    systemd's watchdog would kill it. Only for work that is safe to stop at any point (the
    agent's journal, the offload's steps). Without it, ``--once`` waited for ever holding
    the outbox's lock, so neither the next cron run, nor the service, nor an offload could
    start; and a thread stuck in a read on a dead share ignores Ctrl-C, while the end of the
    process takes it down."""

    def __init__(self, limit: float, doing: Callable[[], str], then: str,
                 code: int = EX_TEMPFAIL, say: Callable[[str], None] = log.error,
                 end: Callable[[int], None] = os._exit) -> None:
        self.limit = limit
        self._doing = doing  # what the main thread began last, in words
        self._then = then
        self._code = code
        self._say = say
        self._end = end
        self._last = time.monotonic()
        self._stop = threading.Event()

    def alive(self) -> None:
        """The main thread made progress (cheap: one clock read)."""
        self._last = time.monotonic()

    def start(self) -> None:
        self.alive()
        threading.Thread(target=self._run, name="self-watchdog", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(5.0, self.limit / 4)):
            quiet = time.monotonic() - self._last
            if quiet <= self.limit or self._stop.is_set():
                continue
            self._say(f"no progress for {quiet:.0f}s while {self._doing()} (a disk or share "
                      f"that stopped answering, or a file that hangs its decoder): {self._then}")
            for handler in logging.getLogger().handlers:  # that line, before the end
                try:
                    handler.flush()
                except Exception:  # noqa: BLE001, S110 - a log that cannot flush: end anyway
                    pass
            self._end(self._code)
            return
