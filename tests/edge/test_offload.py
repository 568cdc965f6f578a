"""``edge-agent offload``: old days leave the outbox whole, copied and verified first, and
nothing is lost or doubled by a crash, a running agent, a conflicting file or a dry run."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from agent_helpers import gray_png, hanging, make_config, run_agent, run_once
from click.testing import CliRunner
from network_helpers import make_study

from edge import commit
from edge.cli import cli
from edge.offload import RECORD_NAME
from edge.outbox import Outbox

DAY1, DAY2, DAY3 = "2025-03-01", "2025-03-02", "2025-03-03"


def _run_day(config, inbox: Path, day: str, monkeypatch, inputs: dict) -> None:
    """The real agent, taking ``inputs`` (name -> grey level, or text) on ``day``."""
    for name, value in inputs.items():
        if isinstance(value, int):
            gray_png(inbox / name, value)
        else:
            (inbox / name).write_text(value)
    monkeypatch.setattr(commit, "local_day", lambda: day)
    counts = run_once(config)
    assert not counts.get("unfinished"), counts
    monkeypatch.undo()


@pytest.fixture()
def history(folders, test_model, monkeypatch):
    """Two days handled by the agent: the first with two classified inputs and a refused
    one, the second with a duplicate of the first day's a.png (its line names a.png's
    report) and its own input."""
    config = make_config(folders, test_model.path)
    inbox = folders["inbox"]
    _run_day(config, inbox, DAY1, monkeypatch, {"a.png": 30, "b.png": 220,
                                                 "notes.txt": "not an image\n"})
    _run_day(config, inbox, DAY2, monkeypatch, {"a-again.png": 30, "c.png": 100})
    dest = folders["root"] / "usb"
    dest.mkdir()
    return config, folders["outbox"], dest


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".state" not in p.relative_to(root).parts}


def _lines(outbox: Path, day: str) -> list[dict]:
    return [json.loads(line) for line in
            (outbox / "index" / f"{day}.jsonl").read_text(encoding="utf-8").splitlines()]


def _day_files(before: dict[str, bytes], outbox: Path, day: str) -> set[str]:
    """What offloading ``day`` moves: its index, archive, reports and quarantined inputs."""
    names = {f"index/{day}.jsonl"} | {k for k in before if k.startswith(f"archive/{day}/")}
    for entry in _lines(outbox, day):
        if entry["outcome"] == "quarantined":
            names |= {entry["moved_to"], entry["moved_to"] + ".reason.json"}
        else:
            names |= {k for k in before if k.startswith(f"reports/{entry['id']}.")}
    return names


def _offload(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["offload", *args])
    return result.exit_code, result.output


def _fsck_clean(outbox: Path) -> None:
    checked = run_agent(["fsck", str(outbox), "--deep"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 problem(s), 0 repaired, 0 pending" in checked.stdout, checked.stdout


def test_offload_moves_old_days_whole_and_the_outbox_stays_whole(history, monkeypatch):
    config, outbox, dest = history
    before = _files(outbox)
    moving = _day_files(before, outbox, DAY1)
    a_id = next(e["id"] for e in _lines(outbox, DAY1) if e["file_name"] == "a.png")
    shared = {k for k in moving if k.startswith(f"reports/{a_id}.")}
    assert len(shared) == 3 and {"quarantine/notes.txt", f"archive/{DAY1}/b.png"} <= moving

    code, out = _offload(str(outbox), "--before", DAY2, "--to", str(dest))
    assert code == 0, out
    assert f"moved {DAY1}" in out
    at_dest = _files(dest)
    for name in moving:
        assert at_dest[name] == before[name], name  # identical bytes at DEST
        assert (name in shared) == (outbox / name).exists(), name  # a.png's report is kept
    assert not (outbox / "archive" / DAY1).exists() and not (outbox / "index" /
                                                             f"{DAY1}.html").exists()
    assert DAY1 in (dest / "index.html").read_text(encoding="utf-8")
    assert "a.png" in (dest / "index" / f"{DAY1}.html").read_text(encoding="utf-8")
    front = (outbox / "index.html").read_text(encoding="utf-8")
    assert DAY1 not in front and DAY2 in front
    assert not (outbox / ".state" / RECORD_NAME).exists()
    _fsck_clean(outbox)

    # the agent runs on: the same refused text again takes the free name quarantine/notes.txt
    # (DEST has another notes.txt), b.png's content again gets a new report (DEST has the
    # first), a.png's content again is still a duplicate of the kept report
    _run_day(config, outbox.parent / "inbox", DAY3, monkeypatch,
             {"notes.txt": "not an image\n", "b-again.png": 220, "a-third.png": 30})
    assert (outbox / "quarantine" / "notes.txt").is_file()
    assert [e["outcome"] for e in _lines(outbox, DAY3)].count("duplicate") == 1
    _fsck_clean(outbox)
    before = _files(outbox)
    b_report = next(e["report"] for e in _lines(outbox, DAY3) if e["file_name"] == "b-again.png")

    code, out = _offload(str(outbox), "--before", "2025-03-04", "--to", str(dest))
    assert code == 0, out
    at_dest = _files(dest)
    line = next(e for e in _lines(dest, DAY3) if e["outcome"] == "quarantined")
    assert line["moved_to"].startswith("quarantine/notes~")  # a free name at DEST
    assert at_dest[line["moved_to"]] == before["quarantine/notes.txt"]
    assert at_dest[line["moved_to"] + ".reason.json"] == before[
        "quarantine/notes.txt.reason.json"]
    assert at_dest["quarantine/notes.txt.reason.json"] != before[
        "quarantine/notes.txt.reason.json"]  # the first day's, untouched
    for entry in _lines(dest, DAY2) + _lines(dest, DAY3):
        if entry["outcome"] != "quarantined":
            assert (dest / entry["report"]).is_file() and (dest / entry["moved_to"]).is_file()
    assert at_dest[b_report] != before[b_report] and (outbox / b_report).is_file()
    left = {k for k in _files(outbox) if not k.startswith("reports/")}
    assert left == {"index.html", "studies/index.html"}, left  # study reports stay
    b_id = Path(b_report).stem  # kept whole: its json, page and heat-map
    assert sorted(p.name for p in (outbox / "reports").iterdir()) == [
        f"{b_id}.heatmap.png", f"{b_id}.html", f"{b_id}.json"]
    _fsck_clean(outbox)


@pytest.mark.parametrize("count", [1, 4])
def test_a_crash_during_removal_is_finished_by_the_next_run(history, count):
    _, outbox, dest = history
    before = _files(outbox)
    moving = _day_files(before, outbox, DAY1) | _day_files(before, outbox, DAY2)
    args = ["offload", str(outbox), "--before", DAY3, "--to", str(dest)]
    crashed = run_agent(args, NEUROEDGE_FAILPOINT=f"offload_remove:{count}")
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    assert (outbox / ".state" / RECORD_NAME).is_file()
    checked = run_agent(["fsck", str(outbox), "--dry-run"])
    assert checked.returncode == 75 and "0 problem(s)" in checked.stdout, checked.stdout
    from edge.offload import pending_offload_alerts

    alerts = pending_offload_alerts(outbox)  # what the agent says when it starts
    assert len(alerts) == 1, alerts
    assert f"offload of {DAY1} to {dest} was interrupted" in alerts[0], alerts
    command = f"edge-agent offload {outbox} --before {DAY3} --to {dest}"
    assert alerts[0].endswith(command), alerts  # the very command that finishes it
    # the agent, started before someone finished it, says so in its log and on the page
    config, inbox = history[0], history[0].paths.inbox
    started = run_agent(["watch", inbox, "--outbox", str(outbox), "--model",
                         config.paths.model, "--once"])
    assert started.returncode == 0, started.stderr
    assert alerts[0] in started.stderr
    page = (outbox / "index.html").read_text(encoding="utf-8")
    assert "Needs attention" in page and html.escape(command) in page

    finished = run_agent(args)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "finished the interrupted offload" in finished.stdout
    assert pending_offload_alerts(outbox) == []
    at_dest = _files(dest)
    for name in moving:
        assert at_dest[name] == before[name], name
        assert not (outbox / name).exists(), name
    extra = set(at_dest) - moving - {"index.html", f"index/{DAY1}.html", f"index/{DAY2}.html"}
    assert not extra, extra  # nothing doubled, no temporary file left
    assert set(_files(outbox)) == {"index.html", "studies/index.html"}
    _fsck_clean(outbox)


def test_refused_while_the_agent_holds_the_outbox(history):
    _, outbox, dest = history
    before = _files(outbox)
    agent = Outbox(outbox)
    agent.lock()  # as the running agent does
    try:
        refused = run_agent(["offload", str(outbox), "--before", DAY3, "--to", str(dest)])
    finally:
        agent.unlock()
    assert refused.returncode == 75, refused.stderr
    assert "stop edge-agent first: systemctl stop edge-agent" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert _files(outbox) == before and not any(dest.iterdir())


def test_a_different_file_at_dest_is_never_overwritten(history):
    _, outbox, dest = history
    (dest / "archive" / DAY1).mkdir(parents=True)
    (dest / "archive" / DAY1 / "b.png").write_bytes(b"another box's b.png")
    before = _files(outbox)
    code, out = _offload(str(outbox), "--before", DAY3, "--to", str(dest))
    assert code == 73, out
    assert "already exists with other content" in out and "b.png" in out
    assert _files(outbox) == before  # nothing removed
    assert (dest / "archive" / DAY1 / "b.png").read_bytes() == b"another box's b.png"
    assert not (outbox / ".state" / RECORD_NAME).exists()


def test_not_enough_space_at_dest_fails_before_anything_moves(history, monkeypatch):
    _, outbox, dest = history
    before = _files(outbox)
    monkeypatch.setattr("edge.offload.free_bytes", lambda path: 1000)
    code, out = _offload(str(outbox), "--before", DAY3, "--to", str(dest))
    assert code == 73, out
    assert "1 kB free; moving 2 day(s) needs" in out and "nothing was moved" in out
    assert _files(outbox) == before and not any(dest.iterdir())
    # the dry run says so too, with the same figure (it left out the margin before)
    needed = out.split("needs ")[1].split(":")[0]
    code, out = _offload(str(outbox), "--before", DAY3, "--to", str(dest), "--dry-run")
    assert code == 0, out
    assert f"; {needed} needed at" in out and "the move would be refused" in out, out
    assert _files(outbox) == before and not any(dest.iterdir())


def test_dest_filling_up_mid_copy_says_so_plainly_and_a_rerun_finishes(history,
                                                                         monkeypatch):
    """DEST fills up in the middle of a copy (a failed write names no file): one line
    without a "(None)" in it, exit 73, nothing removed; the same command run again
    finishes the move."""
    import contextlib
    import errno

    from edge import offload

    _, outbox, dest = history
    real, calls = offload.atomic_file, []

    @contextlib.contextmanager
    def filling(*args, **kwargs):
        calls.append(1)
        with real(*args, **kwargs) as handle:
            if len(calls) == 3:
                handle.write(b"part of it")
                raise OSError(errno.ENOSPC, "No space left on device")
            yield handle

    before = _files(outbox)
    monkeypatch.setattr(offload, "atomic_file", filling)
    code, out = _offload(str(outbox), "--before", DAY3, "--to", str(dest))
    assert code == 73, out
    assert "the offload stopped: No space left on device; nothing is lost" in out, out
    assert "None" not in out and _files(outbox) == before
    monkeypatch.undo()
    code, out = _offload(str(outbox), "--before", DAY3, "--to", str(dest))
    assert code == 0, out
    _fsck_clean(outbox)


def test_dry_run_changes_nothing(history):
    _, outbox, dest = history
    before = _files(outbox)
    stamps = {p: p.stat().st_mtime_ns for p in outbox.rglob("*")}
    code, out = _offload(str(outbox), "--before", DAY3, "--to", str(dest), "--dry-run")
    assert code == 0, out
    assert f"{DAY1}: 8 file(s)" in out and "would move 2 day(s)" in out, out
    assert "3 report(s) copied and kept" in out, out  # a.png's, named by the next day
    assert _files(outbox) == before and not any(dest.iterdir())
    assert {p: p.stat().st_mtime_ns for p in outbox.rglob("*")} == stamps


def test_user_mistakes_are_one_line(tmp_path):
    outbox = tmp_path / "outbox"
    Outbox(outbox).prepare()
    dest = tmp_path / "usb"
    dest.mkdir()
    (tmp_path / "file").write_text("x")
    cases = [
        ([str(outbox), "--before", "2025-02-30", "--to", str(dest)], 2, "is not a day"),
        ([str(outbox), "--before", "1 March", "--to", str(dest)], 2, "is not a day"),
        ([str(outbox), "--before", "2999-01-01", "--to", str(dest)], 2, "today or later"),
        ([str(outbox), "--before", "2025-03-01", "--to", str(outbox / "archive")], 2,
         "inside the outbox"),
        ([str(outbox), "--before", "2025-03-01", "--to", str(tmp_path / "none")], 66,
         "does not exist: mount"),
        ([str(outbox), "--before", "2025-03-01", "--to", str(tmp_path / "file")], 73,
         "is a file"),
        ([str(dest), "--before", "2025-03-01", "--to", str(tmp_path)], 78, "is not an outbox"),
    ]
    for args, code, words in cases:
        result = CliRunner().invoke(cli, ["offload", *args])
        assert result.exit_code == code, (args, result.output)
        assert words in result.output and len(result.output.strip().splitlines()) == 1, (
            result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)
    code, out = _offload(str(outbox), "--before", "2025-03-01", "--to", str(dest))
    assert code == 0 and "nothing to move" in out
    assert os.listdir(str(dest)) == []


def test_an_archive_day_without_its_index_file_is_indexed_by_fsck_before_anything_moves(
        history):
    """An index file removed by hand (or never written): its archived inputs are on no
    page. Offload names the day and the fsck command and moves nothing (moving other days
    could take away the reports fsck indexes them from); after fsck the day moves whole."""
    _, outbox, dest = history
    (outbox / "index" / f"{DAY1}.jsonl").unlink()
    (outbox / "index" / f"{DAY1}.html").unlink()
    before = _files(outbox)
    archived = {k: v for k, v in before.items() if k.startswith(f"archive/{DAY1}/")}
    assert len(archived) == 2
    fsck = f"edge-agent fsck {outbox}"
    for extra in (["--dry-run"], []):
        code, out = _offload(str(outbox), "--before", DAY3, "--to", str(dest), *extra)
        assert code == 65, out
        assert f"archive/{DAY1}/ (2 file(s))" in out and fsck in out, out
        assert "nothing was moved" in out.lower() and len(out.strip().splitlines()) == 1, out
        assert _files(outbox) == before and not any(dest.iterdir())

    fixed = run_agent(["fsck", str(outbox)])
    assert (outbox / "index" / f"{DAY1}.jsonl").is_file(), fixed.stdout + fixed.stderr
    code, out = _offload(str(outbox), "--before", DAY3, "--to", str(dest))
    assert code == 0, out
    at_dest = _files(dest)
    for name, data in archived.items():
        assert at_dest[name] == data and not (outbox / name).exists(), name
    assert not (outbox / "archive" / DAY1).exists()
    assert {e["file_name"] for e in _lines(dest, DAY1)} >= {"a.png", "b.png"}


_HREF = re.compile(r'href="([^"]+)"')


def _study_day(config, inbox: Path, day: str, monkeypatch, levels: list, uid=None) -> str:
    uid, _ = make_study(inbox / day, levels, study_uid=uid)
    _run_day(config, inbox, day, monkeypatch, {})
    return uid


def _dead_links(page: Path) -> list[str]:
    return [h for h in _HREF.findall(page.read_text(encoding="utf-8"))
            if not (page.parent / h).is_file()]


def test_study_pages_name_moved_slices_instead_of_linking_to_them(folders, test_model,
                                                                  monkeypatch):
    """A study whose slices came on two days, offloaded a day at a time to two disks: its
    page keeps every slice and its pictures, links the reports still in the outbox, and
    says where each moved one is now; no link of the outbox or of DEST is dead."""
    config = make_config(folders, test_model.path, studies={"settle_seconds": 0})
    inbox, outbox = folders["inbox"], folders["outbox"]
    uid = _study_day(config, inbox, DAY1, monkeypatch, [0.6, 0.1, 0.6])
    _study_day(config, inbox, DAY2, monkeypatch, [0.1, 0.6], uid=uid)
    _run_day(config, inbox, DAY3, monkeypatch, {"c.png": 100})
    page = outbox / "studies" / f"{uid}.html"
    doc = json.loads((outbox / "studies" / f"{uid}.json").read_text())
    assert doc["counts"]["instances"] == 5
    first = {e["id"] for e in _lines(outbox, DAY1)}
    second = {e["id"] for e in _lines(outbox, DAY2)}
    pictures = page.read_text().count("data:image/png;base64,")
    assert pictures and not _dead_links(page)
    usb1, usb2 = folders["root"] / "usb1", folders["root"] / "usb2"
    usb1.mkdir()
    usb2.mkdir()

    code, out = _offload(str(outbox), "--before", DAY2, "--to", str(usb1))
    assert code == 0, out
    text = page.read_text()
    assert not _dead_links(page), _dead_links(page)
    for report_id in first:
        assert f"../reports/{report_id}.html" not in text
        assert f"{usb1}/reports/{report_id}.html" in text  # where it is now
    for report_id in second:
        assert f"href=\"../reports/{report_id}.html\"" in text
    assert text.count("data:image/png;base64,") == pictures  # read from DEST's copies
    assert "3 of this study&#x27;s 5 slice reports" in text or (
        "3 of this study's 5 slice reports" in text), text

    code, out = _offload(str(outbox), "--before", DAY3, "--to", str(usb2))
    assert code == 0, out
    text = page.read_text()
    assert not _dead_links(page) and "../reports/" not in text
    for report_id in first:
        assert f"{usb1}/reports/{report_id}.html" in text  # the first disk, still
    for report_id in second:
        assert f"{usb2}/reports/{report_id}.html" in text
    assert text.count("data:image/png;base64,") == pictures
    assert f"{uid}.html" in (outbox / "studies" / "index.html").read_text()
    for usb in (usb1, usb2):  # study reports stay in the outbox; DEST links none of them
        assert not (usb / "studies").exists()
        for day_page in [usb / "index.html", *(usb / "index").glob("*.html")]:
            assert not _dead_links(day_page), (day_page, _dead_links(day_page))
    assert not _dead_links(outbox / "index.html")
    _fsck_clean(outbox)


def test_a_study_judged_again_keeps_its_offloaded_slices_without_their_disk(
        folders, test_model, monkeypatch):
    """More instances of a study after its first slices were offloaded, with DEST gone (the
    disk unplugged): the study is judged again from every slice, the moved ones from what
    the study report kept of them, so the verdict does not change because reports moved;
    the moved slices still say where their reports are, and the page links no dead report."""
    from edge.network.verdict import Slice, judge

    config = make_config(folders, test_model.path, studies={"settle_seconds": 0})
    inbox, outbox = folders["inbox"], folders["outbox"]
    uid = _study_day(config, inbox, DAY1, monkeypatch, [0.1, 0.1, 0.1, 0.6])  # 3 glioma
    first = {e["id"] for e in _lines(outbox, DAY1)}
    usb = folders["root"] / "usb"
    usb.mkdir()
    code, out = _offload(str(outbox), "--before", DAY2, "--to", str(usb))
    assert code == 0, out
    unplugged = folders["root"] / "usb-unplugged"
    usb.rename(unplugged)  # DEST is not mounted when the study is judged again

    _study_day(config, inbox, DAY2, monkeypatch, [0.6], uid=uid)
    doc = json.loads((outbox / "studies" / f"{uid}.json").read_text())
    assert doc["revision"] == 2 and not doc["notes"], doc["notes"]
    every = [Slice.from_report(json.loads(p.read_text())) for p in
             [*(unplugged / "reports").glob("*.json"), *(outbox / "reports").glob("*.json")]]
    expected = judge(every, config.studies, list(doc["counts"]["by_label"]))
    assert doc["counts"]["instances"] == 5 and expected["counts"]["instances"] == 5
    assert doc["verdict"] == expected["verdict"] == "glioma", doc["verdict_reason"]
    for key in ("verdict_reason", "counts", "probabilities", "series"):
        assert doc[key] == expected[key], key
    assert doc["study_date"] and doc["models"]
    moved = {i["report"]: i for i in doc["instances"] if i.get("offloaded_to")}
    assert set(moved) == first
    assert all(i["offloaded_to"] == str(usb) for i in moved.values())
    assert all(s.get("offloaded_to") == str(usb) for s in doc["suspicious"]
               if s["report"] in first)
    assert any(s["report"] in first for s in doc["suspicious"])
    page = outbox / "studies" / f"{uid}.html"
    text = page.read_text()
    assert not _dead_links(page), _dead_links(page)
    for report_id in first:
        assert f"{usb}/reports/{report_id}.html" in text
    assert "4 of this study&#x27;s 5 slice reports" in text or (
        "4 of this study's 5 slice reports" in text), text

    # judged again once more, DEST still away: the kept fields carry over again
    _study_day(config, inbox, DAY3, monkeypatch, [0.1], uid=uid)
    doc = json.loads((outbox / "studies" / f"{uid}.json").read_text())
    assert doc["counts"]["instances"] == 6 and doc["verdict"] == "glioma" and not doc["notes"]
    assert {i["report"] for i in doc["instances"] if i.get("offloaded_to")} == first


def test_a_study_marked_offloaded_before_slices_were_kept_reads_them_from_dest(
        folders, test_model, monkeypatch):
    """A study report marked by an older agent (``offloaded_to`` only): judged again, each
    moved slice is read from its disk while that is mounted (and kept from then on), and is
    left out, with a note, only while it is not."""
    config = make_config(folders, test_model.path, studies={"settle_seconds": 0})
    inbox, outbox = folders["inbox"], folders["outbox"]
    uid = _study_day(config, inbox, DAY1, monkeypatch, [0.1, 0.1, 0.1])
    usb = folders["root"] / "usb"
    usb.mkdir()
    code, out = _offload(str(outbox), "--before", DAY2, "--to", str(usb))
    assert code == 0, out
    path = outbox / "studies" / f"{uid}.json"

    def as_marked_before() -> None:
        doc = json.loads(path.read_text())
        for item in doc["instances"]:
            for key in ("probabilities", "series_description", "sop_class_uid"):
                item.pop(key, None)
        path.write_text(json.dumps(doc))

    as_marked_before()
    _study_day(config, inbox, DAY2, monkeypatch, [0.6], uid=uid)
    doc = json.loads(path.read_text())
    assert doc["counts"]["instances"] == 4 and doc["verdict"] == "glioma" and not doc["notes"]
    moved = [i for i in doc["instances"] if i.get("offloaded_to") == str(usb)]
    assert len(moved) == 3 and all("probabilities" in i for i in moved)

    as_marked_before()
    usb.rename(folders["root"] / "usb-unplugged")
    _study_day(config, inbox, DAY3, monkeypatch, [0.6], uid=uid)
    doc = json.loads(path.read_text())
    assert doc["counts"]["instances"] == 2
    assert doc["notes"] == ["3 report(s) of this study could not be read and were left out"]



def test_an_offload_whose_dest_stops_answering_ends_with_exit_73_and_loses_nothing(
        history, tmp_path: Path) -> None:
    """The real ``edge-agent offload``, its DEST hanging mid-copy (a share that stopped
    answering): it ends itself (exit 73, naming the step and the command to run again)
    instead of waiting for ever; nothing was removed from the outbox; the same command,
    DEST back, moves the days."""
    from edge.offload import last_offload_alerts

    _, outbox, dest = history
    before = _files(outbox)
    args = ["offload", str(outbox), "--before", DAY3, "--to", str(dest),
            "--stall-minutes", "0.05"]
    began = time.monotonic()
    hung = run_agent(args, timeout=90, **hanging(tmp_path, "offload-copy"))
    took = time.monotonic() - began
    said = hung.stdout + hung.stderr
    assert hung.returncode == 73, said[-2000:]
    assert "no progress for" in said and "copying" in said and "Nothing is lost" in said, said
    assert f"--to {dest}" in said and "Traceback" not in said, said
    assert took < 60, f"ended after {took:.0f}s with a 3 s limit"
    assert _files(outbox) == before, "the outbox changed"
    alerts = last_offload_alerts(outbox)  # what the agent's front page says next
    assert len(alerts) == 1 and "stopped before its end" in alerts[0], alerts

    again = run_agent(args[:-2])
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(_files(outbox)) == {"index.html", "studies/index.html"}
    assert last_offload_alerts(outbox) == []
    _fsck_clean(outbox)
