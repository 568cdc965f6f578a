"""Crash-safe file operations: every output is complete or absent, never half-written.

The pattern is the classic one: write a temporary file in the destination folder, flush and
fsync it, rename it over the final name, then fsync the folder so the rename itself survives
a power cut. Moves never overwrite: a name that is taken gets a suffix instead.

New files get the permissions ``open()`` would give them (0666 less the process's umask:
the service's ``UMask=0027`` makes reports readable by the ``neuroedge`` group, as the
staff who read them need), not ``tempfile.mkstemp``'s private 0600.

This module is the project's one implementation of that pattern: ``atomic_file`` (write
through an open file) and ``atomic_path`` (a temporary name for writers that want one:
matplotlib's ``savefig``, NumPy's ``savez``, Keras' ``model.save``), with
``write_bytes_atomic``, ``write_json_atomic`` and ``write_json_new`` built on them. The
trainer and the converters use it too.

Group commit: when the agent handles several inputs at once it does each step for all of
them with the folder fsyncs left out (``sync_folder=False``), then fsyncs each touched folder
once through a ``FolderBarrier``. Every file's data is still fsynced before its rename; what
is shared is the folder fsync that makes the renames durable, which costs as much as a file's.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import tempfile
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Collection, Iterator

TMP_PREFIX = ".neuroedge-"
TMP_SUFFIX = ".tmp"
_NAME_MAX = 255  # bytes in one file name on ext4, XFS, btrfs, tmpfs
_MAX_NAME_BYTES = 150


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (e.g. certain network mounts) refuse fsync on a directory
        pass
    finally:
        os.close(fd)


class FolderBarrier:
    """Folders whose new, renamed or removed entries must become durable before the next
    step: ``add`` them while doing a step for a group of inputs, then ``sync`` fsyncs each
    one once.

    A folder a file only left (``left=True``: the source of a move) is fsynced after every
    folder a file reached: on a file system that writes each folder on its own (FAT,
    exFAT, ext2: no journal keeps a move whole), a power cut between the two fsyncs then
    leaves a moved file under both names, never under neither."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[Path, bool]] = {}

    def add(self, folder: Path, left: bool = False) -> None:
        was = self._folders.get(str(folder))
        self._folders[str(folder)] = (folder, left and (was is None or was[1]))

    def sync(self) -> None:
        for last in (False, True):
            for folder, left in self._folders.values():
                if left == last:
                    fsync_dir(folder)
        self._folders.clear()


def create_temp(folder: Path, suffix: str = "") -> tuple[int, str]:
    """A new, empty temporary file in ``folder``, open for writing: ``(fd, path)``.

    Like ``tempfile.mkstemp`` (a fresh random name, ``O_EXCL``) except for the mode: 0666
    filtered by the umask, so the renamed result has a normal file's permissions. ``suffix``
    follows ``.tmp`` (``.neuroedge-<hex>.tmp.npz``) for writers that go by the extension.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        name = os.path.join(str(folder),
                            f"{TMP_PREFIX}{secrets.token_hex(8)}{TMP_SUFFIX}{suffix}")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def unwritable_reason(path: str | os.PathLike, *, folder: bool) -> str | None:
    """Why ``path`` cannot be created (or replaced) as a folder (``folder``) or a file, or
    None when it can: asked before the slow work (decoding a data set, training, scoring,
    classifying a folder), so a file in the way or a read-only folder is said at once.

    The nearest existing folder on the way is probed by creating and removing a scratch
    folder in it: permission bits, ACLs, a read-only file system and root's privileges all
    answer as they will for the real write. Nothing is left behind. One answer for every
    command that writes (the trainer and converters use it too).
    """
    path = Path(path).expanduser()
    if path.is_dir() and not folder:
        return f"{path} is a folder, not a file"
    if path.exists() and not path.is_dir() and folder:
        return f"{path} is a file, not a folder"
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        probe = tempfile.mkdtemp(prefix=".neuroedge-write-check-", dir=existing)
    except OSError as exc:
        return f"{existing} cannot be written ({exc.strerror or exc})"
    os.rmdir(probe)
    return None


def writable_folder(folder: str | os.PathLike, what: str) -> Path:
    """``folder``, checked writable (``unwritable_reason``) and created if missing; an
    ``OutputError`` saying what to do otherwise."""
    from .errors import OutputError

    folder = Path(folder)
    reason = unwritable_reason(folder, folder=True)
    try:
        if reason is None:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
    if reason is not None:
        raise OutputError(f"cannot write {what} {folder}: {reason}; give a folder this user "
                          "may write")
    return folder


def _install(tmp: Path, path: Path, replace: bool, barrier: FolderBarrier | None) -> None:
    """Rename a finished temporary file into place (``replace=False``: never over an existing
    file, ``FileExistsError`` instead)."""
    if replace:
        os.replace(str(tmp), str(path))
        if barrier is not None:
            barrier.add(path.parent)
    else:
        move_no_replace(tmp, path, barrier if barrier is not None else FolderBarrier())


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


@contextmanager
def atomic_file(path: Path, durable: bool = True, sync_folder: bool = True,
                replace: bool = True, barrier: FolderBarrier | None = None
                ) -> Iterator[BinaryIO]:
    """Write ``path`` through an open binary file: when the block ends, the file is flushed,
    fsynced (``durable``) and renamed into place, then its folder is fsynced (``durable`` and
    ``sync_folder``; with a ``barrier`` the folder is added to it instead). ``replace=False``
    never replaces an existing file (``FileExistsError``). An exception leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        _install(Path(tmp), path, replace, barrier)
    except BaseException:
        _discard(tmp)
        raise
    if durable and sync_folder and barrier is None:
        fsync_dir(path.parent)


