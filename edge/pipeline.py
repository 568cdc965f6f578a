"""The committer: a second thread that writes what the main loop has classified.

Why a thread: per input, the model's ``invoke`` is most of the work and it releases
Python's lock, while writing the report (its thumbnail, HTML and JSON), moving the input and
appending the index line are mostly fsyncs and compression, which release it too. Run side
by side on two cores, the main loop classifies input n+1 while the committer writes input n.

Why groups: when the committer falls behind (a backlog on slow storage: an SD card's fsync
takes milliseconds to tens of milliseconds), inputs wait in its queue, and it takes all of
them as one group: ``Worker.commit`` does each step for the group and fsyncs each folder
once. With no backlog a group is one input and nothing waits.

Who draws the pictures: the heat-map and the HTML page of a report are pure CPU work
(about 3 ms per input on a fast CPU). The committer draws them as it writes each report,
unless the main loop got there first: when the queue is full, the committer is the
bottleneck, and instead of waiting for a free place the main loop draws the pictures of
its input and of those waiting in the queue, newest first (each is drawn once, by one
thread). When the main loop is the slower thread (a slow model: a Raspberry Pi) the queue
never fills and it draws nothing. Only bytes in memory change hands: the committer still
writes every file, in the same order.

Nothing here weakens the journal: a job in the queue is in its ``claimed`` state on disk,
so a crash or a power cut replays it at the next start, like any other.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from .liveness import Progress
from .outbox import Job
from .worker import Work, Worker

log = logging.getLogger(__name__)

QUEUE_DEPTH = 8  # classified inputs waiting to be written (each holds a 150 kB thumbnail,
# or the heat-map PNG and page drawn from it: about 300 kB)
_STOP = None
# a group's commit (at most QUEUE_DEPTH inputs: a few fsyncs each) taking longer than this
# is stuck (a disk that stopped answering): the watchdog pings stop (``edge.liveness``)
COMMIT_BOUND = 300.0


class Committer:
    """Runs ``worker.commit`` on groups of queued ``Work``, on its own thread."""

    def __init__(self, worker: Worker, on_failure: Callable[[Job, Exception], None],
                 depth: int = QUEUE_DEPTH) -> None:
        self._worker = worker
        self._on_failure = on_failure
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self.progress = Progress("committer", COMMIT_BOUND)

    def start(self) -> None:
        self._thread.start()
        self.progress.running(self._thread)

    def submit(self, work: Work) -> None:
        """Queue a prepared job. While the queue is full, rather than wait, draw the
        pictures of this job and of queued ones the committer has not drawn yet; with none
        left, wait (back-pressure on the loop)."""
        while True:
            try:
                self._queue.put_nowait(work)
                return
            except queue.Full:
                pass
            if not self._draw_one(work):
                self._queue.put(work)
                return

    def _draw_one(self, work: Work) -> bool:
        """Draw the pictures of ``work`` or of one queued job, the newest first (the
        committer reaches it last); False if none is left to draw."""
        with self._queue.mutex:  # a snapshot: the committer may take them meanwhile
            waiting = [item for item in self._queue.queue if item is not _STOP]
        return any(self._worker.render(item) for item in [work, *reversed(waiting)])

    def unfinished(self) -> int:
        """Jobs submitted and not yet committed (or failed): queued or being written."""
        return self._queue.unfinished_tasks

    def wait_idle(self) -> None:
        """Return once everything submitted so far is committed (or has failed)."""
        self._queue.join()

    def close(self, timeout: float) -> bool:
        """Commit what is queued, then stop; False if it is still busy after ``timeout`` s
        (a hung disk: what it was writing stays journaled for the next start)."""
        if not self._thread.is_alive():
            return True
        deadline = time.monotonic() + timeout
        try:  # a full queue behind a stuck group must not hold the stop past ``timeout``
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            self.progress.running(None)
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self.progress.running(None)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            group, stop = self._next_group()
            if group:
                self.progress.begin()
                try:
                    self._commit(group)
                finally:
                    self.progress.end()
            for _ in range(len(group) + stop):
                self._queue.task_done()
            if stop:
                return

    def _next_group(self) -> tuple[list[Work], bool]:
        """Wait for one item, then take whatever else is already queued."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        group = [first]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return group, False
            if item is _STOP:
                return group, True
            group.append(item)

    def _commit(self, group: list[Work]) -> None:
        try:
            failures = self._worker.commit(group)
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the thread silently
            log.exception("committing %d input(s) failed unexpectedly; they stay journaled",
                          len(group))
            for work in group:  # an identical input must not wait on a report nobody writes
                self._worker.committing.release(work, failed=True)
            failures = [(work.job, exc) for work in group]
        for job, exc in failures:
            self._on_failure(job, exc)
