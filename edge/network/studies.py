"""Study-level results: group the per-slice reports by study, judge a study once it is quiet.

The tracker reads the daily index (``index/YYYY-MM-DD.jsonl``), which the agent appends to
once an input is durably reported and archived, and notes every classified DICOM input (and
duplicate) whose index line names a study (``study``: its StudyInstanceUID). It never
classifies anything again: the verdict is made from the reports already written
(``reports/<id>.json``, the rule in ``edge.network.verdict``).

A study whose set of instances changed and then stayed unchanged for ``[studies]
settle_seconds`` is judged: ``studies/<StudyInstanceUID>.html`` then ``.json`` are written
atomically, the ``on_judged`` callback runs (the DICOM SR for the PACS is queued there),
and ``studies/index.html`` is rendered. More instances later start it again: the study is
re-judged from all its instances, its report replaced (``revision`` + 1).

State survives a crash: ``.state/studies/cursor.json`` (how far each index file was read;
losing an update only re-reads lines, which is harmless) and ``.state/studies/<uid>.json``
(a study with instances not judged yet, written durably before the cursor moves past them,
removed once the judgment is durable). Replaying anything twice changes nothing: instances
are a set, and a re-judgment of the same set keeps its revision and its SR.

A disk error reading any of these (EIO, EMFILE) is never taken for a file that is absent:
at start it stops the agent (exit 75, started again) before anything is written over; while
judging, the judgment is retried; rendering ``studies/index.html``, the page keeps what it
showed of that study and is written again a little later.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List

from ..decoded import raise_if_passing
from ..dicom import uid_hash
from ..durable import (
    fsync_dir,
    read_json_if_there,
    write_bytes_atomic,
    write_json_atomic,
)
from ..liveness import Progress
from ..report import now_iso, shown_time, study_of, valid_uid
from ..worker import describe_error
from .dest_reads import DestNotAnswering, DestReads
from .settings import StudiesConfig
from .verdict import Slice, instances_hash, judge, suspicious

log = logging.getLogger(__name__)

STUDY_SCHEMA = "neuroedge.study/1"
STUDY_NOTICE = ("NOT FOR CLINICAL USE. This is an automated research summary of a study's "
                "slices, each classified by a machine-learning model. It is not a diagnosis, "
                "may be wrong, and must not be used to make decisions about a patient's care.")
_DAY_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}\.jsonl$")
_POLL = 0.5  # seconds between two reads of the index (a study waits up to this on top)
_RETRY_FIRST, _RETRY_MAX = 30.0, 900.0  # seconds before a study that failed is tried again
# one poll of the index, or one study's judgment, taking longer than this is stuck (a read
# on a share that stopped answering): the watchdog pings stop (``edge.liveness``)
JUDGE_BOUND = 300.0
_CLOCK_SLACK = 5.0  # seconds "in the future" a saved time may be before the clock went back

OnJudged = Callable[[Dict[str, Any], List[Slice]], None]  # typing: Python 3.8


def index_row(doc: Any) -> dict[str, Any] | None:
    """What studies/index.html shows of one study report; None if it is not one we wrote
    (another schema, or fields missing or of the wrong type: edited by hand)."""
    if not isinstance(doc, dict) or doc.get("schema") != STUDY_SCHEMA:
        return None
    uid, counts, series = doc.get("study_instance_uid"), doc.get("counts"), doc.get("series")
    if not (valid_uid(uid) and isinstance(counts, dict) and isinstance(series, list)
            and isinstance(counts.get("instances"), int)):
        return None
    return {"study_instance_uid": uid, "verdict": str(doc.get("verdict")),
            "created_at": str(doc.get("created_at") or ""),
            "study_date": str(doc.get("study_date") or ""),
            "instances": counts["instances"], "series": len(series)}


def _read_if_readable(path: Path) -> Any | None:
    """``read_json_if_there``, except that an error about the file itself (EACCES, EISDIR:
    retrying cannot help) reads as no report; a disk error (EIO, EMFILE) is raised."""
    try:
        return read_json_if_there(path)
    except OSError as exc:
        raise_if_passing(exc)
        return None


def _moved(s: Slice, entry: bool) -> dict[str, Any]:
    """What a study report says of an offloaded slice: where its report is, and (in its
    instance entry) what ``Slice.from_entry`` needs to judge it again without that disk."""
    if not s.offloaded_to:
        return {}
    return {"offloaded_to": s.offloaded_to, **(s.kept() if entry else {})}


def instance_entry(s: Slice) -> dict[str, Any]:
    """A slice's entry in ``instances`` of a study report (and, for a slice offloaded while
    its study was pending, in the study's state: ``edge.network.study_offload``)."""
    return {"report": s.report_id, "sop_instance_uid": s.sop_instance_uid,
            "series_instance_uid": s.series_instance_uid, "label": s.label,
            "confidence": s.confidence, "needs_review": s.needs_review,
            "archived_as": s.archived_as, **_moved(s, True)}


