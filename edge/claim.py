"""Step 1 of a job: taking settled files out of the inbox, as a group, crash-safely.

Every intent record (stage ``claiming``, naming the inbox file) is durable before any input
moves; then each input is renamed into ``.state/claimed/<token>`` (or, across filesystems,
copied durably and unlinked), one folder fsync for the whole group. After a crash, a
``claiming`` record is finished or forgotten by ``resume``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from . import failpoints
from .durable import FolderBarrier, copy_durable, display_name, fsync_dir
from .manifest import sha256_file
from .outbox import Job, Outbox, Stage
from .report import now_iso

log = logging.getLogger(__name__)


class Claim:
    """Takes inbox files into the outbox's ``.state/claimed``; one instance per agent."""

    def __init__(self, outbox: Outbox, inbox_root: Path) -> None:
        self.outbox = outbox
        self.inbox_root = inbox_root

    def take(self, paths: list[str]) -> tuple[list[Job], list[tuple[str, OSError]]]:
        """Take ``paths`` out of the inbox, as one group.

        Returns the jobs (a path gone meanwhile, or not a regular file or link, has none) and
        the paths that could not be taken with the error (the caller leaves them a while).
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
                job = Job(token=self.outbox.new_token(), stage=Stage.CLAIMING,
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
                self._take_one(job, path, moved)
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
            job.stage = Stage.CLAIMED
            job.attempts = 1  # counted now: the decoding that may crash comes next
            # Not fsynced: if this update is lost, recovery finds the "claiming" record and
            # the file in .state/claimed, and finishes the claim from there.
            self.outbox.save(job, durable=False)
        return taken, refused

    def _take_one(self, job: Job, path: str, barrier: FolderBarrier) -> None:
        src, dst = Path(path), self.outbox.claimed_path(job)
        try:
            os.rename(path, str(dst))
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            job.cross_filesystem = True  # recorded first: recovery may unlink the source
            self.outbox.save(job)
            _copy_across_filesystems(src, dst, job.is_symlink)
        barrier.add(dst.parent)
        barrier.add(src.parent)

    def resume(self, job: Job) -> bool:
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
        job.stage = Stage.CLAIMED
        self.outbox.save(job)
        return True


def _copy_across_filesystems(src: Path, dst: Path, is_link: bool) -> None:
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
