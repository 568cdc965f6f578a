"""The send queue: SRs waiting for the PACS, on disk, until it accepts them.

::

    <outbox>/.state/outgoing/<key>.dcm    the SR to send (written first, fsynced)
    <outbox>/.state/outgoing/<key>.json   its record: attempts, next attempt, last error
    <outbox>/.state/outgoing/sent.jsonl   one line per SR the PACS accepted
    <outbox>/.state/outgoing/damaged/     a damaged record whose SR is damaged too (logged)

A record exists only once its SR file is durable, and is removed only once the PACS has
answered the C-STORE with success (or a warning) and that answer is appended to
``sent.jsonl``: a power cut or ``kill -9`` at any moment loses nothing, and a restart
resumes where it was. ``enqueue`` is idempotent (a key already queued or sent is not queued
again), and a newer judgment of a study replaces its older SR still waiting in the queue.
The one window for a second delivery is a crash between the PACS's answer and the line in
``sent.jsonl``; the SR is then sent again with the same SOP Instance UID, which a PACS
treats as the same object.

A damaged record (bad JSON, a field missing) is rebuilt from its SR; if the SR is not
DICOM either, both go to ``damaged/``. A disk error reading them (EIO, EMFILE),
or writing the rebuilt record (ENOSPC), is not damage: both stay as they are, are not sent
this time, and are read again at the next look (one line in the log).

Retries: after the n-th failed attempt the next one waits ``retry_initial * 2**(n-1)``
seconds, at most ``retry_max``, +-10% so that several agents do not retry in step (a
refusal that lasts waits ``retry_max``). ``edge.network.sender`` sends it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable

from ..durable import (
    append_lines_durable,
    free_name,
    fsync_dir,
    move_no_replace,
    read_json_if_there,
    remove_stale_temp_files,
    write_bytes_atomic,
    write_json_atomic,
)
from ..report import now_iso, shown_time
from .settings import PacsConfig, Peer

log = logging.getLogger(__name__)

@dataclass
class Outgoing:
    """One SR in the queue (the record beside its ``.dcm``)."""

    key: str
    study: str  # a hash of the Study Instance UID (for logs), never the UID itself
    group: str  # items with the same group replace each other: one study's SRs
    sop_class_uid: str
    sop_instance_uid: str
    created_at: str
    attempts: int = 0
    next_attempt: float = 0.0  # time.time() of the next try
    last_error: str | None = None
    refused: bool = False  # the last answer was a refusal only a change at the PACS cures

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outgoing:
        """The record as written by ``asdict``; ValueError if a field is missing or of the
        wrong type (a record damaged on disk)."""
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("key", "study", "group", "sop_class_uid", "sop_instance_uid",
                     "created_at"):
            if not isinstance(values.get(name), str):
                raise ValueError(f"{name} is missing or not text")
        if not isinstance(values.get("attempts", 0), int) or isinstance(
                values.get("attempts"), bool):
            raise ValueError("attempts is not a whole number")
        next_attempt = values.get("next_attempt", 0.0)
        if isinstance(next_attempt, bool) or not isinstance(next_attempt, (int, float)) or (
                next_attempt != next_attempt):
            raise ValueError("next_attempt is not a number")
        if not isinstance(values.get("last_error"), (str, type(None))):
            raise ValueError("last_error is not text")
        if not isinstance(values.get("refused", False), bool):
            raise ValueError("refused is not true or false")
        return cls(**values)


@dataclass(frozen=True)
class QueueState:
    """What the SR queue holds, for ``edge-agent check`` and the outbox's front page."""

    waiting: int = 0  # queued and not refused (never tried yet, or a passing failure)
    failing: int = 0  # of those, the ones with at least one failed attempt
    refused: int = 0  # the PACS refuses them until something is changed there
    damaged: int = 0  # set aside in damaged/: they will not be sent
    unreadable: int = 0  # records the disk failed to give just now (``read_queue_state``)
    oldest: str | None = None  # the created_at of the oldest SR queued
    waiting_error: str | None = None  # the newest error of a waiting SR
    refused_error: str | None = None  # the newest refusal

    @classmethod
    def of(cls, records: Iterable[dict[str, Any]], damaged: int = 0) -> QueueState:
        """From queue records (as on disk, or ``asdict`` of the items)."""
        records = [r for r in records if isinstance(r, dict)]
        refused = [r for r in records if r.get("refused") is True]
        waiting = [r for r in records if r.get("refused") is not True]
        return cls(waiting=len(waiting),
                   failing=sum(1 for r in waiting if r.get("last_error")),
                   refused=len(refused), damaged=damaged,
                   oldest=min((str(r.get("created_at", "")) for r in records), default=None),
                   waiting_error=_newest_error(waiting), refused_error=_newest_error(refused))

    def page_lines(self, peer: str) -> list[str]:
        """What a person reading the outbox's pages should know, in plain words: nothing
        while every SR is delivered, or waits for its first attempt."""
        lines = []
        if self.refused:
            lines.append(f"The PACS ({peer}) refuses {self.refused} structured report(s) "
                         f"until something is changed there: {self.refused_error}. They are "
                         "kept and tried again; tell the person who looks after this box. "
                         "The reports on these pages are complete.")
        if self.failing:
            lines.append(f"{self.failing} structured report(s) have not reached the PACS "
                         f"({peer}) yet (oldest queued {shown_time(self.oldest)}; last error: "
                         f"{self.waiting_error}). They are kept and sent automatically once "
                         "it answers.")
        if self.damaged:
            lines.append(f"{self.damaged} structured report(s) could not be read back from "
                         "this box's disk and will not be sent to the PACS; judging their "
                         "studies again queues new ones (the agent's log says which).")
        return lines


