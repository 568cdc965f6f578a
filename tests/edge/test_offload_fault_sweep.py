"""The disk-fault sweep of ``edge-agent offload``: every OS call it makes fails once, in turn.

``test_offload.py`` kills the offload at each durable step; this fails each disk call
instead. A healthy offload of two of three days (duplicates across days, a quarantined
input, a report kept because the third day names it, a DICOM study whose slices came on
two days) records every OS call site of the ``edge`` package under the outbox and DEST
(DEST on another filesystem where there is one), with the ``Disk`` of
``test_agent_fault_sweep.py``: about 128 sites, and 129 in a run that first finishes an
offload stopped dead while removing a day. Each site then fails in turn, from a fresh copy
of the same outbox: with EIO once, and with ENOSPC for half a second. The offload may
fail, in one line (an ``EdgeError``), never with a traceback; run again on a healthy disk
it must succeed, and the books must be those of the healthy run: every input, report,
quarantined file and study report in the outbox or at DEST with identical bytes, every
index line in one day file naming files that are there, no offload record left, ``fsck
--deep`` clean and ``.state/offload-last.json`` saying ok.

It found three problems on 2026-12-07, each with a test of its own below that failed
before its fix: an I/O error taken for "removed already" while removing a day, and for
"not in the outbox" while planning a quarantined input (the file stayed in the outbox, its
line went to DEST), and a disk error before the lock ending in a traceback.
``NEUROEDGE_SWEEP_EVERY=n`` sweeps every n-th site only.
"""

from __future__ import annotations

import errno
import json
import linecache
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import gray_png, make_config, other_filesystem, run_once
from disk_sites import EDGE_DIR, Disk, Plan, Site
from network_helpers import make_study
from test_agent_fault_sweep import SAMPLE

from edge import commit

BEFORE = "2025-03-03"  # the first two days move; the third names a report of the first
# each day's inputs (name: grey level or text), and the slices of one DICOM study it got
DAYS = (("2025-03-01", {"a.png": 30, "b.png": 220, "notes.txt": "not an image\n"}, [0.6, 0.1]),
        ("2025-03-02", {"a-again.png": 30, "c.png": 100, "d.png": 160}, [0.1]),
        ("2025-03-03", {"a-third.png": 30, "e.png": 190}, []))


def make_history(root: Path, model: Path) -> Path:
    """An outbox with the three days of ``DAYS``, handled by the real agent, and a DICOM
    study whose slices came on the first two (its page names reports of both)."""
    folders = {"inbox": root / "inbox", "outbox": root / "outbox", "root": root}
    folders["inbox"].mkdir(parents=True)
    config = make_config(folders, model, studies={"settle_seconds": 0})
    uid = None
    for day, inputs, levels in DAYS:
        for name, value in inputs.items():
            if isinstance(value, int):
                gray_png(folders["inbox"] / name, value)
            else:
                (folders["inbox"] / name).write_text(value)
        if levels:
            uid, _ = make_study(folders["inbox"] / day, levels, study_uid=uid)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(commit, "local_day", lambda day=day: day)
            counts = run_once(config)
        assert not counts.get("unfinished"), counts
    return folders["outbox"]


def contents(root: Path, dest: Path | None = None) -> dict[str, bytes]:
    """The files of an outbox or DEST that the offload keeps or moves (not its state, not
    the pages it writes anew); ``dest``, where a study report names it, as ``DEST``."""
    where = str(dest).encode() if dest is not None else None
    return {p.relative_to(root).as_posix(): p.read_bytes() if where is None else
            p.read_bytes().replace(where, b"DEST") for p in sorted(root.rglob("*"))
            if p.is_file() and ".state" not in p.relative_to(root).parts
            and p.suffix != ".html"}


