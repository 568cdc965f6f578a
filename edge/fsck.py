"""``edge-agent fsck OUTBOX``: prove an outbox keeps the agent's promise, and mend what is safe.

The promise: every input the agent took is either archived with its report, or quarantined
with its reason record; every report, record and index line is whole JSON; nothing is left
half-done in the journal. This reads the outbox from disk (no model, no inbox needed) and
checks exactly that:

- the journal (``.state/jobs``, ``.state/claimed``) is empty: anything there is an input
  interrupted by a crash, which the agent finishes at its next start;
- every index line parses, and each names an input that is where the line says;
- every archived input has an index line and its report (by sha256: the report's name);
- every quarantined input has its reason record beside it;
- every report and every reason record parses.

Repairs, all safe without the model and none of them touching an input: partial temporary
files are removed, a torn last index line is cut, unreadable index lines are moved to
``index/<day>.jsonl.damaged`` (kept, not deleted), a missing index line is rebuilt from the
report or reason record on disk (marked ``"rebuilt_by": "fsck"``), a quarantined input that
lost its record gets one that says so, and the HTML index pages are rewritten. With
``--dry-run`` nothing is changed. The agent must not be running (its lock is taken). A day
whose offload was interrupted (``edge.offload``: its copies verified, its removal begun) is
reported as pending and not checked: the next ``edge-agent offload`` finishes it.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .commit import QUARANTINE_SCHEMA, REASON_SUFFIX
from .durable import (
    display_name,
    read_json,
    repair_torn_tail,
    write_bytes_atomic,
    write_json_new,
)
from .index import DAY, DailyIndex
from .manifest import sha256_file
from .offload import RECORD_NAME, finishing_command, pending_offload
from .outbox import Outbox
from .report import REPORT_SCHEMAS, local_day, now_iso, summary_line


@dataclass
class Finding:
    """One thing found: ``problem`` (the promise is broken), ``repaired`` (it was, and is
    mended), ``pending`` (the agent will finish it) or ``note`` (worth knowing, not wrong)."""

    kind: str
    where: str
    what: str


@dataclass
class Result:
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, where: str, what: str) -> None:
        self.findings.append(Finding(kind, where, what))

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts,
                "findings": [f.__dict__ for f in self.findings],
                "problems": len(self.of("problem")), "repaired": len(self.of("repaired")),
                "pending": len(self.of("pending"))}


def check_outbox(root: Path, repair: bool = True, deep: bool = False) -> Result:
    """Check (and, with ``repair``, mend) the outbox at ``root``; the caller holds its lock."""
    return _Checker(Outbox(root), repair, deep).run()


class _Checker:
    def __init__(self, outbox: Outbox, repair: bool, deep: bool) -> None:
        self.outbox = outbox
        self.repair = repair
        self.deep = deep
        self.index = DailyIndex(outbox.root)
        self.result = Result()
        # Only what the checks need is kept, never every line or report: a year's outbox
        # holds hundreds of thousands of them (kept parsed, 12 kB an input: gigabytes).
        self.lines = 0  # readable index lines
        self.indexed: dict[str, str | None] = {}  # moved_to -> its line's id (with --deep)
        self._tokens: set[str] | None = None  # every line's token, read when first needed
        self._classified: set[str] = set()  # ids of lines "classified", with _tokens
        self.changed_days: set[str] = set()
        # a day whose offload was interrupted (edge.offload): half removed, on purpose
        self.offloading = pending_offload(outbox.root)
        self.offloading_paths = {str(f.get("path")) for f in (self.offloading or {}).get(
            "files", []) if isinstance(f, dict)}
        self.offloading_day = (self.offloading or {}).get("day")

    def rel(self, path: Path) -> str:
        return display_name(self.outbox.relative(path))

    def run(self) -> Result:
        if self.offloading is not None:
            self.result.add("pending", f".state/{RECORD_NAME}",
                            f"the offload of {self.offloading_day} to "
                            f"{self.offloading.get('dest')} was interrupted: its copies are "
                            "verified; run the same `edge-agent offload` command again to "
                            "finish removing the day (its files are not checked here "
                            f"meanwhile): {finishing_command(self.outbox.root, self.offloading)}")
        self._journal()
        self._temp_files()
        reports = self._reports()
        self._index_files()
        archived = self._archive()
        quarantined = self._quarantine()
        self.result.counts.update(index_lines=self.lines, reports=reports,
                                  archived=archived, quarantined=quarantined)
        if self.repair and self.changed_days:
            self.index.render(sorted(self.changed_days))
        return self.result

    # --- the journal and leftovers -----------------------------------------------------

    def _journal(self) -> None:
        jobs = sorted(self.outbox.jobs.glob("*.json")) if self.outbox.jobs.is_dir() else []
        claimed = sorted(p for p in self.outbox.claimed.iterdir()
                         if not p.name.startswith(".")) if self.outbox.claimed.is_dir() else []
        for path in jobs:
            if not isinstance(read_json(path), dict):
                self.result.add("problem", self.rel(path),
                                "an unreadable journal record; the agent ignores it (its input, "
                                "if any, is still in .state/claimed and is adopted)")
        if jobs or claimed:
            self.result.add("pending", ".state",
                            f"{len(jobs)} journal record(s) and {len(claimed)} claimed input(s) "
                            "from an interrupted run: the agent finishes them when it next "
                            "starts (`edge-agent watch INBOX --once`)")

    def _temp_files(self) -> None:
        if not self.repair:
            leftovers = self.outbox.temp_files()  # not rglob: it lists reports/ whole
            if leftovers:
                self.result.add("note", ".", f"{len(leftovers)} partial temporary file(s) left "
                                "by an interrupted write (harmless; removed on repair)")
            return
        removed = self.outbox.remove_temp_files()
        if removed:
            self.result.add("repaired", ".", f"removed {removed} partial temporary file(s) "
                            "left by an interrupted write")

    # --- the index -----------------------------------------------------------------------

    def _index_files(self) -> None:
        folder = self.outbox.root / "index"
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.jsonl")):
            day = path.stem
            if not DAY.match(day) or day == self.offloading_day:
                continue
            if self.repair and repair_torn_tail(path):
                self.result.add("repaired", self.rel(path), "cut a partial last line left by a "
                                "crash (its input is journaled or rebuilt below)")
                self.changed_days.add(day)
            good, bad, tokens = [], [], set()
            with open(str(path), "rb") as handle:
                raw_lines = handle.read().split(b"\n")
            if raw_lines and raw_lines[-1] == b"":
                raw_lines.pop()
            for raw in raw_lines:
                entry = _parse_line(raw)
                if entry is None:
                    bad.append(raw)
                elif entry["token"] in tokens:
                    self.result.add("note", self.rel(path),
                                    f"a second line for job {entry['token']} (ignored)")
                else:
                    tokens.add(entry["token"])
                    good.append(raw)
                    self._line_points_at_its_input(day, entry)
            if bad:
                self._damaged_lines(path, day, good, bad)

    def _line_points_at_its_input(self, day: str, entry: dict[str, Any]) -> None:
        self.lines += 1
        moved_to = entry.get("moved_to")
        where = f"index/{day}.jsonl"
        if entry.get("outcome") in ("classified", "duplicate") and not os.path.isfile(
                str(self.outbox.reports / f"{entry.get('id')}.json")):
            self.result.add("problem", where, f"job {entry['token']}: its report "
                            f"reports/{entry.get('id')}.json is missing")
        if not moved_to:
            return
        self.indexed[moved_to] = entry.get("id") if self.deep else None
        if not os.path.lexists(str(self.outbox.root / moved_to)):
            self.result.add("note", where, f"job {entry['token']}: the input it names "
                            f"({display_name(moved_to)}) is no longer there (moved away by "
                            "hand?)")

    def _damaged_lines(self, path: Path, day: str, good: list[bytes], bad: list[bytes]) -> None:
        if not self.repair:
            self.result.add("problem", self.rel(path),
                            f"{len(bad)} unreadable line(s) (torn by a full disk or a crash)")
            return
        damaged = path.with_name(path.name + ".damaged")
        with open(str(damaged), "ab") as handle:  # kept for a human, never deleted
            handle.write(b"".join(line + b"\n" for line in bad))
            handle.flush()
            os.fsync(handle.fileno())
        write_bytes_atomic(path, b"".join(line + b"\n" for line in good))
        self.changed_days.add(day)
        self.result.add("repaired", self.rel(path),
                        f"moved {len(bad)} unreadable line(s) to {damaged.name}; the inputs "
                        "they stood for get rebuilt lines below")

    def _append_rebuilt(self, day: str, entry: dict[str, Any]) -> None:
        entry.update(rebuilt_by="fsck", rebuilt_at=now_iso())
        self.index.append(day, [(entry, False)])
        self.lines += 1
        self._all_tokens().add(entry["token"])
        if entry.get("outcome") == "classified":
            self._classified.add(entry["id"])
        self.changed_days.add(day)

    def _all_tokens(self) -> set[str]:
        """Every index line's token (and the ids of lines "classified"), read once, when the
        first line must be rebuilt: rare, so not kept while checking."""
        if self._tokens is None:
            self._tokens = set()
            folder = self.outbox.root / "index"
            for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
                if not DAY.match(path.stem):
                    continue
                with open(str(path), "rb") as handle:
                    for raw in handle:
                        entry = _parse_line(raw.rstrip(b"\n"))
                        if entry is not None:
                            self._tokens.add(entry["token"])
                            if entry.get("outcome") == "classified":
                                self._classified.add(entry.get("id"))
        return self._tokens

    # --- reports ---------------------------------------------------------------------------

    def _reports(self) -> int:
        """Read every report (and let it go: a line's report is looked for on disk); return
        how many are readable."""
        found = 0
        try:
            with os.scandir(str(self.outbox.reports)) as entries:
                for entry in entries:
                    if entry.name.endswith(".json"):
                        found += self._readable_report(Path(entry.path)) is not None
        except (FileNotFoundError, NotADirectoryError):
            pass
        return found

    def _readable_report(self, path: Path, say: bool = True) -> dict[str, Any] | None:
        report = read_json(path)
        if not isinstance(report, dict) or report.get("schema") not in REPORT_SCHEMAS or (
                report.get("id") != path.stem):
            if say:
                self.result.add("problem", self.rel(path),
                                "not a readable report (or not the report its name says)")
            return None
        return report

    # --- archived and quarantined inputs -----------------------------------------------------

    def _archive(self) -> int:
        count = 0
        if not self.outbox.archive.is_dir():
            return 0
        for day_folder in sorted(self.outbox.archive.iterdir()):
            if not day_folder.is_dir() or day_folder.is_symlink() or (
                    day_folder.name == self.offloading_day):
                continue
            for name in sorted(os.listdir(str(day_folder))):
                if name.startswith("."):
                    continue
                path = day_folder / name
                count += 1
                rel = self.outbox.relative(path)
                indexed = rel in self.indexed
                if indexed and not self.deep:
                    continue
                sha = sha256_file(path) if path.is_file() and not path.is_symlink() else None
                if indexed:
                    if sha != self.indexed[rel]:
                        self.result.add("problem", self.rel(path),
                                        "its content is not the content its index line names "
                                        "(changed after it was archived)")
                    continue
                report = self._readable_report(self.outbox.reports / f"{sha}.json", say=False)
                if report is None:
                    self.result.add("problem", self.rel(path),
                                    "archived without a report and without an index line; copy "
                                    "it into the inbox again to have it classified")
                    continue
                self._rebuild_line(path, day_folder.name, self._archived_entry(rel, sha, report))
        return count

    def _quarantine(self) -> int:
        folder = self.outbox.quarantine
        if not folder.is_dir():
            return 0
        names = {p.name for p in folder.iterdir() if not p.name.startswith(".")
                 and f"quarantine/{p.name}" not in self.offloading_paths}
        inputs = {n for n in names if n + REASON_SUFFIX in names}
        records = {n + REASON_SUFFIX for n in inputs}
        for name in sorted(names - inputs - records):
            path = folder / name
            data = read_json(path) if name.endswith(REASON_SUFFIX) else None
            if isinstance(data, dict) and data.get("schema") == QUARANTINE_SCHEMA:
                self.result.add("note", self.rel(path), "a reason record whose input is no "
                                "longer beside it (moved away by hand?)")
                continue
            inputs.add(name)  # an input without its record
            self._missing_record(path)
        for name in sorted(inputs):
            path = folder / name
            record = read_json(folder / (name + REASON_SUFFIX))
            if not isinstance(record, dict):
                if (folder / (name + REASON_SUFFIX)).exists():
                    self.result.add("problem", self.rel(path),
                                    "its reason record is not readable JSON")
                continue
            rel = self.outbox.relative(path)
            if rel not in self.indexed:
                day = str(record.get("quarantined_at") or "")[:10]
                self._rebuild_line(path, day if DAY.match(day) else local_day(),
                                   self._quarantined_entry(rel, record))
        return len(inputs)

    def _missing_record(self, path: Path) -> None:
        if not self.repair:
            self.result.add("problem", self.rel(path), "a quarantined input without its reason "
                            "record")
            return
        sha = sha256_file(path) if path.is_file() and not path.is_symlink() else None
        record = {"schema": QUARANTINE_SCHEMA, "file_name": display_name(path.name),
                  "sha256": sha, "size_bytes": path.lstat().st_size,
                  "reason": "found in the quarantine without its reason record (it was lost or "
                            "removed); the original reason is unknown",
                  "reason_code": "RecordLost", "received_at": None,
                  "quarantined_at": now_iso(), "token": f"fsck-{(sha or 'link')[:12]}",
                  "moved_to": self.outbox.relative(path), "rebuilt_by": "fsck",
                  "what_to_do": "Look at the file; copy it into the inbox again if it should be "
                                "classified."}
        write_json_new(Path(str(path) + REASON_SUFFIX), record)
        self.result.add("repaired", self.rel(path), "wrote the reason record it had lost")

    def _token(self, preferred: Any) -> str:
        """The job's own token when no line has it yet, else a new one marked as ours."""
        if isinstance(preferred, str) and preferred and preferred not in self._all_tokens():
            return preferred
        return f"fsck-{uuid.uuid4().hex[:12]}"

    def _archived_entry(self, rel: str, sha: str | None,
                        report: dict[str, Any]) -> dict[str, Any]:
        self._all_tokens()  # reads the ids of the lines "classified" too
        outcome = "duplicate" if sha in self._classified else "classified"
        token = report.get("intake", {}).get("token") if outcome == "classified" else None
        html = self.outbox.reports / f"{sha}.html"
        return {"time": now_iso(), "token": self._token(token), "id": sha,
                "file_name": display_name(Path(rel).name), "outcome": outcome,
                **summary_line(report), "report": f"reports/{sha}.json",
                "html": f"reports/{sha}.html" if html.exists() else None,
                "moved_to": rel, "reason": None}

    def _quarantined_entry(self, rel: str, record: dict[str, Any]) -> dict[str, Any]:
        return {"time": now_iso(), "token": self._token(record.get("token")),
                "id": record.get("sha256"), "file_name": record.get("file_name"),
                "outcome": "quarantined", "label": None, "confidence": None,
                "needs_review": None, "report": None, "html": None, "moved_to": rel,
                "reason": record.get("reason")}

    def _rebuild_line(self, path: Path, day: str, entry: dict[str, Any]) -> None:
        if not self.repair:
            self.result.add("problem", self.rel(path), "has no line in the daily index")
            return
        self._append_rebuilt(day, entry)
        self.result.add("repaired", self.rel(path), f"rebuilt its index line in index/{day}.jsonl")


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
        return None
    return entry


def print_result(result: Result, echo: Callable[[str], None]) -> None:
    for finding in result.findings:
        echo(f"{finding.kind:9s} {finding.where}: {finding.what}")
    c = result.counts
    echo(f"checked {c.get('index_lines', 0)} index line(s), {c.get('reports', 0)} report(s), "
         f"{c.get('archived', 0)} archived and {c.get('quarantined', 0)} quarantined input(s): "
         f"{len(result.of('problem'))} problem(s), {len(result.of('repaired'))} repaired, "
         f"{len(result.of('pending'))} pending")
