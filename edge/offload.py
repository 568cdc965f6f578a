"""``edge-agent offload OUTBOX --before DAY --to DEST``: move whole old days off the box.

A clinic box fills up (about three months of a 32 GB card at 2,000 inputs a day), and then
safely stops taking inputs. This moves every day before ``--before``, with everything its
index lines name, to other storage in the outbox's own layout, so the days can still be
browsed there from ``DEST/index.html``:

- ``index/D.jsonl`` (and a ``.jsonl.damaged`` beside it) to ``DEST/index/``, where the day's
  page and the front page are written anew (``index/D.html`` goes from the outbox);
- ``archive/D/`` whole to ``DEST/archive/D/``;
- the reports D's lines name (``reports/<id>.*``) to ``DEST/reports/``; one that a line of a
  day not moved still names (a later duplicate), or that the line still to come of an input
  in the agent's journal will name (classified or a duplicate, its index line not yet
  written: the disk filled up), is copied and kept in the outbox;
- the quarantined inputs D's lines name, with their ``.reason.json``, to ``DEST/quarantine/``.
  An earlier offload may hold that name already (names are free again in the outbox once
  their day has gone): the input then gets the next free ``name~<sha8>`` name there, and
  DEST's copy of the line says where (``moved_to``).

One day at a time, oldest first, in steps after each of which a crash loses nothing:

1. copy: each file to DEST through a temporary file, fsynced, linked into place (never over
   anything). A file already there with the same bytes is one an interrupted run copied;
   one with other bytes is a conflict: the run stops, and nothing of that day is removed;
2. verify: each copy read back (dropped from the page cache first, so the disk is read)
   against the sha256 of what was copied;
3. journal: ``.state/offload.json`` names every file to remove with its copy's size and
   sha256, written durably before the first removal;
4. remove: the sources, the day's index file last; the folders are fsynced, then the record
   is deleted. A rerun (or the next run) finds the record and finishes it, checking each
   copy again first. Meanwhile ``edge-agent fsck`` reports it as pending, and the agent,
   when it starts, says so (``pending_offload_alerts``: in its log and on the front page).

Study reports (``studies/``) stay in the outbox; before the record is deleted, each study
page naming a moved report is rendered again to say where that report is now
(``edge.network.study_offload``), since a link to it would be dead.

A day before ``--before`` whose ``archive/D/`` holds inputs but which has no index file
(its lines never written, or the file removed by hand) is on no page: nothing is moved then
(another day's move could take the reports that ``edge-agent fsck`` rebuilds its lines
from), and the run says to run fsck first, with the command (exit 65, as fsck's own).

The outbox's lock is held throughout: the agent must be stopped. ``--keep-days N`` names
the days by age instead (``--before`` today minus N days), ``--other-disk`` refuses a DEST
on the outbox's own disk (a USB disk not mounted at its mount point), and ``--max-minutes
M`` starts no new day after M minutes (the day in hand is finished; the rest moves at the
next run): what a scheduled run (``deploy/neuroedge-offload``, a systemd timer, which stops
the agent meanwhile) needs. Every run that reaches the outbox leaves its outcome in
``.state/offload-last.json``: written as running (with its pid) once the lock is taken, then
how it ended. The agent names a failed run on its front page when it starts
(``last_offload_alerts``), and a run that never ended (killed: the scheduled run's hard
stop for a disk that does not answer, or the power) too, until a later run succeeds.

What a day's move is (its files, where each goes at DEST, which reports stay) is planned
first, in ``edge.offload_plan``; this module checks the command, carries the plans out and
keeps the record.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shlex
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from . import failpoints
from .diskspace import MB, free_bytes
from .durable import (
    FolderBarrier,
    atomic_file,
    fsync_dir,
    lexists,
    read_json,
    read_json_if_there,
    remove_stale_temp_files,
    unwritable_reason,
    write_json_atomic,
)
from .errors import (
    EX_CANTCREAT,
    EX_DATAERR,
    AgentBusyError,
    ConfigError,
    EdgeError,
    FolderUnavailableError,
    OutputError,
)
from .index import DAY, DailyIndex
from .liveness import SelfWatchdog
from .manifest import sha256_file
from .offload_plan import (
    Copy,
    DayPlan,
    DayPlanner,
    index_days,
    journaled_reports,
    keep_whole_reports,
)
from .offload_readback import link_sha, read_back
from .outbox import Outbox

RECORD_NAME = "offload.json"  # in the outbox's .state: a day whose removal has begun
RECORD_SCHEMA = "neuroedge.offload/1"
LAST_NAME = "offload-last.json"  # in the outbox's .state: how the last run ended
LAST_SCHEMA = "neuroedge.offload-last/1"
_MARGIN = 1 << 20  # DEST's pages, folders, temporary files
_KEPT_WHY = ("named by a later day or by an input waiting in the agent's journal, or DEST "
             "holds another report of the same input")

Echo = Callable[[str], None]


class OffloadUsageError(EdgeError):
    """A wrong ``--before`` or ``--to``: exit 2, the code of wrong usage in every
    ``edge-agent`` command (click's own)."""

    exit_code = 2


class OffloadBusyError(AgentBusyError):
    """Another ``edge-agent offload`` holds the outbox (exit 75, as for the agent)."""


class UnindexedDayError(EdgeError):
    """Archived inputs of a day with no index file: ``edge-agent fsck`` must index them
    first. Exit 65, as fsck's for problems in the outbox."""

    exit_code = EX_DATAERR


def parse_before(text: str, today: datetime.date | None = None) -> str:
    """``--before`` as a day strictly before today: today's inputs are still coming."""
    try:
        day = datetime.date.fromisoformat(text) if DAY.match(text) else None
    except ValueError:
        day = None
    if day is None:
        raise OffloadUsageError(f"--before {text!r} is not a day: write it YYYY-MM-DD, e.g. "
                                "2026-01-01 (the days before it are moved)")
    today = today or datetime.date.today()
    if day >= today:
        raise OffloadUsageError(f"--before {text} is today or later: the agent still writes "
                                f"today's day; give a day before {today.isoformat()}")
    return day.isoformat()


def before_keeping(keep_days: int, today: datetime.date | None = None) -> str:
    """``--keep-days N`` as the ``--before`` it stands for: today minus N days (the days from
    then on stay, today's and N before it)."""
    if keep_days < 1:
        raise OffloadUsageError(f"--keep-days {keep_days}: keep at least 1 day (today's "
                                "inputs are still coming)")
    today = today or datetime.date.today()
    return (today - datetime.timedelta(days=keep_days)).isoformat()


def check_dest(root: Path, dest_text: str, dry_run: bool, other_disk: bool = False) -> Path:
    """DEST as an existing, writable folder outside the outbox (``other_disk``: and on
    another filesystem than the outbox)."""
    dest = Path(dest_text).expanduser()
    if not dest.exists():
        raise FolderUnavailableError(f"--to {dest} does not exist: mount the disk it is on "
                                     "(or create the folder) and run again")
    if not dest.is_dir():
        raise OutputError(f"--to {dest} is a file, not a folder: give a folder")
    resolved = dest.resolve()
    if resolved == root or root in resolved.parents:
        raise OffloadUsageError(f"--to {dest} is inside the outbox {root}: give a folder on "
                                "other storage (a USB disk, a share)")
    if other_disk and os.stat(str(resolved)).st_dev == os.stat(str(root)).st_dev:
        raise FolderUnavailableError(
            f"--to {dest} is on the outbox's own disk, so the disk meant for it is probably "
            "not mounted there (moving the days would free nothing): plug in and mount that "
            "disk, then run again")
    if dry_run:
        reason = None if os.access(str(dest), os.W_OK | os.X_OK) else "no permission"
    else:
        reason = unwritable_reason(dest, folder=True)
    if reason is not None:
        raise OutputError(f"--to {dest} cannot be written ({reason}): give a folder this user "
                          "may write, or run as one who may")
    return resolved


def pending_offload(root: Path) -> dict[str, Any] | None:
    """The record of a day whose removal began and did not end (fsck reads it too)."""
    record = read_json(root / ".state" / RECORD_NAME)
    return record if isinstance(record, dict) and record.get("schema") == RECORD_SCHEMA else None


def pending_offload_alerts(root: Path) -> list[str]:
    """What a person must read when the agent starts on ``root`` after an offload was cut
    off while removing a day (empty: none was): the day stays half removed, its page naming
    files that are gone, until the same command finishes it. Stdlib only, cheap: one read."""
    record = pending_offload(root)
    if record is None:
        return []
    day, dest = str(record.get("day")), str(record.get("dest"))
    return [f"The offload of {day} to {dest} was interrupted while it removed the day from "
            f"the outbox: {day} is half removed (its page names files that are gone; their "
            f"verified copies are in {dest}). Stop the agent (systemctl stop edge-agent), "
            f"run the same command again to finish it, then start the agent: "
            f"{finishing_command(root, record)}"]


def finishing_command(root: Path, record: dict[str, Any]) -> str:
    """The ``edge-agent offload`` command that finishes the interrupted one of ``record``
    (its --before and --to; a record from before "before" was kept: the day after its day,
    which finishes it and moves nothing new, days being moved oldest first)."""
    day, before = str(record.get("day")), record.get("before")
    if not (isinstance(before, str) and DAY.match(before)):
        try:
            before = (datetime.date.fromisoformat(day) + datetime.timedelta(days=1)).isoformat()
        except ValueError:
            before = "YYYY-MM-DD"
    return (f"edge-agent offload {shlex.quote(str(root))} --before {before} "
            f"--to {shlex.quote(str(record.get('dest')))}")


def offload(root: Path, before_text: str | None, dest_text: str, dry_run: bool, echo: Echo,
            keep_days: int | None = None, other_disk: bool = False,
            max_minutes: int | None = None, stall_minutes: float = 10.0) -> int:
    """Move the days before ``before_text`` (or older than ``keep_days``) to DEST
    (``dry_run``: only say what would move); return how many days moved. ``max_minutes``:
    no day is begun after that long (at least one is moved). ``stall_minutes``: with no
    step done for that long (a disk or share that stopped answering), the process ends, exit
    73 (``SelfWatchdog``): every step is safe to stop after, and a thread stuck in a read on
    a dead share ignores Ctrl-C. A run that is not dry leaves how it ended in
    ``.state/offload-last.json`` (``last_offload_alerts``)."""
    root = root.resolve()
    box = Outbox(root)
    try:
        is_outbox = box.state.is_dir()
    except OSError as exc:  # a disk error is not "not an outbox"
        raise _stopped(exc) from None
    if not is_outbox:
        raise ConfigError(f"{root} is not an outbox (it has no .state folder): give the folder "
                          "the agent writes its reports to")
    command = f"edge-agent offload {shlex.quote(str(root))} " + (
        f"--before {before_text}" if keep_days is None else f"--keep-days {keep_days}") + (
        f" --to {shlex.quote(dest_text)}") + (" --other-disk" if other_disk else "") + (
        f" --max-minutes {max_minutes}" if max_minutes is not None else "")
    run = _Offload(box, echo, max_minutes)
    watchdog = SelfWatchdog(
        stall_minutes * 60, lambda: run.doing,
        f"ending the offload (exit 73, --stall-minutes {stall_minutes:g}). Nothing is lost: "
        "every step of it is safe to stop after. Once that disk answers again, run the same "
        f"command again (it finishes what was begun first): {command}", code=EX_CANTCREAT)
    run.alive = watchdog.alive
    watchdog.start()
    try:
        try:
            moved = _offload(box, run, before_text, dest_text, dry_run, keep_days, other_disk,
                             command)
        except EdgeError as exc:
            if not dry_run and not isinstance(exc, OffloadBusyError):  # its record stays
                _record_last(box, command, str(exc), run.moved)
            raise
        if not dry_run:
            _record_last(box, command, None, moved, run.left)
    finally:
        watchdog.stop()
    return moved


def _offload(box: Outbox, run: _Offload, before_text: str | None, dest_text: str,
             dry_run: bool, keep_days: int | None, other_disk: bool, command: str) -> int:
    before = parse_before(before_text) if keep_days is None else before_keeping(keep_days)
    root = box.root
    try:
        dest = check_dest(root, dest_text, dry_run, other_disk)
        box.lock(read_only=dry_run)
    except OSError as exc:  # DEST or the outbox failing before anything began
        raise _stopped(exc) from None
    except AgentBusyError:
        last = last_offload(root)
        if last is not None and offload_running(root, last):
            raise OffloadBusyError(f"another offload is running on the outbox {root} (process "
                                   f"{last.get('pid')}, since {last.get('time')}: "
                                   f"{last.get('command')}); let it end, then run this again "
                                   "if it is still needed") from None
        raise AgentBusyError(f"edge-agent is running on the outbox {root}: stop edge-agent "
                             "first: systemctl stop edge-agent (and start it again after)"
                             ) from None
    try:
        if not dry_run:  # a run killed from here on is named when the agent starts again
            _record_last(box, command, None, running=True)
        return run.run(dest, before, dry_run)
    except OSError as exc:  # a disk error, DEST unplugged: each step is safe to stop after
        raise _stopped(exc) from None
    finally:
        box.unlock()


def _stopped(exc: OSError) -> OutputError:
    """A disk error (of the outbox or DEST) said in one line: exit 73, nothing lost."""
    where = f" ({exc.filename})" if exc.filename else ""  # a failed write names none
    return OutputError(f"the offload stopped: {exc.strerror or exc}{where}; nothing is lost: "
                       "run the same command again once that is fixed (a day whose removal "
                       "had begun is finished first)")


def _record_last(box: Outbox, command: str, error: str | None, moved: int = 0,
                 left: int = 0, running: bool = False) -> None:
    """How this run ended, for the agent's front page (``last_offload_alerts``); or, with
    ``running``, that it began (``ok`` null, its pid): a run killed before its end leaves
    that. Written even while an agent holds the lock (a run refused for that): a file of its
    own, which the agent reads only when it starts. Not being able to write it changes
    nothing."""
    record = {"schema": LAST_SCHEMA, "time": datetime.datetime.now().astimezone().isoformat(
        timespec="seconds"), "command": command, "ok": None if running else error is None,
        "error": error, "days_moved": moved, "days_left": left}
    if running:
        record["pid"] = os.getpid()
    try:
        write_json_atomic(box.state / LAST_NAME, record)
    except OSError:
        pass


def last_offload(root: Path) -> dict[str, Any] | None:
    """The record of how the last offload run on ``root`` ended (None: none has run)."""
    record = read_json(root / ".state" / LAST_NAME)
    return record if isinstance(record, dict) and record.get("schema") == LAST_SCHEMA else None


def last_offload_alerts(root: Path) -> list[str]:
    """What a person must read when the agent starts after an offload that failed (a
    scheduled one, run at night, above all): when, why, and the command. Empty once a later
    run succeeded. Stdlib only, cheap: one read."""
    record = last_offload(root)
    if record is None or record.get("ok") or offload_running(root, record):
        return []
    if record.get("ok") is None:
        error = ("it was stopped before its end (the scheduled run stops one that runs past "
                 "its time, as on a disk that does not answer; or the power went). Nothing is "
                 "lost: every step of it is safe to stop after")
    else:
        error = str(record.get("error")).rstrip(".")
    return [f"The last offload ({record.get('time')}) did not finish: {error}. Old days stay "
            "on this box until one does; once that is fixed, run it again (stop the agent "
            f"first) or wait for the next scheduled run: {record.get('command')}"]


def offload_running(root: Path, record: dict[str, Any]) -> bool:
    """Whether the run ``record`` says is running still is: it holds the outbox's lock (the
    lock file names its pid, and that process is there). Stdlib only."""
    pid = record.get("pid")
    if record.get("ok") is not None or not isinstance(pid, int):
        return False
    try:
        with open(str(root / ".state" / "lock"), "rb") as handle:
            if handle.read(32).strip() != str(pid).encode():
                return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # gone
    except PermissionError:
        return True  # there, and another user's (check run by staff, the offload by the agent's)
    except (OSError, ValueError):
        return False
    return True


class _Offload:
    dest: Path  # --to, checked; set by run()
    planner: DayPlanner

    def __init__(self, box: Outbox, echo: Echo, max_minutes: int | None = None) -> None:
        self.box = box
        self.root = box.root
        self.echo = echo
        self.max_minutes = max_minutes
        self.moved = 0  # days moved so far
        self.left = 0  # days to move left for the next run (--max-minutes)
        self.before = ""  # --before, kept in the record for the command that finishes it
        self.journaled: set[str] = set()  # days with inputs the agent's journal still holds
        self.doing = "checking the outbox and DEST"  # what it began last, in words
        self.alive: Callable[[], None] = lambda: None  # a step was done (SelfWatchdog)

    def step(self, doing: str) -> None:
        """A new step begins (the last one was done)."""
        self.doing = doing
        self.alive()

    def run(self, dest: Path, before: str, dry_run: bool) -> int:
        started = time.monotonic()
        self.dest = dest
        self.planner = DayPlanner(self.box, dest)
        self.before = before
        if not dry_run:  # a run killed in an atomic write left its temporary file: this one
            # holds the outbox's lock (no agent writes there) and writes DEST's pages
            self.box.remove_temp_files()
            for folder in (dest, dest / "index"):
                remove_stale_temp_files(folder)
        pending = pending_offload(self.root)
        if pending is not None:
            if dry_run:
                self.echo(f"an interrupted offload of {pending.get('day')} to "
                          f"{pending.get('dest')} would be finished first")
            else:
                self.finish(pending, verify=True)
                self.echo(f"finished the interrupted offload of {pending.get('day')}")
        # a day an input journaled by the agent is archived in stays (its line is still to
        # come: moved now, the line would name a file gone to DEST, on no page there), and
        # so does the report that line will name (a duplicate's: an earlier day's report)
        # read strictly: a record the disk failed to give must stop the run (OutputError),
        # not let its day move
        records = [r for r in map(read_json_if_there, self.box.jobs.glob("*.json"))
                   if isinstance(r, dict)]
        self.journaled = {str(r["day"]) for r in records if r.get("day")}
        self.planner.journaled = journaled_reports(records)
        self._refuse_unindexed(before, pending)
        if os.stat(str(self.dest)).st_dev == os.stat(str(self.root)).st_dev:
            self.echo(f"note: {self.dest} is on the outbox's own disk: moving there frees no "
                      "space on it")
        days = index_days(self.root, lambda day: day < before and day not in self.journaled)
        for day in sorted(d for d in self.journaled if d < before):
            self.echo(f"note: {day} stays: inputs of it wait in the agent's journal (start the "
                      "agent to finish them, stop it, then run this again to move that day)")
        if not days:
            self.echo(f"no day before {before} is left in the outbox: nothing to move")
            if pending is not None:
                DailyIndex(self.root).render(days=[])
            return 0
        self.step(f"reading the {len(days)} day(s) to move")
        self.planner.prepare(days)
        self._check_space(self.planner.plans(days), dry_run)
        if dry_run:
            return 0
        for plan in self.planner.plans(days):  # each planned once the day before it moved
            if self.moved and self._out_of_time(started):
                self.left = len(days) - self.moved
                break
            self.move_day(plan)
            self.moved += 1
        self.step("writing the outbox's front page")
        DailyIndex(self.root).render(days=[])  # the front page, without the days moved
        self.echo(f"moved {self.moved} day(s) to {self.dest} (open {self.dest / 'index.html'})")
        if self.left:
            self.echo(f"stopped after --max-minutes {self.max_minutes}: {self.left} day(s) "
                      "before the limit stay for the next run (run the same command again to "
                      "move them now)")
        return self.moved

    def _out_of_time(self, started: float) -> bool:
        """Whether ``--max-minutes`` is used up: no new day is begun then (the day in hand
        was finished; a scheduled run stops the agent for the offload's time)."""
        return (self.max_minutes is not None
                and time.monotonic() - started >= self.max_minutes * 60)

    # --- before anything moves ------------------------------------------------------------

    def _refuse_unindexed(self, before: str, pending: dict[str, Any] | None) -> None:
        """Stop before anything moves if a day to move has archived inputs but no index
        file: they are on no page, and fsck indexes them again from their reports, which
        moving another day (a duplicate's line names an earlier report) could take away."""
        archive, skip = self.box.archive, (pending or {}).get("day")
        if not archive.is_dir():
            return
        found = []
        for folder in sorted(archive.iterdir()):
            day = folder.name
            if (not DAY.match(day) or day >= before or day == skip or day in self.journaled
                    or folder.is_symlink()
                    or not folder.is_dir() or (self.root / "index" / f"{day}.jsonl").exists()):
                continue
            count = sum(not name.startswith(".") for name in os.listdir(str(folder)))
            if count:  # fsck's rule too: a dot file is not an input
                found.append(f"archive/{day}/ ({count} file(s))")
        if found:
            raise UnindexedDayError(
                f"{', '.join(found)} in {self.root} has no index file (index/DAY.jsonl): its "
                "inputs are on no day's page. Nothing was moved. Run "
                f"edge-agent fsck {shlex.quote(str(self.root))} first (it writes their index "
                "lines again from their reports, and says what to do with any it cannot), "
                "then this command again")

    def _check_space(self, plans: Iterator[DayPlan], dry_run: bool) -> None:
        moved = needed = files = days = 0
        kept: set[str] = set()  # reports left in the outbox once every day has moved
        for plan in plans:
            days += 1
            files += sum(c.remove for c in plan.copies)
            kept = (kept | {c.src for c in plan.copies if not c.remove}) - {
                c.src for c in plan.copies if c.remove}  # kept by one day, moved by a later
            moved += plan.moved_bytes()
            needed += plan.needed_bytes()
            if dry_run:
                self.echo(f"{plan.day}: {sum(c.remove for c in plan.copies)} file(s), "
                          f"{_mb(plan.moved_bytes())} would move"
                          + (f"; {sum(not c.remove for c in plan.copies)} report(s) copied "
                             f"and kept ({_KEPT_WHY})"
                             if any(not c.remove for c in plan.copies) else ""))
        free, needed = free_bytes(self.dest), needed + _MARGIN  # the same figure either way
        short = free is not None and needed > free
        if dry_run:
            self.echo(f"would move {days} day(s): {files} file(s), {_mb(moved)}"
                      + (f" ({len(kept)} report(s) copied and kept)" if kept else "")
                      + f"; {_mb(needed)} needed at {self.dest}, "
                      + (f"{_mb(free)} free there" if free is not None else "free space unknown")
                      + ("; too little: the move would be refused. Free space there, use a "
                         "bigger disk, or give an earlier --before" if short else ""))
            return
        if short:
            raise OutputError(f"{self.dest} has {_mb(free)} free; moving {days} day(s) needs "
                              f"{_mb(needed)}: nothing was moved. Free space there, use a "
                              "bigger disk, or give an earlier --before")

    # --- copy, verify, remove -------------------------------------------------------------

    def move_day(self, plan: DayPlan) -> None:
        copied = self._copy_all(plan)
        for copy in copied:
            self.step(f"reading back the copy {self.dest / copy.dest}")
            if read_back(self.dest / copy.dest) != copy.sha256:
                raise OutputError(f"the copy {self.dest / copy.dest} reads back different from "
                                  f"{self.root / copy.src}: the disk at {self.dest} may be "
                                  f"failing; nothing of {plan.day} was removed")
        self.step(f"writing {plan.day}'s page at {self.dest}")
        DailyIndex(self.dest).render([plan.day])  # DEST's day page and front page
        *others, index = plan.copies  # the index file is last: it names the others
        record = {"schema": RECORD_SCHEMA, "dest": str(self.dest), "day": plan.day,
                  "before": self.before, "studies": sorted(plan.studies),
                  "files": [c.entry() for c in others if c.remove]
                  # the day's page has no copy to check: DEST has its own
                  + [{"path": f"index/{plan.day}.html", "copy": None}, index.entry()]}
        write_json_atomic(self.box.state / RECORD_NAME, record)
        self.finish(record, verify=False)
        kept = [c for c in plan.copies if not c.remove]
        self.echo(f"moved {plan.day}: {sum(c.remove for c in plan.copies)} file(s), "
                  f"{_mb(plan.moved_bytes())}"
                  + (f"; kept {len(kept)} report(s) in the outbox ({_KEPT_WHY})"
                     if kept else ""))

    def _copy_all(self, plan: DayPlan) -> list[Copy]:
        """Copy the day's files that DEST lacks, check those it has; return the copies made
        (their folders fsynced)."""
        barrier, copied = FolderBarrier(), []
        for folder in {(self.dest / c.dest).parent for c in plan.copies}:
            remove_stale_temp_files(folder)  # an interrupted copy's leftovers
        for copy in plan.copies:
            if copy.skip:
                continue
            target = self.dest / copy.dest
            self.step(f"copying {self.root / copy.src} to {target}")
            if not copy.present:
                self._make_folder(target.parent, barrier)
                try:
                    copy.sha256 = self._write(copy, target, barrier)
                    copied.append(copy)
                    continue
                except FileExistsError:
                    pass  # made meanwhile: compared below
            mine = (link_sha(copy.link) if copy.link is not None
                    else hashlib.sha256(copy.data).hexdigest() if copy.data is not None
                    else sha256_file(self.root / copy.src))
            if read_back(target) != mine:
                self.planner.conflict(copy)
            else:
                copy.sha256 = mine
        barrier.sync()
        keep_whole_reports(plan)
        return copied

    def _make_folder(self, folder: Path, barrier: FolderBarrier) -> None:
        if not folder.is_dir():
            self._make_folder(folder.parent, barrier)
            folder.mkdir()
            barrier.add(folder.parent)

    def _write(self, copy: Copy, target: Path, barrier: FolderBarrier) -> str:
        """Copy one file durably (data fsynced, folder in ``barrier``), never over another;
        return the sha256 of what was written."""
        if copy.link is not None:
            os.symlink(copy.link, str(target))
            barrier.add(target.parent)
            return link_sha(copy.link)
        digest = hashlib.sha256()
        with atomic_file(target, replace=False, barrier=barrier) as out:
            if copy.data is not None:
                digest.update(copy.data)
                out.write(copy.data)
            else:
                with open(str(self.root / copy.src), "rb") as source:
                    for chunk in iter(lambda: source.read(1 << 20), b""):
                        digest.update(chunk)
                        out.write(chunk)
                        self.alive()  # a big file on a slow disk: each MB is a step
        if copy.data is None:
            info = os.stat(str(self.root / copy.src))
            os.utime(str(target), ns=(info.st_atime_ns, info.st_mtime_ns))
        return digest.hexdigest()

    def finish(self, record: dict[str, Any], verify: bool) -> None:
        """Remove the sources the record names, then the record. ``verify``: an interrupted
        run's record; each copy is checked again before its source goes."""
        dest, day = Path(str(record["dest"])), str(record["day"])
        barrier = FolderBarrier()
        for item in record["files"]:
            source = self.root / str(item["path"])
            self.step(f"removing {source}, copied to {dest}")
            if not lexists(source):  # an I/O error is not "removed already"
                continue
            if verify and item.get("copy") is not None:
                self._check_copy(dest, item, day)
            failpoints.hit("offload_remove")
            os.unlink(str(source))
            barrier.add(source.parent)
        archive = self.box.archive / day
        if archive.is_dir() and not archive.is_symlink():
            remove_stale_temp_files(archive)
            try:
                os.rmdir(str(archive))
                barrier.add(self.box.archive)
            except OSError as exc:  # something put there since: it stays, nothing is lost
                self.echo(f"note: {archive} stays ({exc.strerror}): look at what is in it")
        self.step(f"syncing the outbox's folders after removing {day}")
        barrier.sync()
        self.step(f"marking {day}'s moved slices in the study reports")
        self._note_in_studies(dest, record)
        os.unlink(str(self.box.state / RECORD_NAME))
        fsync_dir(self.box.state)

    def _note_in_studies(self, dest: Path, record: dict[str, Any]) -> None:
        """Study pages say where the day's moved reports are now (done again by a rerun:
        the record is deleted only after)."""
        moved = {Path(str(item["path"])).name[:64] for item in record["files"]
                 if str(item["path"]).startswith("reports/")}
        studies = record.get("studies")  # a record without it: every study is looked at
        if moved and (studies is None or studies):
            from .network.study_offload import note_offloaded  # pydicom: only when needed

            note_offloaded(self.root, dest, moved, studies)

    def _check_copy(self, dest: Path, item: dict[str, Any], day: str) -> None:
        copy = dest / str(item["copy"])
        if not dest.is_dir():
            raise FolderUnavailableError(
                f"the offload of {day} to {dest} was interrupted and {dest} is not there: "
                "mount that disk and run the same command again to finish it")
        if os.path.isfile(str(copy)) and not os.path.islink(str(copy)):
            good = copy.stat().st_size == item.get("size") and read_back(copy) == item.get(
                "sha256")
        else:
            good = os.path.islink(str(copy)) and link_sha(os.readlink(str(copy))) == item.get(
                "sha256")
        if not good:
            raise OutputError(f"the offload of {day} to {dest} was interrupted, and {copy} is "
                              f"missing or not the copy of {item['path']} any more; that file "
                              "stays in the outbox. Put the copy back (or move the "
                              f"{RECORD_NAME} record out of the outbox's .state folder once "
                              "you have checked the day by hand)")



def _mb(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / MB:.1f} MB" if size >= MB else f"{size / 1000:.0f} kB"
