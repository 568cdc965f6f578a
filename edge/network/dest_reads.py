"""Reads at an offload's DEST, bounded: a share or disk there that stops answering costs a
study a retry, never the study tracker.

``edge-agent offload --to DEST`` moves whole days of reports and instances off the box, to a
USB disk or a network share. The study tracker reads there in two cases: a slice marked as
moved by an older agent (its report is read at DEST), and the SR of a study whose archived
instances all went with their day (its patient and study attributes are read from the copy
at DEST). A read on a share whose server went away (an NFS hard mount, a CIFS share) or on a
disk half gone waits in the kernel, for ever. In the tracker's thread that stopped every
study and SR; the watchdog then restarted the agent (``edge.liveness``), whose tracker stuck
again at the same study: a restart every few minutes, for as long as the share stayed dead.

Here each such read runs in a thread of its own and is waited for ``limit`` seconds. One
not done by then raises ``DestNotAnswering``, an ``OSError`` (ETIMEDOUT): to the tracker a
disk error like any other, so the study stays pending and is judged again later (30 s,
doubling to 15 min), and the other studies go on. The read left waiting is not started
again: while it waits, every read at the same DEST raises at once, so a dead share holds
one thread, not one more at each retry. Once it answers (the thread ends), the next retry
reads again.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

READ_LIMIT = 20.0  # seconds: a USB disk spinning up answers well within this


class DestNotAnswering(OSError):
    """A read at DEST that did not end within the limit (or one before it still waits)."""

    def __init__(self, dest: str, path: Path, limit: float, still: bool) -> None:
        why = (f"{dest} has not answered an earlier read yet" if still else
               f"{dest} did not answer within {limit:g} s")
        super().__init__(errno.ETIMEDOUT, f"{why}: a share or disk that stopped answering",
                         str(path))
        self.dest = dest


class DestReads:
    """Bounded reads at offload destinations; one waiting read per destination at most."""

    def __init__(self, limit: float = READ_LIMIT) -> None:
        self.limit = limit
        self._waiting: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def read(self, dest: str, path: Path, call: Callable[[], T]) -> T:
        """``call()`` (which reads ``path``, under ``dest``), or ``DestNotAnswering``.
        Whatever ``call`` raises is raised here."""
        with self._lock:
            earlier = self._waiting.get(dest)
            if earlier is not None and earlier.is_alive():
                raise DestNotAnswering(dest, path, self.limit, still=True)
            self._waiting.pop(dest, None)
        done: dict[str, Any] = {}

        def run() -> None:
            try:
                done["value"] = call()
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller
                done["error"] = exc

        thread = threading.Thread(target=run, name=f"read at {dest}", daemon=True)
        thread.start()
        thread.join(self.limit)
        if thread.is_alive():
            with self._lock:
                self._waiting[dest] = thread
            raise DestNotAnswering(dest, path, self.limit, still=False)
        if "error" in done:
            raise done["error"]
        return done["value"]

    def waiting(self) -> list[str]:
        """The destinations with a read still waiting (for a test, a status line)."""
        with self._lock:
            return sorted(d for d, t in self._waiting.items() if t.is_alive())
