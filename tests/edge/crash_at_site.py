"""``edge-agent`` with a disk that kills it: the crash sweep's subprocess.

``python tests/edge/crash_at_site.py ARGS...`` runs ``edge-agent ARGS...`` (its own entry
point, ``edge.entry.main``) with the disk sweeps' ``Disk`` installed in this process, as
``NEUROEDGE_CRASH_PLAN`` (JSON) says:

- ``roots``: the folders whose calls count (the case's folders);
- ``census``: a file to write every site reached, with its count, when the agent exits;
- ``site`` (``[call, line, asked_by, function]``) and ``nth``: the process kills itself
  with SIGKILL (no cleanup: ``kill -9``, a power cut without the lost page cache) at the
  ``nth`` call of that site, ``when`` is ``before`` the call, ``after`` it returned (or
  raised), or ``cut``: a write cut short, half its bytes written (and flushed to the OS),
  then killed; or ``where`` (``[call, function, asked_by]``) for ``site``: the sites of
  one call in one ``edge`` function (``Class.method``), asked for from a file whose name
  starts with ``asked_by`` (the findings' tests: line numbers change);
- ``power`` (one of ``power_cut.MODELS``): the kill is a power cut, the disk first rolled
  back to what that model of a file system keeps of what was not fsynced
  (``power_cut.py``, the power-cut sweep's);
- ``during``: ``start`` counts and kills only inside ``Agent._start`` (the journal's
  replay), ``run`` (the default) anywhere;
- ``fault``: a disk error first, raised as the disk sweeps' ``Plan`` raises it, the kill
  after it: ``site`` or ``where`` (as above), ``errno`` (a name, ``EIO``, or a number),
  ``nth`` (the nth call of those sites fails) and ``lasting`` (seconds: every call of
  those sites fails for that long; 0, the default, that one call only). Nothing counts
  until the fault has happened: the kill's ``nth`` and the census are of the calls after
  it (the calls it fails are not counted, and never killed), so that the kill lands in
  the agent's handling of the error, its retry of the input or its hold (the fault-then-
  kill sweep, ``test_agent_fault_kill_sweep.py``). The census also says whether the fault
  happened, in ``census.fault`` (``"faulted"``/``"not reached"``) beside it.

Besides the OS calls of ``disk_sites.OS_CALLS``, a write through a file object opened
for writing under the roots is a site too (``file.write``): the journal's records, the
reports and the pages are written that way, and a crash part-way through one is what
``cut`` is for.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from disk_sites import Disk, Plan, Site, _site
from power_cut import Durability

WHEN = ("before", "after", "cut")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingDisk(Disk):
    """A ``Disk`` whose failing call kills the process (``when``), counting only while
    ``active``; with a ``fault``, a call that plan fails raises its error first, and only
    the calls after it are counted (and killed at)."""

    def __init__(self, *roots: Any, when: str = "before", active: bool = True,
                 power: Durability | None = None, fault: Plan | None = None) -> None:
        super().__init__(*roots)
        self.when = when
        self.active = active
        self.power = power  # a power cut, not a kill: what was not fsynced is lost
        self.fault = fault
        self._raising = threading.local()  # this thread's failing call is the fault's

    def install(self, monkeypatch: Any) -> None:
        super().install(monkeypatch)
        opening = builtins.open  # the Disk's own wrapper, itself a site

        def opened(*args: Any, **kwargs: Any) -> Any:
            handle = opening(*args, **kwargs)
            mode = kwargs.get("mode", args[1] if len(args) > 1 else "r")
            if isinstance(mode, str) and set(mode) & set("wax+") and self._ours(args):
                return _Written(handle, self)
            return handle

        monkeypatch.setattr(builtins, "open", opened)
        monkeypatch.setattr(io, "open", opened)

    def _check(self, site: Site) -> bool:
        if not self.active:
            return False
        if self.fault is not None:
            with self._lock:
                before = not self.fault.failed
                if self.fault.fails(site):  # the fault (or, lasting, its next call)
                    self._raising.fault = True
                    return True
                if before:
                    return False  # nothing counts before the fault
        return super()._check(site)

    def through(self, name: str, real: Callable[..., Any], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        if self.power is not None:
            return self.power.through(name, real, args, kwargs)
        return real(*args, **kwargs)

    def fail(self, site: Site, real: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
        if getattr(self._raising, "fault", False):
            self._raising.fault = False
            assert self.fault is not None
            raise OSError(self.fault.error, os.strerror(self.fault.error))
        if self.when == "before":
            self.die()
        if self.when == "cut" and site.call in ("write", "file.write"):
            data = args[-1]  # os.write(fd, data), file.write(data)
            args = (*args[:-1], data[:len(data) // 2])
        try:
            self.through(site.call, real, args, kwargs)
        finally:  # after it returned, or raised (``mkdir`` of a folder that is there)
            self.die()

    def die(self) -> None:
        if self.power is not None:
            self.power.cut()
        die()


class _Written:
    """A file object opened for writing whose ``write`` is a site (``file.write``); the
    rest is the file's own."""

    def __init__(self, handle: Any, disk: CrashingDisk) -> None:
        self._handle = handle
        self._disk = disk

    def write(self, data: Any) -> Any:
        site = _site("file.write")
        if site is not None and self._disk._check(site):
            return self._disk.fail(site, self._write_through, (data,), {})
        return self._handle.write(data)

    def _write_through(self, data: Any) -> Any:
        """Write and flush to the OS: what a crash after (or in) the write leaves."""
        written = self._handle.write(data)
        self._handle.flush()
        return written

    def __enter__(self) -> _Written:
        self._handle.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._handle.__exit__(*exc)

    def __iter__(self) -> Any:
        return iter(self._handle)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class _Patch:
    """``monkeypatch.setattr`` for a process that never undoes it."""

    @staticmethod
    def setattr(target: Any, name: str, value: Any) -> None:
        setattr(target, name, value)


