"""The daily index: ``<outbox>/index/YYYY-MM-DD.jsonl``, one line per input handled.

JSON Lines because a line is appended and fsynced atomically enough: a crash can only
leave a torn last line, which start-up cuts (the job that wrote it is still journaled and
appends it again). Each line carries the job's token, so a replayed job never adds a
second line. ``index/YYYY-MM-DD.html`` and ``index.html`` are rendered from these files.
The agent's two threads both use the index (the committer appends, the main loop renders
pages when idle), so every method that touches the files holds one lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable

from . import pages
from .durable import append_lines_durable, json_bytes, repair_torn_tail, write_bytes_atomic
from .report import now_iso

log = logging.getLogger(__name__)
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # a day's name: index/DAY.jsonl, archive/DAY/


class DailyIndex:
    def __init__(self, outbox: Path,
                 alerts: Callable[[], list[str]] | None = None) -> None:
        """``alerts``: what ``index.html`` must tell a person now (the agent passes the SR
        queue's state); called when the page is written and by ``alerts_changed``."""
        self.outbox = outbox
        self.folder = outbox / "index"
        self.alerts = alerts
        self._shown_alerts: list[str] | None = None  # None: not written by this process yet
        self._dirty: set[str] = set()
        self._lock = threading.RLock()
        # each day file's (inode, offset after the last whole line counted, and the counts
        # of lines, answers flagged for review, refused inputs): the front page's counts,
        # read on from there (``days``)
        self._counted: dict[str, tuple[int, int, tuple[int, int, int]]] = {}

    def path_for(self, day: str) -> Path:
        if not DAY.match(day):
            raise ValueError(f"not a day: {day!r}")
        return self.folder / f"{day}.jsonl"

    def repair(self) -> None:
        """Cut torn last lines left by a crash mid-append."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.jsonl")):
            if repair_torn_tail(path):
                log.warning("index %s: removed a partial last line left by a crash", path.name)

    def read(self, day: str) -> list[dict[str, Any]]:
        entries = []
        try:
            with open(str(self.path_for(day)), encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    try:
                        entries.append(json.loads(line))
                    except ValueError:
                        continue
        except FileNotFoundError:
            pass
        return entries

    def contains(self, day: str, token: str) -> bool:
        """Is there a whole, readable line for ``token``? (A torn or damaged line is not.)"""
        try:
            with open(str(self.path_for(day)), encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if token in line and line.endswith("\n"):
                        try:
                            if json.loads(line).get("token") == token:
                                return True
                        except (ValueError, AttributeError):
                            continue
        except FileNotFoundError:
            return False
        return False

    def append(self, day: str, entries: list[tuple[dict[str, Any], bool]]) -> None:
        """Append ``(entry, replay)`` pairs to the day's file with one fsync; an entry whose
        job is replayed after a crash only if its token is not there yet."""
        with self._lock:
            lines = [json_bytes(entry, compact=True).decode("utf-8") for entry, replay in entries
                     if not (replay and self.contains(day, entry["token"]))]
            if lines:
                append_lines_durable(self.path_for(day), lines)
                self._dirty.add(day)

    def days(self) -> list[tuple[str, int, int, int]]:
        """Every day with its counts of whole lines, of answers flagged for review and of
        refused inputs, for the front page."""
        found = []
        with self._lock:
            try:
                with os.scandir(str(self.folder)) as entries:
                    for entry in entries:
                        day = entry.name[:-len(".jsonl")]
                        if entry.name.endswith(".jsonl") and DAY.match(day):
                            found.append((day, *self._count(entry.path, entry.name)))
            except FileNotFoundError:
                return []
        return found

    def _count(self, path: str, name: str) -> tuple[int, int, int]:
        """Whole lines in a day's file, and how many of them flag their answer for review or
        refuse their input, read on from where the last count stopped. The files only grow,
        and the front page is rewritten every few seconds while inputs come: read whole each
        time, a year of history (hundreds of MB) was read for one new line. The flags are
        found as bytes, not parsed: a line is compact JSON, where ``"needs_review":true``
        can only be the key and its value (inside a string its quotes would be escaped)."""
        inode, offset, counts = self._counted.get(name, (0, 0, (0, 0, 0)))
        try:
            with open(path, "rb") as handle:
                was, inode = inode, os.fstat(handle.fileno()).st_ino
                if inode != was:
                    offset, counts = 0, (0, 0, 0)  # new, or replaced (fsck rewrote it)
                if offset:  # still the bytes counted? (cut back and appended since: count again)
                    handle.seek(offset - 1)
                    if handle.read(1) != b"\n":
                        offset, counts = 0, (0, 0, 0)
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            self._counted.pop(name, None)
            return 0, 0, 0
        end = data.rfind(b"\n") + 1  # a line still being appended is counted once whole
        whole = data[:end]
        lines, review, refused = counts
        counts = (lines + whole.count(b"\n"),
                  review + whole.count(b'"needs_review":true'),
                  refused + whole.count(b'"outcome":"quarantined"'))
        self._counted[name] = (inode, offset + end, counts)
        return counts

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def alerts_changed(self) -> bool:
        """Whether ``index.html`` says something other than what ``alerts`` says now."""
        if self.alerts is None:
            return False
        return self._current_alerts() != self._shown_alerts

    def _current_alerts(self) -> list[str]:
        if self.alerts is None:
            return []
        try:
            return list(self.alerts())
        except Exception as exc:  # noqa: BLE001 - the page is written without them
            log.warning("could not read what the front page should warn of (%s)", exc)
            return []

    def render(self, days: Any = None) -> None:
        """Rewrite the HTML pages of the changed days (or ``days``) and ``index.html``."""
        with self._lock:
            todo = set(days) if days is not None else set(self._dirty)
            # no link to study reports where none are made ([studies] enabled = false)
            studies = (self.outbox / "studies" / "index.html").is_file()
            for day in sorted(todo):
                write_bytes_atomic(self.folder / f"{day}.html",
                                       pages.day_page(day, self.read(day), studies=studies))
            alerts = self._current_alerts()
            write_bytes_atomic(self.outbox / "index.html",
                               pages.index_page(self.days(), alerts, as_of=now_iso(),
                                                studies=studies))
            self._shown_alerts = alerts
            self._dirty.difference_update(todo)
