"""Taken inputs that could not be finished, waiting for a retry, and when to stop taking more.

An input fails for a passing reason (a full disk, a reports folder that cannot be written, a
card answering EIO): it stays journaled in ``.state`` at its last durable step and is tried
again every ``[watch] retry_interval`` seconds on the main loop's thread, the committer
idle. Its retry writes the report found the first time (``edge.prepare.InFlight``), so a
round costs writes, not classifications.

Said once: each input's failure is logged once per cause, and a round is one line when what
still fails changes; a failure that persists would otherwise write 32 error lines a minute
into the journal for as long as it lasts.

Holding: at most ``MAX_UNFINISHED`` inputs are out of the inbox and unfinished at once
(``edge.watch`` counts them). When all of that room is taken by inputs waiting here, the
failure persists: the agent holds (new inputs wait in the inbox, untouched), says so once,
and once more when a retry finishes one and it takes new inputs again.
"""

from __future__ import annotations

import logging
import threading

from .outbox import Job, Outbox
from .worker import describe_error

log = logging.getLogger(__name__)

CLAIM_GROUP = 8  # settled files claimed together (one round of folder fsyncs for all)
# Taken and not finished, at most: a group being classified, the next one claimed ahead, and
# the committer's queue (8) and the group it is writing: what the pipeline holds at full
# speed, so a healthy agent never reaches it; with a persistent failure exactly this many
# leave the inbox (a smaller bound would either slow the pipeline or be overshot by what it
# held when the first failure came back).
MAX_UNFINISHED = 4 * CLAIM_GROUP
_SAID_AT_MOST = 10_000  # remembered causes, per input, before the memory is cleared


class Retries:
    """The jobs waiting for a retry. ``failed`` is called from any thread (the committer's
    too); the rest from the main loop."""

    def __init__(self, outbox: Outbox, retry_interval: float) -> None:
        self.outbox = outbox
        self.interval = retry_interval
        self.holding = False  # all the room is taken by jobs waiting here
        self._jobs: list[Job] = []
        self._said: dict[str, str] = {}  # job token -> why it could not be finished
        self._last_round: tuple[int, str] = (0, "")  # the last round: still failing, why
        self._last_failure = ""  # why the newest of them failed, for the front page
        self._lock = threading.Lock()

    def failed(self, job: Job, exc: Exception) -> None:
        """Log, once per input and cause, and keep the job for the next round."""
        why = describe_error(exc)
        with self._lock:
            said = self._said.get(job.token) == why
            if len(self._said) >= _SAID_AT_MOST:
                self._said.clear()
            self._said[job.token] = why
            self._jobs.append(job)
            self._last_failure = why
        log.log(logging.DEBUG if said else logging.ERROR,
                "input %s could not be finished (%s); it stays safely in %s and will be "
                "retried in %gs", (job.sha256 or job.token)[:12], why, self.outbox.state,
                self.interval)

    def waiting(self) -> tuple[int, str]:
        """How many jobs wait for a retry, and why the newest of them failed."""
        with self._lock:
            return len(self._jobs), self._last_failure

    def take_round(self) -> list[Job]:
        """Every waiting job, for a round; what the round does not try goes ``back``."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        return jobs

    def back(self, jobs: list[Job]) -> None:
        with self._lock:
            self._jobs.extend(jobs)

    def round_done(self, tried: int) -> None:
        """After a whole round: one line when what still fails changed (how many, or why),
        a debug line otherwise."""
        waiting, why = self.waiting()
        summary = (waiting, why if waiting else "")
        level = (logging.DEBUG if summary == self._last_round else
                 logging.WARNING if waiting else logging.INFO)
        self._last_round = summary
        if waiting:
            log.log(level, "retried %d input(s): %d still could not be finished (%s); tried "
                    "again every %gs", tried, waiting, why, self.interval)
        else:
            log.log(level, "retried %d input(s): all finished", tried)

    def pause_all(self) -> None:
        """At a clean stop: mark the waiting jobs paused, so the next start does not count
        them as crashes towards ``[limits] max_attempts``."""
        with self._lock:
            for job in self._jobs:
                try:  # the record as it is, not the job as its failed step left it in memory
                    record = self.outbox.reread(job)
                    if record is not None:
                        record.paused = True
                        self.outbox.save(record)
                except OSError:
                    pass  # not recorded: the next start counts one attempt, nothing worse

    def note_holding(self, full: bool) -> None:
        """Say once when holding starts (the room is all taken by jobs waiting here: a
        persistent failure) and once when a retry has made room again. Full with inputs
        still in the pipeline is back-pressure, over in a moment: not said."""
        waiting, why = self.waiting()
        if full and not self.holding and waiting >= MAX_UNFINISHED:
            self.holding = True
            log.warning("%d taken input(s) could not be finished (%s) and wait for a retry "
                        "every %gs; new inputs wait in the inbox, untouched, until a retry "
                        "finishes one. Check the disk holding the outbox and that its "
                        "folders can be written (%s); the lines above say which failed",
                        waiting, why, self.interval, self.outbox.root)
        elif not full and self.holding:
            self.holding = False
            log.info("a retry finished a waiting input: taking new inputs again (%d still "
                     "wait for a retry)", waiting)

    def page_lines(self) -> list[str]:
        """What the outbox's front page says under "Needs attention"."""
        lines = []
        waiting, why = self.waiting()
        if waiting:
            lines.append(f"{waiting} input(s) were taken but could not be finished yet "
                         f"({why}). They are kept safely in the outbox's .state folder and "
                         f"tried again every {self.interval:g} s; the log says which.")
        if self.holding:
            lines.append("New inputs are not being taken while those wait: new inputs wait in "
                         "the inbox, untouched, and are taken again once a retry finishes "
                         "one; tell the person who looks after this box.")
        return lines
