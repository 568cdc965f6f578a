"""Study reports after ``edge-agent offload`` moved some of their slices' reports off the box.

Study reports stay in the outbox (a study can span days still there, and its SR and any
re-judgment live there), but the per-slice report pages they link to leave with their day.
Each moved slice gets ``offloaded_to`` (the folder its report went to) in the study report,
and the study's page is rendered again from it, so the page says where each report is now
instead of linking to a page that is gone. Kept in the study report, the place survives
later offloads to another disk and later renderings.

Each moved instance entry also keeps what the verdict needs that the entry lacks
(``Slice.kept``: probabilities, series description, SOP Class UID), read from the copy at
DEST: this runs after the sources are removed, so that an interrupted offload's rerun does
the same from the same (verified, identical) copy. When more instances come, the study is
judged again from these entries (``Slice.from_entry``), without DEST mounted, and its new
report keeps them and ``offloaded_to``: the verdict does not change because reports moved.
An entry marked without them (an older agent) is read from ``offloaded_to`` if that is at
hand, else left out with a note, as a report that cannot be read.

A study still pending (noted, not judged yet: the agent stopped within ``settle_seconds``
of its last instance, or its judgment failing for days) has no study report to mark: its
moved slices' entries, with the model and study date their reports named, are kept in its
state (``.state/studies/<uid>.json``, ``offloaded``), which the judgment reads as it reads
a previous report's. Before, such a study was judged without them ("could not be read and
were left out"), and its SR sent so, or, with all its slices moved, not judged at all.

Both reads are strict: a disk error reading a study report, or the copy at DEST, is raised
and stops the offload before the record of the day's move is deleted (``edge.offload``:
"the offload stopped ...", run it again), rather than leave the study unmarked (judged
again, its moved slices would count as missing) or marked without what it keeps.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..durable import read_json_if_there, write_bytes_atomic, write_json_atomic
from ..report import study_of, valid_uid
from .studies import index_row, instance_entry
from .study_pages import study_page
from .verdict import Slice


def note_offloaded(outbox: Path, dest: Path, report_ids: set[str],
                   studies: Iterable[str] | None) -> int:
    """Mark the slices whose reports (``report_ids``) moved to ``dest`` in the study reports
    of ``studies`` (None: every study), and render their pages again, or keep their entries
    in a study's state if it is still pending; return how many studies changed. Safe to
    repeat: the page is written before the study report, so a crash between the two leaves
    the report unmarked and the next call does both again. A disk error reading a study
    report, a state or a copy at ``dest`` is raised (the call is repeated), never taken for
    a study report that is not ours."""
    folder = outbox / "studies"
    if not folder.is_dir() or not report_ids:
        return 0
    studies = None if studies is None else list(studies)
    uids = sorted(p.stem for p in folder.glob("*.json")) if studies is None else sorted(
        {uid for uid in studies if valid_uid(uid)})
    changed = _note_in_pending(outbox, dest, report_ids, studies)
    for uid in uids:
        path = folder / f"{uid}.json"
        doc = read_json_if_there(path)
        if index_row(doc) is None:
            continue  # not a study report we wrote (or none): nothing to mark
        marked = False
        for key in ("instances", "suspicious"):
            for item in doc.get(key) or []:
                if not (isinstance(item, dict) and item.get("report") in report_ids):
                    continue
                if item.get("offloaded_to") != str(dest):
                    item["offloaded_to"] = str(dest)
                    marked = True
                if key == "instances" and "probabilities" not in item:
                    kept = _kept(dest, str(item["report"]), uid)
                    if kept:
                        item.update(kept)
                        marked = True
        if not marked:
            continue
        page = folder / f"{uid}.html"
        if page.is_file():  # none where study pages are not made
            write_bytes_atomic(page, study_page(doc, outbox))
        write_json_atomic(path, doc)
        changed += 1
    return changed


def _note_in_pending(outbox: Path, dest: Path, report_ids: set[str],
                     studies: Iterable[str] | None) -> int:
    """Keep in each pending study's state the entries of its slices moved to ``dest`` (the
    module's docstring); return how many states changed."""
    state = outbox / ".state" / "studies"
    paths = sorted(p for p in state.glob("*.json") if p.name != "cursor.json") if (
        studies is None) else [state / f"{uid}.json" for uid in sorted(set(studies))
                               if valid_uid(uid)]
    changed = 0
    for path in paths:
        data = read_json_if_there(path)
        if not (isinstance(data, dict) and data.get("study") == path.stem
                and isinstance(data.get("members"), dict)):
            continue  # not pending (judged, or never noted)
        kept = data.get("offloaded") if isinstance(data.get("offloaded"), dict) else {}
        marked = False
        for report_id, archived in sorted(data["members"].items()):
            if report_id in report_ids and report_id not in kept:
                entry = _entry(dest, report_id, path.stem, archived)
                if entry:
                    kept[report_id] = entry
                    marked = True
        if marked:
            write_json_atomic(path, {**data, "offloaded": kept})
            changed += 1
    return changed


def _entry(dest: Path, report_id: str, uid: str, archived: Any) -> dict[str, Any]:
    """A moved slice's entry, as its study report would keep it, with its model and study
    date; empty if the copy at ``dest`` is not there or not that slice's report."""
    report = read_json_if_there(dest / "reports" / f"{report_id}.json")
    if not isinstance(report, dict) or report.get("id") != report_id or study_of(report) != uid:
        return {}
    try:
        s = Slice.from_report(report, archived if isinstance(archived, str) else None,
                              str(dest))
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}
    return {**instance_entry(s), "model": report.get("model"),
            "study_date": (report.get("dicom") or {}).get("study_date")}


def _kept(dest: Path, report_id: str, uid: str) -> dict[str, Any]:
    """What the study report keeps of a moved slice (``Slice.kept``), read from the copy at
    ``dest`` (verified identical before its source was removed); empty if it is not there
    or not that slice's report. A disk error is raised: a copy just verified is readable."""
    report = read_json_if_there(dest / "reports" / f"{report_id}.json")
    if not isinstance(report, dict) or report.get("id") != report_id or study_of(report) != uid:
        return {}
    try:
        return Slice.from_report(report).kept()
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}