@contextmanager
def atomic_path(path: Path, durable: bool = True, replace: bool = True) -> Iterator[Path]:
    """A temporary file name beside ``path`` with the same extension, for writers that want a
    name rather than a file (``savefig``, ``np.savez``, ``model.save``): write it in the
    block; when the block ends it is fsynced, renamed into place and its folder fsynced, as
    ``atomic_file`` does. An exception leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path.parent, path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _install(Path(tmp), path, replace, None)
    except BaseException:
        _discard(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes, durable: bool = True,
                       sync_folder: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file, rename) and, by default, durably
    (fsync the file before the rename and the folder after it).

    ``durable=False`` keeps the atomicity but skips both fsyncs: for records whose loss in a
    power cut is harmless because the step they describe is redone from an older record.
    ``sync_folder=False`` fsyncs the file but not the folder: only when the caller's next
    durable write goes to the same folder, whose folder fsync then makes both renames last.
    """
    with atomic_file(path, durable, sync_folder) as handle:
        handle.write(data)


def install_files(moves: list[tuple[Path, Path]], mode: int | None = None) -> None:
    """Publish files prepared in a private staging folder (a converted model, its manifest,
    its report): each is fsynced, given ``mode`` if set, and renamed over its destination in
    the order given (put the file that marks the set complete, a manifest, last); then each
    destination folder is fsynced once."""
    for src, _ in moves:
        fd = os.open(str(src), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(str(src), mode)
    folders = FolderBarrier()
    for src, dst in moves:
        os.replace(str(src), str(dst))
        folders.add(dst.parent)
    folders.sync()


def json_bytes(data: Any, compact: bool = False) -> bytes:
    """``data`` as UTF-8 JSON text plus a newline; strict: NaN or Infinity raise ValueError
    (they are not JSON, and a reader in another language would reject the file).

    Strings holding undecodable file-name bytes (``os.fsdecode``'s lone surrogates) cannot
    be UTF-8: they are written as ``\\udcXX`` escapes instead, which ``json.loads`` reads
    back to the same string, so a journal keeps such a name exactly.
    """
    separators = (",", ":") if compact else None
    indent = None if compact else 2
    text = json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False,
                      separators=separators)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, indent=indent, ensure_ascii=True, allow_nan=False,
                          separators=separators)
        return (text + "\n").encode("ascii")


def write_json_atomic(path: Path, data: Any, durable: bool = True, compact: bool = False,
                      sync_folder: bool = True) -> None:
    """``compact``: one line, no indentation, for records only the agent reads (its journal).
    ``durable`` and ``sync_folder`` as for ``write_bytes_atomic``."""
    write_bytes_atomic(path, json_bytes(data, compact), durable, sync_folder)