def _newest_error(records: list[dict[str, Any]]) -> str | None:
    """The newest error among ``records`` (by the time of their next attempt)."""
    with_error = [r for r in records if isinstance(r.get("last_error"), str)]
    if not with_error:
        return None
    newest = max(with_error, key=lambda r: float(r.get("next_attempt") or 0.0))
    return str(newest["last_error"])


def read_queue_state(outbox: Path) -> QueueState:
    """The queue's state read from disk without changing anything (``edge-agent check``:
    the running agent owns the queue). A record being replaced, or damaged, is skipped:
    the agent repairs or sets it aside."""
    folder = outbox / ".state" / "outgoing"
    records, unreadable = [], 0
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(read_json_if_there(path))  # None: skipped
        except OSError:  # a disk error: not an SR fewer (the agent retries it)
            unreadable += 1
    return replace(QueueState.of(records, _count_damaged(folder)), unreadable=unreadable)


def _sent_entry(line: bytes) -> tuple[str, str, str, str] | None:
    """A line of ``sent.jsonl``: (key, group, SOP Instance UID, SOP Class UID), the last
    three empty where the line lacks them (its group is its study in lines written before
    2026-12-07, when the two were the same); None if it is not a line of ours."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        return None
    text = [entry.get(name) for name in ("group", "study", "sop_instance_uid", "sop_class_uid")]
    group, study, uid, sop_class = [v if isinstance(v, str) else "" for v in text]
    return entry["key"], group or study, uid, sop_class


def _count_damaged(folder: Path) -> int:
    damaged = folder / "damaged"
    try:
        return sum(1 for p in damaged.iterdir() if p.suffix == ".dcm")
    except (FileNotFoundError, NotADirectoryError):
        return 0


def _passing(exc: BaseException) -> bool:
    """Whether the machine failed a read or write of the queue's files (EIO, ENOSPC,
    EMFILE): not damage, the same is tried again. An error about the file itself
    (``ABOUT_THE_FILE``: its permissions, its kind), or a file that is gone, is damage."""
    from ..decoded import ABOUT_THE_FILE

    return (isinstance(exc, OSError) and exc.errno is not None
            and exc.errno not in ABOUT_THE_FILE and exc.errno not in (errno.ENOENT,
                                                                     errno.ENOTDIR))


class SendQueue:
    def __init__(self, outbox: Path) -> None:
        self.folder = outbox / ".state" / "outgoing"
        self.sent_log = self.folder / "sent.jsonl"
        self._lock = threading.RLock()  # enqueue holds it while it lists (and repairs) items
        # Caches, so that queueing and sending cost the same with 10 or 10,000 SRs waiting:
        # parsed records by name, valid while the file is unchanged (mtime, size, inode),
        # and the keys in sent.jsonl up to the offset read so far.
        self._records: dict[str, tuple[tuple[int, int, int], Outgoing]] = {}
        self._sent_keys: set[str] = set()
        self._sent_read = 0
        # the last SR the PACS accepted of each group (a study): key, SOP Instance UID,
        # SOP Class UID (``last_sent``)
        self._last_sent: dict[str, tuple[str, str, str]] = {}
        # SRs the PACS accepted whose line in sent.jsonl could not be written (a disk
        # error): never sent again; the line is written at the next look (``items``)
        self._unrecorded: dict[str, str] = {}
        # keys whose record or SR the disk failed to give at the last look: said once
        self._unreadable: set[str] = set()

    def open(self) -> None:
        """Create the folder, and drop what a crash left half-written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.folder)
        for dcm in self.folder.glob("*.dcm"):
            if not dcm.with_suffix(".json").exists():  # enqueue crashed before its record
                dcm.unlink()

    def items(self) -> list[Outgoing]:
        """Every SR waiting, oldest first (copies: change them through ``failed``)."""
        out = []
        with self._lock:
            try:
                with os.scandir(str(self.folder)) as scan:
                    entries = [e for e in scan if e.name.endswith(".json") and e.is_file()]
            except FileNotFoundError:
                entries = []
            names = {e.name for e in entries}
            for gone in set(self._records) - names:
                del self._records[gone]
            self._unreadable &= {name[:-len(".json")] for name in names}
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # removed since it was listed
                except OSError as exc:  # not sent this time; the others are
                    self._records.pop(entry.name, None)
                    self._not_now(entry.name[:-len(".json")], "looked at", exc)
                    continue
                signature = (st.st_mtime_ns, st.st_size, st.st_ino)
                cached = self._records.get(entry.name)
                if cached is None or cached[0] != signature:
                    item = self._load(Path(entry.path))
                    if item is None:
                        self._records.pop(entry.name, None)
                        continue
                    cached = (signature, item)
                    self._records[entry.name] = cached
                if not self._settle_sent(cached[1]):
                    out.append(replace(cached[1]))
        return sorted(out, key=lambda item: (item.created_at, item.key))

    def _settle_sent(self, item: Outgoing) -> bool:
        """True if the PACS has ``item`` already, so it is not waiting: its line is in
        ``sent.jsonl`` (the removal of its record failed), or it was delivered and writing
        that line failed (written now if it can be). Its record is removed when it can be.
        Unsure (``sent.jsonl`` unreadable): True, it waits for the next look unsent."""
        line = self._unrecorded.get(item.key)
        try:
            if line is not None:
                append_lines_durable(self.sent_log, [line])
                del self._unrecorded[item.key]
            elif not self.was_sent(item.key):
                return False
            self._remove(item)
        except OSError:
            pass  # tried again at the next look; meanwhile it is not sent
        return True

    def state(self) -> QueueState:
        """What the queue holds now (from the cached records: cheap to ask often)."""
        return QueueState.of([asdict(item) for item in self.items()],
                             _count_damaged(self.folder))

    def _load(self, path: Path) -> Outgoing | None:
        """The record at ``path``; None if it waits no more (set aside, removed meanwhile)
        or could not be read now (read again at the next look: nothing is cached)."""
        try:
            data = read_json_if_there(path)
        except OSError as exc:
            if _passing(exc):  # not damage: a damaged record would be rebuilt or set aside
                self._not_now(path.stem, "read", exc)
                return None
            data = None  # about the file itself (its permissions): rebuilt from its SR
        try:
            if not isinstance(data, dict) or data.get("key") != path.stem:
                raise ValueError("not a queue record")
            item: Outgoing | None = Outgoing.from_dict(data)
        except ValueError as exc:
            item = self._repair(path, str(exc))
        if item is None or not path.exists():
            return None
        self._unreadable.discard(path.stem)
        return item

    def _not_now(self, key: str, what: str, exc: OSError) -> None:
        """Say, once until it reads again, that the disk failed to give ``key``'s files."""
        from ..worker import describe_error

        level = logging.DEBUG if key in self._unreadable else logging.ERROR
        self._unreadable.add(key)
        log.log(level, "the send queue's record %s could not be %s (%s); it and its SR stay "
                "queued as they are and are tried again at the next look", key, what,
                describe_error(exc))

    def _repair(self, record: Path, why: str) -> Outgoing | None:
        """A damaged record: rebuild it from its SR (what it says is all in the SR), or, if
        the SR cannot be read either, move both to ``damaged/`` and say so. Never drop an
        SR silently, and never let one record stop the others. A disk error (reading the
        SR, writing the record) is not damage: both stay, tried again at the next look."""
        import pydicom

        from ..dicom import uid_hash

        dcm = record.with_suffix(".dcm")
        if not record.exists():  # repaired or removed meanwhile by another thread
            return None
        try:
            ds = pydicom.dcmread(str(dcm), stop_before_pixels=True)
            study = uid_hash(str(ds.StudyInstanceUID))
            item = Outgoing(key=record.stem, study=study, group=study,
                            sop_class_uid=str(ds.SOPClassUID),
                            sop_instance_uid=str(ds.SOPInstanceUID),
                            created_at=now_iso())
            write_json_atomic(record, asdict(item))
        except Exception as exc:  # noqa: BLE001 - an SR we cannot read is set aside, below
            from ..worker import describe_error

            if _passing(exc):  # the disk, not the SR: both stay, tried again
                self._not_now(record.stem, f"repaired ({why})", exc)
                return None
            aside = self.folder / "damaged"
            aside.mkdir(exist_ok=True)
            for path in (dcm, record):  # an earlier damaged pair of that name is kept too
                try:
                    move_no_replace(path, free_name(aside, path.name, "again"))
                except FileNotFoundError:
                    pass
            log.error("the send queue's record %s was damaged (%s) and its SR cannot be read "
                      "(%s): both were moved to %s and will not be sent; the study's SR is "
                      "queued again if it is judged again", record.stem, why,
                      describe_error(exc), aside)
            return None
        log.warning("the send queue's record %s was damaged (%s); rebuilt from its SR, which "
                    "stays queued", record.stem, why)
        return item

    def was_sent(self, key: str) -> bool:
        """Whether ``sent.jsonl`` has a line for ``key`` (read once, then only what grew)."""
        with self._lock:
            return self._read_sent() and key in self._sent_keys

    def last_sent(self, group: str) -> tuple[str, str, str] | None:
        """The last SR of ``group`` the PACS accepted: (key, SOP Instance UID, SOP Class
        UID; the class is empty in lines written before it was noted), or None."""
        with self._lock:
            self._read_sent()
            last = self._last_sent.get(group)
            for line in self._unrecorded.values():  # accepted, its line not written yet
                entry = _sent_entry(line.encode("utf-8"))
                if entry is not None and entry[1] == group:
                    last = (entry[0], *entry[2:])
            return last

    def _read_sent(self) -> bool:
        """Read what ``sent.jsonl`` gained since the last read; False if there is none."""
        try:
            with open(str(self.sent_log), "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self._sent_read:  # cut back (a torn line repaired): read again
                    self._sent_keys, self._sent_read, self._last_sent = set(), 0, {}
                handle.seek(self._sent_read)
                data = handle.read(size - self._sent_read)
        except FileNotFoundError:
            return False
        end = data.rfind(b"\n") + 1  # a torn last line is read once it is whole
        for line in data[:end].splitlines():
            entry = _sent_entry(line)
            if entry is not None:
                key, group, uid, sop_class = entry
                self._sent_keys.add(key)
                if group and uid:
                    self._last_sent[group] = (key, uid, sop_class)
        self._sent_read += end
        return True

    def enqueue(self, item: Outgoing, data: bytes) -> bool:
        """Queue ``data`` (a DICOM file) under ``item.key``; False if it is queued or sent
        already. Older items of the same group still waiting are dropped."""
        with self._lock:
            record = self.folder / f"{item.key}.json"
            if record.exists() or self.was_sent(item.key):
                return False
            # The SR's name is durable before its record exists: a record never lacks its file.
            write_bytes_atomic(self.folder / f"{item.key}.dcm", data)
            write_json_atomic(record, asdict(item))
            for old in self.items():
                if old.group == item.group and old.key != item.key:
                    self._remove(old)
                    log.info("the SR of study %s waiting in the queue was replaced by a newer "
                             "judgment", old.study)
            return True

    def path_of(self, item: Outgoing) -> Path:
        return self.folder / f"{item.key}.dcm"

    def rewrite(self, item: Outgoing, data: bytes) -> bool:
        """Replace ``item``'s SR file with ``data`` (atomically: a crash leaves one or the
        other); False if the item is no longer queued."""
        with self._lock:
            if not (self.folder / f"{item.key}.json").exists():
                return False
            write_bytes_atomic(self.folder / f"{item.key}.dcm", data)
            return True

    def failed(self, item: Outgoing, error: str, pacs: PacsConfig,
               lasting: bool = False) -> float:
        """Record a failed attempt; return the seconds until the next one (``retry_max`` for
        a refusal that lasts: trying sooner cannot help)."""
        item.attempts += 1
        item.refused = lasting
        delay = (pacs.retry_max if lasting
                 else min(pacs.retry_max, pacs.retry_initial * 2 ** (item.attempts - 1)))
        delay *= random.uniform(0.9, 1.1)
        item.next_attempt = time.time() + delay
        item.last_error = error
        with self._lock:
            if (self.folder / f"{item.key}.json").exists():
                write_json_atomic(self.folder / f"{item.key}.json", asdict(item))
        return delay

    def postpone(self, item: Outgoing, until: float) -> None:
        """Wait with ``item`` until ``until`` without counting an attempt (the PACS was found
        unreachable by another SR's attempt)."""
        item.next_attempt = max(item.next_attempt, until)
        with self._lock:
            if (self.folder / f"{item.key}.json").exists():
                write_json_atomic(self.folder / f"{item.key}.json", asdict(item),
                                  durable=False)

    def delivered(self, item: Outgoing, peer: Peer) -> None:
        """The PACS accepted it: note that durably, then forget the item. A disk error
        does not send it again: a line that cannot be written is kept in memory and written
        at the next look, a record that cannot be removed is removed then (``_settle_sent``);
        only a restart before the line is written could send it twice."""
        with self._lock:
            line = json.dumps({"key": item.key, "study": item.study, "group": item.group,
                               "sop_instance_uid": item.sop_instance_uid,
                               "sop_class_uid": item.sop_class_uid, "to": str(peer),
                               "sent_at": now_iso(), "attempts": item.attempts + 1})
            try:
                append_lines_durable(self.sent_log, [line])
            except OSError as exc:
                self._unrecorded[item.key] = line
                log.error("the PACS took the SR of study %s, but noting that in %s failed "
                          "(%s); it is not sent again, and the note is written as soon as it "
                          "can be", item.study, self.sent_log, exc.strerror or exc)
                return
            try:
                self._remove(item)
            except OSError:
                pass  # its line is written: never sent again; removed at the next look

    def _remove(self, item: Outgoing) -> None:
        for suffix in (".json", ".dcm"):
            try:
                os.unlink(str(self.folder / f"{item.key}{suffix}"))
            except FileNotFoundError:
                pass
        fsync_dir(self.folder)
