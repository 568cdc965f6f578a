"""Free space on the outbox's disk: new inputs are taken only while there is enough.

Every input the agent takes costs outbox space (its archived copy, its report, page and
heat-map, journal records). On a full disk each of those writes fails and is retried, so
nothing is lost, but every input then fails over and over and the log fills with the same
error. So the agent looks first: below ``[watch] min_free_mb`` it takes no new input (they
wait in the inbox, untouched), says so once in the log and on the outbox's front page, and
takes them again once space is freed. Inputs already taken are finished. The DICOM receiver
has its own floor for the inbox (``[network] min_free_mb``).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

MB = 1_000_000  # as ``[network] min_free_mb`` counts them


def free_bytes(path: Path) -> int | None:
    """Bytes free for this user on the filesystem holding ``path`` (None: cannot tell)."""
    try:
        return shutil.disk_usage(str(path)).free
    except OSError:
        return None


class SpaceGuard:
    """Whether the agent may take new inputs; measured at most every ``every`` seconds."""

    def __init__(self, outbox: Path, min_free_mb: float, every: float = 5.0,
                 measure: Callable[[Path], int | None] = free_bytes) -> None:
        self.outbox = outbox
        self.min_free = min_free_mb * MB
        self.every = every
        self._measure = measure
        self._checked = -float("inf")
        self.free: int | None = None
        self.low = False

    def room(self, now: float | None = None) -> bool:
        """True while the outbox's disk has at least ``min_free_mb`` free (or the floor is 0,
        or the free space cannot be read: then the writes themselves say what is wrong)."""
        if self.min_free <= 0:
            return True
        now = time.monotonic() if now is None else now
        if now - self._checked < self.every:
            return not self.low
        self._checked = now
        self.free = self._measure(self.outbox)
        low = self.free is not None and self.free < self.min_free
        if low and not self.low:
            log.warning("%s; new inputs wait in the inbox, untouched, until space is freed "
                        "(move old days of %s elsewhere, or lower [watch] min_free_mb)",
                        self.describe(), self.outbox / "archive")
        elif self.low and not low:
            log.info("the outbox's disk has %s MB free again: taking new inputs",
                     "?" if self.free is None else self.free // MB)
        self.low = low
        return not low

    def describe(self) -> str:
        free = "?" if self.free is None else f"{self.free // MB}"
        return (f"the disk holding the outbox {self.outbox} has only {free} MB free, below "
                f"[watch] min_free_mb = {self.min_free / MB:g}")

    def page_lines(self) -> list[str]:
        """What the outbox's front page says while space is low."""
        if not self.low:
            return []
        return [f"New inputs are not being taken: {self.describe()}. They wait in the inbox, "
                "untouched, and are taken once space is freed; tell the person who looks "
                "after this box."]
