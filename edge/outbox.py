"""The outbox's folder layout, its lock, and the journal of inputs being worked on.

::

    <outbox>/
      reports/<id>.json, <id>.html     one report per distinct input content (id = sha256)
      archive/YYYY-MM-DD/<name>        inputs, moved here once their report is durable
      quarantine/<name>                inputs that were refused...
      quarantine/<name>.reason.json    ...and why
      index/YYYY-MM-DD.jsonl, .html    everything handled that day
      index.html                       links to the days
      .state/lock                      held by the running agent
      .state/jobs/<token>.json         intent records: the journal
      .state/claimed/<token>           inputs taken out of the inbox, being worked on
      .state/stalled.json              a side thread stalled: no crash counted at the next
                                       start (``edge.liveness``)

A job record is written *before* each step that moves a file, so after a crash (power cut,
``kill -9``) the next start reads ``.state/jobs`` and finishes every step that was begun.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import uuid
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .durable import (
    fsync_dir,
    read_json_if_there,
    remove_stale_temp_files,
    stale_temp_files,
    write_json_atomic,
)
from .errors import AgentBusyError, ConfigError, FolderUnavailableError, StorageError

log = logging.getLogger(__name__)

# Why the outbox's folders cannot be made that restarting cannot fix: a wrong path or owner.
_NOT_PASSING = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
                          errno.ELOOP, errno.ENAMETOOLONG})
SUBFOLDERS = ("reports", "archive", "quarantine", "index", ".state", ".state/jobs",
              ".state/claimed")


class Stage(str, Enum):
    """Where a job stands: each stage is recorded before the step that leaves it begins."""

    CLAIMING = "claiming"  # the record names the inbox file; it is being taken
    CLAIMED = "claimed"  # the input is in .state/claimed; hash, classify, write the report
    DECIDED = "decided"  # the destination is chosen and recorded; move it there
    MOVED = "moved"  # the input is in place; append the index line, then forget the job

    __str__ = str.__str__  # "claimed", also in f-strings on every Python version


class Outcome(str, Enum):
    """What became of an input."""

    CLASSIFIED = "classified"  # archived, with its own new report
    DUPLICATE = "duplicate"  # archived; the same content has a report already
    QUARANTINED = "quarantined"  # refused, with a reason record

    __str__ = str.__str__


@dataclass
class Job:
    """One input's progress through claim -> decide -> move -> index."""

    token: str
    stage: Stage
    source: str  # path relative to the inbox, as found
    file_name: str  # the input's original base name, for the report and the archive name
    claimed_at: str
    is_symlink: bool = False
    cross_filesystem: bool = False  # claimed by copy + unlink (inbox on another filesystem)
    held: str | None = None  # across filesystems: the hidden inbox name it is copied from
    attempts: int = 0
    sha256: str | None = None
    size: int | None = None
    outcome: Outcome | None = None
    reason: str | None = None
    reason_code: str | None = None
    reason_log: str | None = None  # the reason without values quoted from the file, for logs
    dest: str | None = None  # relative to the outbox
    day: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    # The agent stopped cleanly while this job waited to be retried after a passing error (a
    # full disk): its next start is not a crash, so it does not count towards max_attempts.
    paused: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values. Not ``dataclasses.asdict``, whose recursive deep
        copy costs ten times as much (0.05 against 0.005 ms a call, four calls per input)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["summary"] = dict(self.summary)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        job = cls(**{k: v for k, v in data.items() if k in known})
        job.stage = Stage(job.stage)
        job.outcome = Outcome(job.outcome) if job.outcome is not None else None
        return job


class Outbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.reports = root / "reports"
        self.archive = root / "archive"
        self.quarantine = root / "quarantine"
        self.state = root / ".state"
        self.jobs = self.state / "jobs"
        self.claimed = self.state / "claimed"
        self._lock_fd: int | None = None

    def prepare(self) -> None:
        """Create the layout; refuse folders replaced by symlinks (they could point anywhere)."""
        if not self.root.parent.is_dir():
            # Never create the parents: under an unmounted disk's mount point they would
            # land on the SD card and be hidden once the disk is mounted.
            raise FolderUnavailableError(
                f"the folder {self.root.parent} that should hold the outbox does not exist: "
                "create it, fix the path, or mount the disk it lives on")
        try:
            self.root.mkdir(exist_ok=True)
            for name in SUBFOLDERS:
                path = self.root / name
                if path.is_symlink():
                    raise ConfigError(f"{path} is a symbolic link; the outbox's folders must be "
                                      "real folders (remove the link)")
                path.mkdir(exist_ok=True)
            # each folder's entry durable in its parent before anything is moved into it:
            # the claim fsyncs .state/claimed, not the folders that hold it (a power cut
            # would otherwise take a first start's folders, inputs and all)
            for folder in (self.root.parent, self.root, self.state):
                fsync_dir(folder)
        except OSError as exc:
            if exc.errno not in _NOT_PASSING:  # a failing disk, not a wrong path
                raise StorageError.starting(exc) from None
            raise ConfigError(f"cannot create the outbox folders in {self.root}: "
                              f"{exc.strerror}; check the path and its permissions") from None
        if not os.access(str(self.root), os.W_OK | os.X_OK):
            raise ConfigError(f"the outbox {self.root} is not writable by this user")

    def lock(self, read_only: bool = False) -> None:
        """Hold ``.state/lock`` for the agent's lifetime: two agents must not share an outbox.

        ``read_only`` (``fsck --dry-run``): a shared lock on the file as it is, so a user
        who may only read the outbox (the staff group) can check it while no agent runs."""
        import fcntl

        path = self.state / "lock"
        try:
            if read_only:
                fd = os.open(str(path), os.O_RDONLY)
            else:
                fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            if read_only:
                return  # no agent ever locked it: none holds it now
            raise
        except PermissionError:
            raise ConfigError(f"this user may not {'read' if read_only else 'write'} "
                              f"{path}: run the command as the agent's user (sudo -u "
                              "neuroedge ...)" + ("" if read_only else ", or add --dry-run "
                                                  "to check without repairing")) from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise AgentBusyError(
                    f"another edge-agent is already using the outbox {self.root}{_holder(path)}"
                    " (the agent, or an offload or fsck run); stop it first (two agents on "
                    "one outbox could process a file twice)") from None
            raise
        if not read_only:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                os.close(fd)  # the lock goes with it
                raise
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def temp_folders(self) -> list[Path]:
        """Where a crash can leave the agent's temporary files."""
        folders = [self.reports, self.quarantine, self.jobs, self.claimed, self.root,
                   self.root / "index",
                   # the disk's samples, a stall's record, the offload's records
                   self.state,
                   # issue 15: study reports, their state, the SR send queue
                   self.root / "studies", self.state / "studies", self.state / "outgoing"]
        if self.archive.is_dir():
            with os.scandir(str(self.archive)) as days:
                folders += [Path(day.path) for day in days if day.is_dir(follow_symlinks=False)]
        return folders

    def temp_files(self) -> list[str]:
        return [path for folder in self.temp_folders() for path in stale_temp_files(folder)]

    def remove_temp_files(self) -> int:
        return sum(remove_stale_temp_files(folder) for folder in self.temp_folders())

    # --- the journal -----------------------------------------------------------------

    @staticmethod
    def new_token() -> str:
        return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:12]

    def claimed_path(self, job: Job) -> Path:
        return self.claimed / job.token

    def save(self, job: Job, durable: bool = True, sync_folder: bool = True) -> None:
        """Write the job's record. ``durable=False`` only where losing this update in a power
        cut is harmless: recovery then replays the step from the previous record.
        ``sync_folder=False``: the record's data is fsynced, the jobs folder is left to the
        caller's ``FolderBarrier`` (group commit)."""
        write_json_atomic(self.jobs / f"{job.token}.json", job.to_dict(), durable, compact=True,
                          sync_folder=sync_folder)

    def reread(self, job: Job) -> Job | None:
        """The job as its record says, or None if it has none (finished, or removed by hand).
        A job that failed carries in memory what its failed step did not make durable (a
        stage, a destination): it is retried from its record, as a restart would, never
        ahead of it. An error reading the record is raised (retried later); a record that
        cannot be read as a job leaves ``job`` as it is (the next start moves it aside)."""
        path = self.jobs / f"{job.token}.json"
        data = read_json_if_there(path)
        if data is None:
            return job if path.exists() else None
        try:
            return Job.from_dict(data)
        except (TypeError, ValueError, AttributeError):
            return job

    def delete(self, job: Job) -> None:
        # No fsync: if the unlink is lost, the replayed last step finds its work done.
        try:
            os.unlink(str(self.jobs / f"{job.token}.json"))
        except FileNotFoundError:
            pass

    def pending_jobs(self) -> list[Job]:
        """The journal's records. One that cannot be read as a job (damaged, edited by hand)
        is moved aside to ``.state/damaged/``; its claimed input, if any, is then adopted.
        An error reading one (EIO) is raised: a record the disk failed to give is not a
        damaged one (set aside, its archived input would never get its index line)."""
        jobs = []
        for path in sorted(self.jobs.glob("*.json")):
            data = read_json_if_there(path)
            if data is None and not path.exists():
                continue  # finished and removed meanwhile
            try:
                jobs.append(Job.from_dict(data))  # type: ignore[arg-type]
            except (TypeError, ValueError, AttributeError):
                damaged = self.state / "damaged"
                damaged.mkdir(exist_ok=True)
                os.replace(str(path), str(damaged / path.name))
                log.warning("a journal record could not be read; moved it to %s (its input, "
                            "if it was claimed, is recovered as recovered-<token>)", damaged)
        return jobs

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _holder(lock: Path) -> str:
    """The pid the holder of ``lock`` wrote in it, as ' (process N)'; empty if unreadable."""
    try:
        with open(str(lock), "rb") as handle:
            pid = handle.read(32).strip().decode("ascii")
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (process {pid})" if pid.isdigit() else ""
