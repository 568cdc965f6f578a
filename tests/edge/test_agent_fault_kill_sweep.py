"""A disk fault, then kill -9 in the agent's handling of it: the fault-then-kill sweep.

The disk sweeps (``test_agent_fault_sweep*.py``) make a call fail and let the agent handle
it: the input's step fails, it stays journaled and is retried from its record, or held;
the crash sweep (``test_agent_crash_sweep.py``) kills the agent at any call of a healthy
run. Neither kills the agent while it handles an error, in its retry of an input or while
it stops with one waiting, the code run least. Here the real ``edge-agent watch`` runs in
``crash_at_site.py``, as in the crash sweep, with a ``fault`` in its plan: a call of an
input's step fails once with EIO (the claim, reading the input, the reports, the commit's
decision, move and index line, the journal's records), and only then is the kill's count
started: SIGKILL before or after the first and the last call of each site reached after
the fault (a census of a run with that fault, the calls after it, gives them). The last
call of a site falls in the retry of the failed input (in a running agent, retrying every
0.1 s) or in the stop; the first one in the rest of the group or the error's handling.
Then ``--once`` on a healthy disk, in this process, and the crash sweep's books: every
input in exactly one place with one index line, its report or reason record beside it,
nothing in the inbox or the journal, no temporary file, ``fsck --deep`` clean, no
traceback (in the faulted census run, the killed run or the restart).

- **The faults**: each step of an input's path that a healthy fresh run reaches (its site
  ``asked_by`` one of ``STEPS``; the index's append and the journal's record writes and
  deletes), one call of each line (``FAULT_CALLS``'s first that the line makes: the call
  that leaves most behind it, a ``replace`` before an ``fsync`` before an ``open``), at its
  first call and, for a line called three times or more (the journal's records, the
  folders' fsyncs), at its middle call too: 59.
- **The kills**: each site of that fault's census but the writes through a file object,
  first and last call, before and after; 300 to 400 per fault.
- **The modes**: a running agent retrying every 0.1 s (stopped with SIGTERM once its
  inputs are indexed, so the retry has run: the kill falls in it), and ``--once``, which
  leaves the failed input journaled and paused for the next start (the kill falls in
  the rest of the run and its stop, ``Retries.pause_all``).

Cost: a census per fault and a subprocess per case, about 1.2 s each. CI runs every
``FAULT_STRIDE``-th fault of each mode and every ``KILL_STRIDE``-th kill of it, starting
at a different kill for each fault. ``NEUROEDGE_CRASH_EVERY=n`` runs every fault and every
n-th kill of each instead.

CI: 100 cases (34 with ``--once``, 66 running), 2 min 17 s for the file on the 2-core
machine (2026-12-07). By hand that day (``NEUROEDGE_CRASH_EVERY=47``: every fault, every
47th kill), beside another helper's tests: 915 cases in 20 min 28 s, 502 with ``--once``
(of 23,492 kills) and 413 running (of 19,130), 101 kills not reached (late calls of the
index append and the group's folder fsyncs, whose counts depend on how the inputs fall
into groups and the retry with them); in 42 of the 59 running censuses the failed input
waited for a retry, which finished it within the run (in the other 17 none waited for
one: a claim that failed leaves the file in the inbox, for one). Then the retry path
alone, running (an ad-hoc selection, not a test here: the last call of each site of an
input's steps, ``input_step``, after each fault, before and after: 7,378 kills), every
14th at two offsets: 1,054 cases in 14 min 29 s, 28 not reached. Nothing found either
time. Not covered: ENOSPC or a fault lasting (``crash_at_site.py`` takes both; the sweep
does not use them), a fault in a recovering start-up, the backlog of more than one claim
group, two faults, a cut write after a fault.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from agent_helpers import fast_config
from disk_sites import Site
from test_agent_crash_sweep import (
    EVERY,
    KILLED,
    LIMITS,
    Crasher,
    Kill,
    Where,
    fresh_census,
    fresh_inbox_setup,
    in_order,
    kills,
    planned_at,
    sweep,
)
from test_agent_fault_sweep import new_folders

if TYPE_CHECKING:
    from test_agent_crash_sweep import Case

# The lines an input's steps ask for a disk call from (``Site.asked_by``, by file): the
# claim, reading and decoding the input, its fingerprint and digest, the reports, the
# commit (decision, destination, move, reason record, the group's folder fsyncs).
STEPS = ("edge/claim.py", "edge/inputs.py", "edge/decoded.py", "edge/images.py",
         "edge/dicom.py", "edge/prepare.py", "edge/manifest.py", "edge/worker.py",
         "edge/commit.py")
# ...and the functions of the rest that are an input's: its index line, the journal's
# records (written through ``Outbox.save``'s line, removed by ``Outbox.delete``).
STEP_FUNCTIONS = ("append_lines_durable", "Outbox.delete")
RECORD_WRITE = "edge/outbox.py"  # its only atomic write is ``Outbox.save``'s, a record
RECORD_FUNCTIONS = ("atomic_file", "create_temp", "_install", "write_bytes_atomic")
# One call of each line is failed: the first of these that the line makes.
FAULT_CALLS = ("replace", "rename", "link", "unlink", "fsync", "write", "file.write",
               "os.open", "open", "mkdir", "lstat", "stat", "scandir", "listdir")
RETRY_EVERY = 0.1  # seconds, a running agent's ``[watch] retry_interval`` here


def input_step(site: Site) -> bool:
    """Whether an input's step asked for the call (a fault there is retried or held)."""
    asked_by = site.asked_by.split(":")[0]
    return (asked_by in STEPS or site.function in STEP_FUNCTIONS
            or (asked_by == RECORD_WRITE and site.function in RECORD_FUNCTIONS))


