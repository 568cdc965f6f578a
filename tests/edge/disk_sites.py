"""The disk sweeps' machinery: every OS call the ``edge`` package makes under a test's
folders, identified by its ``Site`` and counted, failing where a ``Plan`` says.

A module of its own (no pytest, no test) so that a subprocess can use it too: the crash
sweep (``test_agent_crash_sweep.py``) installs a ``Disk`` inside the real agent's process
(``crash_at_site.py``), whose failing call kills the process instead of raising.
"""

from __future__ import annotations

import builtins
import collections
import errno
import io
import os
import pathlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import edge

if TYPE_CHECKING:
    import pytest

EDGE_DIR = str(Path(edge.__file__).resolve().parent) + os.sep

# The OS calls the agent's disk work goes through, by module: ``open`` covers reads and
# ``os.fdopen`` (which calls ``io.open``); the data written through a file object reaches
# the disk at its ``fsync``, where a write error (EIO, ENOSPC) is reported.
OS_CALLS = ("open", "os.open", "write", "fsync", "ftruncate", "rename", "replace", "link",
            "unlink", "mkdir", "rmdir", "listdir", "scandir", "lstat", "stat", "symlink")


@dataclass(frozen=True)
class Site:
    """Where an OS call comes from: the call itself, the innermost ``edge`` line, and the
    nearest line outside ``edge/durable.py`` (which step asked for it)."""

    call: str
    line: str
    asked_by: str
    function: str  # the innermost ``edge`` function, as ``Class.method``

    def __str__(self) -> str:
        return f"{self.call} at {self.line}" + (
            f" (for {self.asked_by})" if self.asked_by != self.line else "")


@dataclass
class Plan:
    """Which calls fail: those of the sites it ``matches``, from the ``nth`` such call on,
    for ``lasting`` seconds (0: that one call only)."""

    matches: Callable[[Site], bool]
    error: int = errno.EIO
    nth: int = 1
    lasting: float = 0.0
    seen: int = 0
    started: float | None = None
    failed: list[Site] = field(default_factory=list)

    def fails(self, site: Site) -> bool:
        if not self.matches(site):
            return False
        if self.started is None:
            self.seen += 1
            if self.seen < self.nth:
                return False
            self.started = time.monotonic()
        elif time.monotonic() - self.started > self.lasting:
            return False
        self.failed.append(site)
        return True


class Disk:
    """The OS calls of the ``edge`` package under ``roots`` (the test's folder; an inbox on
    another filesystem), counted by site, failing as the ``plan`` says. Calls from
    elsewhere (pytest, watchdog, the test itself) pass through."""

    def __init__(self, *roots: Path) -> None:
        self.roots = tuple(str(root.resolve()) + os.sep for root in roots)
        self.calls: collections.Counter[Site] = collections.Counter()
        self.plan: Plan | None = None
        self.counting = True
        self._lock = threading.Lock()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Wrap the calls; ``monkeypatch`` (or anything with its ``setattr``) undoes it."""
        for name in OS_CALLS:
            if name == "open":
                wrapped = self._wrap("open", builtins.open)
                monkeypatch.setattr(builtins, "open", wrapped)
                monkeypatch.setattr(io, "open", wrapped)
            else:
                attr = name.replace("os.", "")
                monkeypatch.setattr(os, attr, self._wrap(name, getattr(os, attr)))
        # Before Python 3.11 pathlib calls the os functions it took at import, through its
        # accessor (a Jetson's 3.8): those are wrapped too.
        accessor = getattr(pathlib, "_NormalAccessor", None)
        for name in OS_CALLS if accessor is not None else ():
            attr = name.replace("os.", "")
            if name != "open" and attr in vars(accessor):
                monkeypatch.setattr(accessor, attr,
                                    staticmethod(self._wrap(name, vars(accessor)[attr])))

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._ours(args):
                site = _site(name)
                if site is not None and self._check(site):
                    return self.fail(site, real, args, kwargs)
                return self.through(name, real, args, kwargs)
            return real(*args, **kwargs)

        return call

    def through(self, name: str, real: Callable[..., Any], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        """A call under the roots that does not fail: ``real(*args, **kwargs)``. (The
        power-cut sweep's disk records it: ``crash_at_site.py``.)"""
        return real(*args, **kwargs)

    def _check(self, site: Site) -> bool:
        """Count the call; whether the plan fails it."""
        with self._lock:
            if self.counting:
                self.calls[site] += 1
            return self.plan is not None and self.plan.fails(site)

    def fail(self, site: Site, real: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
        """What a failing call does instead of ``real(*args, **kwargs)``: raise the plan's
        error. (The crash sweep's disk kills the process there instead.)"""
        assert self.plan is not None
        raise OSError(self.plan.error, os.strerror(self.plan.error))

    def _ours(self, args: tuple[Any, ...]) -> bool:
        for arg in args[:2]:
            if isinstance(arg, int) and not isinstance(arg, bool):
                try:
                    arg = os.readlink(f"/proc/self/fd/{arg}")
                except OSError:
                    continue
            if isinstance(arg, (str, os.PathLike)) and (
                    os.fspath(arg).startswith(self.roots)
                    or os.fspath(arg) + os.sep in self.roots):  # a root itself (its fsync)
                return True
        return False


def _qualname(frame: Any) -> str:
    """``Class.method``, as Python 3.11's ``co_qualname`` says it; before 3.11 (a Jetson's
    3.8) found from the frame's ``self`` along its class's MRO."""
    code = frame.f_code
    qualname = getattr(code, "co_qualname", None)
    if qualname is not None:
        return str(qualname)
    owner = frame.f_locals.get("self")
    if owner is not None:
        for klass in type(owner).__mro__:
            if getattr(klass.__dict__.get(code.co_name), "__code__", None) is code:
                return f"{klass.__name__}.{code.co_name}"
    return str(code.co_name)


def _site(call: str) -> Site | None:
    """The call's site, or None when no ``edge`` code made it."""
    frame = sys._getframe(2)
    line = function = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(EDGE_DIR):
            where = f"edge/{filename[len(EDGE_DIR):]}:{frame.f_lineno}"
            if line is None:
                line, function = where, _qualname(frame)
            if not filename.endswith("durable.py"):
                return Site(call, line, where, str(function))
        frame = frame.f_back
    return None if line is None else Site(call, line, line, str(function))
