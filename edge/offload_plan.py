"""What one day's move by ``edge-agent offload`` is, planned before anything is copied: each
file of the day and where it goes at DEST (a quarantined input under a name free there),
which reports stay in the outbox (a later day still names them, or an input in the agent's
journal will, or DEST holds another of them), and the room the copies take at DEST. A
conflict at DEST found while planning stops the run before anything is copied. How a plan
is carried out, and why each step is safe to stop after: ``edge.offload``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .commit import REASON_SUFFIX
from .durable import display_name, is_temp_name, json_bytes, lexists, split_ext
from .errors import OutputError
from .index import DAY
from .offload_readback import same_or_absent
from .outbox import Outbox

# a line's report id, found as bytes: in compact JSON this can only be the key and its value
_LINE_ID = re.compile(rb'"id":"([0-9a-f]{64})"')
_WITH_REPORT = ("classified", "duplicate")
_BLOCK = 4096  # a file takes whole blocks at DEST


@dataclass
class Copy:
    """One file of a day: where it is in the outbox, where it goes at DEST."""

    src: str  # relative to the outbox
    dest: str  # relative to DEST
    size: int
    remove: bool = True  # False: a report a later day or a journaled input names (copied, kept)
    data: bytes | None = None  # written instead of src's bytes (a line rewritten)
    link: str | None = None  # a quarantined symbolic link's target
    present: bool = False  # already at DEST with this size: compared, not copied
    skip: bool = False  # a report DEST holds another of: neither copied nor removed
    sha256: str = ""  # of the bytes at DEST, once they are known to be right

    def entry(self) -> dict[str, Any]:
        return {"path": self.src, "copy": self.dest, "size": self.size, "sha256": self.sha256}


@dataclass
class DayPlan:
    day: str
    copies: list[Copy] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)  # named by the day's lines

    def moved_bytes(self) -> int:
        return sum(c.size for c in self.copies if c.remove)

    def needed_bytes(self) -> int:
        return sum(-(-c.size // _BLOCK) * _BLOCK + _BLOCK for c in self.copies
                   if not c.present)


def index_days(root: Path, wanted: Callable[[str], bool]) -> list[str]:
    """The days ``wanted`` takes of those with an index file in the outbox ``root``, oldest
    first."""
    folder = root / "index"
    return sorted(p.stem for p in folder.glob("*.jsonl") if DAY.match(p.stem)
                  and wanted(p.stem)) if folder.is_dir() else []


def journaled_reports(records: Iterable[Any]) -> set[str]:
    """The report ids that the index lines of jobs in the agent's journal (``.state/jobs``,
    as read) will name once the agent writes them: those of an input classified or found a
    duplicate (``edge.commit`` names ``reports/<sha256>.json`` in its line). Such a report
    must stay in the outbox as if a later day's line named it: moved, that line would name a
    file gone from the outbox (``edge-agent fsck``: "report missing").

    A job with no sha256 or no such outcome yet (claimed, not hashed or not decided) names
    no report yet, so nothing need stay for it: the agent, when it starts, hashes and
    classifies such a job again, and finds it a duplicate only of a report that is in the
    outbox then; one moved away meanwhile is written anew, as the input's own report."""
    return {str(r["sha256"]) for r in records if isinstance(r, dict)
            and r.get("outcome") in _WITH_REPORT and isinstance(r.get("sha256"), str)
            and r["sha256"]}