@dataclass(frozen=True)
class Fault:
    """A disk error, as ``crash_at_site.py``'s ``fault`` reads it: the ``nth`` call of
    ``site`` fails with ``error`` (for ``lasting`` seconds: 0, that call only)."""

    site: Site | Where
    error: str = "EIO"
    nth: int = 1
    lasting: float = 0.0

    def __str__(self) -> str:
        nth = f" (call {self.nth})" if self.nth > 1 else ""
        lasting = f" for {self.lasting:g}s" if self.lasting else ""
        return f"{self.error} at {self.site}{nth}{lasting}"

    def plan(self) -> dict[str, Any]:
        return {**planned_at(self.site), "errno": self.error, "nth": self.nth,
                "lasting": self.lasting}


@dataclass(frozen=True)
class AfterFault(Kill):
    """A ``Kill`` whose count starts once ``fault`` has failed its call."""

    fault: Fault | None = None

    def __str__(self) -> str:
        return f"{self.fault}, then killed {super().__str__()} after it"

    def plan(self) -> dict[str, Any]:
        assert self.fault is not None
        return {**super().plan(), "fault": self.fault.plan()}


def faults(census: dict[Site, int]) -> list[Fault]:
    """One call of each line of an input's steps (``FAULT_CALLS``), at its first call and,
    if it is called three times or more, its middle one."""
    lines: dict[str, list[Site]] = {}
    for site in in_order(census):
        if input_step(site) and site.call in FAULT_CALLS:
            lines.setdefault(site.asked_by, []).append(site)
    chosen = []
    for _, sites in sorted(lines.items()):
        site = min(sites, key=lambda s: FAULT_CALLS.index(s.call))
        count = census[site]
        chosen += [Fault(site, nth=nth) for nth in sorted({1, count // 2 + 1 if count >= 3
                                                            else 1})]
    return chosen


