"""Steps 3 and 4 of a job: making what ``prepare`` found durable, for a group of jobs at once.

For each job, in this order, each step recorded before the next begins: the report (heat-map
PNG, HTML page, then the JSON whose existence means the report is durable); the decision
(``decided``: the destination, ``archive/<day>/<name>`` or ``quarantine/<name>``); the move
(a refused input's ``<name>.reason.json`` first), never replacing anything; the index line
(``moved``), then the journal record is deleted. Each step is done for the whole group, then
each touched folder is fsynced once (``FolderBarrier``). Replaying any step after a crash is
harmless: each checks whether it was done.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Tuple

from . import failpoints, heatmap
from .config import AgentConfig
from .durable import (
    FolderBarrier,
    free_name,
    lexists,
    move_no_replace,
    read_json,
    read_json_if_there,
    safe_name,
    write_bytes_atomic,
    write_json_new,
)
from .index import DailyIndex
from .outbox import Job, Outbox, Outcome, Stage
from .pages import percent, report_page
from .prepare import InFlight, Refusal, Work, unexpected
from .report import local_day, now_iso, summary_line

log = logging.getLogger(__name__)
REASON_SUFFIX = ".reason.json"  # quarantine/<name> + this: why <name> was refused
QUARANTINE_SCHEMA = "neuroedge.quarantine/1"

Failure = Tuple[Job, Exception]


class SharedReportMissing(Exception):
    """A duplicate's report (written by another job) is not on disk: prepare it again."""


def refuse(job: Job, refusal: Refusal) -> None:
    """Record on the job that its input is quarantined, and why."""
    job.outcome, job.reason_code, job.reason = Outcome.QUARANTINED, refusal.code, refusal.reason
    job.reason_log = refusal.log_text if refusal.log_text != refusal.reason else None