def write_json_new(path: Path, data: Any, barrier: FolderBarrier | None = None) -> None:
    """Create ``path`` holding ``data``, durably, and never replace anything: raises
    ``FileExistsError`` if the name is taken. (``write_json_atomic`` replaces.)"""
    with atomic_file(path, replace=False, barrier=barrier) as handle:
        handle.write(json_bytes(data))


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None if it is absent or unreadable (a torn write never is)."""
    try:
        with open(str(path), "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def lexists(path: Path | str) -> bool:
    """Whether ``path`` is there (a link counts, unfollowed). Unlike ``os.path.lexists``,
    which answers False on any error, only "no such file" is False; an I/O error is raised,
    so that a failing disk is never taken for an input already moved or removed (the job
    would be finished or forgotten while its input stays where it was)."""
    try:
        os.lstat(str(path))
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def read_json_if_there(path: Path) -> Any | None:
    """The JSON in ``path``; None if there is no such file, or it holds no JSON. Unlike
    ``read_json``, an error reading a file that is there (EIO, EMFILE) is raised: a caller
    that would take the file for absent, and write over it, fails and retries instead."""
    try:
        with open(str(path), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        return None


def append_lines_durable(path: Path, lines: list[str]) -> None:
    """Append lines (each plus a newline) with one write and one fsync: all of them or none.

    A torn last line left by an earlier crash is cut first, so the new lines never glue onto
    it. If the write fails part-way (a full disk), the file is cut back to where it was before
    raising: a failed append leaves no partial line behind. (Only a crash in the middle of
    the write can still leave a torn tail, which start-up and the next append cut.)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    if not created:
        repair_torn_tail(path)
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        data = "".join(line.rstrip("\n") + "\n" for line in lines).encode("utf-8")
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                pass  # then the torn tail is cut by the next append or at start-up
            raise
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def repair_torn_tail(path: Path) -> bool:
    """Cut a partial last line left by a crash mid-append; True if something was cut."""
    try:
        with open(str(path), "rb+") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            if size == 0:
                return False
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return False
            # walk back to the last newline (lines are short: read the tail in blocks)
            pos = size
            keep = 0
            while pos > 0:
                start = max(0, pos - 65536)
                handle.seek(start)
                block = handle.read(pos - start)
                idx = block.rfind(b"\n")
                if idx >= 0:
                    keep = start + idx + 1
                    break
                pos = start
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
            return True
    except FileNotFoundError:
        return False


def safe_name(name: str, fallback: str = "unnamed") -> str:
    """A file name that is safe to create inside one folder, whatever the input was called.

    Only the last path component survives (no ``..``, no separators of either kind),
    control characters become ``_``, a leading dot is dropped (no hidden files, no ``..``),
    and the result is at most 150 UTF-8 bytes with its extension kept.
    """
    name = unicodedata.normalize("NFC", str(name))
    name = re.split(r"[\\/]", name)[-1]
    name = "".join("_" if (unicodedata.category(c).startswith("C") or c in '<>:"|?*') else c
                   for c in name)
    name = name.strip().lstrip(".").strip()
    if not name:
        return fallback
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 16:
        stem, ext = name, ""
    ext = ("." + ext) if ext else ""
    while len((stem + ext).encode("utf-8")) > _MAX_NAME_BYTES and stem:
        stem = stem[:-1]
    return (stem + ext) or fallback


def display_name(name: str) -> str:
    """A file name as text that can be shown and stored anywhere (UTF-8, JSON, HTML).

    Names are bytes on Linux; ``os.fsdecode`` turns bytes that are not UTF-8 (``M\\xfcller``
    from a Latin-1 system) into lone surrogates, which no UTF-8 file or page can hold. They
    become U+FFFD (the replacement character), so the name still shows where it differs.
    """
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that no decoding made (from JSON, say)
        return re.sub("[\ud800-\udfff]", "\ufffd", name)


