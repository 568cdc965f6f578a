"""One input, start to finish, such that a crash at any instant loses and duplicates nothing.

Steps, each recorded in the job's intent record (``.state/jobs/<token>.json``) before the
next one starts:

1. ``claiming``: the record names the inbox file; it is renamed into ``.state/claimed/``
   (or, across filesystems, copied durably and then unlinked).
2. ``claimed``: the bytes are hashed; ``id`` = sha256. If ``reports/<id>.json`` exists
   from another job, the input is a duplicate and is not classified again. Otherwise it is
   decoded and classified, and the HTML then the JSON report are written atomically: the
   JSON report existing means the report is durable. A refused input gets a reason.
3. ``decided``: the destination (``archive/<day>/<name>`` or ``quarantine/<name>``) is
   chosen and recorded; for a refusal, ``<name>.reason.json`` is written; then the input is
   moved there without ever replacing an existing file.
4. ``moved``: one line is appended to the day's index (a replay checks the job's token
   first), and the record is deleted.

Replaying any step is harmless, which is what makes recovery simple: start-up replays every
record left in ``.state/jobs``. A job that crashed the agent ``[limits] max_attempts`` times
(a decoder segfault, say) is quarantined instead of crashing it forever.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
import traceback
from pathlib import Path
from typing import Any

from . import failpoints
from .classifier import Classifier
from .config import AgentConfig
from .dicom import uid_hash
from .durable import (
    copy_durable,
    free_name,
    fsync_dir,
    move_no_replace,
    read_json,
    safe_name,
    write_bytes_atomic,
    write_json_atomic,
)
from .errors import DecodeError, UnsupportedInputError
from .index import DailyIndex
from .inputs import decode_file
from .manifest import sha256_file
from .outbox import Job, Outbox
from .pages import report_page
from .report import build_report, local_day, now_iso, summary_line

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, config: AgentConfig, inbox_root: Path, outbox: Outbox,
                 classifier: Classifier, index: DailyIndex) -> None:
        self.config = config
        self.inbox_root = inbox_root
        self.outbox = outbox
        self.classifier = classifier
        self.index = index
        self.counts = {"classified": 0, "duplicate": 0, "quarantined": 0}

    # --- claiming --------------------------------------------------------------------

    def claim(self, path: str) -> Job | None:
        """Take ``path`` out of the inbox into ``.state/claimed``; None if it is gone."""
        src = Path(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        is_link = stat.S_ISLNK(st.st_mode)
        if not is_link and not stat.S_ISREG(st.st_mode):
            return None
        job = Job(token=self.outbox.new_token(), stage="claiming",
                  source=os.path.relpath(path, str(self.inbox_root)), file_name=src.name,
                  claimed_at=now_iso(), is_symlink=is_link)
        self.outbox.save(job)
        dst = self.outbox.claimed_path(job)
        try:
            try:
                os.rename(path, str(dst))
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                job.cross_filesystem = True  # recorded first: recovery may unlink the source
                self.outbox.save(job)
                self._claim_across_filesystems(src, dst, is_link)
        except FileNotFoundError:
            self.outbox.delete(job)
            return None
        except OSError:
            self.outbox.delete(job)
            raise
        fsync_dir(dst.parent)
        fsync_dir(src.parent)
        failpoints.hit("after_claim")
        job.is_symlink = os.path.islink(str(dst))  # what we hold now, whatever was checked
        job.stage = "claimed"
        job.attempts = 1  # counted now: the decoding that may crash comes next
        # Not fsynced: if this update is lost, recovery finds the "claiming" record and the
        # file in .state/claimed, and finishes the claim from there.
        self.outbox.save(job, durable=False)
        return job

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

    def run(self, job: Job, replay: bool = False) -> str | None:
        """Drive ``job`` to completion from whatever stage it is in; return its outcome."""
        if job.stage == "claiming" and not self._resume_claim(job):
            return None
        if job.stage == "claimed" and not os.path.lexists(str(self.outbox.claimed_path(job))):
            log.error("the claimed input of job %s was removed from %s by hand; forgetting the "
                      "job", job.token, self.outbox.claimed)
            self.outbox.delete(job)
            return None
        if job.stage == "claimed":
            self._decide(job, replay)
        if job.stage == "decided":
            self._move(job)
        if job.stage == "moved":
            self._record(job, replay)
        return job.outcome

    def _decide(self, job: Job, replay: bool) -> None:
        if replay:  # this input is tried again: count it, durably, before decoding it
            job.attempts += 1
            self.outbox.save(job)
        report = self._outcome(job)
        if job.outcome != "quarantined":
            job.summary = summary_line(report)
        failpoints.hit("after_report")
        self._choose_destination(job)
        job.stage = "decided"
        self.outbox.save(job)

    def _outcome(self, job: Job) -> dict[str, Any] | None:
        """Set the job's outcome (writing the report if classified); return the report."""
        claimed = self.outbox.claimed_path(job)
        if job.is_symlink:
            self._refuse(job, "SymlinkRefused", "a symbolic link: links are never followed, "
                         "so nothing outside the inbox can be read; copy the real file instead")
            return None
        if job.attempts > self.config.limits.max_attempts:
            self._refuse(job, "CrashedAgent",
                         f"processing this file stopped the agent {job.attempts - 1} times "
                         "(a decoder crash or running out of memory); it is set aside so the "
                         "other inputs can be processed")
            return None
        t0 = time.perf_counter()
        try:
            job.sha256, job.size = self._hash(claimed)
        except PermissionError:
            self._refuse(job, "UnreadableInput",
                         "the agent is not allowed to read this file (permission denied): give "
                         "the agent's user read access and copy it into the inbox again")
            return None
        timings = {"hash": (time.perf_counter() - t0) * 1000}
        existing = read_json(self.outbox.reports / f"{job.sha256}.json")
        if existing is not None:
            own = existing.get("intake", {}).get("token") == job.token
            job.outcome = "classified" if own else "duplicate"
            return existing
        return self._classify(job, claimed, timings, t0)

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

    def _classify(self, job: Job, claimed: Path, timings: dict[str, float],
                  t0: float) -> dict[str, Any] | None:
        t1 = time.perf_counter()
        try:
            decoded = decode_file(claimed, self.config.dicom, self.config.limits)
        except UnsupportedInputError as exc:
            self._refuse(job, exc.__class__.__name__, str(exc))
            return None
        except MemoryError:
            self._refuse(job, "InputLimitError", "not enough memory to decode this input")
            return None
        except Exception as exc:  # noqa: BLE001 - a library bug on a hostile file: refuse it
            # The message is not logged: library messages can quote element values.
            log.error("unexpected %s decoding input %s; quarantined", exc.__class__.__name__,
                      (job.sha256 or "")[:12])
            log.debug("where: %s", "".join(traceback.format_tb(exc.__traceback__)))
            self._refuse(job, DecodeError.__name__,
                         f"the file could not be decoded ({exc.__class__.__name__})")
            return None
        timings["decode"] = (time.perf_counter() - t1) * 1000
        prediction = self.classifier.classify(decoded)
        timings.update(prediction.timings_ms)
        t2 = time.perf_counter()
        assert job.sha256 is not None and job.size is not None
        report = build_report(sha256=job.sha256, file_name=job.file_name, size=job.size,
                              decoded=decoded, prediction=prediction,
                              model=self.classifier.describe(), timings_ms=timings,
                              token=job.token, received_at=job.claimed_at)
        report["timings_ms"]["total"] = round((time.perf_counter() - t0) * 1000, 2)
        base = self.outbox.reports / job.sha256
        if self.config.report.html:
            # The page's data is fsynced; its folder is not: the JSON report written next
            # goes to the same folder and that folder fsync makes both renames durable.
            write_bytes_atomic(base.with_suffix(".html"),
                               report_page(report, prediction.model_input), sync_folder=False)
        write_json_atomic(base.with_suffix(".json"), report)  # from now on, the report exists
        report["timings_ms"]["report"] = round((time.perf_counter() - t2) * 1000, 2)
        job.outcome = "classified"
        sop = (report.get("dicom") or {}).get("sop_instance_uid")
        log.debug("input %s%s decoded as %s", job.sha256[:12],
                  f" (SOP {uid_hash(sop)})" if sop else "", decoded.kind)
        return report

    def _refuse(self, job: Job, code: str, reason: str) -> None:
        job.outcome, job.reason_code, job.reason = "quarantined", code, reason

    def _choose_destination(self, job: Job) -> None:
        name = safe_name(job.file_name)
        tag = (job.sha256 or job.token)[:8]
        job.day = local_day()
        if job.outcome == "quarantined":
            folder = self.outbox.quarantine
            dest = free_name(folder, name, tag)
            while os.path.lexists(str(dest) + ".reason.json"):
                dest = free_name(folder, dest.name, tag + "r")
        else:
            folder = self.outbox.archive / job.day
            folder.mkdir(parents=True, exist_ok=True)
            dest = free_name(folder, name, tag)
        job.dest = self.outbox.relative(dest)

    def _move(self, job: Job) -> None:
        assert job.dest is not None
        dest = self.outbox.root / job.dest
        claimed = self.outbox.claimed_path(job)
        if job.outcome == "quarantined":
            write_json_atomic(Path(str(dest) + ".reason.json"), self._reason_record(job))
        if os.path.lexists(str(claimed)):
            if os.path.lexists(str(dest)):
                if os.path.samestat(os.lstat(str(claimed)), os.lstat(str(dest))):
                    os.unlink(str(claimed))  # the hard link was made, the unlink was not
                    fsync_dir(claimed.parent)
                else:  # cannot happen with one agent per outbox; never overwrite anyway
                    self._choose_destination(job)
                    self.outbox.save(job)
                    return self._move(job)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                move_no_replace(claimed, dest)
        failpoints.hit("after_move")
        job.stage = "moved"
        self.outbox.save(job, durable=False)  # if lost: the move is found done, index replayed

    def _reason_record(self, job: Job) -> dict[str, Any]:
        return {"schema": "neuroedge.quarantine/1", "file_name": job.file_name,
                "sha256": job.sha256, "size_bytes": job.size, "reason": job.reason,
                "reason_code": job.reason_code, "received_at": job.claimed_at,
                "quarantined_at": now_iso(), "token": job.token,
                "what_to_do": "Fix the cause named in 'reason' and copy the file into the "
                              "inbox again; this copy is kept here untouched."}

    def _record(self, job: Job, replay: bool) -> None:
        assert job.day is not None
        entry = {"time": now_iso(), "token": job.token, "id": job.sha256,
                 "file_name": job.file_name, "outcome": job.outcome, **job.summary,
                 "report": f"reports/{job.sha256}.json" if job.outcome != "quarantined"
                 else None,
                 "html": f"reports/{job.sha256}.html" if job.outcome != "quarantined"
                 and self.config.report.html else None,
                 "moved_to": job.dest, "reason": job.reason}
        self.index.append(job.day, entry, replay=replay)
        failpoints.hit("after_index")
        self.outbox.delete(job)
        self.counts[job.outcome or "quarantined"] += 1
        self._log_outcome(job)

    @staticmethod
    def _log_outcome(job: Job) -> None:
        # Logs name inputs by content hash only: file names can carry patient names.
        ident = (job.sha256 or "no-hash")[:12]
        if job.outcome == "quarantined":
            detail = job.reason if job.reason_code not in ("DecodeError",) else (
                "cannot be decoded (details in the quarantine .reason.json)")
            log.warning("quarantined input %s [%s]: %s", ident, job.reason_code,
                        (detail or "")[:160])
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
