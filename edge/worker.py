"""One input, start to finish, such that a crash at any instant loses and duplicates nothing.

A job goes through four stages (``edge.outbox.Stage``), each recorded in its intent record
(``.state/jobs/<token>.json``) before the next begins:

1. ``claiming`` -> ``claimed`` (``edge.claim``): the record names the inbox file, which is
   renamed into ``.state/claimed/`` (or, across filesystems, copied durably and unlinked).
2. ``claimed`` (``edge.prepare``): the bytes are hashed; ``id`` = sha256. If
   ``reports/<id>.json`` exists from another job (or another job of this run is writing
   it), the input is a duplicate and is not classified again. Otherwise it is decoded and
   classified; a refused input gets a reason. Nothing is written yet.
3. ``claimed`` -> ``decided`` -> ``moved`` (``edge.commit``): the report is written (the
   JSON last: its existence means the report is durable), the destination chosen and
   recorded, the input moved there (a refused one after its ``<name>.reason.json``),
   never replacing anything.
4. ``moved``: one line is appended to the day's index (a replay checks the job's token
   first), and the record is deleted.

Replaying any step is harmless, which is what makes recovery simple: start-up replays every
record left in ``.state/jobs``. A job that crashed the agent ``[limits] max_attempts`` times
(a decoder segfault, say) is quarantined instead of crashing it forever.

Group commit: ``claim`` takes several inputs at once, ``prepare`` writes nothing, and
``commit`` does each later step for a whole group of jobs before the fsyncs that make that
step durable, one fsync per touched folder rather than one per input. For every job the
durable steps happen in exactly the order above, so recovery does not change.
``edge.pipeline`` runs ``commit`` on its own thread while the main loop prepares the next
inputs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .claim import Claim
from .classifier import Classifier
from .commit import Failure, GroupCommit, refuse
from .config import AgentConfig
from .durable import lexists, read_json_if_there
from .index import DailyIndex
from .outbox import Job, Outbox, Outcome, Stage
from .prepare import InFlight, Refusal, Work, classify_file, fingerprint

log = logging.getLogger(__name__)

__all__ = ["Failure", "Work", "Worker", "describe_error"]


class Worker:
    """Claims, prepares and commits jobs; ``counts`` says what became of them."""

    def __init__(self, config: AgentConfig, inbox_root: Path, outbox: Outbox,
                 classifier: Classifier, index: DailyIndex) -> None:
        self.config = config
        self.outbox = outbox
        self.classifier = classifier
        self.counts = {str(outcome): 0 for outcome in Outcome}
        self.in_flight = InFlight()
        self.claiming = Claim(outbox, inbox_root)
        self.committing = GroupCommit(config, outbox, index, self.in_flight, self.counts)

    def claim(self, paths: list[str]) -> tuple[list[Job], list[tuple[str, OSError]]]:
        """Take ``paths`` out of the inbox, as one group (``edge.claim``)."""
        return self.claiming.take(paths)

    def commit(self, group: list[Work]) -> list[Failure]:
        """Make a group of prepared jobs durable (``edge.commit``); return the failures."""
        return self.committing.run(group)

    def render(self, work: Work) -> bool:
        """Draw a prepared job's heat-map and page now, on this thread, unless another
        thread is drawing or has drawn them (``edge.commit``); True if this call did."""
        return self.committing.render(work, wait=False)

    def run(self, job: Job, replay: bool = False, crashed: bool = False) -> str | None:
        """Drive one job to completion from whatever stage it is in; return its outcome.
        ``crashed``: the job was found in the journal at start-up (the agent stopped while
        on it), which counts towards ``[limits] max_attempts``; a retry after a passing
        error (a full disk) does not, nor does a job ``paused`` at a clean stop while it
        waited for one. Raises what stopped it; it stays journaled."""
        if job.stage == Stage.CLAIMING and not self.claiming.resume(job):
            return None
        if job.stage == Stage.CLAIMED and not lexists(self.outbox.claimed_path(job)):
            log.error("the claimed input of job %s was removed from %s by hand; forgetting the "
                      "job", job.token, self.outbox.claimed)
            self.outbox.delete(job)
            return None
        paused, job.paused = job.paused, False
        if job.stage == Stage.CLAIMED:
            if crashed or paused:  # durably, before decoding it: a crash now is counted
                job.attempts += int(crashed)  # tried again after stopping the agent
                self.outbox.save(job)  # paused: the record no longer says so
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
        if job.is_symlink:
            refuse(job, Refusal("SymlinkRefused", "a symbolic link: links are never followed, "
                                "so nothing outside the inbox can be read; copy the real file "
                                "instead"))
            return work
        if job.attempts > self.config.limits.max_attempts:
            refuse(job, Refusal("CrashedAgent",
                                f"processing this file stopped the agent {job.attempts - 1} "
                                "times (a decoder crash or running out of memory); it is set "
                                "aside so the other inputs can be processed"))
            return work
        claimed = self.outbox.claimed_path(job)
        t0 = time.perf_counter()
        found = fingerprint(claimed, self.config, t0)
        job.sha256, job.size = found.sha256, found.size
        if found.refusal is not None:
            refuse(job, found.refusal)
            return work
        assert job.sha256 is not None
        # In-flight first, then on disk: an input leaves the in-flight set only once its
        # report is durable, so between the two checks it cannot slip through both.
        kept = self.in_flight.take_kept(job.token, job.sha256)  # its report failed to write
        holder = self.in_flight.holder(job.sha256)
        if holder is not None and holder != job.token:
            job.outcome = Outcome.DUPLICATE  # of an input whose report is being written
            return work
        # a report that is there but cannot be read now must not be taken for absent: this
        # input's report would replace it (an identical input's, with its name and token)
        existing = read_json_if_there(self.outbox.reports / f"{job.sha256}.json")
        if existing is not None:
            own = existing.get("intake", {}).get("token") == job.token
            job.outcome = Outcome.CLASSIFIED if own else Outcome.DUPLICATE
            return work
        if kept is not None:  # a retry: the same bytes, the report found the first time
            found = kept
        else:
            classify_file(claimed, found, self.classifier, self.config,
                          file_name=job.file_name, token=job.token,
                          received_at=job.claimed_at, t0=t0)
        if found.refusal is not None:
            refuse(job, found.refusal)
            return work
        job.outcome = Outcome.CLASSIFIED
        work.prepared = found
        self.in_flight.hold(job.sha256, job.token)
        return work


def describe_error(exc: BaseException) -> str:
    """An error for the log without file names or values (they can carry patient data)."""
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc.__class__.__name__} (errno {exc.errno})"
    return exc.__class__.__name__
