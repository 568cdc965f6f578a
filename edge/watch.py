"""``edge-agent watch``: recover, process the backlog, then watch the inbox until stopped.

The watchdog observer's handler is thin: it only puts paths on a bounded queue (when the
queue is full it asks for a rescan instead, so a burst can never exhaust memory). The main
loop tracks candidates until they are settled, claims up to ``CLAIM_GROUP`` settled files at
once, classifies them one by one and hands each to the committer thread (``edge.pipeline``),
which writes reports, moves inputs and appends index lines in groups while the loop goes on.
Under a backlog the next group is claimed on a third thread while this one is classified, so
the claim's fsyncs are off the loop's path too. The loop also rescans the inbox periodically
(events get lost: network shares, inotify limits), retries jobs that failed for a passing
reason (a full disk) on its own thread once the committer is idle, pings systemd's watchdog
between files, and stops cleanly on SIGTERM/SIGINT once the files it has taken are finished.

At most ``MAX_UNFINISHED`` inputs are out of the inbox and not finished at any time (being
worked on, or waiting for a retry): when a failure persists, the agent holds instead of
emptying the inbox into ``.state`` while no report appears (``edge.retries``; ``--once``
stops there, exit 75).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import sdnotify
from .claim import UnfinishedClaim
from .classifier import Classifier
from .config import AgentConfig
from .diskspace import HISTORY_FILE, MB, DiskForecast, SpaceGuard
from .errors import ConfigError, FolderUnavailableError, StorageError
from .inbox import Inbox
from .index import DailyIndex
from .liveness import (
    Progress,
    SelfWatchdog,
    clear_stall,
    excused_by_stall,
    forget_stall,
    record_stall,
)
from .network.services import NetworkServices  # issue 15: DICOM receiver, studies, PACS
from .offload import last_offload_alerts, pending_offload_alerts
from .outbox import Job, Outbox
from .pipeline import Committer
from .retries import CLAIM_GROUP, MAX_UNFINISHED, Retries
from .worker import Worker, describe_error

log = logging.getLogger(__name__)
_EVENT_QUEUE_SIZE = 10000
_TICK = 0.25  # longest sleep: how quickly a stop request or new event is noticed
_RENDER_EVERY = 10.0  # seconds between rewrites of the HTML index pages while busy
_ONCE_NOTE_EVERY = 30.0  # --once: seconds between "still waiting" lines
_CLOSE_TIMEOUT = 60.0  # seconds to let the committer finish at exit (systemd allows 120)
# While starting (replaying the journal) or stopping (finishing what was taken), each input
# tells systemd to wait this much longer: its start and stop timeouts then bound one
# input's time, not a whole backlog's (EXTEND_TIMEOUT_USEC, systemd 236+; older ignore it).
_EXTEND_USEC = 120_000_000


def resolve_folders(config: AgentConfig) -> tuple[Path, Path]:
    """The inbox and outbox as real absolute paths, checked for sense. A disk error while
    looking (EIO) is a ``StorageError``: passing, so not a configuration error."""
    try:
        return _resolve_folders(config)
    except OSError as exc:
        raise StorageError.starting(exc) from None


def _resolve_folders(config: AgentConfig) -> tuple[Path, Path]:
    if not config.paths.inbox:
        raise ConfigError("no inbox given: pass INBOX to `edge-agent watch` or set [paths] inbox "
                          "in the config file")
    inbox = Path(os.path.realpath(os.path.expanduser(config.paths.inbox)))
    if not inbox.exists():
        raise FolderUnavailableError(
            f"the inbox {inbox} does not exist: create it, fix the path, or mount the share or "
            "disk it lives on")
    if not inbox.is_dir():
        raise ConfigError(f"the inbox {inbox} is not a folder; fix the path")
    if not os.access(str(inbox), os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"the inbox {inbox} must be readable and writable by this user "
                          "(inputs are moved out of it once handled)")
    outbox_raw = config.paths.outbox or str(inbox.parent / "outbox")
    outbox = Path(os.path.realpath(os.path.expanduser(outbox_raw)))
    if outbox == inbox or str(outbox).startswith(str(inbox) + os.sep) or str(
            inbox).startswith(str(outbox) + os.sep):
        raise ConfigError(f"the outbox {outbox} and the inbox {inbox} must be separate folders, "
                          "neither inside the other")
    return inbox, outbox


class _Handler:
    """watchdog event handler: enqueue, nothing else (it runs in the observer's thread)."""

    def __init__(self, events: queue.Queue, rescan: threading.Event) -> None:
        self.events = events
        self.rescan = rescan

    def dispatch(self, event: Any) -> None:
        kind = event.event_type
        if kind in ("deleted", "closed_no_write", "opened"):
            return
        path = getattr(event, "dest_path", "") if kind == "moved" else event.src_path
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not path:
            return
        try:
            self.events.put_nowait((path, kind == "closed", event.is_directory))
        except queue.Full:
            self.rescan.set()


class Agent:
    def __init__(self, config: AgentConfig, classifier: Classifier, once: bool = False) -> None:
        self.config = config
        self.once = once
        self.inbox_root, outbox_root = resolve_folders(config)
        self.outbox = Outbox(outbox_root)
        self.index = DailyIndex(outbox_root)
        w = config.watch
        self.inbox = Inbox(self.inbox_root, w.recursive, w.settle_seconds, w.settle_after_close,
                           w.max_pending)
        self.worker = Worker(config, self.inbox_root, self.outbox, classifier, self.index)
        self.stop_requested = threading.Event()
        self._events: queue.Queue = queue.Queue(maxsize=_EVENT_QUEUE_SIZE)
        self._rescan = threading.Event()
        self._observer: Any = None
        self.retries = Retries(self.outbox, w.retry_interval)
        self._refusals_said: dict[str, str] = {}  # inbox path -> why its claim was refused
        self.committer = Committer(self.worker, self.retries.failed)
        self._claimer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="claimer")
        self._claimed_ahead: Future | None = None  # the next group, being claimed
        self._ahead = 0  # how many inputs that group holds
        self._taking = True  # False while new inputs wait (disk space, or holding)
        self._ping_every = sdnotify.watchdog_interval()  # seconds; None: no systemd watchdog
        self._ready = False  # READY=1 sent: start-up (the journal's replay) is over
        self._last_ping = time.monotonic()
        self._stalled_said: set[str] = set()  # the stalled threads last logged
        # no systemd watchdog (--once, a terminal, a container): the agent ends itself when
        # its main loop is stuck (edge.liveness.SelfWatchdog), as systemd would end it
        self._doing = "starting"  # what the main loop began last, for that message
        self._self_watchdog = None if self._ping_every else SelfWatchdog(
            w.stall_limit, lambda: self._doing,
            "ending the agent (exit 75) to free the outbox; the inputs it had taken stay "
            "journaled and are finished at the next start ([watch] stall_limit)")
        self.network = NetworkServices(config, self.inbox_root, outbox_root,
                                       list(classifier.describe()["labels"]), self._received)
        forecast = (DiskForecast(self.outbox.state / HISTORY_FILE, w.min_free_mb * MB,
                                 w.warn_days) if w.warn_days > 0 else None)
        self.space = SpaceGuard(outbox_root, w.min_free_mb, forecast=forecast)
        self.index.alerts = self._page_alerts  # what needs a person, on the front page
        self._left_for_space = 0  # --once: inputs left in the inbox for want of disk space
        # an `edge-agent offload` cut off mid-removal: read once, at start (offload takes the
        # outbox's lock, so it cannot change while the agent runs)
        self._offload_alerts: list[str] = []
        self._left_while_failing = 0  # --once: inputs left in the inbox while holding
        self._left_unsettled = 0  # --once: files still being written when it gave up on them
        self._last_wait_note = time.monotonic()

    # --- lifecycle -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: Any) -> None:
            if self.stop_requested.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt
            log.info("%s received: finishing the files already taken, then stopping",
                     signal.Signals(signum).name)
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def run(self) -> dict[str, int]:
        """Run until stopped (or, with ``once``, until the backlog is done); return counts.
        A disk error before the agent is ready is a ``StorageError`` (exit 75: started
        again), not a traceback: nothing was taken, and the journal says what was begun."""
        if self._self_watchdog is not None:
            self._self_watchdog.start()
        try:
            return self._run()
        finally:
            if self._self_watchdog is not None:
                self._self_watchdog.stop()

    def _run(self) -> dict[str, int]:
        try:
            self._alive("opening the outbox")
            self.outbox.prepare()
            self.outbox.lock()
        except OSError as exc:
            raise StorageError.starting(exc) from None
        try:
            try:
                self._start()
            except OSError as exc:
                raise StorageError.starting(exc) from None
            sdnotify.notify("READY=1")
            self._ready = True
            sdnotify.notify(f"STATUS=watching {self.inbox_root}")
            log.info("watching %s (outbox %s, %s)", self.inbox_root, self.outbox.root,
                     "backlog only" if self.once else
                     ("polling" if self.config.watch.poll else "native events"))
            self._loop()
        finally:
            sdnotify.notify("STOPPING=1")
            self._alive("stopping: the DICOM receiver and the file events")
            self.network.stop_receiver()
            self._stop_observer()
            self._alive("stopping: the inbox claim in progress")
            self._claimer.shutdown(wait=True)
            self._alive("stopping: the reports still being written")
            if not self.committer.close(_CLOSE_TIMEOUT):
                log.warning("still writing after %gs; stopping anyway: the inputs being written "
                            "stay journaled and are finished at the next start", _CLOSE_TIMEOUT)
            else:
                self.retries.pause_all()
            self._alive("stopping: the study reports and SRs")
            self.network.finish(self.once, self._alive)
            self._alive("stopping: the index pages")
            self._render_index()
            self.outbox.unlock()
        counts = dict(self.worker.counts, unfinished=self.retries.waiting()[0],
                      unreachable=len(self.inbox.unreachable),
                      not_taken=sum(os.path.lexists(p) for p in self.inbox.not_taken),
                      waiting_for_space=self._left_for_space,
                      left_while_failing=self._left_while_failing,
                      still_written=self._left_unsettled)
        log.info("stopped: %d classified, %d duplicates, %d quarantined, %d unfinished",
                 counts["classified"], counts["duplicate"], counts["quarantined"],
                 counts["unfinished"])
        return counts

    def _recover(self) -> None:
        """Finish whatever a crash interrupted, before looking at anything new."""
        self._alive("recovering the journal")
        removed = self.outbox.remove_temp_files()
        if removed:
            log.warning("removed %d partial temporary file(s) left by an interrupted run",
                        removed)
        self.index.repair()
        jobs = self.outbox.pending_jobs()
        known = {job.token for job in jobs}
        for entry in sorted(os.listdir(str(self.outbox.claimed))):
            if entry not in known and not entry.startswith("."):
                # a claimed input with no record (the record was removed by hand): adopt it
                job = Job(token=entry, stage="claimed", source=entry,
                          file_name=f"recovered-{entry}", claimed_at="")
                self.outbox.save(job)
                jobs.append(job)
        if jobs:
            log.warning("resuming %d input(s) interrupted by a crash or power cut", len(jobs))
        # a job left waiting for a retry when the agent stopped cleanly did not crash it, nor
        # did the journal's jobs when a stalled side thread got the agent restarted
        stalled = excused_by_stall(self.outbox.state, sum(not job.paused for job in jobs),
                                   self.config.limits.max_attempts)
        for job in jobs:
            self._still_working()  # before READY=1: the start timeout, extended per input
            self._alive("finishing an input a crash or stop interrupted")
            self._run_job(job, crashed=not job.paused and not stalled)
        clear_stall(self.outbox.state)  # only now: a start dying in the replay finds it too

    def _received(self, path: str) -> None:
        """An instance the DICOM receiver made durable in the inbox (any thread): it is
        complete, like a file the OS reported closed after writing."""
        try:
            self._events.put_nowait((path, True, False))
        except queue.Full:
            self._rescan.set()

    def _start_observer(self) -> None:
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        if self.config.watch.poll:
            observer = PollingObserver(timeout=self.config.watch.poll_interval)
        else:
            observer = Observer()
        observer.schedule(_Handler(self._events, self._rescan), str(self.inbox_root),
                          recursive=self.config.watch.recursive)
        observer.daemon = True
        try:
            observer.start()
        except OSError as exc:  # e.g. inotify watch limit reached
            log.warning("native file events unavailable (%s); relying on rescans every %gs",
                        exc.strerror or exc, self.config.watch.rescan_interval)
            return
        self._observer = observer

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    # --- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        w = self.config.watch
        ping_every = self._ping_every
        last_scan = last_retry = time.monotonic()
        last_render = last_alerts = 0.0
        while not self.stop_requested.is_set():
            now = time.monotonic()
            self._ping_watchdog()
            self._drain_events()
            if self._rescan.is_set() or now - last_scan >= w.rescan_interval or (
                    self.inbox.overflowed and len(self.inbox.pending) < w.max_pending // 2):
                self._rescan.clear()
                self._alive("reading the inbox")
                self.inbox.scan()
                last_scan = now
            if self.retries.waiting()[0] and now - last_retry >= w.retry_interval:
                last_retry = now
                self._alive("waiting for the reports being written, before a retry")
                self.committer.wait_idle()  # retries run here, alone
                retry = self.retries.take_round()
                for i, job in enumerate(retry):
                    if self.stop_requested.is_set():  # the rest stay journaled, paused
                        self.retries.back(retry[i:])
                        break
                    self._still_working()
                    self._alive("retrying an input")
                    self._retry(job)
                else:
                    self.retries.round_done(len(retry))
            paths = self._take_ready()
            if paths or self._claimed_ahead is not None:
                self._process(paths)
                continue
            # the front page's alerts (disk, SRs, unfinished inputs) are looked at every
            # _RENDER_EVERY seconds, not at every tick: asking reads the SR queue's folder
            look = now - last_alerts >= _RENDER_EVERY
            if look:
                last_alerts = now
            if now - last_render >= _RENDER_EVERY and (
                    self.index.dirty or (look and self.index.alerts_changed())):
                self._render_index()
                last_render = now
            if self.once and self.space.low and (self.inbox.pending or self.inbox.overflowed):
                self._left_for_space = len(self.inbox.pending)
                log.error("stopping with %d input(s) left in the inbox, untouched: %s",
                          self._left_for_space, self.space.describe())
                break
            if self.once and self.retries.holding and (
                    self.inbox.pending or self.inbox.overflowed):
                self._left_while_failing = len(self.inbox.pending)
                waiting, why = self.retries.waiting()
                log.error("stopping with %d input(s) left in the inbox, untouched, while %d "
                          "taken input(s) wait for a retry (%s)", self._left_while_failing,
                          waiting, why)
                break
            if self.once and self._taking and self.inbox.pending and \
                    self._gave_up_waiting(now):
                break
            if self.once and not self.inbox.pending and not self.inbox.overflowed:
                self._alive("reading the inbox")
                self.inbox.scan()  # anything that arrived meanwhile belongs to the backlog
                if not self.inbox.pending:
                    break
                continue
            # while new inputs wait (space, holding), settled ones are not due: a tick, not a spin
            due = self.inbox.next_due() if self._taking else None
            timeout = _TICK if due is None else min(_TICK, max(0.01, due - time.monotonic()))
            if ping_every:
                timeout = min(timeout, ping_every)
            try:
                item = self._events.get(timeout=timeout)
            except queue.Empty:
                continue
            self._observe_event(item)
        if self._claimed_ahead is not None:  # stopped with a group claimed: finish it too
            self._prepare(self._claimed(self._claimed_ahead))
            self._claimed_ahead = None

    def _gave_up_waiting(self, now: float) -> bool:
        """--once and only files that keep changing are left: say so every half minute, and
        stop once each has been changing for ``[watch] once_settle_limit`` seconds (a copy
        that hangs, a file something keeps appending to). They stay in the inbox, untouched;
        without this ``--once`` (a cron job) would wait for them for ever without a word."""
        waited, limit = self.inbox.unsettled_for(now), self.config.watch.once_settle_limit
        if waited >= limit:
            for path in sorted(self.inbox.pending):
                log.error("still being written after %.0fs: left in the inbox, untouched%s",
                          limit, self.inbox.find_hint(path))
            self._left_unsettled = len(self.inbox.pending)
            return True
        if now - self._last_wait_note >= _ONCE_NOTE_EVERY and waited >= _ONCE_NOTE_EVERY:
            self._last_wait_note = now
            log.info("--once: waiting for %d file(s) still being written (given up after %.0fs "
                     "of changes)", len(self.inbox.pending), limit)
        return False

    def _drain_events(self) -> None:
        for _ in range(1000):
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return
            self._observe_event(item)

    def _observe_event(self, item: tuple[str, bool, bool]) -> None:
        path, closed, is_dir = item
        if is_dir:
            if os.path.isdir(path) and not os.path.islink(path) and self.inbox.contains(path):
                self.inbox.scan(Path(path))  # files copied into a new folder before its watch
            return
        self.inbox.observe(path, closed=closed)

    def _take_ready(self, claimed: int = 0) -> list[str]:
        """Settled inputs to claim next, as many as there is room for; ``claimed``: inputs
        just claimed and not yet handed on (not counted anywhere else yet)."""
        paths: list[str] = []
        self._taking = False
        room = MAX_UNFINISHED - self._unfinished() - claimed
        self.retries.note_holding(room <= 0)  # first: the page says so only while it holds
        if not self.space.room():
            return paths  # they wait in the inbox until the outbox's disk has room
        if room <= 0:
            return paths  # they wait in the inbox until a retry finishes a taken input
        self._taking = True
        while len(paths) < min(CLAIM_GROUP, room):
            path = self.inbox.take_ready()
            if path is None:
                break
            paths.append(path)
        return paths

    def _unfinished(self) -> int:
        """Inputs out of the inbox and not finished: waiting for a retry, claimed ahead, or
        queued for (or being written by) the committer."""
        ahead = self._ahead if self._claimed_ahead is not None else 0
        return self.retries.waiting()[0] + ahead + self.committer.unfinished()

    def _process(self, paths: list[str]) -> None:
        """Classify a claimed group and queue each job for the committer, while the next
        group (``paths``) is claimed on the claimer thread."""
        if self._claimed_ahead is not None:
            jobs = self._claimed(self._claimed_ahead)
            self._claimed_ahead = None
        else:  # on the claimer thread too, and waited for: claims never run side by side
            jobs = self._claimed(self._claimer.submit(self.worker.claim, paths))
            paths = self._take_ready(claimed=len(jobs))
        if paths:
            self._claimed_ahead = self._claimer.submit(self.worker.claim, paths)
            self._ahead = len(paths)
        self._prepare(jobs)

    def _claimed(self, claiming: Future) -> list[Job]:
        self._alive("taking inputs out of the inbox")
        jobs, refused = claiming.result()
        for path, exc in refused:
            if isinstance(exc, UnfinishedClaim):  # journaled: retried like any unfinished job
                self.retries.failed(exc.job, exc)
                continue
            where, why = self.inbox.find_hint(path), describe_error(exc)
            # said once per file and cause: a folder that stays read-only is retried every
            # retry_interval, and would otherwise write the same line 1,440 times a day
            level = logging.DEBUG if self._refusals_said.get(path) == why else logging.WARNING
            if len(self._refusals_said) >= 10_000:
                self._refusals_said.clear()
            self._refusals_said[path] = why
            if self.once:  # counted at the end if it is still there: exit 75, not 0
                self.inbox.not_taken.add(path)
                log.log(level, "cannot take an inbox file (%s); it stays in the inbox%s", why,
                        where)
            else:
                log.log(level, "cannot take an inbox file (%s); it is tried again every %gs%s",
                        why, self.config.watch.retry_interval, where)
            self.inbox.skip_for(path, self.config.watch.retry_interval)
        return jobs

    def _alive(self, doing: str | None = None) -> None:
        """The main loop made progress (``doing``: what it begins now, in words)."""
        if doing is not None:
            self._doing = doing
        if self._self_watchdog is not None:
            self._self_watchdog.alive()

    def _ping_watchdog(self) -> None:
        """WATCHDOG=1 to systemd when due: from this thread, between files, so a hung
        decoder or a hung disk write (the committer's queue full) stops the pings; and only
        while the committer, the study tracker and the SR sender make progress, so one of
        them stuck for ever does too (``edge.liveness``): systemd then restarts the agent,
        instead of an agent that looks alive and writes no report or sends no SR. Such a
        stall is recorded for the next start, which then counts no crash against the inputs
        taken; a stall of this thread (a hung decoder) cannot be, so its input is counted."""
        self._alive()
        now = time.monotonic()
        every = self._ping_every or _RENDER_EVERY  # without a watchdog: still said
        if now - self._last_ping < every:
            return
        self._last_ping = now
        stalled = {part.name: why for part in self._progress()
                   for why in [part.stalled(now)] if why}
        if stalled:
            if set(stalled) != self._stalled_said:  # said once per stall, not every ping
                log.error("%s: %s", "; ".join(stalled.values()),
                          "no more WATCHDOG=1, so systemd restarts the agent (journaled inputs "
                          "are finished at the next start)" if self._ping_every else
                          "the agent must be restarted (`systemctl restart edge-agent`)")
                # for the next start: the inputs taken did not stop the agent (edge.liveness)
                record_stall(self.outbox.state, stalled)
            self._stalled_said = set(stalled)
            return
        if self._stalled_said:  # the stall cleared: a crash from now on counts again
            forget_stall(self.outbox.state)
        self._stalled_said = set()
        if self._ping_every:
            sdnotify.notify("WATCHDOG=1")

    def _progress(self) -> list[Progress]:
        return [self.committer.progress, *self.network.progress()]

    def _still_working(self) -> None:
        """Between two inputs: WATCHDOG=1 when due and, while starting or stopping,
        EXTEND_TIMEOUT_USEC. A backlog replayed at start-up, a long retry round or the group
        finished on SIGTERM otherwise ran past WatchdogSec or TimeoutStartSec/StopSec on a
        slow board, and systemd killed the agent in the middle, again at every start."""
        self._ping_watchdog()
        if not self._ready or self.stop_requested.is_set():
            sdnotify.notify(f"EXTEND_TIMEOUT_USEC={_EXTEND_USEC}")

    def _prepare(self, jobs: list[Job]) -> None:
        for job in jobs:  # all of them, even when asked to stop: they are claimed already
            self._still_working()
            self._alive("classifying an input")
            try:
                work = self.worker.prepare(job)
            except Exception as exc:  # noqa: BLE001 - keep the input journaled, retry later
                self.retries.failed(job, exc)
                continue
            self._alive("handing a report to be written (the outbox's disk)")
            self.committer.submit(work)

    def _retry(self, job: Job) -> None:
        """Run a job that failed again, from its journal record: the job in memory may be
        ahead of it (a stage or destination its failed step did not make durable), and a
        step taken from there would leave a record that no longer matches the disk."""
        try:
            fresh = self.outbox.reread(job)
        except OSError as exc:
            self.retries.failed(job, exc)
            return
        if fresh is None:
            log.warning("the journal record of input %s is gone (removed by hand?); it is no "
                        "longer retried", (job.sha256 or job.token)[:12])
            return
        self._run_job(fresh)

    def _run_job(self, job: Job, crashed: bool = False) -> None:
        """Recovery and retries: one job start to finish on this thread (committer idle)."""
        try:
            self.worker.run(job, replay=True, crashed=crashed)
        except Exception as exc:  # noqa: BLE001 - keep the input journaled and retry later
            self.retries.failed(job, exc)

    def _page_alerts(self) -> list[str]:
        return (self.space.page_lines() + self.retries.page_lines() + self._offload_alerts
                + self.network.page_alerts())

    def _start(self) -> None:
        """What comes before watching: the journal's replay, the backlog, the network."""
        self._offload_alerts = (pending_offload_alerts(self.outbox.root)
                                or last_offload_alerts(self.outbox.root))
        for line in self._offload_alerts:
            log.warning("%s", line)
        self._recover()
        self.committer.start()
        if not self.once:
            self._start_observer()
        self._alive("reading the inbox's backlog")
        self.inbox.scan()  # the backlog: files already old are settled at once
        self.inbox.backlog = False
        if self.inbox.held:
            journaled = {job.token for job in self.outbox.pending_jobs()}
            self.worker.claiming.give_back_orphans(self.inbox.held, journaled)
            self.inbox.held.clear()
            self.inbox.scan()
        self._alive("starting the DICOM network")
        self.network.start(self.once)

    def _render_index(self) -> None:
        try:
            self.index.render()
        except OSError as exc:
            log.warning("could not update the HTML index pages (%s)", exc.strerror or exc)

