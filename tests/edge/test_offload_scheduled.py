"""`edge-agent offload` as a scheduled job runs it (deploy/neuroedge-offload, a systemd
timer): days named by age (`--keep-days`), a DEST that must be another disk
(`--other-disk`: a USB disk not mounted leaves only its empty mount point, on the card), and
the outcome of every run kept for the agent's front page, so a night run that failed is
seen in the morning."""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
from agent_helpers import gray_png, make_config, other_filesystem, run_agent, run_once
from click.testing import CliRunner

import edge.offload
from edge import commit
from edge.checks import run_checks
from edge.cli import cli
from edge.offload import (
    LAST_NAME,
    before_keeping,
    last_offload_alerts,
    offload_running,
    pending_offload_alerts,
)
from edge.outbox import Outbox

OLD, RECENT = "2025-03-01", "2025-03-02"


def _offload(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["offload", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def _last(outbox: Path) -> dict:
    return json.loads((outbox / ".state" / LAST_NAME).read_text())


@pytest.fixture()
def two_days(folders, test_model, monkeypatch):
    """An outbox with one input on each of two past days."""
    config = make_config(folders, test_model.path)
    for day, level in ((OLD, 40), (RECENT, 200)):
        gray_png(folders["inbox"] / f"scan-{day}.png", level)
        monkeypatch.setattr(commit, "local_day", lambda day=day: day)
        assert run_once(config)["classified"] == 1
    monkeypatch.undo()
    return config, folders["outbox"]


def test_keep_days_names_the_days_by_age():
    today = datetime.date(2026, 12, 7)
    assert before_keeping(1, today) == "2026-12-06"  # today and yesterday stay
    assert before_keeping(90, today) == "2026-09-08"


def test_keep_days_moves_the_days_older_than_n(two_days):
    _, outbox = two_days
    keep = (datetime.date.today() - datetime.date.fromisoformat(RECENT)).days  # RECENT stays
    with tempfile.TemporaryDirectory(dir=str(other_filesystem(outbox))) as usb:
        code, out = _offload(str(outbox), "--keep-days", str(keep), "--to", usb,
                             "--other-disk")
        assert code == 0, out
        assert (Path(usb) / "index" / f"{OLD}.jsonl").is_file()
    assert sorted(p.name for p in (outbox / "index").glob("*.jsonl")) == [f"{RECENT}.jsonl"]
    last = _last(outbox)
    assert last["ok"] is True and last["days_moved"] == 1 and last["error"] is None
    assert f"--keep-days {keep}" in last["command"] and "--other-disk" in last["command"]
    assert last_offload_alerts(outbox) == []


def test_usage_mistakes_are_one_line(tmp_path):
    outbox, usb = tmp_path / "outbox", tmp_path / "usb"
    Outbox(outbox).prepare()
    usb.mkdir()
    for args, words in [([], "give one of --before YYYY-MM-DD and --keep-days N"),
                        (["--before", OLD, "--keep-days", "3"], "give one of"),
                        (["--keep-days", "0"], "keep at least 1 day"),
                        (["--keep-days", "many"], "is not a valid integer")]:
        code, out = _offload(str(outbox), *args, "--to", str(usb))
        assert code == 2 and words in out, (args, out)
        assert "Traceback" not in out


def test_a_dest_on_the_outboxs_disk_is_refused_and_the_agent_says_so(two_days, caplog):
    """The USB disk is not mounted: its mount point is an empty folder on the card. A
    scheduled run refuses it (exit 66), moves nothing, and the agent's next start names the
    failed run on its front page and in its log; after a run that succeeds, no longer."""
    config, outbox = two_days
    mount_point = outbox.parent / "mnt-usb"  # on the outbox's own filesystem
    mount_point.mkdir()
    before = sorted(p.name for p in (outbox / "index").glob("*.jsonl"))
    code, out = _offload(str(outbox), "--keep-days", "1", "--to", str(mount_point),
                         "--other-disk")
    assert code == 66 and "is on the outbox's own disk" in out and "mount that disk" in out
    assert sorted(p.name for p in (outbox / "index").glob("*.jsonl")) == before
    assert list(mount_point.iterdir()) == []
    assert _last(outbox)["ok"] is False

    logging.getLogger().addHandler(caplog.handler)  # the CLI above replaced the handlers
    caplog.set_level(logging.WARNING)
    run_once(config)  # the agent, started again after the night's run
    page = (outbox / "index.html").read_text()
    assert "The last offload (" in page and "did not finish" in page
    assert "is on the outbox&#x27;s own disk" in page or "is on the outbox's own disk" in page
    assert "--keep-days 1" in page and "The last offload" in caplog.text

    lines: list[str] = []
    assert run_checks(config, lines.append) == []  # a warning, not a failed check
    [line] = [line for line in lines if " offload: " in line]
    assert line.startswith("WARNING offload: The last offload (") and "own disk" in line

    code, out = _offload(str(outbox), "--keep-days", "1", "--to", str(mount_point))
    assert code == 0, out  # without --other-disk: it moves (and says it frees nothing)
    lines.clear()
    run_checks(config, lines.append)
    [line] = [line for line in lines if " offload: " in line]
    assert line.startswith("ok      offload: the last offload (") and "moved 2 day(s)" in line
    assert "frees no space" in out and _last(outbox)["ok"] is True
    run_once(config)
    assert "The last offload" not in (outbox / "index.html").read_text()
    shutil.rmtree(str(mount_point))


def test_a_dry_run_leaves_no_record(two_days, tmp_path):
    _, outbox = two_days
    usb = tmp_path / "usb"
    usb.mkdir()
    code, out = _offload(str(outbox), "--keep-days", "1", "--to", str(usb), "--dry-run")
    assert code == 0, out
    assert not (outbox / ".state" / LAST_NAME).exists()


def _check_line(config) -> str:
    lines: list[str] = []
    run_checks(config, lines.append)
    [line] = [line for line in lines if " offload: " in line]
    return line


def test_max_minutes_begins_no_new_day_once_used_up(two_days, tmp_path, monkeypatch):
    """A scheduled run stops the agent: ``--max-minutes`` bounds that. The day in hand is
    finished, no new one begun; the rest moves at the next run. (A clock that moves 70 s a
    look: the first day always moves; the second would begin 70 s in, past the minute.)"""
    config, outbox = two_days
    ticks = iter(range(0, 10_000, 70))
    monkeypatch.setattr(edge.offload, "time", types.SimpleNamespace(
        monotonic=lambda: float(next(ticks))))
    usb = tmp_path / "usb"
    usb.mkdir()
    code, out = _offload(str(outbox), "--keep-days", "1", "--to", str(usb),
                         "--max-minutes", "1")
    assert code == 0, out
    assert "moved 1 day(s)" in out and "stopped after --max-minutes 1: 1 day(s)" in out, out
    assert (usb / "index" / f"{OLD}.jsonl").is_file()
    assert [p.name for p in (outbox / "index").glob("*.jsonl")] == [f"{RECENT}.jsonl"]
    last = _last(outbox)
    assert (last["ok"], last["days_moved"], last["days_left"]) == (True, 1, 1)
    assert last["command"].endswith("--max-minutes 1") and "pid" not in last
    assert last_offload_alerts(outbox) == []  # not a failure: the rest moves next time
    line = _check_line(config)
    assert line.startswith("ok      offload:") and "left 1 for the next run" in line, line

    monkeypatch.undo()
    code, out = _offload(str(outbox), "--keep-days", "1", "--to", str(usb),
                         "--max-minutes", "1")
    assert code == 0 and "moved 1 day(s)" in out and "stopped after" not in out, out
    assert list((outbox / "index").glob("*.jsonl")) == []
    assert _last(outbox)["days_left"] == 0


@pytest.mark.parametrize("minutes", ["0", "-5", "soon"])
def test_max_minutes_must_be_a_whole_number_of_minutes(two_days, tmp_path, minutes):
    _, outbox = two_days
    code, out = _offload(str(outbox), "--keep-days", "1", "--to", str(tmp_path),
                         "--max-minutes", minutes)
    assert code == 2 and "--max-minutes" in out and "Traceback" not in out, out
    assert not (outbox / ".state" / LAST_NAME).exists()


def test_a_run_killed_before_its_end_is_named_when_the_agent_starts(two_days, tmp_path):
    """The scheduled run kills an offload that runs past its time (a disk that stopped
    answering), and a power cut kills one anywhere: neither writes how it ended. The record
    written when it began (``ok`` null, its pid) then says it: the agent's next start names
    it on its front page, and ``check`` warns, until a run ends."""
    config, outbox = two_days
    usb = tmp_path / "usb"
    usb.mkdir()
    args = ["offload", str(outbox), "--keep-days", "1", "--to", str(usb)]
    killed = run_agent(args, NEUROEDGE_FAILPOINT="offload_remove")  # SIGKILL, as kill -9
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    last = _last(outbox)
    assert last["ok"] is None and isinstance(last["pid"], int) and last["error"] is None
    [alert] = last_offload_alerts(outbox)
    assert "did not finish: it was stopped before its end" in alert and "Nothing is lost" in alert
    assert alert.endswith(f"--keep-days 1 --to {usb}"), alert
    assert pending_offload_alerts(outbox)  # it died removing a day: that is said first
    line = _check_line(config)
    assert line.startswith("WARNING offload: The last offload (") and "stopped before" in line

    finished = run_agent(args)  # the next run finishes the day, then moves the rest
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert last_offload_alerts(outbox) == [] and _last(outbox)["ok"] is True
    assert list((outbox / "index").glob("*.jsonl")) == []


def test_a_run_that_is_still_running_is_not_taken_for_a_killed_one(two_days):
    """``check`` while an offload runs: the pid in its record holds the outbox's lock."""
    config, outbox = two_days
    box = Outbox(outbox)
    box.lock()  # this process plays the running offload: its pid in .state/lock
    try:
        edge.offload._record_last(box, "edge-agent offload ...", None, running=True)
        last = _last(outbox)
        assert last["pid"] == os.getpid() and offload_running(outbox, last)
        assert last_offload_alerts(outbox) == []
        line = _check_line(config)
        assert line.startswith("ok      offload: an offload is running (since "), line
    finally:
        box.unlock()
    # the same record once another process holds the lock (the agent, started after the
    # offload died): a run that never ended
    other = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    (outbox / ".state" / "lock").write_text(other.stdout)
    assert not offload_running(outbox, _last(outbox))
    assert "stopped before its end" in last_offload_alerts(outbox)[0]


def test_check_by_another_user_sees_a_running_offload_as_running(two_days, monkeypatch):
    """``check`` run by a member of the staff group while the service user's offload runs:
    signalling that process is not allowed (EPERM), which says it is there."""
    _, outbox = two_days
    box = Outbox(outbox)
    box.lock()
    try:
        edge.offload._record_last(box, "edge-agent offload ...", None, running=True)

        def not_yours(pid, sig):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(edge.offload.os, "kill", not_yours)
        assert offload_running(outbox, _last(outbox))
        assert last_offload_alerts(outbox) == []
    finally:
        box.unlock()


def test_an_offload_while_another_runs_says_so_and_leaves_its_record(two_days, tmp_path):
    """A hand-run offload while the scheduled one runs: refused (75) with what runs, and
    the running one's record (which names it if it is killed) is not written over."""
    _, outbox = two_days
    box = Outbox(outbox)
    box.lock()  # this process plays the running offload
    try:
        edge.offload._record_last(box, "edge-agent offload (scheduled)", None, running=True)
        before = (outbox / ".state" / LAST_NAME).read_bytes()
        code, out = _offload(str(outbox), "--keep-days", "1", "--to", str(tmp_path))
        assert code == 75, out
        assert f"another offload is running on the outbox {outbox} (process {os.getpid()}" in out
        assert "edge-agent offload (scheduled)" in out and "Traceback" not in out
        assert (outbox / ".state" / LAST_NAME).read_bytes() == before
    finally:
        box.unlock()
