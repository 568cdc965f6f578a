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
"""

from __future__ import annotations

import threading
import time


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
