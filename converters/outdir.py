"""The output folder of a converter command: checked before the slow work, created only when
needed, and removed again (where the command created it and it is still empty) when the
command fails, so a mistake leaves no empty ``--out`` behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from converters.errors import OutputError
from edge.durable import unwritable_reason


def check_output_folder(out: Path, option: str = "--out") -> None:
    """An ``OutputError`` (exit 73) now, when ``out`` cannot be created or written."""
    reason = unwritable_reason(out, folder=True)
    if reason is not None:
        raise OutputError(f"cannot write to {option} {out}: {reason}; choose another folder")


@contextmanager
def output_folder(out: Path, option: str = "--out") -> Iterator[Path]:
    """Create ``out`` (and its missing parents) for the block; if the block raises, remove
    the folders made here that are still empty."""
    made = []
    folder = out
    while not folder.exists() and folder != folder.parent:
        made.append(folder)  # deepest first
        folder = folder.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write to {option} {out}: {exc.strerror or exc}; choose "
                          f"another folder") from None
    try:
        yield out
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()  # only an empty one: never anything a user put there
            except OSError:
                break
        raise
