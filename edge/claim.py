"""Step 1 of a job: taking settled files out of the inbox, as a group, crash-safely.

Every intent record (stage ``claiming``, naming the inbox file) is durable before any input
moves; then each input is renamed into ``.state/claimed/<token>``, one folder fsync for the
whole group. After a crash, a ``claiming`` record is finished or forgotten by ``resume``.

Across filesystems (the inbox on a USB disk or a network share) a rename is impossible, and
"copy, then unlink the name" would lose whatever took the name during the copy: an exporter
that writes a corrected version and renames it over the first (the usual way to replace a
file) would have the new version deleted unread. So the input is first renamed to a hidden
name in its own folder (``.neuroedge-held-<token>``: atomic, and recorded in the journal
first), which frees its name for any new version; it is copied from there, from an open
descriptor checked to be a regular file (opened non-blocking: a FIFO put there cannot hang
the copy); and the hidden name is unlinked only when the file did not change during the
copy. A file that changed (a writer that paused past ``settle_seconds`` and went on) is
given back under its name, or under a free one next to it when a new version took the
name, and taken again once settled. A folder where the input cannot be renamed (read-only,
or sticky and owned by someone else) refuses the claim before anything is copied.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from . import failpoints
from .durable import (
    FolderBarrier,
    copy_durable,
    display_name,
    free_name,
    fsync_dir,
    lexists,
)
from .inbox import HELD_PREFIX
from .manifest import sha256_file
from .outbox import Job, Outbox, Stage
from .report import now_iso

log = logging.getLogger(__name__)



class UnfinishedClaim(OSError):
    """A claim that failed after its ``claiming`` record was written (the folders holding the
    renamed inputs could not be fsynced): the record is kept, and running ``job`` again
    (``Claim.resume``) finishes the claim. The caller retries the job, not the path."""

    def __init__(self, job: Job, cause: OSError, text: str | None = None) -> None:
        super().__init__(cause.errno, text or cause.strerror or str(cause), cause.filename)
        self.job = job


class HeldInInbox(UnfinishedClaim):
    """A cross-filesystem claim failed and its input could not be put back under its name:
    it is safe under the hidden name, its ``claiming`` record kept; running ``job`` again
    (``Claim.resume``) gives it back."""

    def __init__(self, job: Job, cause: OSError) -> None:
        super().__init__(job, cause, f"{cause.strerror or cause}; the file is kept in the "
                         f"inbox as {job.held} until it can be put back")


class Claim:
    """Takes inbox files into the outbox's ``.state/claimed``; one instance per agent."""

    def __init__(self, outbox: Outbox, inbox_root: Path) -> None:
        self.outbox = outbox
        self.inbox_root = inbox_root

    def take(self, paths: list[str]) -> tuple[list[Job], list[tuple[str, OSError]]]:
        """Take ``paths`` out of the inbox, as one group.

        Returns the jobs (a path gone meanwhile, or not a regular file or link, has none) and
        the paths that could not be taken with the error (the caller leaves them a while; an
        ``UnfinishedClaim`` error carries a journaled job for the caller to retry). An error
        of the disk (EIO, ENOSPC) is never raised: the agent goes on, the inputs stay in the
        inbox or journaled.
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
            try:
                fsync_dir(self.outbox.jobs)
            except OSError as exc:  # nothing moved yet: the inputs stay, taken a while later
                for job, path in pending:
                    _forget_quietly(self.outbox, job)
                    refused.append((path, exc))
                return [], refused
        moved = FolderBarrier()
        taken: list[tuple[Job, str]] = []
        for job, path in pending:
            try:
                self._take_one(job, path, moved)
            except UnfinishedClaim as exc:  # held in the inbox, or copied and held as well
                refused.append((path, exc))  # its record stays: the caller retries the job
                continue
            except OSError as exc:
                _forget_quietly(self.outbox, job)
                if not (isinstance(exc, FileNotFoundError) and not os.path.lexists(path)):
                    # not simply gone meanwhile (then it is dropped): left a while, not
                    # retried at once (a missing claimed folder would otherwise spin)
                    refused.append((path, exc))
                continue
            taken.append((job, path))
        try:
            moved.sync()
        except OSError as exc:  # taken, not durably: each "claiming" record is kept
            refused.extend((path, UnfinishedClaim(job, exc)) for job, path in taken)
            return [], refused
        for job, _ in taken:
            failpoints.hit("after_claim")
            job.is_symlink = os.path.islink(str(self.outbox.claimed_path(job)))  # what we hold
            job.stage = Stage.CLAIMED
            job.attempts = 1  # counted now: the decoding that may crash comes next
            # Its folder not fsynced, and a failure to write it is ignored: if this update
            # is lost, recovery finds the "claiming" record and the file in .state/claimed,
            # and finishes the claim from there. Its data is fsynced: a file system that
            # keeps a rename and not the data written before it (XFS; ext4 without its
            # rename heuristic) would otherwise put an empty record in the claiming one's
            # place after a power cut, set aside as damaged, its input's name lost.
            try:
                self.outbox.save(job, sync_folder=False)
            except OSError:
                pass
        return [job for job, _ in taken], refused

    def _take_one(self, job: Job, path: str, barrier: FolderBarrier) -> None:
        src, dst = Path(path), self.outbox.claimed_path(job)
        try:
            os.rename(path, str(dst))
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._take_across_filesystems(job, src, dst)
        barrier.add(dst.parent)
        barrier.add(src.parent, left=True)

    def _take_across_filesystems(self, job: Job, src: Path, dst: Path) -> None:
        """Hide the input under its own folder, copy it durably, unlink it if unchanged."""
        held = src.parent / f"{HELD_PREFIX}{job.token}"
        job.cross_filesystem = True
        job.held = os.path.relpath(str(held), str(self.inbox_root))
        self.outbox.save(job)  # recorded first: recovery finds the input under that name
        os.rename(str(src), str(held))  # the inbox's own filesystem: atomic; the name is free
        failpoints.hit("after_hide")
        try:
            _copy_unchanged(held, dst)
        except OSError as exc:
            if os.path.lexists(str(dst)):  # a copy made before the failure: not kept, or it
                _unlink_quietly(dst)       # would be adopted on the next start as a stray
            try:
                self._give_back(held, src)
            except OSError as stuck:
                log.error("an inbox file could not be put back under its name (%s); it stays "
                          "in the inbox as %s and is put back on the next retry or start",
                          stuck.strerror or stuck, held.name)
                raise HeldInInbox(job, exc) from stuck
            raise
        failpoints.hit("after_copy")
        try:
            os.unlink(str(held))
        except OSError as exc:  # copied durably: forgetting the job now would take it twice
            raise UnfinishedClaim(job, exc) from None  # (the copy and the hidden file)

    def _give_back(self, held: Path, src: Path) -> None:
        """``_give_back``, and a log line when a new file had taken the name (by inode: the
        log never names an input)."""
        target = _give_back(held, src)
        if target != src:
            log.warning("a new file took an inbox file's name while it was being taken; the "
                        "earlier one is back beside it, as <name>~earlier; find it with: "
                        "find %s -inum %d", self.inbox_root, os.lstat(str(target)).st_ino)

    def give_back_orphans(self, held: list[str], journaled: set[str]) -> None:
        """Hidden inputs whose record is gone (set aside as damaged): back in the inbox as
        ``recovered-<token>`` (their name was in the record), so they are taken again."""
        for path in held:
            token = os.path.basename(path)[len(HELD_PREFIX):]
            if token in journaled or not os.path.lexists(path):
                continue
            folder = Path(path).parent
            try:
                target = _give_back(Path(path), folder / f"recovered-{token}")
            except OSError as exc:
                log.error("an input hidden by an interrupted claim has no journal record and "
                          "could not be put back (%s); find it with: find %s -name '%s'",
                          exc.strerror or exc, self.inbox_root, os.path.basename(path))
                continue
            log.warning("an input hidden by an interrupted claim had no journal record; it "
                        "is back in the inbox as %s", target.name)

    def resume(self, job: Job) -> bool:
        """Finish or forget an interrupted claim; True if the input is now in ``claimed``."""
        src = self.inbox_root / job.source
        dst = self.outbox.claimed_path(job)
        held = self.inbox_root / job.held if job.held else None
        if not lexists(dst):
            if held is not None and lexists(held):
                self._give_back(held, src)  # hidden, not copied: back, taken anew
            self.outbox.delete(job)  # never taken: the inbox scan finds the file again
            return False
        if held is not None and lexists(held):
            # copied, then crashed before unlinking: unlink it if the copy is the same bytes,
            # else (written on after the copy) give it back to be taken again once settled,
            # and discard the copy of its earlier version, as a claim that sees the change
            # does (kept, it was archived beside the whole file). The copy goes first: a
            # crash between the two leaves the hidden file alone, given back at the next
            # start. A failure here is raised and the job retried: the input must not stay
            # twice (hidden and copied), or a later start would take it again.
            if _same_file(held, dst):
                _unlink_durably(held)
            else:
                _unlink_durably(dst)
                self._give_back(held, src)
                self.outbox.delete(job)
                return False
        elif not job.cross_filesystem and lexists(src) and os.path.samestat(
                os.lstat(str(src)), os.lstat(str(dst))):
            # renamed, and a power cut kept the new name and the old one (a file system
            # that writes each folder on its own: FAT, exFAT, ext2): one file, two names;
            # left in the inbox, it would be taken again
            _unlink_durably(src)
        elif job.cross_filesystem and lexists(src) and not os.path.islink(str(src)):
            # a record from before the hidden name: copied straight from the inbox name,
            # then crashed before unlinking it
            if _same_file(src, dst):
                _unlink_durably(src)
        job.is_symlink = os.path.islink(str(dst))
        job.stage = Stage.CLAIMED
        self.outbox.save(job)
        return True


def _forget_quietly(outbox: Outbox, job: Job) -> None:
    """Delete a record whose input was not moved. If that fails too, the record stays: the
    next start's ``resume`` finds no claimed file and forgets it then."""
    try:
        outbox.delete(job)
    except OSError:
        pass


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` hold the same bytes (or name the same link target). An error
    reading either is raised: "cannot tell" must not read as "changed" (the input would be
    given back and its copy kept as well)."""
    if stat.S_ISLNK(os.lstat(str(a)).st_mode) or stat.S_ISLNK(os.lstat(str(b)).st_mode):
        return os.path.islink(str(a)) and os.path.islink(str(b)) and (
            os.readlink(str(a)) == os.readlink(str(b)))
    return os.lstat(str(a)).st_size == os.lstat(str(b)).st_size and sha256_file(
        a) == sha256_file(b)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(str(path))
        fsync_dir(path.parent)
    except OSError:
        pass


def _unlink_durably(path: Path) -> None:
    os.unlink(str(path))
    fsync_dir(path.parent)


def _copy_unchanged(src: Path, dst: Path) -> None:
    """Copy ``src`` (a regular file or a link, not followed) to ``dst`` durably; an OSError
    if it is something else or changed during the copy (``dst`` may then exist)."""
    if stat.S_ISLNK(os.lstat(str(src)).st_mode):
        os.symlink(os.readlink(str(src)), str(dst))
        return
    # non-blocking: opening a FIFO that took the name would otherwise wait for a writer
    fd = os.open(str(src), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file any more", str(src))
        os.set_blocking(fd, True)
        copy_durable(fd, dst)
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise OSError(errno.EAGAIN, "the file changed while it was copied (still being "
                          "written?); left in the inbox to be taken once it has settled",
                          str(src))
    finally:
        os.close(fd)


def _give_back(held: Path, src: Path) -> Path:
    """Put a hidden inbox file back under its name, or a free one beside it if that name was
    taken meanwhile (never over a file): the inbox scan then finds it again. Returns where.
    A give-back whose unlink of the hidden name fails (a disk error) takes its link back
    again, so the file is never under two names the inbox scan could both take; if that
    fails too, the retry finds the name holding this very file and only unlinks the hidden
    one."""
    if lexists(src) and os.path.samestat(os.lstat(str(src)), os.lstat(str(held))):
        os.unlink(str(held))
        fsync_dir(src.parent)
        return src
    target = free_name(src.parent, src.name, "earlier")
    try:
        os.link(str(held), str(target), follow_symlinks=False)  # fails rather than replace
    except FileExistsError:
        return _give_back(held, src)  # taken since free_name looked: choose again
    except OSError:  # no hard links here (FAT, some shares): check, then rename
        os.rename(str(held), str(target))
    else:
        try:
            os.unlink(str(held))
        except OSError:  # under two names, the inbox scan could take it while the retry
            _unlink_quietly(target)  # gives it back again: it stays hidden until then
            raise
    fsync_dir(src.parent)
    return target