def site_of(fields: list[str]) -> Site:
    call, line, asked_by, function = fields
    return Site(call, line, asked_by, function)


def matching(spec: dict[str, Any]) -> Callable[[Site], bool] | None:
    """The sites a plan's ``site`` or ``where`` names (None: neither)."""
    if spec.get("site"):
        return site_of(spec["site"]).__eq__
    if spec.get("where"):
        call, function, asked_by = spec["where"]
        return lambda site: ((site.call, site.function) == (call, function)
                             and site.asked_by.startswith(asked_by))
    return None


def fault_of(spec: dict[str, Any]) -> Plan:
    """The fault's ``Plan``: its sites, its error (a name or a number), ``nth``, ``lasting``."""
    matches = matching(spec)
    assert matches is not None, f"a fault names no site: {spec}"
    code = spec.get("errno", "EIO")
    return Plan(matches, code if isinstance(code, int) else getattr(errno, code),
                nth=int(spec.get("nth", 1)), lasting=float(spec.get("lasting", 0.0)))


def main() -> None:
    spec = json.loads(os.environ["NEUROEDGE_CRASH_PLAN"])
    assert spec.get("when", "before") in WHEN, spec
    during = spec.get("during", "run")
    power = Durability(spec["roots"], spec["power"]) if spec.get("power") else None
    fault = fault_of(spec["fault"]) if spec.get("fault") else None
    disk = CrashingDisk(*map(Path, spec["roots"]), when=spec.get("when", "before"),
                        active=during == "run", power=power, fault=fault)
    kill = matching(spec)
    if kill is not None:
        disk.plan = Plan(kill, nth=int(spec.get("nth", 1)))
    if during == "start":
        from edge.watch import Agent

        start = Agent._start

        def started(self: Any) -> None:
            disk.active = True
            try:
                start(self)
            finally:
                disk.active = False

        Agent._start = started  # type: ignore[method-assign]
    disk.install(_Patch())
    from edge.entry import main as agent

    sys.argv = ["edge-agent", *sys.argv[1:]]
    try:
        agent()
    finally:
        if spec.get("census"):
            disk.active = False  # the census's own file is not a site
            with disk._lock:
                counted = [[site.call, site.line, site.asked_by, site.function, n]
                           for site, n in disk.calls.items()]
            with open(spec["census"], "w") as out:
                json.dump(counted, out)
            if fault is not None:
                with open(spec["census"] + ".fault", "w") as out:
                    out.write("faulted" if fault.failed else "not reached")


if __name__ == "__main__":
    main()