def split_ext(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return name, ""
    return stem, "." + ext


def free_name(folder: Path, name: str, tag: str, reserved: Collection[str] = (),
              companions: tuple[str, ...] = ()) -> Path:
    """``folder/name`` if unused, else ``name~tag``, ``name~tag-2``, ... (extension kept).

    A name counts as used if it exists, or if the name plus any of ``companions`` exists
    (``".reason.json"``: a quarantined input's record must be free too), or if any of them is
    in ``reserved``: paths (as strings) promised to other inputs of the same group, not yet
    created. When ``reserved`` is a set, the chosen path and its companions are added to it.
    The stem is shortened where a suffix would take the name past a file system's 255-byte
    limit (an inbox file called back ``name~earlier`` beside a 250-byte name), so every
    candidate can be created.

    The numbered names are searched by doubling, then halving: the same file sent again and
    again (an exporter's empty "export finished" marker after every batch, quarantined each
    time) takes ``-2``, ``-3``, ... in a run, and a year of them is thousands. Counting up
    one by one cost two probes per earlier copy for every new one, and gave up at 10,000
    (the input then stayed journaled, retried for ever); this takes about 2 log2(n) probes
    and always ends on a free name (the last one it probes was free).
    """
    def free(candidate: Path) -> bool:
        paths = [str(candidate)] + [str(candidate) + c for c in companions]
        return not any(p in reserved or os.path.lexists(p) for p in paths)

    stem, ext = split_ext(name)

    def numbered(n: int) -> Path:
        suffix = "" if n == 0 else (f"~{tag}" if n == 1 else f"~{tag}-{n}")
        short = stem
        while n and len(os.fsencode(f"{short}{suffix}{ext}")) > _NAME_MAX and short:
            short = short[:-1]
        return folder / f"{short}{suffix}{ext}"

    def chosen(candidate: Path) -> Path:
        if isinstance(reserved, set):
            reserved.add(str(candidate))
            reserved.update(str(candidate) + c for c in companions)
        return candidate

    for n in (0, 1):
        if free(numbered(n)):
            return chosen(numbered(n))
    taken, probe = 1, 2  # numbered(taken) is used; find a free numbered(probe) past it
    while not free(numbered(probe)):
        if probe > 1 << 40:
            raise FileExistsError(errno.EEXIST, f"no free name for {name}", str(folder))
        taken, probe = probe, probe * 2
    while probe - taken > 1:  # numbered(taken) used, numbered(probe) free: halve the gap
        middle = (taken + probe) // 2
        if free(numbered(middle)):
            probe = middle
        else:
            taken = middle
    return chosen(numbered(probe))


# What ``link`` raises on a filesystem without hard links (FAT, exFAT, some network shares)
NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV,
                 errno.ENOSYS, errno.EACCES)


def move_no_replace(src: Path, dst: Path, barrier: FolderBarrier | None = None) -> None:
    """Move ``src`` to ``dst`` (same filesystem) and never overwrite an existing ``dst``.

    A hard link followed by an unlink is atomic with respect to the destination name
    (``link`` fails if it exists). Filesystems without hard links (FAT, exFAT, some network
    shares) fall back to check-then-rename, safe because one agent owns the outbox.
    With a ``barrier`` the two folders are added to it instead of being fsynced here.
    """
    try:
        os.link(str(src), str(dst), follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        if lexists(dst):
            raise FileExistsError(errno.EEXIST, "destination exists", str(dst)) from None
        os.rename(str(src), str(dst))
    else:
        os.unlink(str(src))
    own = FolderBarrier() if barrier is None else barrier
    own.add(dst.parent)
    own.add(src.parent, left=True)
    if barrier is None:
        own.sync()


def copy_durable(src_fd: int, dst: Path) -> None:
    """Copy an open file's bytes to ``dst`` atomically (used when a rename crosses filesystems)."""
    with atomic_file(dst) as out, os.fdopen(os.dup(src_fd), "rb") as inp:
        inp.seek(0)
        shutil.copyfileobj(inp, out, 1 << 20)


def is_temp_name(name: str) -> bool:
    return name.startswith(TMP_PREFIX) and TMP_SUFFIX in name[len(TMP_PREFIX):]


def stale_temp_files(folder: Path) -> list[str]:
    """Temp files a crash left in ``folder`` (only ours: ``.neuroedge-*.tmp[.ext]``).

    The listing is walked, never held: ``reports/`` gains three entries an input, a million
    after a year (390 MB held as a list), and only the rare temporary names are kept."""
    try:
        with os.scandir(str(folder)) as entries:
            return [entry.path for entry in entries if is_temp_name(entry.name)]
    except OSError:
        return []


def remove_stale_temp_files(folder: Path) -> int:
    """Delete temp files a crash left in ``folder``; return how many."""
    removed = 0
    for path in stale_temp_files(folder):
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            pass
    return removed