def books(outbox: Path, dest: Path, expected: tuple[dict[str, bytes], dict[str, bytes]],
          history: dict[str, bytes]) -> list[str]:
    """What is wrong once the offload should have ended well: anything not where the
    healthy run put it, an index line naming a file not there, a record left, what ``fsck
    --deep`` finds, the last run not ok."""
    from edge.fsck import check_outbox
    from edge.offload import LAST_NAME, RECORD_NAME

    wrong = []
    for name, root, want in (("outbox", outbox, expected[0]), ("DEST", dest, expected[1])):
        have = contents(root, dest)
        if set(have) != set(want):
            wrong.append(f"{name}: missing {sorted(set(want) - set(have))}, extra "
                         f"{sorted(set(have) - set(want))}")
        wrong += [f"{name}: {k} differs" for k in set(have) & set(want) if have[k] != want[k]]
        for day in sorted((root / "index").glob("*.jsonl")):
            for line in day.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                for key in ("moved_to", "report"):
                    if entry.get(key) and not (root / entry[key]).is_file():
                        wrong.append(f"{name}: {day.name} names {entry[key]}, not there")
    both = {**expected[0], **expected[1]}
    lost = [k for k in history if k not in both and not k.startswith("quarantine/")]
    assert not lost, f"the healthy run itself lost {lost}"  # the census is the reference
    if (outbox / ".state" / RECORD_NAME).exists():
        wrong.append(f"{RECORD_NAME} left")
    last = json.loads((outbox / ".state" / LAST_NAME).read_text())
    if last.get("ok") is not True:
        wrong.append(f"{LAST_NAME} after the healthy rerun: {last}")
    # the scratch folder of ``durable.unwritable_reason`` whose rmdir failed stays: empty,
    # at DEST, harmless (left alone; docs/reliability.md)
    leftovers = [p.name for r in (outbox, dest) for p in r.rglob(".neuroedge-*")
                 if not p.name.startswith(".neuroedge-write-check-")]
    if leftovers:
        wrong.append(f"temporary files left: {leftovers}")
    found = check_outbox(outbox, repair=False, deep=True)
    return wrong + [f"fsck {f.kind}: {f.where}: {f.what}" for f in found.findings
                    if f.kind in ("problem", "pending")]


def run_offload(outbox: Path, dest: Path) -> str | None:
    """One offload; what went wrong that must not (a traceback, an error of more than
    one line), None if it ended well or failed cleanly."""
    from edge.errors import EdgeError
    from edge.offload import offload

    try:
        offload(outbox, BEFORE, str(dest), dry_run=False, echo=lambda text: None)
    except EdgeError as exc:
        if "\n" in str(exc):
            return f"an error of more than one line: {exc}"
    except Exception as exc:  # noqa: BLE001 - what the sweep looks for
        return f"a traceback: {exc!r}"
    return None


class Sweep:
    """Fresh copies of one history, offloaded with ``disk`` failing as a plan says, then
    again on a healthy disk."""

    def __init__(self, history: Path, disk: Disk, dests: Path,
                 history_dest: Path | None = None) -> None:
        self.history, self.disk, self.dests = history, disk, dests
        self.history_dest = history_dest  # DEST of an offload interrupted in ``history``
        self.original = contents(history)
        self.expected: tuple[dict[str, bytes], dict[str, bytes]] = ({}, {})

    def fresh(self, root: Path) -> tuple[Path, Path]:
        from edge.offload import RECORD_NAME

        outbox = root / "outbox"
        shutil.copytree(str(self.history), str(outbox), symlinks=True)
        dest = Path(tempfile.mkdtemp(prefix="usb-", dir=str(self.dests)))
        if self.history_dest is not None:  # the interrupted run's copies, and its record
            shutil.rmtree(str(dest))
            shutil.copytree(str(self.history_dest), str(dest), symlinks=True)
            record = outbox / ".state" / RECORD_NAME
            doc = json.loads(record.read_text())
            record.write_text(json.dumps({**doc, "dest": str(dest)}))
        return outbox, dest

    def census(self, root: Path) -> list[Site]:
        outbox, dest = self.fresh(root)
        self.disk.calls.clear()
        self.disk.counting = True
        try:
            assert run_offload(outbox, dest) is None
        finally:
            self.disk.counting = False
        self.expected = (contents(outbox, dest), contents(dest, dest))
        assert books(outbox, dest, self.expected, self.original) == []
        return sorted(self.disk.calls, key=lambda s: (s.line, s.asked_by, s.call))

    def case(self, root: Path, plan: Plan) -> list[str]:
        outbox, dest = self.fresh(root)
        self.disk.plan = plan
        try:
            wrong = [w for w in [run_offload(outbox, dest)] if w]
        finally:
            self.disk.plan = None
        if not plan.failed:
            return []
        again = run_offload(outbox, dest)
        wrong += [f"rerun: {again}"] if again else []
        if not (outbox / ".state" / "offload-last.json").is_file():
            return wrong + ["no offload-last.json"]
        return wrong + books(outbox, dest, self.expected, self.original)


