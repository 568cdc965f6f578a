"""A power cut's lost page cache, modelled inside the agent's process (the power-cut sweep,
``test_agent_power_cut_sweep.py``), as ALICE, CrashMonkey and LazyFS do it.

A ``kill -9`` keeps everything the process wrote: the kernel still holds it. A power cut
keeps only what an ``fsync`` made durable. ``Durability`` records, for the calls of the
agent's process under the case's folders (``crash_at_site.py`` passes them through
``through``), what an ``fsync`` made durable:

- a file's data: its bytes when an ``fsync`` of it returned (read back from the disk then);
- a folder's entries (created, renamed, linked, unlinked, made, removed): its listing when
  an ``fsync`` of the folder returned.

Everything under the folders when the agent starts counts as durable (the test fsyncs the
inputs it drops and their folder first: the clinic's files are not the agent's to lose).
A file is an inode: one created during the run gets a new identity even where the kernel
reuses a freed inode's number (checked before each call that can create one).

``cut`` rolls the disk back to what a file system could be left with, by one of
``MODELS``, while every other thread's next call under the folders waits for ever:

- ``strict`` (POSIX, nothing more): every change not made durable is lost. Each folder
  holds the entries of its last ``fsync`` (a folder never fsynced in its parent is gone,
  with all it holds), each file the bytes of its last ``fsync`` (a file never fsynced is
  empty), a rename made durable in its new folder and not in its old one leaves the file
  under both names (per folder, as the standard allows; no real file system does that).
- ``ordered`` (ext4's ``data=ordered`` without its rename heuristic, XFS): the folders'
  entries survive as they are (metadata is journaled in order), file data not fsynced is
  lost: a file renamed or linked into place without an ``fsync`` comes back empty, one
  appended to comes back with the bytes of its last ``fsync``.

Not modelled: a write torn inside a sector or reordered within a file (a file is one of its
fsynced versions or empty); a truncation that survives without the data written after it
(``ordered`` loses both); the timing of a journal's commits (``strict`` loses everything
not fsynced, ``ordered`` keeps every folder change: real file systems lie between); storage
that lies about ``fsync`` (cheap SD cards); metadata other than names and bytes (modes and
times are not restored); the inbox's writers (nothing is written into the inbox during
the run).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODELS = ("strict", "ordered")

# The real calls, taken before the sweep's ``Disk`` wraps them: the model's own reads and
# the roll-back are no sites, and no other thread waits on them.
_os = {name: getattr(os, name) for name in (
    "open", "close", "read", "write", "lstat", "fstat", "listdir", "readlink", "link", "unlink",
    "rmdir", "mkdir", "symlink", "ftruncate", "fsync", "scandir")}
# Calls that can make a new file or folder under the name they are given (``open`` in a
# writing mode, ``os.open`` with ``O_CREAT``): whether the name was free is asked first.
_CREATING = ("open", "os.open", "mkdir", "symlink")


def _exists(path: str) -> bool:
    try:
        _os["lstat"](path)
    except OSError:
        return False
    return True


def _read(path: str, follow: bool = False) -> bytes:
    fd = _os["open"](path, os.O_RDONLY | (0 if follow else os.O_NOFOLLOW))
    try:
        chunks = []
        while True:
            chunk = _os["read"](fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        _os["close"](fd)


def _write(path: str, data: bytes, create: bool) -> None:
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = _os["open"](path, flags, 0o644)
    try:
        _os["ftruncate"](fd, 0)
        view = memoryview(data)
        while view:
            view = view[_os["write"](fd, view):]
        _os["fsync"](fd)
    finally:
        _os["close"](fd)


class Durability:
    """What ``fsync`` made durable under ``roots``, and the roll-back a power cut makes."""

    def __init__(self, roots: list[str], model: str) -> None:
        assert model in MODELS, model
        self.roots = [os.path.realpath(root) for root in roots]
        self.model = model
        self._ids: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> identity
        self._new = itertools.count(1)
        self.data: dict[int, bytes] = {}  # identity -> bytes of its last fsync
        self.folders: dict[int, dict[str, Any]] = {}  # identity -> entries of its last fsync
        self._lock = threading.RLock()
        self._cutting: int | None = None  # the thread that cuts; the others wait
        for root in self.roots:
            self._durable_tree(root)

    # --- recording --------------------------------------------------------------------

    def _identity(self, st: os.stat_result, fresh: bool = False) -> int:
        key = (st.st_dev, st.st_ino)
        if fresh or key not in self._ids:
            self._ids[key] = next(self._new)
        return self._ids[key]

    def _entries(self, folder: str) -> dict[str, Any]:
        entries = {}
        for name in _os["listdir"](folder):
            path = os.path.join(folder, name)
            try:
                st = _os["lstat"](path)
            except FileNotFoundError:
                continue
            kind = ("dir" if stat.S_ISDIR(st.st_mode) else
                    "link" if stat.S_ISLNK(st.st_mode) else "file")
            entries[name] = (kind, self._identity(st),
                             _os["readlink"](path) if kind == "link" else None)
        return entries

    def _durable_tree(self, folder: str) -> None:
        """Everything under ``folder`` as it is now, durable (the start)."""
        self.folders[self._identity(_os["lstat"](folder))] = entries = self._entries(folder)
        for name, (kind, identity, _) in entries.items():
            path = os.path.join(folder, name)
            if kind == "dir":
                self._durable_tree(path)
            elif kind == "file":
                self.data[identity] = _read(path)

    def through(self, call: str, real: Callable[..., Any], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        """``real(*args, **kwargs)``, recorded: an ``fsync`` makes durable, a new file
        gets a new identity. While a cut is made, every other thread waits here."""
        if self._cutting is not None and self._cutting != threading.get_ident():
            threading.Event().wait()  # the power is going: this call never comes
        with self._lock:
            name = args[1] if call == "symlink" else args[0] if args else None
            name = None if isinstance(name, int) else name
            created = (name is not None and call in _CREATING and _creates(call, args, kwargs)
                       and not _exists(os.fspath(name)))
            result = real(*args, **kwargs)
            if created:
                self._identity(_os["lstat"](os.fspath(name)), fresh=True)
            if call == "fsync":
                self._synced(args[0])
            return result

    def _synced(self, fd: int) -> None:
        st = _os["fstat"](fd)
        path = _os["readlink"](f"/proc/self/fd/{fd}")
        if stat.S_ISDIR(st.st_mode):
            self.folders[self._identity(st)] = self._entries(path)
        elif stat.S_ISREG(st.st_mode):
            self.data[self._identity(st)] = _read(f"/proc/self/fd/{fd}", follow=True)

    # --- the cut ----------------------------------------------------------------------

    def cut(self) -> None:
        """Roll the disk back as the model says; the other threads' calls wait for ever
        (the caller kills the process next)."""
        self._cutting = threading.get_ident()
        self._lock.acquire()  # a call in progress in another thread is recorded first;
        for root in self.roots:  # kept: a thread that waits for it never gets it
            if self.model == "strict":
                self._restore(root)
            else:
                self._lose_data(root)

    def _lose_data(self, folder: str) -> None:
        """``ordered``: the names as they are, each file's bytes as its last fsync left them."""
        for entry in _os["scandir"](folder):
            st = _os["lstat"](entry.path)
            if stat.S_ISDIR(st.st_mode):
                self._lose_data(entry.path)
            elif stat.S_ISREG(st.st_mode):
                durable = self.data.get(self._ids.get((st.st_dev, st.st_ino), 0), b"")
                if _read(entry.path) != durable:
                    _write(entry.path, durable, create=False)

    def _restore(self, root: str) -> None:
        """``strict``: each folder's entries as its last fsync saw them, each file's bytes
        as its last fsync left them. The files keep their inodes (hard links stay links:
        the agent compares them), through a stash beside ``root``."""
        stash = f"{root}.power-cut-stash"
        _os["mkdir"](stash)
        stashed: dict[int, str] = {}
        self._empty(root, stash, stashed)
        made: dict[int, str] = {}
        self._fill(root, self._identity(_os["lstat"](root)), stashed, made)
        for path in stashed.values():
            _os["unlink"](path)
        _os["rmdir"](stash)

    def _empty(self, folder: str, stash: str, stashed: dict[int, str]) -> None:
        """Move every file under ``folder`` to ``stash`` (once per inode), remove the rest."""
        for name in _os["listdir"](folder):
            path = os.path.join(folder, name)
            st = _os["lstat"](path)
            if stat.S_ISDIR(st.st_mode):
                self._empty(path, stash, stashed)
                _os["rmdir"](path)
                continue
            identity = self._ids.get((st.st_dev, st.st_ino))
            if identity is not None and identity not in stashed:
                stashed[identity] = os.path.join(stash, str(identity))
                _os["link"](path, stashed[identity], follow_symlinks=False)
            _os["unlink"](path)

    def _fill(self, folder: str, identity: int, stashed: dict[int, str],
              made: dict[int, str]) -> None:
        for name, (kind, child, target) in self.folders.get(identity, {}).items():
            path = os.path.join(folder, name)
            if kind == "dir":
                _os["mkdir"](path)
                self._fill(path, child, stashed, made)
            elif kind == "link":
                _os["symlink"](target, path)
            elif child in made:  # a second name of the same file
                _os["link"](made[child], path)
            else:
                durable = self.data.get(child, b"")
                if child in stashed:
                    _os["link"](stashed[child], path)
                    if _read(path) != durable:
                        _write(path, durable, create=False)
                else:  # its last name went during the run: made again, from its bytes
                    _write(path, durable, create=True)
                made[child] = path


def _creates(call: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the call may create what it names."""
    if call == "open":
        mode = kwargs.get("mode", args[1] if len(args) > 1 else "r")
        return isinstance(mode, str) and bool(set(mode) & set("wxa"))
    if call == "os.open":
        flags = kwargs.get("flags", args[1] if len(args) > 1 else 0)
        return bool(flags & os.O_CREAT)
    return True


def durably(folders: list[Path]) -> None:
    """fsync every file and folder under ``folders`` and the folders themselves in their
    parents: what the clinic dropped in is on the disk before the agent starts."""
    for top in folders:
        for here, _, files in os.walk(str(top)):
            for name in files:
                if os.path.islink(os.path.join(here, name)):
                    continue
                fd = os.open(os.path.join(here, name), os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _fsync_folder(here)
        _fsync_folder(str(top.parent))


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # tmpfs answers, some file systems refuse: nothing to keep then
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)