class GroupCommit:
    """The durable steps, for groups of prepared jobs (``edge.pipeline`` runs it on the
    committer thread)."""

    def __init__(self, config: AgentConfig, outbox: Outbox, index: DailyIndex,
                 in_flight: InFlight, counts: dict[str, int]) -> None:
        self.config = config
        self.outbox = outbox
        self.index = index
        self.in_flight = in_flight
        self.counts = counts

    def run(self, group: list[Work]) -> list[Failure]:
        """Finish every job of ``group``, each step for the whole group, then its fsyncs.

        Returns the jobs that failed (a full disk, a vanished folder), with the error: each
        stays journaled at its last durable step and is retried later.
        """
        failures: list[Failure] = []

        def step(stage: Stage, do: Callable[[Work, FolderBarrier], None],
                 works: list[Work]) -> list[Work]:
            barrier, failed, stepped = FolderBarrier(), set(), []
            for work in works:
                if work.job.stage != stage:
                    continue
                try:
                    do(work, barrier)
                except Exception as exc:  # noqa: BLE001 - the job stays journaled, retried
                    fail(work, exc, failed)
                    continue
                stepped.append(work)
            try:
                barrier.sync()
            except Exception as exc:  # noqa: BLE001 - the step may not be durable: retried
                for work in stepped:  # from their records, which the next step must not
                    fail(work, exc, failed)  # overtake (a move before its "decided")
            return [work for work in works if id(work) not in failed]

        def fail(work: Work, exc: Exception, failed: set[int]) -> None:
            failures.append((work.job, exc))
            self.release(work, failed=True)
            failed.add(id(work))

        works = step(Stage.CLAIMED, self.write_report, group)
        for work in works:
            self.release(work)  # its report is durable: a duplicate now finds it on disk
            if work.job.stage == Stage.CLAIMED:
                failpoints.hit("after_report")
        decided: set[str] = set()
        works = step(Stage.CLAIMED, lambda w, b: self.decide(w, b, decided), works)
        works = step(Stage.DECIDED, self.move, works)
        for work in works:
            if work.job.stage == Stage.DECIDED:
                failpoints.hit("after_move")
                work.job.stage = Stage.MOVED
                # if lost: the move is found done and the index line replayed; its data
                # fsynced, or a power cut could leave it empty (``Claim.take`` says why)
                try:
                    self.outbox.save(work.job, sync_folder=False)
                except OSError:
                    pass  # the same: the record still says "decided"
        self.record(works, failures)
        return failures

    # --- the report ------------------------------------------------------------------

    def render(self, work: Work, wait: bool = True) -> bool:
        """Make a new report's heat-map PNG and HTML page in memory: pure CPU, writes
        nothing. The committer does it in ``write_report``, unless the main loop got there
        first, drawing the pictures of a queued input instead of waiting for a free place
        in the queue (``edge.pipeline``). Each is drawn once: ``wait=False`` gives up at
        once when the other thread is drawing it. True if this call drew it. A failure
        refuses the input: it would fail again."""
        found = work.prepared
        if found is None or found.report is None or not found.drawing.acquire(wait):
            return False
        try:
            if found.rendered:
                return False
            found.rendered = True
            try:
                drawn = None  # the PNG, for its own file and for the page
                if found.heatmap is not None and found.thumbnail is not None:
                    drawn = heatmap.png_bytes(heatmap.overlay(found.thumbnail, found.heatmap))
                page = (report_page(found.report, found.thumbnail, drawn)
                        if self.config.report.html else None)
            except Exception as exc:  # noqa: BLE001 - pure computation: it would fail again
                self.release(work)
                work.prepared = None
                refuse(work.job, unexpected(exc, work.job.sha256, "written",
                                            "the agent could not write this file's report "
                                            f"({exc.__class__.__name__}); it is kept here for "
                                            "a look"))
                return True
            found.heatmap_png, found.page = drawn, page
            found.thumbnail = found.heatmap = None  # drawn: no longer needed
            return True
        finally:
            found.drawing.release()

    def write_report(self, work: Work, barrier: FolderBarrier) -> None:
        """Write a new report's heat-map and HTML page, then its JSON (data fsynced, folder
        in ``barrier``)."""
        self.render(work)
        found = work.prepared
        if found is None or found.report is None:
            if work.job.outcome == Outcome.CLASSIFIED:  # its own report, written before a
                barrier.add(self.outbox.reports)  # crash or a failed fsync: make it durable
            return
        base = self.outbox.reports / str(work.job.sha256)
        if found.heatmap_png is not None:
            write_bytes_atomic(self.outbox.reports / found.report["heatmap"]["file"],
                               found.heatmap_png, sync_folder=False)
        if found.page is not None:
            write_bytes_atomic(base.with_suffix(".html"), found.page, sync_folder=False)
        write_bytes_atomic(base.with_suffix(".json"), found.report_json, sync_folder=False)
        found.written = True
        barrier.add(self.outbox.reports)

    def release(self, work: Work, failed: bool = False) -> None:
        """Let identical inputs find the report on disk from now on; drop the pictures.
        ``failed``: a step failed; a report not yet written is kept, pictures and all, for
        the job's retry (``InFlight.take_kept``)."""
        found = work.prepared
        if found is None or found.report is None:
            return
        written = found.written
        self.in_flight.release(str(work.job.sha256), work.job.token,
                               keep=found if failed and not written else None)
        if written or not failed:
            found.thumbnail = found.heatmap = found.heatmap_png = found.page = None

    # --- the decision and the move -----------------------------------------------------

    def decide(self, work: Work, barrier: FolderBarrier, reserved: set[str]) -> None:
        job = work.job
        if job.outcome != Outcome.QUARANTINED:
            own = work.prepared.report if work.prepared is not None else None
            report = own or read_json(self.outbox.reports / f"{job.sha256}.json")
            if report is None:
                raise SharedReportMissing(f"reports/{job.sha256}.json")
            job.summary = summary_line(report)
        self.choose_destination(job, barrier, reserved)
        job.stage = Stage.DECIDED
        self.outbox.save(job, sync_folder=False)
        barrier.add(self.outbox.jobs)

    def choose_destination(self, job: Job, barrier: FolderBarrier | None = None,
                           reserved: set[str] | None = None) -> None:
        """Pick a free name, also free of names ``reserved`` by other jobs of the group. In
        quarantine the name's reason record must be free too."""
        name = safe_name(job.file_name)
        tag = (job.sha256 or job.token)[:8]
        taken = reserved if reserved is not None else set()
        job.day = local_day()
        if job.outcome == Outcome.QUARANTINED:
            dest = free_name(self.outbox.quarantine, name, tag, taken, (REASON_SUFFIX,))
        else:
            folder = self.outbox.archive / job.day
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                if barrier is not None:
                    barrier.add(self.outbox.archive)  # the new day folder's own entry
            dest = free_name(folder, name, tag, taken)
        job.dest = self.outbox.relative(dest)

    def move(self, work: Work, barrier: FolderBarrier) -> None:
        """Move the claimed input to its destination, a refused one after its reason record.
        Nothing is ever replaced: a name found taken by a file that is not this input's (put
        there by hand meanwhile) means choosing another name."""
        job = work.job
        claimed = self.outbox.claimed_path(job)
        for _ in range(100):
            assert job.dest is not None
            dest = self.outbox.root / job.dest
            if not lexists(claimed):
                # moved before a crash, or before its folders' fsync failed: make it durable
                barrier.add(dest.parent)  # (a reason record is written before the move)
                barrier.add(claimed.parent, left=True)
                return
            if lexists(dest) and os.path.samestat(os.lstat(str(claimed)), os.lstat(str(dest))):
                os.unlink(str(claimed))  # the hard link was made, the unlink was not
                barrier.add(dest.parent)
                barrier.add(claimed.parent, left=True)
                return
            try:
                if job.outcome == Outcome.QUARANTINED:
                    self._write_reason_record(job, dest, barrier)
                dest.parent.mkdir(parents=True, exist_ok=True)
                move_no_replace(claimed, dest, barrier)
                return
            except FileExistsError:
                log.warning("input %s: the name chosen for it in %s was taken meanwhile; "
                            "choosing another (nothing is replaced)",
                            (job.sha256 or job.token)[:12], dest.parent.name)
                self._forget_reason_record(job, dest)
                self.choose_destination(job)
                self.outbox.save(job)
        raise FileExistsError(f"no free destination for job {job.token}")

    def _write_reason_record(self, job: Job, dest: Path, barrier: FolderBarrier) -> None:
        path = Path(str(dest) + REASON_SUFFIX)
        if lexists(path):
            existing = read_json_if_there(path)
            if isinstance(existing, dict) and existing.get("token") == job.token:
                return  # written before a crash
            raise FileExistsError(str(path))
        write_json_new(path, reason_record(job), barrier)

    def _forget_reason_record(self, job: Job, dest: Path) -> None:
        """Remove this job's own reason record at a destination it will not use."""
        path = Path(str(dest) + REASON_SUFFIX)
        existing = read_json_if_there(path) if job.outcome == Outcome.QUARANTINED else None
        if isinstance(existing, dict) and existing.get("token") == job.token:
            os.unlink(str(path))

    # --- the index ---------------------------------------------------------------------

    def record(self, works: list[Work], failures: list[Failure]) -> None:
        """One index append (one fsync) per day for the group, then forget the jobs."""
        by_day: dict[str, list[Work]] = {}
        for work in works:
            if work.job.stage == Stage.MOVED:
                assert work.job.day is not None
                by_day.setdefault(work.job.day, []).append(work)
        for day, day_works in sorted(by_day.items()):
            try:
                self.index.append(day, [(self.index_entry(w.job), w.replay) for w in day_works])
            except Exception as exc:  # noqa: BLE001 - the jobs stay journaled, retried
                failures.extend((w.job, exc) for w in day_works)
                continue
            for work in day_works:
                job = work.job
                failpoints.hit("after_index")
                try:
                    self.outbox.delete(job)
                except OSError as exc:  # retried from its record: the line is found written
                    failures.append((job, exc))
                    continue
                self.counts[job.outcome or Outcome.QUARANTINED] += 1
                log_outcome(job)

    def index_entry(self, job: Job) -> dict[str, Any]:
        classified = job.outcome != Outcome.QUARANTINED
        return {"time": now_iso(), "token": job.token, "id": job.sha256,
                "file_name": job.file_name, "outcome": job.outcome, **job.summary,
                "report": f"reports/{job.sha256}.json" if classified else None,
                "html": f"reports/{job.sha256}.html" if classified and self.config.report.html
                else None,
                "moved_to": job.dest, "reason": job.reason}


