"""Can an output be written? Asked before the slow work (decoding a data set, training,
scoring), so that a file in the way or a read-only folder is said at once, not after an hour.

Also used by the converters: one answer for every command that writes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def unwritable_reason(path: str | os.PathLike, *, folder: bool) -> str | None:
    """Why ``path`` cannot be created (or replaced) as a folder (``folder``) or a file, or
    None when it can.

    The nearest existing folder on the way is probed by creating and removing a scratch
    folder in it: permission bits, ACLs, a read-only file system and root's privileges all
    answer as they will for the real write. Nothing is left behind.
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
        probe = tempfile.mkdtemp(prefix=".write-check-", dir=existing)
    except OSError as exc:
        return f"{existing} cannot be written ({exc.strerror or exc})"
    os.rmdir(probe)
    return None