@pytest.fixture(scope="module")
def history(test_model, tmp_path_factory) -> Path:
    return make_history(tmp_path_factory.mktemp("history"), test_model.path)


class _Killed(BaseException):
    """The offload stopped dead at a failpoint (as by ``kill -9``: no handler runs)."""


@pytest.fixture(scope="module")
def interrupted(history, tmp_path_factory) -> tuple[Path, Path]:
    """The history with an offload stopped dead in the middle of removing its first day
    (the third file): the outbox with its ``.state/offload.json``, and that DEST."""
    from edge import failpoints
    from edge.offload import RECORD_NAME, offload

    root = tmp_path_factory.mktemp("interrupted")
    outbox, dest = root / "outbox", root / "usb"
    shutil.copytree(str(history), str(outbox), symlinks=True)
    dest.mkdir()
    hits = []

    def hit(name: str) -> None:
        hits.append(name)
        if hits.count("offload_remove") == 3:
            raise _Killed()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(failpoints, "hit", hit)
        with pytest.raises(_Killed):
            offload(outbox, BEFORE, str(dest), dry_run=False, echo=lambda text: None)
    assert (outbox / ".state" / RECORD_NAME).is_file()
    return outbox, dest


@pytest.fixture()
def dests(tmp_path) -> Any:
    """Where each case's DEST is made: on another filesystem than the outbox if there is
    one (a USB disk), else beside it; removed after."""
    try:
        base = Path(tempfile.mkdtemp(prefix="neuroedge-offload-sweep-",
                                     dir=str(other_filesystem(tmp_path))))
    except pytest.skip.Exception:
        base = tmp_path / "dests"
        base.mkdir()
    yield base
    shutil.rmtree(str(base), ignore_errors=True)


@pytest.fixture()
def sweep(history, tmp_path, dests, monkeypatch) -> Sweep:
    disk = Disk(tmp_path, dests)
    disk.install(monkeypatch)
    return Sweep(history, disk, dests)


@pytest.mark.slow
@pytest.mark.parametrize("finishing", [False, True], ids=["fresh", "finishing"])
@pytest.mark.parametrize("error,lasting", [(errno.EIO, 0.0), (errno.ENOSPC, 0.5)],
                         ids=["EIO-once", "ENOSPC-0.5s"])
def test_one_failing_disk_call_in_an_offload_loses_nothing(history, interrupted, tmp_path,
                                                          dests, monkeypatch, error, lasting,
                                                          finishing):
    """Each site of a healthy offload fails in turn (EIO once; ENOSPC for 0.5 s), then a
    healthy rerun. ``finishing``: the run finds the record of an offload stopped dead while
    removing its first day, and finishes it (each copy checked again) before moving on."""
    outbox, dest = interrupted if finishing else (history, None)
    disk = Disk(tmp_path, dests)
    disk.install(monkeypatch)
    sweep = Sweep(outbox, disk, dests, dest)
    sites = sweep.census(tmp_path / "census")
    found = []
    for i, site in enumerate(sites[::SAMPLE]):
        wrong = sweep.case(tmp_path / f"case{i}", Plan(site.__eq__, error, lasting=lasting))
        if wrong:
            found.append(f"{site}:\n    " + "\n    ".join(wrong))
    print(f"{len(sites)} sites")
    assert not found, f"{len(found)} site(s):\n" + "\n".join(found)