class StudyTracker:
    """Follows the daily index, keeps pending studies, judges them once settled."""

    def __init__(self, outbox: Path, rule: StudiesConfig, labels: list[str],
                 review_rule: dict[str, Any], html: bool = True,
                 on_judged: OnJudged | None = None, dest_reads: DestReads | None = None) -> None:
        self.outbox = outbox
        self.rule = rule
        self.labels = list(labels)
        self.review_rule = review_rule
        self.html = html
        self.on_judged = on_judged
        # reads at an offload's DEST (a share that may stop answering): bounded, shared
        # with ``on_judged``, which reads an offloaded instance there for the SR
        self.dest_reads = dest_reads or DestReads()
        self.folder = outbox / "studies"
        self.state = outbox / ".state" / "studies"
        self.counts = {"judged": 0}
        self._offsets: dict[str, int] = {}
        self._tails: dict[str, str] = {}  # hex of the bytes just before each offset
        self._pending: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one pass at a time (the thread, or finish())
        self.progress = Progress("study tracker", JUDGE_BOUND)
        self._failures: dict[str, tuple[int, float]] = {}  # uid: (failures, monotonic retry)
        # uid: (when its judgment first failed, what failed in words): for the front page
        self._held: dict[str, tuple[str, str]] = {}
        # studies/index.html's row of each study report, by file name, with the file's
        # (mtime, size, inode) when read: only a report that changed is read again
        self._index_rows: dict[str, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}
        self._render_retry: float | None = None  # monotonic time to write it again (failed)
        self._opened = False

    # --- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create the folders and read the saved state (the cursor, pending studies).

        Read strictly: a disk error (EIO) is raised, never taken for a first start (the
        cursor would be written over at the end of the index, and the inputs indexed since
        it was saved never grouped) nor for a study no longer pending. The agent then
        stops (``StorageError``, exit 75) having written nothing, and is started again."""
        self.folder.mkdir(exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        cursor = read_json_if_there(self.state / "cursor.json")
        if isinstance(cursor, dict) and isinstance(cursor.get("offsets"), dict):
            self._offsets = {k: int(v) for k, v in cursor["offsets"].items()
                             if _DAY_FILE.match(k) and isinstance(v, int)}
            tails = cursor.get("tails")
            self._tails = {k: v for k, v in tails.items() if k in self._offsets and isinstance(
                v, str)} if isinstance(tails, dict) else {}
        else:  # first start with studies: begin at the end of what is already indexed
            self._offsets = {name: size for name, size in self._index_sizes(strict=True).items()}
            if self._offsets:
                log.info("study tracking starts now; inputs indexed before are not grouped "
                         "into studies")
            self._save_cursor()
        for path in sorted(self.state.glob("*.json")):
            data = read_json_if_there(path) if path.name != "cursor.json" else None
            if isinstance(data, dict) and valid_uid(data.get("study")) and (
                    path.stem == data["study"]):
                self._pending[data["study"]] = data
        self._opened = True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="studies", daemon=True)
        self._thread.start()
        self.progress.running(self._thread)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.progress.running(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def finish(self, alive: Callable[[], None] = lambda: None) -> None:
        """Read what is left in the index and judge every pending study now, settled or not
        (``watch --once``: the backlog is all there is). Nothing if ``open`` failed: its
        state unread, a poll would read the index from its start and write the cursor over."""
        if not self._opened:
            return
        with self._lock:
            self.poll()
            for uid in sorted(self._pending):
                self._judge_safely(uid)
                alive()
            self._render_index()

    def _run(self) -> None:
        while not self._stop.wait(_POLL):
            self.progress.begin()
            with self._lock:
                try:
                    self.poll()
                    judged = [uid for uid in self.due() if self._judge_safely(uid)]
                    if judged or (self._render_retry is not None
                                  and time.monotonic() >= self._render_retry):
                        self._render_index()
                except OSError as exc:  # a disk that failed: one line, tried again
                    log.error("study tracking could not read or write the outbox (%s); "
                              "trying again in %g s", describe_error(exc), _POLL)
                except Exception:  # noqa: BLE001 - keep following; the state is on disk
                    log.exception("study tracking failed; retrying")
            self.progress.end()

    # --- following the index ---------------------------------------------------------------

    def _index_sizes(self, strict: bool = False) -> dict[str, int]:
        """The size of each day's index file. An error listing them reads as none for this
        poll (the next looks again); ``strict`` (the first start, which begins at their
        end): raised, not taken for an empty index (every input ever indexed would then be
        grouped into studies)."""
        sizes = {}
        try:
            with os.scandir(str(self.outbox / "index")) as entries:
                for entry in entries:
                    if _DAY_FILE.match(entry.name):
                        sizes[entry.name] = entry.stat().st_size
        except FileNotFoundError:
            pass
        except OSError:
            if strict:
                raise
        return sizes

    def poll(self) -> int:
        """Note the instances of index lines appended since the last call; return how many
        lines were read. Pending studies are durable before the cursor moves."""
        changed: set[str] = set()
        lines = 0
        for name, size in sorted(self._index_sizes().items()):
            offset = self._offsets.get(name, 0)
            if size < offset:  # lines cut back (a failed append): read the day again
                offset = 0
            if size == offset:
                continue
            with open(str(self.outbox / "index" / name), "rb") as handle:
                if offset:  # still the lines we read? (cut back and appended again since)
                    tail = bytes.fromhex(self._tails.get(name, "")) or b"\n"
                    handle.seek(offset - len(tail))
                    if handle.read(len(tail)) != tail:
                        offset = 0  # read the day again: instances are a set, none doubles
                handle.seek(offset)
                data = handle.read(size - offset)
            end = data.rfind(b"\n") + 1  # a line still being appended waits for next time
            for raw in data[:end].splitlines():
                lines += 1
                self._note(raw, changed)
            self._offsets[name] = offset + end
            if end:
                self._tails[name] = data[max(0, end - 64):end].hex()
        now = time.time()
        for uid in changed:
            self._pending[uid]["changed_at"] = now
            write_json_atomic(self.state / f"{uid}.json", self._pending[uid], sync_folder=False)
        if changed:
            fsync_dir(self.state)
        if lines:
            self._save_cursor()
        return lines

    def _note(self, raw: bytes, changed: set[str]) -> None:
        try:
            entry = json.loads(raw.decode("utf-8"))
        except ValueError:
            return
        uid = entry.get("study") if isinstance(entry, dict) else None
        report_id = entry.get("id") if uid else None
        if entry.get("outcome") not in ("classified", "duplicate") or not valid_uid(uid) or not (
                isinstance(report_id, str) and re.match(r"^[0-9a-f]{64}$", report_id)):
            return
        pending = self._pending.setdefault(uid, {"study": uid, "members": {},
                                                 "changed_at": time.time()})
        if report_id not in pending["members"]:
            pending["members"][report_id] = entry.get("moved_to")
            changed.add(uid)

    def _save_cursor(self) -> None:
        # Its folder not fsynced: a lost update only makes the next start re-read lines
        # (idempotent). Its data fsynced: renamed into place unsynced, a power cut could
        # leave it empty (XFS; ext4 without its rename heuristic), read as a first start,
        # which skips the lines indexed meanwhile (``Claim.take`` says the same).
        write_json_atomic(self.state / "cursor.json",
                          {"offsets": self._offsets, "tails": self._tails},
                          sync_folder=False)

    def due(self, now: float | None = None) -> list[str]:
        """Pending studies quiet for ``settle_seconds``, oldest first.

        A study last changed "in the future" was noted before the clock was set back (a
        box without a real-time clock, a wrong date corrected): it counts as changed now,
        so it waits ``settle_seconds`` more, not as long as the clock jumped."""
        now = time.time() if now is None else now
        for pending in self._pending.values():
            if float(pending["changed_at"]) > now + _CLOCK_SLACK:
                pending["changed_at"] = now
        parked = {uid for uid, (_, until) in self._failures.items() if until > time.monotonic()}
        ready = [(p["changed_at"], uid) for uid, p in self._pending.items()
                 if now - float(p["changed_at"]) >= self.rule.settle_seconds
                 and uid not in parked]
        return [uid for _, uid in sorted(ready)]

    # --- judging ---------------------------------------------------------------------------

    def _judge_safely(self, uid: str) -> bool:
        """Judge one study; a failure is logged and retried later, never allowed to stop
        the other studies (they are judged in turn, the oldest first)."""
        self.progress.begin()  # each study has the bound to itself
        try:
            self.judge(uid)  # its success forgets the study (``_forget``), held back or not
            self._failures.pop(uid, None)
            return True
        except OSError as exc:  # a disk error: the study stays pending, judged again later
            # The first retry comes after settle_seconds, as for any change (a passing
            # error); each that fails again waits longer (30 s, doubling to 15 min), or an
            # error that stays would rewrite the study's report and log a line at every
            # poll (every 0.5 s with settle_seconds = 0), wearing an SD card for nothing.
            failures, delay = self._park(uid, first_at_once=True)
            what, error = self._what_failed(exc), exc.strerror or exc
            self._hold(uid, f"could not read or write {what} ({error})")
            log.error("could not read or write %s of study %s (%s); retrying %s", what,
                      uid_hash(uid), error, f"in {delay:.0f}s" if delay else "later")
            pending = self._pending.get(uid)
            if pending is not None:
                pending["changed_at"] = time.time()
            return False
        except Exception:  # noqa: BLE001 - a defect: log it, park this study, go on
            failures, delay = self._park(uid, first_at_once=False)
            self._hold(uid, "an unexpected error (the agent's log has its details)")
            log.exception("could not judge study %s (attempt %d); the other studies go on; "
                          "retrying in %.0fs", uid_hash(uid), failures, delay)
            return False

    def _park(self, uid: str, first_at_once: bool) -> tuple[int, float]:
        """Count one more failure of ``uid`` and hold it back: 30 s, doubling to 15 min
        (``first_at_once``: the first failure is not held back). Returns (failures, delay)."""
        failures = self._failures.get(uid, (0, 0.0))[0] + 1
        steps = failures - 2 if first_at_once else failures - 1
        delay = 0.0 if steps < 0 else min(_RETRY_MAX, _RETRY_FIRST * 2 ** steps)
        self._failures[uid] = (failures, time.monotonic() + delay)
        return failures, delay

    def _hold(self, uid: str, why: str) -> None:
        since = self._held.get(uid, (now_iso(), ""))[0]
        self._held[uid] = (since, why)

    def page_lines(self) -> list[str]:
        """What the outbox's front page must say of the studies, in plain words: those whose
        judgment failed again after its first retry (a disk error that stays, an offload's
        DEST that stopped answering); nothing for one that passed at once."""
        held = [(since, why) for uid, (since, why) in list(self._held.items())
                if self._failures.get(uid, (0, 0.0))[0] >= 2]
        if not held:
            return []
        since, why = min(held)  # the study held back longest
        return [f"{len(held)} study report(s) are held back by an error that has not cleared: "
                f"{why}, since {shown_time(since)}. They are judged automatically once it "
                "clears; each slice's own report on these pages is complete."]

    def _what_failed(self, exc: OSError) -> str:
        """The file ``exc`` is about, in words (its name holds the study's UID: not logged)."""
        name = Path(str(exc.filename)) if exc.filename else None
        if isinstance(exc, DestNotAnswering) and name is not None and name.parent.name != (
                "reports"):
            return f"an instance offloaded to {exc.dest}, read for the SR"
        if name is not None and (self.outbox / ".state" / "outgoing") in name.parents:
            return f"the SR queue ({self.outbox / '.state' / 'outgoing'})"
        if name is not None and name.parent == self.outbox / "reports":
            return f"a slice's report ({name.parent})"
        if name is not None and name.parent.name == "reports" and self.outbox not in (
                name.parents):
            return f"a slice's report offloaded to {name.parent.parent}"
        if name is not None and (self.outbox / "archive") in name.parents:
            return f"an archived instance, read for the SR ({self.outbox / 'archive'})"
        return f"the report ({self.folder})"

    def judge(self, uid: str) -> dict[str, Any] | None:
        """Judge a pending study from all its instances; write its report; forget it."""
        pending = self._pending[uid]
        # read strictly: a report the disk failed to give is not a missing one (the study
        # would be judged without it and forgotten); the error retries the judgment
        previous = read_json_if_there(self.folder / f"{uid}.json")
        members: dict[str, str | None] = {}
        offloaded: dict[str, dict[str, Any]] = {}  # report id -> its entry, marked moved
        if isinstance(previous, dict):
            for inst in previous.get("instances", []):
                members[inst["report"]] = inst.get("archived_as")
                moved_to = inst.get("offloaded_to")
                if isinstance(moved_to, str) and moved_to:
                    offloaded[inst["report"]] = inst
        # slices offloaded while the study was pending: their entries are in its state
        for report_id, entry in (pending.get("offloaded") or {}).items():
            if isinstance(entry, dict):
                offloaded.setdefault(report_id, entry)
        for report_id, archived in pending["members"].items():
            members.setdefault(report_id, archived)
        slices, missing, kept = [], 0, []
        models: dict[str, dict[str, Any]] = {}
        study_date = None
        for report_id, archived in sorted(members.items()):
            report = read_json_if_there(self.outbox / "reports" / f"{report_id}.json")
            moved = None
            if not isinstance(report, dict) or study_of(report) != uid:
                # offloaded (edge.network.study_offload): the previous report kept the slice
                entry = offloaded.get(report_id)
                moved = entry and entry["offloaded_to"]
                again = Slice.from_entry(entry) if entry else None
                if again is not None:
                    slices.append(again)
                    kept.append(entry)
                    continue
                if moved:  # marked before entries kept the slice: its disk may be at hand
                    # (not mounted: left out with a note; a disk error retries the judgment)
                    at_dest = Path(moved) / "reports" / f"{report_id}.json"
                    report = self.dest_reads.read(moved, at_dest,
                                                  partial(_read_if_readable, at_dest))
            if not isinstance(report, dict) or study_of(report) != uid:
                missing += 1
                continue
            slices.append(Slice.from_report(report, archived, moved or None))
            model = report.get("model") or {}
            models.setdefault(str(model.get("sha256")), {
                k: model.get(k) for k in ("name", "version", "sha256", "runtime")})
            study_date = study_date or (report.get("dicom") or {}).get("study_date")
        if kept:  # slices rebuilt from entries were judged with the previous report's models
            # (or, kept in the pending state, with the model each entry names)
            earlier = previous if isinstance(previous, dict) else {}
            for model in [*(earlier.get("models") or []), *(e.get("model") for e in kept)]:
                if isinstance(model, dict):
                    models.setdefault(str(model.get("sha256")), model)
            study_date = study_date or earlier.get("study_date") or next(
                (e["study_date"] for e in kept if e.get("study_date")), None)
        if not slices:
            log.warning("study %s: none of its %d report(s) can be read; not judged",
                        uid_hash(uid), len(members))
            self._forget(uid)
            return None
        digest = instances_hash(slices)
        same = isinstance(previous, dict) and previous.get("instances_hash") == digest
        revision = int(previous.get("revision", 0)) if same else (
            int(previous.get("revision", 0)) + 1 if isinstance(previous, dict) else 1)
        doc = self._document(uid, slices, revision, digest, study_date, models, missing)
        if isinstance(previous, dict):
            if same:  # a replay after a crash: the same judgment, not a new one
                doc["created_at"] = previous.get("created_at", doc["created_at"])
                doc["previous_instances_hash"] = previous.get("previous_instances_hash")
            else:
                doc["previous_instances_hash"] = previous.get("instances_hash")
        if self.html:
            from .study_pages import study_page

            write_bytes_atomic(self.folder / f"{uid}.html", study_page(doc, self.outbox),
                               sync_folder=False)
        write_json_atomic(self.folder / f"{uid}.json", doc)
        if self.on_judged is not None:
            self.on_judged(doc, slices)
        self._forget(uid)
        self.counts["judged"] += 1
        log.info("study %s judged%s: %s from %d instance(s) (revision %d)", uid_hash(uid),
                 " again" if revision > 1 and not same else "", doc["verdict"],
                 doc["counts"]["instances"], revision)
        return doc

    def _forget(self, uid: str) -> None:
        """Stop tracking a judged study: its state file first, so that a failure to remove
        it leaves the study pending (judged again, to the same report), not half forgotten."""
        try:
            os.unlink(str(self.state / f"{uid}.json"))
        except FileNotFoundError:
            pass
        self._pending.pop(uid, None)
        self._held.pop(uid, None)

    def _document(self, uid: str, slices: list[Slice], revision: int, digest: str,
                  study_date: str | None, models: dict[str, dict[str, Any]],
                  missing: int) -> dict[str, Any]:
        result = judge(slices, self.rule, self.labels)
        notes = []
        if len(models) > 1:
            notes.append(f"the slices were classified by {len(models)} different models")
        if missing:
            notes.append(f"{missing} report(s) of this study could not be read and were left "
                         "out")
        top = suspicious(slices, self.rule, self.rule.suspicious_slices)
        normal = self.rule.normal_label
        return {
            "schema": STUDY_SCHEMA,
            "study_instance_uid": uid,
            "notice": STUDY_NOTICE,
            "created_at": now_iso(),
            "revision": revision,
            "instances_hash": digest,
            "previous_instances_hash": None,
            "study_date": study_date,
            **result,
            "rule": {"normal_label": normal, "min_slices": self.rule.min_slices,
                     "agreement": self.rule.agreement,
                     "max_review_share": self.rule.max_review_share, **self.review_rule},
            "suspicious": [{"report": s.report_id, "sop_instance_uid": s.sop_instance_uid,
                            "series_instance_uid": s.series_instance_uid, "label": s.label,
                            "confidence": s.confidence, "needs_review": s.needs_review,
                            "probability_not_normal": round(
                                1.0 - s.probabilities.get(normal, 0.0), 4),
                            **_moved(s, False)} for s in top],
            "instances": [instance_entry(s) for s in sorted(slices, key=lambda s: s.report_id)],
            "models": sorted(models.values(), key=lambda m: str(m.get("sha256"))),
            "notes": notes,
        }

    def _render_index(self) -> None:
        """Write ``studies/index.html``. A study report the disk fails to give (EIO) keeps
        the row it had (none if it had none) and is not cached as "not a study report": the
        page is written again ``_RETRY_FIRST`` seconds later, as when writing it fails."""
        if not self.html:
            return
        from .study_pages import studies_index_page

        self._render_retry = None
        page = self.folder / "index.html"
        try:
            reports = list(self.folder.glob("*.json"))
        except OSError as exc:
            self._failed_to_render(f"list {self.folder}", exc)
            return
        rows = []
        seen = set()
        for path in reports:
            cached = self._index_rows.get(path.name)
            try:
                st = path.stat()
                key = (st.st_mtime_ns, st.st_size, st.st_ino)
                changed = cached is None or cached[0] != key
                row = index_row(_read_if_readable(path)) if changed else None
            except FileNotFoundError:
                continue  # removed since it was listed
            except OSError as exc:
                seen.add(path.name)
                if cached is not None and cached[1] is not None:
                    rows.append(cached[1])
                self._failed_to_render(f"read the report of study {uid_hash(path.stem)}", exc)
                continue
            seen.add(path.name)
            if changed:
                if row is None:
                    log.warning("studies/%s is not a readable study report; it is left out of "
                                "studies/index.html (the agent writes a new one when that "
                                "study is judged again)", path.name)
                cached = self._index_rows[path.name] = (key, row)
            if cached[1] is not None:
                rows.append(cached[1])
        for gone in set(self._index_rows) - seen:
            del self._index_rows[gone]
        try:
            write_bytes_atomic(page, studies_index_page(rows))
        except OSError as exc:
            self._failed_to_render(f"update {page}", exc)

    def _failed_to_render(self, what: str, exc: OSError) -> None:
        """A disk error while writing ``studies/index.html``: one line, written again later
        (by the tracker's loop: a pass with nothing judged writes it only then)."""
        self._render_retry = time.monotonic() + _RETRY_FIRST
        log.warning("could not %s (%s); %s is written again in %.0f s", what,
                    exc.strerror or exc, self.folder / "index.html", _RETRY_FIRST)
