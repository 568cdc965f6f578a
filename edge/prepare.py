"""Step 2 of a job: reading one input (size, hash, decode, classify, build the report).

Writes nothing: what it finds waits in a ``Prepared`` for the commit (``edge.commit``). The
agent's worker and ``edge-agent classify`` both read inputs through ``fingerprint`` and
``classify_file``, so a file is judged the same way whichever way it came.

A refusal is a ``Refusal``, never an exception: an input the model was not made for, one
that cannot be read, and one that makes the agent fail in a way a retry would repeat (a
library bug on a hostile file, a value that cannot be written as JSON). Only failures that
pass (an ``OSError`` other than a permission: a full disk, a vanished share) are raised,
and the job is retried later.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .classifier import Classifier
from .config import AgentConfig
from .decoded import raise_if_passing
from .dicom import uid_hash
from .durable import json_bytes
from .errors import DecodeError, InputLimitError, UnsupportedInputError
from .inputs import check_regular_file, decode_file
from .manifest import sha256_file
from .outbox import Job
from .report import build_report

log = logging.getLogger(__name__)


@dataclass
class Refusal:
    """Why an input is quarantined. ``log_text``: the reason without values quoted from the
    file (a DICOM tag can hold a patient's name), for the log; None when nothing is quoted."""

    code: str
    reason: str
    log_text: str | None = None

    @classmethod
    def of(cls, exc: UnsupportedInputError) -> Refusal:
        return cls(exc.__class__.__name__, str(exc), exc.log_message)


@dataclass
class Prepared:
    """What reading one input found."""

    sha256: str | None = None
    size: int | None = None
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage
    refusal: Refusal | None = None
    report: dict[str, Any] | None = None  # a new report (classified just now)
    report_json: bytes = b""  # ...and its JSON, made when it was classified
    thumbnail: Any = None  # the uint8 picture the model saw, for the HTML page
    heatmap: Any = None  # where the model looked (0..1 map), drawn over the thumbnail
    rendered: bool = False  # the two below are made (``GroupCommit.render``), or failed
    drawing: threading.Lock = field(default_factory=threading.Lock)  # held while drawing
    heatmap_png: bytes | None = None  # the heat-map drawn over the thumbnail, as a PNG
    page: bytes | None = None  # the HTML page (it embeds the same PNG)
    written: bool = False  # the report's JSON is on disk (``GroupCommit.write_report``)


@dataclass
class Work:
    """A job on its way through the commit, with what ``prepare`` found. Never journaled:
    after a crash the job is prepared again from its record."""

    job: Job
    replay: bool = False  # the job may have done steps before (crash, retry): check first
    prepared: Prepared | None = None  # set when a new report waits to be written


def fingerprint(path: Path, config: AgentConfig, t0: float) -> Prepared:
    """Size and sha256 of a regular file, or a refusal (too large: before reading it; not
    readable by this user). Other ``OSError`` are raised: they pass."""
    found = Prepared()
    try:
        check_regular_file(path)  # a FIFO or a device would block or never end
        size = os.stat(str(path)).st_size
        if size > config.limits.max_file_mb * 1024 * 1024:
            # refused before hashing: reading gigabytes to name a refusal is wasted time
            found.size = size
            found.refusal = Refusal.of(InputLimitError.file_too_large(
                size, config.limits.max_file_mb))
            return found
        found.sha256, found.size = _stable_hash(path, config.watch.settle_seconds)
    except UnsupportedInputError as exc:
        found.refusal = Refusal.of(exc)
        return found
    except PermissionError:
        found.refusal = Refusal(
            "UnreadableInput", "the agent is not allowed to read this file (permission "
            "denied): give the agent's user read access and copy it into the inbox again")
        return found
    found.timings["hash"] = (time.perf_counter() - t0) * 1000
    return found


# The longest one wait for a file still changing after its claim: five of them stay well
# inside the unit's WatchdogSec (3 min; no ping while an input is fingerprinted), whatever
# [watch] settle_seconds says (a slow share's, 60 s, would have had the agent killed).
SETTLE_WAIT_MAX = 20.0


def _stable_hash(path: Path, settle_seconds: float) -> tuple[str, int]:
    """sha256 of a file no one is still writing (re-hashed if it changed meanwhile)."""
    digest, size = "", 0
    for _ in range(5):
        before = os.stat(str(path))
        digest = sha256_file(path)
        after = os.stat(str(path))
        size = after.st_size
        if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns):
            break
        log.warning("input %s changed while being read; waiting for it to settle", digest[:12])
        time.sleep(min(max(settle_seconds, 0.5), SETTLE_WAIT_MAX))
    return digest, size