# --- the findings, one test each -----------------------------------------------------------

def at(call: str, function: str) -> Any:
    """The sites of one OS call in one ``edge`` function (``Class.method``)."""
    return lambda site: site.call == call and site.function == function


def asking(call: str, module: str, words: str) -> Any:
    """The sites of one OS call asked for by a line of ``edge/<module>`` holding ``words``."""
    def matches(site: Site) -> bool:
        path, _, number = site.asked_by.rpartition(":")
        return (site.call == call and path == f"edge/{module}" and words in linecache.getline(
            EDGE_DIR + module, int(number)))
    return matches


def test_f1_an_lstat_error_while_removing_does_not_leave_a_source_behind(sweep, tmp_path):
    """``_Offload.finish`` asked ``os.path.lexists`` whether each source was still there,
    which answers False on any error: one EIO and the source was skipped as removed
    already, the day's index file (removed last) went, and the input stayed in the
    outbox's ``archive/`` with no line (fsck: "has no line in the daily index"); the
    next offload then refused the day as unindexed. ``durable.lexists`` raises it now."""
    sweep.census(tmp_path / "census")
    plan = Plan(lambda site: site.call == "lstat" and site.function in (
        "_Offload.finish", "lexists") and site.asked_by.startswith("edge/offload.py:"))
    assert sweep.case(tmp_path / "case", plan) == []
    assert plan.failed, "the planned failure was never reached"


@pytest.mark.parametrize("where", [
    asking("stat", "offload.py", "box.state.is_dir()"),  # is OUTBOX an outbox
    at("stat", "check_dest"),
    at("stat", "unwritable_reason"),
    at("os.open", "Outbox.lock"),
    at("write", "Outbox.lock"),
], ids=["outbox", "dest", "dest-writable", "lock", "lock-pid"])
def test_f2_a_disk_error_before_the_lock_is_one_line_not_a_traceback(sweep, tmp_path, where):
    """A disk error while checking OUTBOX and DEST or taking the outbox's lock escaped as
    an ``OSError``: a traceback and exit 1 from ``edge-agent offload``. Now the same line
    as for a disk error later on ("the offload stopped: ...", exit 73)."""
    from edge.errors import EdgeError
    from edge.offload import offload

    outbox, dest = sweep.fresh(tmp_path / "case")
    plan = Plan(where)
    sweep.disk.plan = plan
    try:
        with pytest.raises(EdgeError, match="^the offload stopped: Input/output error") as got:
            offload(outbox, BEFORE, str(dest), dry_run=False, echo=lambda text: None)
    finally:
        sweep.disk.plan = None
    assert plan.failed and got.value.exit_code == 73 and "\n" not in str(got.value)


@pytest.mark.parametrize("words", ["or moved_to in plan.sources", "has_record = "],
                         ids=["the-input", "its-reason-record"])
def test_f3_an_lstat_error_while_planning_does_not_leave_a_quarantined_input_behind(
        sweep, tmp_path, words):
    """``DayPlanner._quarantine`` asked ``os.path.lexists`` whether the quarantined input
    (and then its reason record) was still in the outbox: one EIO and it was planned as
    gone, the day's index file moved to DEST with a line naming a file that never came (or
    without its record), and the file stayed in the outbox's ``quarantine/`` with no line.
    The days are planned twice (the space check, then the move): the second planning's
    question fails here. ``durable.lexists`` raises it now."""
    sweep.census(tmp_path / "census")
    plan = Plan(asking("lstat", "offload_plan.py", words), nth=2)
    assert sweep.case(tmp_path / "case", plan) == []
    assert plan.failed, "the planned failure was never reached"