class DayPlanner:
    """The days of one run, each planned against DEST as it is when asked for: the space
    check plans them all, then each is planned again just before it moves."""

    def __init__(self, box: Outbox, dest: Path) -> None:
        self.box = box
        self.root = box.root
        self.dest = dest
        self.reserved: set[str] = set()  # quarantine names at DEST promised in this pass
        self.report_files: dict[str, list[str]] = {}
        self.last_day: dict[str, str] = {}  # report id -> the last day whose lines name it
        self.journaled: set[str] = set()  # report ids journaled inputs' lines will name

    def prepare(self, days: list[str]) -> None:
        """The report files of the days' lines (one walk of ``reports/``), and the last day
        that names each report: a day moves a report only if no later day names it (a
        duplicate's line names the earlier input's report), whether that day moves too
        (later in this run) or stays, and no input in the agent's journal will name it
        (``journaled``, set before: its line, still to come, is a later day's)."""
        first = days[0]
        for day in index_days(self.root, lambda d: d >= first):
            with open(str(self.root / "index" / f"{day}.jsonl"), "rb") as handle:
                self.last_day.update((m.decode(), day) for m in _LINE_ID.findall(handle.read()))
        ids = {str(e.get("id")) for day in days for _, e in self._lines(day)
               if e is not None and e.get("outcome") in _WITH_REPORT}
        if not self.box.reports.is_dir():
            return
        with os.scandir(str(self.box.reports)) as entries:
            for entry in entries:
                if entry.name[64:65] == "." and entry.name[:64] in ids:
                    self.report_files.setdefault(entry.name[:64], []).append(entry.name)

    def _lines(self, day: str) -> list[tuple[bytes, dict[str, Any] | None]]:
        """The day's index lines, as bytes and parsed (None: not readable)."""
        with open(str(self.root / "index" / f"{day}.jsonl"), "rb") as handle:
            raw = handle.read().split(b"\n")
        if raw and raw[-1] == b"":
            raw.pop()
        lines = []
        for line in raw:
            try:
                entry = json.loads(line.decode("utf-8"))
            except ValueError:
                entry = None
            lines.append((line, entry if isinstance(entry, dict) else None))
        return lines

    def plans(self, days: list[str]) -> Iterator[DayPlan]:
        """The days' plans, each made only when asked for: after the day before it moved."""
        for day in days:
            self.reserved.clear()
            yield self._plan_day(day)

    def _plan_day(self, day: str) -> DayPlan:
        """Every file of ``day``, the index file last (it names the others), and where each
        goes. A conflict at DEST found here stops the run before anything is copied."""
        plan = DayPlan(day)
        archive = self.box.archive / day
        if archive.is_dir() and not archive.is_symlink():
            for name in sorted(os.listdir(str(archive))):
                if is_temp_name(name):
                    continue  # an interrupted write's leftover: removed with the folder
                if (archive / name).is_dir() and not (archive / name).is_symlink():
                    raise OutputError(f"{archive / name} is a folder (the agent never makes "
                                      "one there): move it out of the archive, then run again")
                self._add(plan, self._copy(f"archive/{day}/{name}"))
        lines = self._lines(day)
        rewritten = False
        ids: dict[str, None] = {}  # in the order of the lines, once each
        for n, (_, entry) in enumerate(lines):
            if entry is None:
                continue
            if entry.get("outcome") in _WITH_REPORT:
                ids[str(entry.get("id"))] = None
                if isinstance(entry.get("study"), str):
                    plan.studies.add(entry["study"])
            moved_to = entry.get("moved_to")
            if entry.get("outcome") == "quarantined" and isinstance(moved_to, str) and (
                    moved_to.startswith("quarantine/")):
                name = self._quarantine(plan, moved_to, entry)
                if name is not None and name != moved_to:
                    entry["moved_to"] = name
                    lines[n] = (json_bytes(entry, compact=True).rstrip(b"\n"), entry)
                    rewritten = True
        for report_id in ids:
            for name in sorted(self.report_files.get(report_id, [])):
                self._add(plan, self._copy(f"reports/{name}",
                                           remove=self.last_day.get(report_id, day) <= day
                                           and report_id not in self.journaled))
        damaged = f"index/{day}.jsonl.damaged"
        if (self.root / damaged).is_file():
            self._add(plan, self._copy(damaged))
        data = b"".join(raw + b"\n" for raw, _ in lines) if rewritten else None
        self._add(plan, self._copy(f"index/{day}.jsonl", data=data))
        keep_whole_reports(plan)
        return plan

    @staticmethod
    def _add(plan: DayPlan, copy: Copy) -> None:
        plan.copies.append(copy)
        plan.sources.add(copy.src)

    def _copy(self, src: str, dest: str | None = None, remove: bool = True,
              data: bytes | None = None) -> Copy:
        info = os.lstat(str(self.root / src))
        link = os.readlink(str(self.root / src)) if stat.S_ISLNK(info.st_mode) else None
        copy = Copy(src, dest or src, len(data) if data is not None else info.st_size,
                    remove, data, link)
        target = self.dest / copy.dest
        if os.path.lexists(str(target)):
            same_size = (os.readlink(str(target)) == link if os.path.islink(str(target))
                         else link is None and target.stat().st_size == copy.size)
            if not same_size:
                self.conflict(copy)
            copy.present = True
        return copy

    def conflict(self, copy: Copy) -> None:
        """A different file has the name at DEST. A report is then kept in the outbox (the
        same input came again after its first report was moved: DEST's, of the same
        content, serves DEST's lines); anything else stops the run."""
        if copy.src.startswith("reports/"):
            copy.remove, copy.present, copy.skip = False, True, True
            return
        raise OutputError(f"{self.dest / copy.dest} already exists with other content than "
                          f"{self.root / copy.src}; nothing of that day was removed. Give each "
                          "outbox its own folder at DEST, or move that file aside once you "
                          "have looked at it, and run again")

    def _quarantine(self, plan: DayPlan, moved_to: str, entry: dict[str, Any]) -> str | None:
        """Plan a quarantined input and its record; return its name at DEST (None: it is
        not in the outbox any more). The name is the first of ``name``, ``name~<sha8>``,
        ``name~<sha8>-2``, ... where each of the two files is absent or already the same
        bytes (copied by an interrupted run): the same choice on every rerun."""
        src = self.root / moved_to
        if not lexists(src) or moved_to in plan.sources:
            return None
        record = Path(str(src) + REASON_SUFFIX)
        has_record = lexists(record)
        stem, ext = split_ext(src.name)
        tag = str(entry.get("id") or entry.get("token") or "x")[:8]
        for n in range(100000):
            name = src.name if n == 0 else f"{stem}~{tag}{'' if n == 1 else f'-{n}'}{ext}"
            rel = f"quarantine/{name}"
            if rel in self.reserved or not same_or_absent(src, self.dest / rel) or (
                    not same_or_absent(record if has_record else None,
                                        self.dest / (rel + REASON_SUFFIX))):
                continue
            self.reserved.add(rel)
            self._add(plan, self._copy(moved_to, rel))
            if has_record:
                self._add(plan, self._copy(moved_to + REASON_SUFFIX, rel + REASON_SUFFIX))
            return rel
        raise OutputError(f"no free name for {display_name(src.name)} in "
                          f"{self.dest / 'quarantine'}")


def keep_whole_reports(plan: DayPlan) -> None:
    """A report DEST holds another of stays in the outbox with all its files: its page
    and heat-map belong to it, even where DEST's are the same bytes."""
    kept = {Path(c.src).name[:64] for c in plan.copies if c.skip}
    for copy in plan.copies:
        if copy.src.startswith("reports/") and Path(copy.src).name[:64] in kept:
            copy.remove = False

