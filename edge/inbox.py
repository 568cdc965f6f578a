"""The inbox: which files are candidates, and when a candidate is completely written.

A file is taken only once it is *settled*: its size and modification time have not changed
for ``[watch] settle_seconds`` (files already old at start-up are settled at once), or it
was closed after writing (inotify's IN_CLOSE_WRITE, where the OS reports it) and then left
unchanged for ``[watch] settle_after_close``. Until then it is left alone.

Never taken: hidden files and names of in-progress downloads or copies (``.part``,
``.tmp``, ``.crdownload``, ``~`` ...), which the copying program renames when done (a
sub-folder so named is left whole, found by a scan or an event alike, and said once), and
anything that is not a regular file or a symbolic link (FIFOs, sockets, devices: opening a
FIFO would hang). Symbolic links are taken *as links* and quarantined without being
followed. Sub-folders are walked when ``[watch] recursive`` is on; links to folders never.

Memory stays bounded on a burst of thousands of files: at most ``[watch] max_pending``
candidates are tracked; the rest wait on disk for the next rescan.

What cannot be reached (a folder the agent may not read, a file nested so deep that its
path is longer than the system allows) stays where it is and is reported once, by inode
number (``find INBOX -inum N`` finds it; its name could carry a patient's name), and
``watch --once`` then exits 75 instead of pretending the inbox is done.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download",
                    ".filepart", ".swp", ".swx", ".lck", ".lock", "~", ".!sync", ".opdownload")
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "icon\r"}
PATH_MAX = 4096  # bytes, the trailing NUL included: Linux refuses longer paths (ENAMETOOLONG)
HELD_PREFIX = ".neuroedge-held-"  # an input hidden while copied across filesystems (edge.claim)


def is_ignored_name(name: str) -> bool:
    lower = name.lower()
    return name.startswith(".") or lower.endswith(IGNORED_SUFFIXES) or lower in IGNORED_NAMES


@dataclass
class Candidate:
    size: int
    mtime_ns: int
    changed_at: float  # monotonic time of the last change we know of
    closed_at: float | None = None
    is_link: bool = False
    seen_at: float = field(default_factory=time.monotonic)  # first seen by this run


class Inbox:
    def __init__(self, root: Path, recursive: bool, settle: float, settle_after_close: float,
                 max_pending: int) -> None:
        self.root = root
        self.recursive = recursive
        self.settle = settle
        self.settle_after_close = settle_after_close
        self.max_pending = max_pending
        self.pending: dict[str, Candidate] = {}
        self.overflowed = False
        self._skipped: dict[str, float] = {}  # paths that failed to claim: retry later
        self.unreachable: dict[int, str] = {}  # inode -> why its files cannot be taken
        self.not_taken: set[str] = set()  # --once: settled files whose claim was refused
        # The first scan (the backlog at start-up) counts a file's age from its mtime; after
        # it, a file is settled only once seen unchanged: a writer's clock behind ours (a
        # share) or ours jumping forward (NTP on a board without a real-time clock) would
        # otherwise make a file being written look old at first sight.
        self.backlog = True
        self.held: list[str] = []  # HELD_PREFIX files the backlog scan saw (edge.watch)
        self._left_folders: set[int] = set()  # inodes of folders named like copies in progress
        self.root_gone = False  # the inbox folder itself was missing at the last scan

    def contains(self, path: str) -> bool:
        """Is ``path`` inside the inbox (its folder resolved, the file itself not followed)?"""
        parent = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        root = str(self.root)
        return parent == root or parent.startswith(root + os.sep)

    def observe(self, path: str, closed: bool = False, now: float | None = None) -> None:
        """Note that ``path`` exists or changed (from a file event)."""
        if not self._in_ignored_folder(path):  # a scan skips such folders as it walks
            self._observe(path, closed, now)

    def _observe(self, path: str, closed: bool = False, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        name = os.path.basename(path)
        if is_ignored_name(name) or not self.contains(path):
            return
        if not self.recursive and os.path.dirname(os.path.abspath(path)) != str(self.root):
            return
        retry_at = self._skipped.get(path)
        if retry_at is not None and now < retry_at:
            return
        try:
            st = os.lstat(path)
        except OSError:
            self.pending.pop(path, None)
            return
        is_link = stat.S_ISLNK(st.st_mode)
        if not is_link and not stat.S_ISREG(st.st_mode):
            return
        current = self.pending.get(path)
        if current is None:
            if len(self.pending) >= self.max_pending:
                self.overflowed = True
                return
            age = max(0.0, time.time() - st.st_mtime) if self.backlog else 0.0
            self.pending[path] = Candidate(st.st_size, st.st_mtime_ns, now - age,
                                           now if closed else None, is_link)
            return
        if (st.st_size, st.st_mtime_ns) != (current.size, current.mtime_ns):
            current.size, current.mtime_ns = st.st_size, st.st_mtime_ns
            current.changed_at, current.closed_at = now, None
        if closed:
            current.closed_at = now

    def skip_for(self, path: str, seconds: float) -> None:
        """Leave ``path`` alone for a while (it could not be claimed: permissions, ...)."""
        self.pending.pop(path, None)
        self._skipped[path] = time.monotonic() + seconds
        if len(self._skipped) > 10 * self.max_pending:
            self._skipped.clear()

    def _in_ignored_folder(self, path: str) -> bool:
        """Is ``path`` inside a sub-folder named like a copy in progress, or hidden? Such a
        folder is left, with everything in it, whether a scan or a file event finds it."""
        return self._is_left_folder(os.path.dirname(os.path.abspath(path)))

    def _is_left_folder(self, folder: str) -> bool:
        """Is ``folder`` (or a folder above it, below the root) so named?"""
        rel = os.path.relpath(folder, str(self.root))
        if rel == "." or rel.startswith(".." + os.sep):
            return False
        parts = rel.split(os.sep)
        for depth, part in enumerate(parts, start=1):
            if is_ignored_name(part):
                self._left_folder(os.path.join(str(self.root), *parts[:depth]), part)
                return True
        return False

    def _left_folder(self, path: str, name: str) -> None:
        """Say once that a folder named like a copy in progress is left until renamed (a
        hidden one is left silently, like a hidden file)."""
        if name.startswith("."):
            return
        inode = _inode(path)
        if inode in self._left_folders:
            return
        self._left_folders.add(inode)
        log.warning("an inbox folder is named like a copy in progress (.part, .tmp, ~ ...): "
                    "it is left, with its files, until it is renamed; find it with: find %s "
                    "-inum %d", self.root, inode)

    def find_hint(self, path: str) -> str:
        """"; find it with: find INBOX -inum N" (the log never names a patient's file)."""
        inode = _inode(path)
        return f"; find it with: find {self.root} -inum {inode}" if inode else ""

    def take_ready(self, now: float | None = None) -> str | None:
        """A settled candidate (re-checked on disk), removed from the pending set; or None."""
        now = time.monotonic() if now is None else now
        for path, cand in sorted(self.pending.items(), key=lambda kv: kv[1].changed_at):
            if not self._due(cand, now):
                continue
            try:
                st = os.lstat(path)
            except OSError:
                del self.pending[path]
                continue
            if (st.st_size, st.st_mtime_ns) != (cand.size, cand.mtime_ns):
                cand.size, cand.mtime_ns = st.st_size, st.st_mtime_ns
                cand.changed_at, cand.closed_at = now, None
                continue
            del self.pending[path]
            return path
        return None

    def _due(self, cand: Candidate, now: float) -> bool:
        if cand.is_link:
            return True
        if now - cand.changed_at >= self.settle:
            return True
        return cand.closed_at is not None and now - cand.closed_at >= self.settle_after_close

    def unsettled_for(self, now: float | None = None) -> float:
        """How long the most recently seen pending file has been waiting to settle (0 when
        nothing is pending): once this passes a limit, every pending file has been changing
        for at least that long."""
        now = time.monotonic() if now is None else now
        return min((now - cand.seen_at for cand in self.pending.values()), default=0.0)

    def next_due(self) -> float | None:
        """Monotonic time at which the earliest pending candidate may be settled."""
        times = []
        for cand in self.pending.values():
            t = cand.changed_at + self.settle
            if cand.closed_at is not None:
                t = min(t, cand.closed_at + self.settle_after_close)
            times.append(t)
        return min(times) if times else None

    def scan(self, folder: Path | None = None) -> int:
        """Walk the inbox (or one sub-folder) and observe every candidate; return how many."""
        self.overflowed = False
        count = 0
        if folder is not None and self._is_left_folder(os.path.abspath(str(folder))):
            return 0  # a folder event inside a folder left until renamed
        for path in self._walk(folder or self.root):
            self._observe(path)
            count += 1
            if len(self.pending) >= self.max_pending:
                self.overflowed = True
                break
        return count

    def _walk(self, folder: Path) -> Iterator[str]:
        root_depth = self._depth(str(folder))
        stack = [(str(folder), _inode(str(folder)), root_depth)]
        while stack:
            current, inode, depth = stack.pop()
            try:
                entries = os.scandir(current)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    # gone since it was listed: nothing left in it to take (not "unreachable":
                    # that would make `watch` exit 75 saying files are still there)
                    if current == str(self.root):
                        self._root_missing(True)
                    continue
                self._cannot_reach(inode, depth, exc)
                continue
            if current == str(self.root):
                self._root_missing(False)
            with entries:
                subfolders = []
                for entry in entries:
                    if self.backlog and entry.name.startswith(HELD_PREFIX):
                        self.held.append(entry.path)
                    if is_ignored_name(entry.name):
                        if self.recursive and _is_folder(entry):
                            self._left_folder(entry.path, entry.name)
                        continue
                    try:
                        too_long = len(os.fsencode(entry.path)) >= PATH_MAX
                        if entry.is_dir(follow_symlinks=False):
                            if not self.recursive:
                                continue
                            if too_long:
                                self._cannot_reach(entry.inode(), depth + 1, _too_long())
                                continue
                            subfolders.append((entry.path, entry.inode(), depth + 1))
                        elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                            if too_long:
                                self._cannot_reach(entry.inode(), depth + 1, _too_long())
                                continue
                            yield entry.path
                    except OSError:
                        continue
            stack.extend(sorted(subfolders, reverse=True))

    def _root_missing(self, missing: bool) -> None:
        """Say once that the inbox folder has gone (removed, or its share or disk unmounted),
        and once that it is back: its files are taken again by the next scans."""
        if missing and not self.root_gone:
            log.warning("the inbox %s does not exist any more (removed, or its disk or share "
                        "unmounted); files put there are taken once it is back", self.root)
        elif not missing and self.root_gone:
            log.warning("the inbox %s is back; its files are taken again", self.root)
        self.root_gone = missing

    def _depth(self, path: str) -> int:
        rel = os.path.relpath(path, str(self.root))
        return 0 if rel == "." else rel.count(os.sep) + 1

    def _cannot_reach(self, inode: int, depth: int, exc: OSError) -> None:
        """Remember (and say once) that something in the inbox cannot be taken."""
        why = exc.strerror or exc.__class__.__name__
        if exc.errno == errno.ENAMETOOLONG:
            why = (f"its path is longer than the {PATH_MAX} bytes the system allows; move it "
                   "higher up in the inbox")
        elif exc.errno in (errno.EACCES, errno.EPERM):
            why = "the agent's user may not read it; fix its permissions"
        if inode in self.unreachable:
            return
        self.unreachable[inode] = why
        log.warning("an inbox entry %d folder(s) deep cannot be read: %s. Its files stay in "
                    "the inbox. Find it with: find %s -inum %d", depth, why, self.root, inode)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _inode(path: str) -> int:
    try:
        return os.lstat(path).st_ino
    except OSError:
        return 0


def _too_long() -> OSError:
    return OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