def fault_census(crasher: Crasher, root: Path, fault: Fault,
                 setup: Callable[[dict[str, Path]], dict[str, str]]
                 ) -> tuple[dict[Site, int], list[str]]:
    """The calls a run with ``fault`` makes after it (empty: it never came), and what went
    wrong in that run (a traceback)."""
    folders = new_folders(root)
    inputs = setup(folders)
    log = root.parent / f"{root.name}.log"
    out = log.with_suffix(".census.json")
    rc = crasher.run(folders, {"census": str(out), "fault": fault.plan()}, len(inputs), log)
    text = log.read_text()
    wrong = [f"the faulted run ended {rc}: {text[-2000:]}"] if rc == KILLED or not out.exists() \
        else [f"traceback logged: {text[-2000:]}"] if "Traceback" in text else []
    if not out.exists() or Path(f"{out}.fault").read_text() != "faulted":
        return {}, wrong
    return {Site(*fields[:4]): fields[4] for fields in json.loads(out.read_text())}, wrong


def kill_stride(cases: list[Any], ci: int, offset: int) -> list[Any]:
    """Every ``ci``-th kill from ``offset`` (CI), or every ``NEUROEDGE_CRASH_EVERY``-th."""
    step = EVERY or ci
    return cases[offset % step::step]


# --- the sweep -----------------------------------------------------------------------------

FAULT_STRIDE = {False: 9, True: 5}  # CI: every 9th fault with --once, every 5th running
KILL_STRIDE = {False: 97, True: 61}  # CI: of each fault's kills, every 97th / 61st


def crasher_for(tmp_path: Path, model: Path, live: bool) -> Crasher:
    """The crash sweep's ``Crasher``; running, retrying every ``RETRY_EVERY`` seconds (at
    the default minute, a running agent's retry would come after the sweep's bound)."""
    folder = tmp_path / "config"
    folder.mkdir()
    retry = f"retry_interval = {RETRY_EVERY}\n" if live else ""
    limits = "".join(f"{key} = {value}\n" for key, value in LIMITS.items())
    return Crasher(model, fast_config(folder, f"{retry}[limits]\n{limits}"), live=live)


@pytest.mark.slow
@pytest.mark.parametrize("live", [False, True], ids=["once", "running"])
def test_a_kill_after_a_disk_fault_loses_nothing(tmp_path, test_model, loaded_classifier,
                                                 live):
    """The crash sweep's fresh inputs; each fault of an input's step (EIO once), then a
    kill at each call after it, before and after; then a healthy ``--once``."""
    crasher = crasher_for(tmp_path, test_model.path, live)
    healthy = fresh_census(crasher, tmp_path / "census", fresh_inbox_setup)
    chosen = faults(healthy)
    picked = chosen if EVERY else chosen[::FAULT_STRIDE[live]]
    cases: list[Case] = []
    found, never, total = [], [], 0
    for i, fault in enumerate(picked):
        after, wrong = fault_census(crasher, tmp_path / f"census-{i}", fault,
                                    fresh_inbox_setup)
        found += [f"{fault}, no kill: {w}" for w in wrong]
        if not after:
            never.append(str(fault))
            continue
        mine = [AfterFault(k.site, k.when, k.nth, fault=fault)
                for k in kills(after, nths=lambda count: [1, count])]
        total += len(mine)
        cases += [("", fresh_inbox_setup, [kill])
                  for kill in kill_stride(mine, KILL_STRIDE[live], i)]
    more, missed = sweep(tmp_path / "case", crasher, loaded_classifier, cases)
    found += more
    print(f"{len(chosen)} faults ({len(picked)} run, {len(never)} never came); "
          f"{len(cases)} of their {total} kills run, {len(missed)} not reached"
          + "".join(f"\n  fault never came: {f}" for f in never)
          + "".join(f"\n  not reached: {m}" for m in missed))
    assert not found, f"{len(found)} case(s):\n" + "\n".join(found)
    assert len(never) < len(picked), "no fault came: the census's sites changed?"