def reason_record(job: Job) -> dict[str, Any]:
    """``quarantine/<name>.reason.json``: why the input beside it was refused."""
    return {"schema": QUARANTINE_SCHEMA, "file_name": job.file_name,
            "sha256": job.sha256, "size_bytes": job.size, "reason": job.reason,
            "reason_code": job.reason_code, "received_at": job.claimed_at,
            "quarantined_at": now_iso(), "token": job.token, "moved_to": job.dest,
            "what_to_do": "Fix the cause named in 'reason' and copy the file into the "
                          "inbox again; this copy is kept here untouched."}


def log_outcome(job: Job) -> None:
    # Logs name inputs by content hash only: file names can carry patient names.
    ident = (job.sha256 or "no-hash")[:12]
    if job.outcome == Outcome.QUARANTINED:
        # Only our own words: a reason that quotes the file (a tag, a library's message)
        # has a version without those values, and the full reason is in the record.
        detail = job.reason_log or job.reason or ""
        if job.reason_code in ("DecodeError", "InternalError"):
            detail = "cannot be decoded or processed (details in its quarantine record)"
        detail = "".join(c if c.isprintable() else "?" for c in detail[:160])
        log.warning("quarantined input %s [%s]: %s", ident, job.reason_code, detail)
    elif job.outcome == Outcome.DUPLICATE:
        log.info("input %s is a duplicate of an earlier input; archived, not re-classified",
                 ident)
    else:
        s = job.summary
        log.info("classified input %s: %s (%s)%s", ident, s.get("label"),
                 percent(s.get("confidence") or 0.0),
                 " NEEDS REVIEW" if s.get("needs_review") else "")