def classify_file(path: Path, found: Prepared, classifier: Classifier, config: AgentConfig,
                  *, file_name: str, token: str, received_at: str, t0: float) -> None:
    """Decode and classify a fingerprinted input, and build its report (or its refusal)."""
    assert found.sha256 is not None and found.size is not None
    t1 = time.perf_counter()
    try:
        decoded = decode_file(path, config.dicom, config.limits)
    except UnsupportedInputError as exc:
        found.refusal = Refusal.of(exc)
        return
    except MemoryError:
        found.refusal = Refusal("InputLimitError", "not enough memory to decode this input")
        return
    except Exception as exc:  # noqa: BLE001 - a library bug on a hostile file: refuse it
        raise_if_passing(exc)  # unless the disk failed the read, not the file: retried
        found.refusal = unexpected(exc, found.sha256, "decoded",
                                   f"the file could not be decoded ({exc.__class__.__name__})")
        return
    found.timings["decode"] = (time.perf_counter() - t1) * 1000
    try:
        prediction = classifier.classify(decoded)
        found.timings.update(prediction.timings_ms)
        report = build_report(sha256=found.sha256, file_name=file_name, size=found.size,
                              decoded=decoded, prediction=prediction,
                              model=classifier.describe(), timings_ms=found.timings,
                              token=token, received_at=received_at)
        report["timings_ms"]["total"] = round((time.perf_counter() - t0) * 1000, 2)
        # what cannot be written as JSON is refused now, instead of failing at every retry
        report_json = json_bytes(report)
    except UnsupportedInputError as exc:
        found.refusal = Refusal.of(exc)
        return
    except Exception as exc:  # noqa: BLE001 - the same input would fail the same way
        found.refusal = unexpected(exc, found.sha256, "classified",
                                   "the agent could not classify this file "
                                   f"({exc.__class__.__name__}); the file is kept unchanged: "
                                   "please report this with the log")
        return
    found.report, found.report_json = report, report_json
    found.thumbnail, found.heatmap = prediction.model_input, prediction.heatmap
    sop = (report.get("dicom") or {}).get("sop_instance_uid")
    log.debug("input %s%s decoded as %s", found.sha256[:12],
              f" (SOP {uid_hash(sop)})" if sop else "", decoded.kind)


def unexpected(exc: Exception, sha256: str | None, doing: str, reason: str) -> Refusal:
    """The refusal for a failure that does not pass (a bug in a library or here): retrying
    the input would fail the same way, forever."""
    # The message is not logged: library messages can quote element values.
    log.error("unexpected %s while input %s was %s; quarantined", exc.__class__.__name__,
              (sha256 or "")[:12], doing)
    log.debug("where: %s", "".join(traceback.format_tb(exc.__traceback__)))
    return Refusal(DecodeError.__name__ if doing == "decoded" else "InternalError", reason)


class InFlight:
    """sha256 -> token of the job whose new report is classified but not yet durable: an
    identical input prepared meanwhile is a duplicate of it, not classified again. Shared by
    the main loop (prepare) and the committer thread (commit).

    It also keeps, by job token, the new reports that could not be written (a full disk, a
    failing card): the job's retry writes the same report instead of decoding, classifying
    and drawing the heat-map of its input again, which on a board is seconds per input, for
    each of up to ``edge.retries.MAX_UNFINISHED`` inputs at every retry round while the
    failure lasts. Bounded: the oldest beyond ``KEEP_AT_MOST`` are classified again."""

    KEEP_AT_MOST = 64

    def __init__(self) -> None:
        self._holders: dict[str, str] = {}
        self._kept: dict[str, Prepared] = {}
        self._lock = threading.Lock()

    def holder(self, sha256: str) -> str | None:
        with self._lock:
            return self._holders.get(sha256)

    def hold(self, sha256: str, token: str) -> None:
        with self._lock:
            self._holders[sha256] = token

    def release(self, sha256: str, token: str, keep: Prepared | None = None) -> None:
        """Let identical inputs find the report on disk from now on. ``keep``: its writing
        failed; what was found waits for the job's retry (``take_kept``)."""
        with self._lock:
            if self._holders.get(sha256) == token:
                del self._holders[sha256]
            if keep is not None:
                self._kept.pop(token, None)  # re-inserted last: the newest is kept longest
                self._kept[token] = keep
                while len(self._kept) > self.KEEP_AT_MOST:
                    del self._kept[next(iter(self._kept))]

    def take_kept(self, token: str, sha256: str) -> Prepared | None:
        """The report kept for this job's retry, if its input still has the same bytes;
        forgotten either way."""
        with self._lock:
            found = self._kept.pop(token, None)
        return found if found is not None and found.sha256 == sha256 else None

    def held(self) -> int:
        """Inputs whose report is being written (identical ones wait for it)."""
        with self._lock:
            return len(self._holders)

    def kept(self) -> int:
        with self._lock:
            return len(self._kept)
