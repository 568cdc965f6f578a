"""What one call of the lent GPU machine would carry, measured before the call is made.

The device tool sends the checkout's working tree (tracked files, untracked files git does
not ignore, a ``shared/`` folder inside it) plus the ignored paths named in ``carry``, and
refuses a call when that passes 64 MiB. A refusal costs a GPU session minutes it cannot
spare, and the campaign's inputs are close to the limit (a 224x224 WebP pack of the data
set is 47-58 MB), so the size is measured here first.

How the tool counts is not documented to the byte. Loose pack files (7,023 of about 8 KB,
57 MB) were refused where one tar file of the same pack passed, which per-file overhead
explains; so each file is counted here rounded up to whole 4 KiB blocks, as a disk holds
it, and a margin is kept below the limit.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import OptionError, TrainerError

__all__ = ["BLOCK", "LIMIT", "MANY_FILES", "NotACheckout", "Part", "TravelError", "check",
           "measure", "table"]

LIMIT = 64 * 2**20  # the device tool's limit for what travels
BLOCK = 4096
MANY_FILES = 500  # a carried folder with more files should travel as one tar file


class TravelError(TrainerError):
    """What a device call would carry is over its limit (exit 1)."""


class NotACheckout(OptionError):
    """The folder is not a git checkout's top level, or git is missing (exit 64)."""


@dataclass
class Part:
    """Files that travel together: the working tree, or one carried path."""

    name: str
    files: int = 0
    bytes: int = 0
    counted: int = 0  # each file rounded up to whole blocks
    largest: list[tuple[int, str]] = field(default_factory=list)

    def add(self, path: str, size: int) -> None:
        self.files += 1
        self.bytes += size
        self.counted += max(1, -(-size // BLOCK)) * BLOCK
        self.largest.append((size, path))
        self.largest = sorted(self.largest, reverse=True)[:5]


def _git(repo: Path, *args: str) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], check=True,
                              capture_output=True).stdout
    except FileNotFoundError:
        raise NotACheckout("git is not installed; the device tool sends a git checkout, so "
                           "its size is measured with git") from None
    except subprocess.CalledProcessError as exc:
        raise NotACheckout(f"{repo} is not a git checkout ({exc.stderr.decode().strip()}); "
                           "run this from the repository root the device tool sends") from None


def _git_files(repo: Path) -> list[str]:
    """The working tree's files as git sees them: tracked, and untracked but not ignored.
    From the top level only: in a sub-folder git lists that folder alone, and the tool
    sends the whole checkout."""
    top = Path(os.fsdecode(_git(repo, "rev-parse", "--show-toplevel")).strip())
    if top.resolve() != repo.resolve():
        raise NotACheckout(f"{repo} is inside the checkout {top}, not its top level: the "
                           "device tool sends the whole checkout; give --repo "
                           f"{top} (carried paths are relative to it)")
    listed = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return sorted({name for name in os.fsdecode(listed).split("\0") if name})


def _walk(root: Path, top: Path) -> Iterable[tuple[str, int]]:
    """(path relative to ``root``, size) of every file under ``top``; links as links."""
    if top.is_symlink() or top.is_file():
        yield os.path.relpath(str(top), str(root)), top.lstat().st_size
        return
    for folder, dirs, files in os.walk(str(top)):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            yield os.path.relpath(path, str(root)), os.lstat(path).st_size


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def measure(repo: Path | str, carry: Sequence[str] = ()) -> list[Part]:
    """The parts a call with ``carry`` would send from ``repo``: the working tree first."""
    repo = Path(repo).resolve()
    carried = []
    for name in carry:
        path = (repo / name)
        relative = os.path.normpath(os.path.relpath(str(path.absolute()), str(repo)))
        if relative == ".." or relative.startswith("../"):
            raise OptionError(f"--carry {name}: not inside the checkout {repo}; the device "
                              "tool carries paths of the checkout only (copy it into an "
                              "ignored folder there)")
        if not os.path.lexists(str(path)):
            raise OptionError(f"--carry {name}: no such file or folder in {repo}")
        carried.append(relative)
    tree = Part("working tree")
    names = _git_files(repo)
    for name in names:
        path = repo / name
        if _under(name, carried) or not os.path.lexists(str(path)):
            continue  # a carried path replaces what is there; a deleted file does not go
        tree.add(name, path.lstat().st_size)
    shared = repo / "shared"
    if shared.is_dir() and not _under("shared", carried):  # travels, ignored or not
        listed = set(names)
        for name, size in _walk(repo, shared):
            if name not in listed:
                tree.add(name, size)
    parts = [tree]
    for name in carried:
        part = Part(name)
        for path, size in _walk(repo, repo / name):
            part.add(path, size)
        parts.append(part)
    return parts


def table(parts: Sequence[Part], limit: int = LIMIT) -> str:
    """The measurement as a table a person reads before the call."""
    total = Part("total")
    for part in parts:
        total.files += part.files
        total.bytes += part.bytes
        total.counted += part.counted
    lines = [f"What a device call would carry (limit {limit / 2**20:g} MiB; each file "
             f"counted in whole {BLOCK // 1024} KiB blocks):",
             f"{'part':<24} {'files':>7} {'bytes':>14} {'counted':>14}"]
    for part in [*parts, total]:
        lines.append(f"{part.name:<24} {part.files:>7,} {part.bytes:>14,} {part.counted:>14,}")
    spare = limit - total.counted
    lines.append(f"{total.counted / 2**20:.1f} MiB of {limit / 2**20:g} MiB "
                 f"({100 * total.counted / limit:.1f} %); "
                 + (f"{spare / 2**20:.1f} MiB to spare" if spare >= 0
                    else f"{-spare / 2**20:.1f} MiB over"))
    return "\n".join(lines)


def check(parts: Sequence[Part], limit: int = LIMIT, margin: int = 2**20) -> list[str]:
    """Warnings for a call that fits; raises ``TravelError`` for one that does not."""
    warnings = [f"{part.name} holds {part.files:,} files: tar it into one file (each file "
                "costs overhead on the way; 7,023 loose pack files were refused where one "
                "tar file of them passed)" for part in parts[1:] if part.files > MANY_FILES]
    counted = sum(part.counted for part in parts)
    if counted > limit - margin:
        largest = sorted((size, path) for part in parts for size, path in part.largest)[::-1][:5]
        raise TravelError(
            f"a device call would carry {counted / 2**20:.1f} MiB, over the "
            f"{(limit - margin) / 2**20:g} MiB kept as this check's bound ({limit / 2**20:g} "
            "MiB, the tool's limit, less a margin): the tool would refuse the call. Carry "
            "less: pack the data at a lower quality (bash trainer/campaign-prepare.sh tries "
            "85, 80, then 75), tar folders of many files, or move untracked files out of the "
            "checkout (they travel unless git ignores them). The largest files: "
            + ", ".join(f"{path} ({size / 1e6:.1f} MB)" for size, path in largest)
            + "".join(f". {warning[0].upper()}{warning[1:]}" for warning in warnings))
    return warnings
