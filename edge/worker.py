"""One input, start to finish, such that a crash at any instant loses and duplicates nothing.

Steps, each recorded in the job's intent record (``.state/jobs/<token>.json``) before the
next one starts:

1. ``claiming``: the record names the inbox file; it is renamed into ``.state/claimed/``
   (or, across filesystems, copied durably and then unlinked).
2. ``claimed``: the bytes are hashed; ``id`` = sha256. If ``reports/<id>.json`` exists
   from another job (or another job of this run is writing it), the input is a duplicate
   and is not classified again. Otherwise it is decoded and classified, and the HTML then
   the JSON report are written atomically: the JSON report existing means the report is
   durable. A refused input gets a reason.
3. ``decided``: the destination (``archive/<day>/<name>`` or ``quarantine/<name>``) is
   chosen and recorded; for a refusal, ``<name>.reason.json`` is written; then the input is
   moved there without ever replacing an existing file.
4. ``moved``: one line is appended to the day's index (a replay checks the job's token
   first), and the record is deleted.

Replaying any step is harmless, which is what makes recovery simple: start-up replays every
record left in ``.state/jobs``. A job that crashed the agent ``[limits] max_attempts`` times
(a decoder segfault, say) is quarantined instead of crashing it forever.

Group commit: ``claim`` takes several inputs at once, ``prepare`` (hash, decode, classify)
writes nothing, and ``commit`` does each later step for a whole group of jobs before the
fsyncs that make that step durable, one fsync per touched folder (``FolderBarrier``) rather
than one per input. For every job the durable steps happen in exactly the order above, so
recovery does not change. ``edge.pipeline`` runs ``commit`` on its own thread while the main
loop prepares the next inputs.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Tuple

from . import failpoints, heatmap
from .classifier import Classifier
from .config import AgentConfig
from .dicom import uid_hash
from .durable import (
    FolderBarrier,
    copy_durable,
    display_name,
    free_name,
    fsync_dir,
    json_bytes,
    move_no_replace,
    read_json,
    safe_name,
    write_bytes_atomic,
    write_json_new,
)
from .errors import DecodeError, InputLimitError, UnsupportedInputError
from .index import DailyIndex
from .inputs import decode_file
from .manifest import sha256_file
from .outbox import Job, Outbox
from .pages import report_page
from .report import build_report, local_day, now_iso, summary_line

log = logging.getLogger(__name__)
REASON_SUFFIX = ".reason.json"  # quarantine/<name> + this: why <name> was refused


class SharedReportMissing(Exception):
    """A duplicate's report (written by another job) is not on disk: prepare it again."""


@dataclass
class Work:
    """A job on its way through ``commit``, with what ``prepare`` found. Never journaled:
    after a crash the job is prepared again from its record."""

    job: Job
    replay: bool = False  # the job may have done steps before (crash, retry): check first
    report: dict[str, Any] | None = None  # a new report to write (classified just now)
    report_json: bytes = b""  # ...and its JSON, made when it was classified
    thumbnail: Any = None  # the uint8 picture the model saw, for the HTML page
    heatmap: Any = None  # where the model looked (0..1 map), drawn over the thumbnail


Failure = Tuple[Job, Exception]


