"""How ``edge-agent offload`` knows a copy is right: the bytes as the disk holds them (its
cached pages dropped first), and a symbolic link by its target."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .manifest import sha256_file


def link_sha(target: str) -> str:
    """A link's stand-in for a sha256 (a quarantined symbolic link is copied as a link), in
    the record beside the files' own."""
    return "link:" + hashlib.sha256(os.fsencode(target)).hexdigest()


def read_back(path: Path) -> str:
    """The sha256 of ``path`` as the disk holds it: its cached pages are dropped first, so
    a copy that did not reach the disk whole is not read back from memory."""
    if os.path.islink(str(path)):
        return link_sha(os.readlink(str(path)))
    fd = os.open(str(path), os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        digest = hashlib.sha256()
        for chunk in iter(lambda: os.read(fd, 1 << 20), b""):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def same_or_absent(src: Path | None, target: Path) -> bool:
    """Whether ``target`` is free for ``src``: absent, or the same bytes (or link)."""
    if not os.path.lexists(str(target)):
        return True
    if src is None:
        return False
    if os.path.islink(str(src)) or os.path.islink(str(target)):
        return os.path.islink(str(src)) and os.path.islink(str(target)) and (
            os.readlink(str(src)) == os.readlink(str(target)))
    return target.stat().st_size == src.stat().st_size and sha256_file(target) == sha256_file(src)