class Worker:
    def __init__(self, config: AgentConfig, inbox_root: Path, outbox: Outbox,
                 classifier: Classifier, index: DailyIndex) -> None:
        self.config = config
        self.inbox_root = inbox_root
        self.outbox = outbox
        self.classifier = classifier
        self.index = index
        self.counts = {"classified": 0, "duplicate": 0, "quarantined": 0}
        # sha256 -> token of the job whose new report is classified but not yet durable:
        # an identical input prepared meanwhile is a duplicate of it, not classified again.
        self._in_flight: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- claiming --------------------------------------------------------------------

    def claim(self, paths: list[str]) -> tuple[list[Job], list[tuple[str, OSError]]]:
        """Take ``paths`` out of the inbox into ``.state/claimed``, as one group.

        Returns the jobs (a path gone meanwhile, or not a regular file or link, has none) and
        the paths that could not be taken with the error (the caller leaves them a while).
        Every intent record is durable before any input moves.
        """
        pending: list[tuple[Job, str]] = []
        refused: list[tuple[str, OSError]] = []
        for path in paths:
            try:
                st = os.lstat(path)
                is_link = stat.S_ISLNK(st.st_mode)
                if not is_link and not stat.S_ISREG(st.st_mode):
                    continue
                # source: the exact name, to finish the claim after a crash (the journal
                # keeps undecodable bytes); file_name: the name as reports can show it
                job = Job(token=self.outbox.new_token(), stage="claiming",
                          source=os.path.relpath(path, str(self.inbox_root)),
                          file_name=display_name(os.path.basename(path)),
                          claimed_at=now_iso(), is_symlink=is_link)
                self.outbox.save(job, sync_folder=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                refused.append((path, exc))
                continue
            pending.append((job, path))
        if pending:
            fsync_dir(self.outbox.jobs)
        moved = FolderBarrier()
        taken: list[Job] = []
        for job, path in pending:
            try:
                self._take(job, path, moved)
            except OSError as exc:
                self.outbox.delete(job)
                if not isinstance(exc, FileNotFoundError):
                    refused.append((path, exc))
                continue
            taken.append(job)
        moved.sync()
        for job in taken:
            failpoints.hit("after_claim")
            job.is_symlink = os.path.islink(str(self.outbox.claimed_path(job)))  # what we hold
            job.stage = "claimed"
            job.attempts = 1  # counted now: the decoding that may crash comes next
            # Not fsynced: if this update is lost, recovery finds the "claiming" record and
            # the file in .state/claimed, and finishes the claim from there.
            self.outbox.save(job, durable=False)
        return taken, refused

    def _take(self, job: Job, path: str, barrier: FolderBarrier) -> None:
        src, dst = Path(path), self.outbox.claimed_path(job)
        try:
            os.rename(path, str(dst))
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            job.cross_filesystem = True  # recorded first: recovery may unlink the source
            self.outbox.save(job)
            self._claim_across_filesystems(src, dst, job.is_symlink)
        barrier.add(dst.parent)
        barrier.add(src.parent)

    @staticmethod
    def _claim_across_filesystems(src: Path, dst: Path, is_link: bool) -> None:
        if is_link:
            os.symlink(os.readlink(str(src)), str(dst))
        else:
            fd = os.open(str(src), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise FileNotFoundError(str(src))
                copy_durable(fd, dst)
            finally:
                os.close(fd)
        os.unlink(str(src))

    def _resume_claim(self, job: Job) -> bool:
        """Finish or forget an interrupted claim; True if the input is now in ``claimed``."""
        src = self.inbox_root / job.source
        dst = self.outbox.claimed_path(job)
        if not os.path.lexists(str(dst)):
            self.outbox.delete(job)  # never taken: the inbox scan finds the file again
            return False
        if job.cross_filesystem and os.path.lexists(str(src)) and not os.path.islink(str(src)):
            # copied across filesystems, then crashed before unlinking the original
            try:
                if os.path.getsize(str(src)) == os.path.getsize(str(dst)) and sha256_file(
                        src) == sha256_file(dst):
                    os.unlink(str(src))
                    fsync_dir(src.parent)
            except OSError:
                pass
        job.is_symlink = os.path.islink(str(dst))
        job.stage = "claimed"
        self.outbox.save(job)
        return True

    # --- the job ---------------------------------------------------------------------

    def run(self, job: Job, replay: bool = False, crashed: bool = False) -> str | None:
        """Drive one job to completion from whatever stage it is in; return its outcome.
        ``crashed``: the job was found in the journal at start-up (the agent stopped while
        on it), which counts towards ``[limits] max_attempts``; a retry after a passing
        error (a full disk) does not. Raises what stopped it; it stays journaled."""
        if job.stage == "claiming" and not self._resume_claim(job):
            return None
        if job.stage == "claimed" and not os.path.lexists(str(self.outbox.claimed_path(job))):
            log.error("the claimed input of job %s was removed from %s by hand; forgetting the "
                      "job", job.token, self.outbox.claimed)
            self.outbox.delete(job)
            return None
        if job.stage == "claimed":
            if crashed:  # this input is tried again: count it, durably, before decoding it
                job.attempts += 1
                self.outbox.save(job)
            work = self.prepare(job, replay=replay)
        else:
            work = Work(job, replay=replay)
        failures = self.commit([work])
        if failures:
            raise failures[0][1]
        return job.outcome

    def prepare(self, job: Job, replay: bool = False) -> Work:
        """Hash, check for a duplicate, decode and classify a claimed job. Writes nothing:
        what it finds waits in the returned ``Work`` for ``commit``."""
        work = Work(job, replay=replay)
        claimed = self.outbox.claimed_path(job)
        if job.is_symlink:
            self._refuse(job, "SymlinkRefused", "a symbolic link: links are never followed, "
                         "so nothing outside the inbox can be read; copy the real file instead")
            return work
        if job.attempts > self.config.limits.max_attempts:
            self._refuse(job, "CrashedAgent",
                         f"processing this file stopped the agent {job.attempts - 1} times "
                         "(a decoder crash or running out of memory); it is set aside so the "
                         "other inputs can be processed")
            return work
        t0 = time.perf_counter()
        try:
            size = os.lstat(str(claimed)).st_size
            if size > self.config.limits.max_file_mb * 1024 * 1024:
                # refused before hashing: reading gigabytes to name a refusal is wasted time
                job.size = size
                exc = InputLimitError.file_too_large(size, self.config.limits.max_file_mb)
                self._refuse(job, exc.__class__.__name__, str(exc))
                return work
            job.sha256, job.size = self._hash(claimed)
        except PermissionError:
            self._refuse(job, "UnreadableInput",
                         "the agent is not allowed to read this file (permission denied): give "
                         "the agent's user read access and copy it into the inbox again")
            return work
        timings = {"hash": (time.perf_counter() - t0) * 1000}
        # In-flight first, then on disk: an input leaves the in-flight set only once its
        # report is durable, so between the two checks it cannot slip through both.
        with self._lock:
            holder = self._in_flight.get(job.sha256)
        if holder is not None and holder != job.token:
            job.outcome = "duplicate"  # of an input whose report is being written
            return work
        existing = read_json(self.outbox.reports / f"{job.sha256}.json")
        if existing is not None:
            own = existing.get("intake", {}).get("token") == job.token
            job.outcome = "classified" if own else "duplicate"
            return work
        self._classify(work, claimed, timings, t0)
        if work.report is not None:
            with self._lock:
                self._in_flight[job.sha256] = job.token
        return work

    def _hash(self, path: Path) -> tuple[str, int]:
        """sha256 of a file no one is still writing (re-hashed if it changed meanwhile)."""
        digest, size = "", 0
        for _ in range(5):
            before = os.stat(str(path))
            digest = sha256_file(path)
            after = os.stat(str(path))
            size = after.st_size
            if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns):
                break
            log.warning("input %s changed while being read; waiting for it to settle",
                        digest[:12])
            time.sleep(max(self.config.watch.settle_seconds, 0.5))
        return digest, size

    def _classify(self, work: Work, claimed: Path, timings: dict[str, float],
                  t0: float) -> None:
        job = work.job
        t1 = time.perf_counter()
        try:
            decoded = decode_file(claimed, self.config.dicom, self.config.limits)
        except UnsupportedInputError as exc:
            self._refuse(job, exc.__class__.__name__, str(exc), exc.log_message)
            return
        except MemoryError:
            self._refuse(job, "InputLimitError", "not enough memory to decode this input")
            return
        except Exception as exc:  # noqa: BLE001 - a library bug on a hostile file: refuse it
            self._refuse_unexpected(job, exc, "decoded",
                                    f"the file could not be decoded ({exc.__class__.__name__})")
            return
        timings["decode"] = (time.perf_counter() - t1) * 1000
        try:
            prediction = self.classifier.classify(decoded)
            timings.update(prediction.timings_ms)
            assert job.sha256 is not None and job.size is not None
            report = build_report(sha256=job.sha256, file_name=job.file_name, size=job.size,
                                  decoded=decoded, prediction=prediction,
                                  model=self.classifier.describe(), timings_ms=timings,
                                  token=job.token, received_at=job.claimed_at)
            report["timings_ms"]["total"] = round((time.perf_counter() - t0) * 1000, 2)
            # what cannot be written as JSON is refused now, instead of failing at every retry
            report_json = json_bytes(report)
        except UnsupportedInputError as exc:
            self._refuse(job, exc.__class__.__name__, str(exc), exc.log_message)
            return
        except Exception as exc:  # noqa: BLE001 - the same input would fail the same way
            self._refuse_unexpected(job, exc, "classified",
                                    "the agent could not classify this file "
                                    f"({exc.__class__.__name__}); it is kept here for a look")
            return
        job.outcome = "classified"
        work.report, work.report_json = report, report_json
        work.thumbnail = prediction.model_input
        work.heatmap = prediction.heatmap
        sop = (report.get("dicom") or {}).get("sop_instance_uid")
        log.debug("input %s%s decoded as %s", job.sha256[:12],
                  f" (SOP {uid_hash(sop)})" if sop else "", decoded.kind)

    def _refuse_unexpected(self, job: Job, exc: Exception, doing: str, reason: str) -> None:
        """Quarantine an input that made the agent fail in a way that does not pass (a bug
        in a library or here): retrying it would fail the same way, forever."""
        # The message is not logged: library messages can quote element values.
        log.error("unexpected %s while input %s was %s; quarantined", exc.__class__.__name__,
                  (job.sha256 or "")[:12], doing)
        log.debug("where: %s", "".join(traceback.format_tb(exc.__traceback__)))
        self._refuse(job, DecodeError.__name__ if doing == "decoded" else "InternalError",
                     reason)

    def _refuse(self, job: Job, code: str, reason: str, log_text: str | None = None) -> None:
        """``log_text``: what the log may say instead of ``reason`` when the reason quotes
        values from the file (a DICOM tag can hold a patient's name)."""
        job.outcome, job.reason_code, job.reason = "quarantined", code, reason
        job.reason_log = log_text if log_text != reason else None

    # --- committing a group ------------------------------------------------------------

    def commit(self, group: list[Work]) -> list[Failure]:
        """Finish every job of ``group``, each step for the whole group, then its fsyncs.

        Returns the jobs that failed (a full disk, a vanished folder), with the error: each
        stays journaled at its last durable step and is retried later with ``run``.
        """
        failures: list[Failure] = []

        def step(stage: str, do: Callable[[Work, FolderBarrier], None],
                 works: list[Work]) -> list[Work]:
            barrier, done = FolderBarrier(), []
            for work in works:
                if work.job.stage != stage:
                    done.append(work)
                    continue
                try:
                    do(work, barrier)
                except Exception as exc:  # noqa: BLE001 - the job stays journaled, retried
                    failures.append((work.job, exc))
                    self._release(work)
                    continue
                done.append(work)
            barrier.sync()
            return done

        works = step("claimed", self._write_report, group)
        for work in works:
            self._release(work)  # its report is durable: a duplicate now finds it on disk
            if work.job.stage == "claimed":
                failpoints.hit("after_report")
        decided = set()
        works = step("claimed", lambda w, b: self._decide(w, b, decided), works)
        works = step("decided", self._move, works)
        for work in works:
            if work.job.stage == "decided":
                failpoints.hit("after_move")
                work.job.stage = "moved"
                # if lost: the move is found done and the index line replayed
                self.outbox.save(work.job, durable=False)
        self._record(works, failures)
        return failures

    def _write_report(self, work: Work, barrier: FolderBarrier) -> None:
        """Write a new report's HTML page then its JSON (data fsynced, folder in ``barrier``)."""
        if work.report is None:
            return
        base = self.outbox.reports / str(work.job.sha256)
        page = drawn = None  # issue 13: drawn: the heat-map PNG, for the file and the page
        try:
            if work.heatmap is not None and work.thumbnail is not None:
                drawn = heatmap.png_bytes(heatmap.overlay(work.thumbnail, work.heatmap))
            if self.config.report.html:
                page = report_page(work.report, work.thumbnail, drawn)
        except Exception as exc:  # noqa: BLE001 - pure computation: it would fail again
            self._release(work)
            work.report = None
            self._refuse_unexpected(work.job, exc, "written",
                                    "the agent could not write this file's report "
                                    f"({exc.__class__.__name__}); it is kept here for a look")
            return
        if drawn is not None:
            write_bytes_atomic(self.outbox.reports / work.report["heatmap"]["file"], drawn,
                               sync_folder=False)
        if page is not None:
            write_bytes_atomic(base.with_suffix(".html"), page, sync_folder=False)
        write_bytes_atomic(base.with_suffix(".json"), work.report_json, sync_folder=False)
        barrier.add(self.outbox.reports)

    def _release(self, work: Work) -> None:
        if work.report is not None:
            with self._lock:
                if self._in_flight.get(str(work.job.sha256)) == work.job.token:
                    del self._in_flight[str(work.job.sha256)]
            work.thumbnail = work.heatmap = None

    def _decide(self, work: Work, barrier: FolderBarrier, reserved: set) -> None:
        job = work.job
        if job.outcome != "quarantined":
            report = work.report or read_json(self.outbox.reports / f"{job.sha256}.json")
            if report is None:
                raise SharedReportMissing(f"reports/{job.sha256}.json")
            job.summary = summary_line(report)
        self._choose_destination(job, barrier, reserved)
        job.stage = "decided"
        self.outbox.save(job, sync_folder=False)
        barrier.add(self.outbox.jobs)

    def _choose_destination(self, job: Job, barrier: FolderBarrier | None = None,
                            reserved: set | None = None) -> None:
        """Pick a free name, also free of names ``reserved`` by other jobs of the group. In
        quarantine the name's reason record must be free too."""
        name = safe_name(job.file_name)
        tag = (job.sha256 or job.token)[:8]
        taken = reserved if reserved is not None else set()
        job.day = local_day()
        if job.outcome == "quarantined":
            dest = free_name(self.outbox.quarantine, name, tag, taken, (REASON_SUFFIX,))
        else:
            folder = self.outbox.archive / job.day
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                if barrier is not None:
                    barrier.add(self.outbox.archive)  # the new day folder's own entry
            dest = free_name(folder, name, tag, taken)
        job.dest = self.outbox.relative(dest)

    def _move(self, work: Work, barrier: FolderBarrier) -> None:
        """Move the claimed input to its destination, a refused one after its reason record.
        Nothing is ever replaced: a name found taken by a file that is not this input's (put
        there by hand meanwhile) means choosing another name."""
        job = work.job
        claimed = self.outbox.claimed_path(job)
        for _ in range(100):
            assert job.dest is not None
            dest = self.outbox.root / job.dest
            if not os.path.lexists(str(claimed)):
                return  # moved before a crash (a reason record is written before the move)
            if os.path.lexists(str(dest)) and os.path.samestat(os.lstat(str(claimed)),
                                                              os.lstat(str(dest))):
                os.unlink(str(claimed))  # the hard link was made, the unlink was not
                barrier.add(claimed.parent)
                return
            try:
                if job.outcome == "quarantined":
                    self._write_reason_record(job, dest, barrier)
                dest.parent.mkdir(parents=True, exist_ok=True)
                move_no_replace(claimed, dest, barrier)
                return
            except FileExistsError:
                log.warning("input %s: the name chosen for it in %s was taken meanwhile; "
                            "choosing another (nothing is replaced)",
                            (job.sha256 or job.token)[:12], dest.parent.name)
                self._forget_reason_record(job, dest)
                self._choose_destination(job)
                self.outbox.save(job)
        raise FileExistsError(f"no free destination for job {job.token}")

    def _write_reason_record(self, job: Job, dest: Path, barrier: FolderBarrier) -> None:
        path = Path(str(dest) + REASON_SUFFIX)
        if os.path.lexists(str(path)):
            existing = read_json(path)
            if isinstance(existing, dict) and existing.get("token") == job.token:
                return  # written before a crash
            raise FileExistsError(str(path))
        write_json_new(path, self._reason_record(job), barrier)

    def _forget_reason_record(self, job: Job, dest: Path) -> None:
        """Remove this job's own reason record at a destination it will not use."""
        path = Path(str(dest) + REASON_SUFFIX)
        existing = read_json(path) if job.outcome == "quarantined" else None
        if isinstance(existing, dict) and existing.get("token") == job.token:
            os.unlink(str(path))

    def _reason_record(self, job: Job) -> dict[str, Any]:
        return {"schema": "neuroedge.quarantine/1", "file_name": job.file_name,
                "sha256": job.sha256, "size_bytes": job.size, "reason": job.reason,
                "reason_code": job.reason_code, "received_at": job.claimed_at,
                "quarantined_at": now_iso(), "token": job.token, "moved_to": job.dest,
                "what_to_do": "Fix the cause named in 'reason' and copy the file into the "
                              "inbox again; this copy is kept here untouched."}

    def _record(self, works: list[Work], failures: list[Failure]) -> None:
        """One index append (one fsync) per day for the group, then forget the jobs."""
        by_day: dict[str, list[Work]] = {}
        for work in works:
            if work.job.stage == "moved":
                assert work.job.day is not None
                by_day.setdefault(work.job.day, []).append(work)
        for day, day_works in sorted(by_day.items()):
            try:
                self.index.append(day, [(self._index_entry(w.job), w.replay) for w in day_works])
            except Exception as exc:  # noqa: BLE001 - the jobs stay journaled, retried
                failures.extend((w.job, exc) for w in day_works)
                continue
            for work in day_works:
                job = work.job
                failpoints.hit("after_index")
                self.outbox.delete(job)
                self.counts[job.outcome or "quarantined"] += 1
                self._log_outcome(job)

    def _index_entry(self, job: Job) -> dict[str, Any]:
        classified = job.outcome != "quarantined"
        return {"time": now_iso(), "token": job.token, "id": job.sha256,
                "file_name": job.file_name, "outcome": job.outcome, **job.summary,
                "report": f"reports/{job.sha256}.json" if classified else None,
                "html": f"reports/{job.sha256}.html" if classified and self.config.report.html
                else None,
                "moved_to": job.dest, "reason": job.reason}

    @staticmethod
    def _log_outcome(job: Job) -> None:
        # Logs name inputs by content hash only: file names can carry patient names.
        ident = (job.sha256 or "no-hash")[:12]
        if job.outcome == "quarantined":
            # Only our own words: a reason that quotes the file (a tag, a library's message)
            # has a version without those values, and the full reason is in the record.
            detail = job.reason_log or job.reason or ""
            if job.reason_code in ("DecodeError", "InternalError"):
                detail = "cannot be decoded or processed (details in its quarantine record)"
            detail = "".join(c if c.isprintable() else "?" for c in detail[:160])
            log.warning("quarantined input %s [%s]: %s", ident, job.reason_code, detail)
        elif job.outcome == "duplicate":
            log.info("input %s is a duplicate of an earlier input; archived, not re-classified",
                     ident)
        else:
            s = job.summary
            log.info("classified input %s: %s (%.2f)%s", ident, s.get("label"),
                     s.get("confidence") or 0.0, " NEEDS REVIEW" if s.get("needs_review") else "")


def describe_error(exc: BaseException) -> str:
    """An error for the log without file names or values (they can carry patient data)."""
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc.__class__.__name__} (errno {exc.errno})"
    return exc.__class__.__name__
