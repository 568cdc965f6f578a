"""The agent's backlog run, in-process: reports, archive, quarantine, duplicates, safety."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import (
    gray_png,
    make_config,
    make_dicom,
    other_filesystem,
    outbox_files,
    pydicom_file,
    run_once,
)
from toy_model import expected_label

from edge.errors import AgentBusyError, ConfigError
from edge.manifest import sha256_file
from edge.outbox import Job, Outbox
from edge.report import REPORT_SCHEMA

REPORT_KEYS = {"schema", "id", "notice", "created_at", "input", "dicom", "image", "prediction",
               "needs_review", "review_reasons", "trust", "heatmap", "notes", "model", "agent",
               "timings_ms", "intake"}


def index_lines(outbox: Path) -> list:
    lines = []
    for path in sorted((outbox / "index").glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def test_backlog_is_classified_reported_and_archived(folders, test_model):
    inbox, outbox = folders["inbox"], folders["outbox"]
    (inbox / "series1").mkdir()
    mr = inbox / "series1" / "IM0001"
    mr.write_bytes(pydicom_file("MR_small.dcm").read_bytes())
    dark = gray_png(inbox / "dark.png", 20)
    bright = gray_png(inbox / "bright.png", 230)
    shas = {p.name: sha256_file(p) for p in (mr, dark, bright)}

    counts = run_once(make_config(folders, test_model.path))

    assert counts["classified"] == 3 and counts["quarantined"] == 0
    assert not [p for p in inbox.rglob("*") if p.is_file()]  # everything taken
    archived = {p.name: sha256_file(p) for p in (outbox / "archive").rglob("*") if p.is_file()}
    assert archived == shas  # moved intact, names kept
    for name, sha in shas.items():
        report = json.loads((outbox / "reports" / f"{sha}.json").read_text())
        assert set(report) == REPORT_KEYS and report["schema"] == REPORT_SCHEMA
        assert report["id"] == report["input"]["sha256"] == sha
        assert report["input"]["file_name"] == name
        assert "NOT FOR CLINICAL USE" in report["notice"]
        probs = report["prediction"]["probabilities"]
        assert list(probs) == ["glioma", "meningioma", "notumor", "pituitary"] or len(probs) >= 2
        assert abs(sum(probs.values()) - 1.0) < 0.02
        assert report["prediction"]["label"] == max(probs, key=probs.get)
        assert report["model"]["sha256"] == sha256_file(test_model.path / "model.tflite")
        assert {"hash", "decode", "preprocess", "inference", "total"} <= set(report["timings_ms"])
        page = (outbox / "reports" / f"{sha}.html").read_text()
        assert "NOT FOR CLINICAL USE" in page and "data:image/png;base64," in page
    mr_report = json.loads((outbox / "reports" / f"{shas['IM0001']}.json").read_text())
    assert mr_report["dicom"]["sop_instance_uid"] and mr_report["dicom"]["study_instance_uid"]
    assert mr_report["dicom"]["series_instance_uid"] and mr_report["image"] is None
    if test_model.toy:
        assert json.loads((outbox / "reports" / f"{shas['dark.png']}.json").read_text())[
            "prediction"]["label"] == expected_label(20 / 255)
        assert json.loads((outbox / "reports" / f"{shas['bright.png']}.json").read_text())[
            "prediction"]["label"] == expected_label(230 / 255)
    lines = index_lines(outbox)
    assert sorted(e["id"] for e in lines) == sorted(shas.values())
    assert {e["outcome"] for e in lines} == {"classified"}
    day_page = next((outbox / "index").glob("*.html")).read_text()
    assert "IM0001" in day_page and (outbox / "index.html").is_file()
    assert not os.listdir(outbox / ".state" / "jobs")
    assert not os.listdir(outbox / ".state" / "claimed")


def test_same_content_twice_is_not_classified_twice(folders, test_model):
    inbox, outbox = folders["inbox"], folders["outbox"]
    config = make_config(folders, test_model.path)
    gray_png(inbox / "first.png", 100)
    run_once(config)
    sha = sha256_file(next((outbox / "archive").rglob("first.png")))
    report_path = outbox / "reports" / f"{sha}.json"
    before = report_path.read_bytes()
    gray_png(inbox / "copy-a.png", 100)
    gray_png(inbox / "copy-b.png", 100)
    counts = run_once(config)
    assert counts == {"classified": 0, "duplicate": 2, "quarantined": 0, "unfinished": 0,
                      "unreachable": 0, "not_taken": 0, "waiting_for_space": 0,
                      "left_while_failing": 0, "still_written": 0}
    assert report_path.read_bytes() == before  # the same report, untouched
    assert len(list((outbox / "reports").glob("*.json"))) == 1
    assert sorted(p.name for p in (outbox / "archive").rglob("*.png")) == [
        "copy-a.png", "copy-b.png", "first.png"]
    outcomes = sorted(e["outcome"] for e in index_lines(outbox))
    assert outcomes == ["classified", "duplicate", "duplicate"]
    assert all(e["report"] == f"reports/{sha}.json" for e in index_lines(outbox))


def test_name_clash_never_overwrites(folders, test_model):
    inbox, outbox = folders["inbox"], folders["outbox"]
    config = make_config(folders, test_model.path)
    gray_png(inbox / "scan.png", 30)
    run_once(config)
    gray_png(inbox / "scan.png", 200)  # same name, other content, same day
    run_once(config)
    archived = sorted((outbox / "archive").rglob("scan*.png"))
    assert len(archived) == 2
    levels = sorted(int(np.asarray(__import__("PIL.Image").Image.open(p)).max())
                    for p in archived)
    assert levels == [30, 200]
    assert archived[0].name == "scan.png" and archived[1].name.startswith("scan~")


def test_every_bad_input_is_quarantined_with_its_reason(folders, test_model):
    inbox, outbox = folders["inbox"], folders["outbox"]
    (inbox / "empty.dcm").write_bytes(b"")
    (inbox / "notes.txt").write_text("not an image\n" * 20)
    png = gray_png(inbox / "whole.png", 9).read_bytes()
    (inbox / "half.png").write_bytes(png[: len(png) // 2])
    (inbox / "ct.dcm").write_bytes(pydicom_file("CT_small.dcm").read_bytes())
    (inbox / "report.dcm").write_bytes(pydicom_file("test-SR.dcm").read_bytes())
    (inbox / "rtstruct").write_bytes(pydicom_file("rtstruct.dcm").read_bytes())
    (inbox / "cut.dcm").write_bytes(pydicom_file("MR_truncated.dcm").read_bytes())
    (inbox / "whole.png").unlink()
    expected = {"empty.dcm": "empty", "notes.txt": "text file", "half.png": "truncated",
                "ct.dcm": "Modality is CT", "report.dcm": "no pixel data",
                "rtstruct": "no pixel data", "cut.dcm": "truncated|less than expected"}

    counts = run_once(make_config(folders, test_model.path))

    assert counts["quarantined"] == len(expected) and counts["classified"] == 0
    import re
    for name, reason in expected.items():
        assert (outbox / "quarantine" / name).is_file(), name
        record = json.loads((outbox / "quarantine" / f"{name}.reason.json").read_text())
        assert re.search(reason, record["reason"]), (name, record["reason"])
        assert record["file_name"] == name and record["what_to_do"]
    assert not list((outbox / "reports").iterdir())
    assert {e["outcome"] for e in index_lines(outbox)} == {"quarantined"}


def test_low_confidence_needs_review(folders, test_model):
    inbox, outbox = folders["inbox"], folders["outbox"]
    gray_png(inbox / "edge.png", 127)  # toy model: at the meningioma/notumor band edge, ~50/50
    config = make_config(folders, test_model.path,
                         review={"threshold": 0.6 if test_model.toy else 0.9999})
    run_once(config)
    report = json.loads(next((outbox / "reports").glob("*.json")).read_text())
    assert report["needs_review"] is True
    assert "below the review threshold" in report["review_reasons"][0]
    assert report["prediction"]["confidence"] < config.review.threshold
    assert index_lines(outbox)[0]["needs_review"] is True
    page = next((outbox / "reports").glob("*.html")).read_text()
    assert "Needs review" in page


def test_symlinks_are_quarantined_never_followed(folders, test_model):
    inbox, outbox, root = folders["inbox"], folders["outbox"], folders["root"]
    secret = root / "secret.png"
    gray_png(secret, 250)
    secret_sha = sha256_file(secret)
    (inbox / "link.png").symlink_to(secret)
    outside_dir = root / "elsewhere"
    outside_dir.mkdir()
    gray_png(outside_dir / "private.png", 5)
    (inbox / "linked-folder").symlink_to(outside_dir, target_is_directory=True)

    run_once(make_config(folders, test_model.path))

    assert sha256_file(secret) == secret_sha and (outside_dir / "private.png").is_file()
    quarantined = outbox / "quarantine" / "link.png"
    assert quarantined.is_symlink()  # the link itself was moved, its target never read
    record = json.loads((outbox / "quarantine" / "link.png.reason.json").read_text())
    assert "symbolic link" in record["reason"]
    assert not (outbox / "reports" / f"{secret_sha}.json").exists()
    # a link to a folder is not walked either: it is quarantined as a link
    assert (outbox / "quarantine" / "linked-folder").is_symlink()
    assert not list((outbox / "reports").glob("*.json"))


def test_malicious_names_and_tags_stay_inside_and_escaped(folders, test_model, caplog):
    inbox, outbox, root = folders["inbox"], folders["outbox"], folders["root"]
    secret_name, secret_id = "SECRETNAME^PATIENT", "PID-SECRET-4242"
    nasty = "scan..\\..\\<img src=x onerror=alert(1)>\n.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_dicom(inbox / nasty, np.tile(np.arange(64, dtype=np.uint16) * 50, (64, 1)),
                   window=(1600, 3200), PatientName=secret_name, PatientID=secret_id,
                   SeriesDescription="<script>alert('x')</script> ../../../etc/passwd",
                   StudyDescription="../../escape")
    before = {p for p in root.rglob("*")}
    caplog.set_level(logging.DEBUG)

    counts = run_once(make_config(folders, test_model.path))

    assert counts["classified"] == 1
    created = {p for p in root.rglob("*")} - before
    assert created and all(outbox in p.parents or p == outbox for p in created)
    for path in created:
        assert secret_name.split("^")[0] not in str(path) and secret_id not in str(path)
    assert secret_name.split("^")[0] not in caplog.text and secret_id not in caplog.text
    assert "SECRETNAME" not in caplog.text and nasty not in caplog.text
    report_path = next((outbox / "reports").glob("*.json"))
    text = report_path.read_text() + report_path.with_suffix(".html").read_text()
    assert "SECRETNAME" not in text and secret_id not in text
    page = report_path.with_suffix(".html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "script-src" not in page and "default-src 'none'" in page  # CSP: no scripts at all
    archived = [p for p in (outbox / "archive").rglob("*") if p.is_file()]
    assert len(archived) == 1 and "\n" not in archived[0].name and "/" not in archived[0].name


def test_orphan_and_poison_jobs_are_finished(folders, test_model):
    """A claimed file without a record is adopted; one that crashed the agent 3x is set aside."""
    outbox = Outbox(folders["outbox"])
    outbox.prepare()
    gray_png(outbox.claimed / "20990101T000000-orphan", 40)
    poison = Job(token="20990101T000001-poison", stage="claimed", source="p.png",
                 file_name="p.png", claimed_at="", attempts=3)
    gray_png(outbox.claimed_path(poison), 60)
    outbox.save(poison)

    counts = run_once(make_config(folders, test_model.path))

    assert counts["classified"] == 1 and counts["quarantined"] == 1
    record = json.loads((folders["outbox"] / "quarantine" / "p.png.reason.json").read_text())
    assert "stopped the agent 3 times" in record["reason"]
    assert any(p.name.startswith("recovered-") for p in (folders["outbox"] / "archive").rglob("*"))
    assert not os.listdir(outbox.claimed) and not os.listdir(outbox.jobs)


def test_two_agents_cannot_share_an_outbox(folders, test_model):
    from edge.classifier import Classifier
    from edge.watch import Agent

    config = make_config(folders, test_model.path)
    holder = Outbox(folders["outbox"])
    holder.prepare()
    holder.lock()
    try:
        with pytest.raises(AgentBusyError, match="already using the outbox"):
            Agent(config, Classifier(config), once=True).run()
    finally:
        holder.unlock()


def test_outbox_inside_inbox_is_a_config_error(folders, test_model):
    from edge.classifier import Classifier
    from edge.watch import Agent

    config = make_config(folders, test_model.path)
    config = config.override("paths", outbox=str(folders["inbox"] / "out"))
    with pytest.raises(ConfigError, match="neither inside the other"):
        Agent(config, Classifier(config), once=True)


def test_ignored_names_are_left_alone(folders, test_model):
    inbox = folders["inbox"]
    gray_png(inbox / ".hidden.png", 10)
    gray_png(inbox / "copying.png.part", 10)
    gray_png(inbox / "download.crdownload", 10)
    run_once(make_config(folders, test_model.path))
    assert sorted(p.name for p in inbox.iterdir()) == [".hidden.png", "copying.png.part",
                                                      "download.crdownload"]
    assert not outbox_files(folders["outbox"] / "archive")


def test_a_folder_named_like_a_copy_in_progress_is_left_whole_and_said_once(
        folders, test_model, caplog):
    # found by a scan or by a file event inside it, the same answer: left until renamed,
    # and the log says so once, with an inode to find it by (never its name)
    from edge.inbox import Inbox

    inbox = folders["inbox"]
    for folder in ("Study.TMP", "MRI_export~", ".hidden"):
        (inbox / folder / "series").mkdir(parents=True)
        gray_png(inbox / folder / "series" / "slice1.png", 10)
    gray_png(inbox / "ok.png", 20)
    with caplog.at_level(logging.WARNING, logger="edge.inbox"):
        counts = run_once(make_config(folders, test_model.path))
    assert counts["classified"] == 1
    assert sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*.png")) == [
        ".hidden/series/slice1.png", "MRI_export~/series/slice1.png",
        "Study.TMP/series/slice1.png"]
    said = [r.getMessage() for r in caplog.records if "copy in progress" in r.getMessage()]
    assert len(said) == 2 and all("-inum" in m and "Study" not in m for m in said)
    watcher = Inbox(inbox, recursive=True, settle=0.0, settle_after_close=0.0, max_pending=10)
    watcher.scan(inbox / "Study.TMP")  # what a "folder created" event does
    watcher.observe(str(inbox / "MRI_export~" / "series" / "slice1.png"), closed=True)
    assert not watcher.pending


def test_a_file_that_looks_old_is_settled_at_once_only_in_the_start_up_backlog(folders):
    # a writer's clock behind ours (a share) or ours jumping forward (no real-time clock)
    # makes a file being written look old; after the start-up scan, a file is settled only
    # once seen unchanged for settle_seconds
    from edge.inbox import Inbox

    inbox = folders["inbox"]
    old = gray_png(inbox / "old.png", 10)
    day_ago = time.time() - 86400
    os.utime(old, (day_ago, day_ago))
    watcher = Inbox(inbox, recursive=True, settle=30.0, settle_after_close=30.0,
                    max_pending=10)
    watcher.scan()
    assert watcher.take_ready() == str(old)  # the backlog: old, so settled
    watcher.backlog = False  # what the agent does after its first scan
    late = gray_png(inbox / "late.png", 20)
    os.utime(late, (day_ago, day_ago))
    watcher.observe(str(late))
    assert watcher.take_ready() is None  # looks a day old, but was never seen unchanged
    assert watcher.take_ready(now=time.monotonic() + 31) == str(late)


def test_a_body_part_other_than_the_brain_needs_review(folders, test_model):
    inbox, outbox = folders["inbox"], folders["outbox"]
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 30, (64, 1))
    make_dicom(inbox / "knee.dcm", ramp, window=(100, 50), BodyPartExamined="KNEE")
    make_dicom(inbox / "head.dcm", ramp + 1, window=(100, 50), BodyPartExamined="HEAD")
    run_once(make_config(folders, test_model.path, review={"threshold": 0.0}))
    by_name = {e["file_name"]: e for e in index_lines(outbox)}
    knee = json.loads((outbox / by_name["knee.dcm"]["report"]).read_text())
    assert knee["needs_review"] is True and knee["dicom"]["body_part_examined"] == "KNEE"
    assert "Body Part Examined is KNEE" in knee["review_reasons"][0]
    head = json.loads((outbox / by_name["head.dcm"]["report"]).read_text())
    assert head["needs_review"] is False and head["review_reasons"] == []


def test_inbox_on_another_filesystem_is_copied_then_removed(folders, test_model, tmp_path):
    import shutil
    import tempfile

    other = Path(tempfile.mkdtemp(dir=str(other_filesystem(tmp_path))))
    try:
        inbox = other / "inbox"
        inbox.mkdir()
        png = gray_png(inbox / "over-there.png", 70)
        sha = sha256_file(png)
        config = make_config({"inbox": inbox, "outbox": folders["outbox"]}, test_model.path)
        counts = run_once(config)
        assert counts["classified"] == 1 and not list(inbox.iterdir())
        archived = next((folders["outbox"] / "archive").rglob("over-there.png"))
        assert sha256_file(archived) == sha
    finally:
        shutil.rmtree(str(other), ignore_errors=True)


def test_interrupted_cross_filesystem_claim_is_finished(folders, test_model):
    """Crash after the durable copy but before the inbox file was unlinked: the copy wins."""
    inbox = folders["inbox"]
    outbox = Outbox(folders["outbox"])
    outbox.prepare()
    original = gray_png(inbox / "half-moved.png", 90)
    job = Job(token="20990101T000002-crossfs", stage="claiming", source="half-moved.png",
              file_name="half-moved.png", claimed_at="", cross_filesystem=True)
    outbox.save(job)
    outbox.claimed_path(job).write_bytes(original.read_bytes())

    counts = run_once(make_config(folders, test_model.path))

    assert counts["classified"] == 1 and counts["duplicate"] == 0
    assert not original.exists()  # the inbox copy was recognised as already claimed
    assert len(list((folders["outbox"] / "archive").rglob("*.png"))) == 1
    assert len(index_lines(folders["outbox"])) == 1


def test_an_unreadable_input_is_quarantined_not_retried_forever(folders, test_model,
                                                                monkeypatch):
    import edge.prepare

    def denied(path, *args):
        raise PermissionError(13, "Permission denied", str(path))

    gray_png(folders["inbox"] / "locked.png", 10)
    monkeypatch.setattr(edge.prepare, "sha256_file", denied)  # root can read anything: simulate
    counts = run_once(make_config(folders, test_model.path))
    assert counts["quarantined"] == 1 and counts["unfinished"] == 0
    record = json.loads((folders["outbox"] / "quarantine" / "locked.png.reason.json").read_text())
    assert record["reason_code"] == "UnreadableInput" and "permission denied" in record["reason"]


def test_a_same_named_copy_dropped_after_a_crash_is_kept(folders, test_model):
    """Claimed by rename, crashed; then the user drops the same file again: both are kept."""
    inbox = folders["inbox"]
    outbox = Outbox(folders["outbox"])
    outbox.prepare()
    again = gray_png(inbox / "again.png", 90)
    job = Job(token="20990101T000003-samefs", stage="claiming", source="again.png",
              file_name="again.png", claimed_at="")
    outbox.save(job)
    outbox.claimed_path(job).write_bytes(again.read_bytes())

    counts = run_once(make_config(folders, test_model.path))

    assert counts["classified"] == 1 and counts["duplicate"] == 1
    assert len(list((folders["outbox"] / "archive").rglob("again*.png"))) == 2


def test_a_damaged_journal_record_is_set_aside_and_its_input_adopted(folders, test_model):
    """A record edited by hand or damaged (no stage, an unknown stage) must not stop the
    agent from starting: it is moved to .state/damaged and its claimed input is adopted."""
    config = make_config(folders, test_model.path)
    run_once(config)  # creates the outbox
    state = folders["outbox"] / ".state"
    (state / "jobs" / "tok-a.json").write_text('{"token": "tok-a", "stage": "bogus"}')
    (state / "jobs" / "tok-b.json").write_text('{"token": "tok-b"}')
    gray_png(state / "claimed" / "tok-b", 140)
    counts = run_once(config)
    assert counts["unfinished"] == 0 and counts["classified"] == 1
    assert sorted(os.listdir(state / "damaged")) == ["tok-a.json", "tok-b.json"]
    assert not os.listdir(state / "jobs") and not os.listdir(state / "claimed")


def test_once_stops_waiting_for_a_file_that_never_stops_changing(tmp_path, test_model):
    """`watch --once` is a cron job: a file something keeps appending to (a copy that hangs)
    must not keep it running for ever. After [watch] once_settle_limit it stops, leaves that
    file in the inbox untouched, says how to find it, and exits 75; the others are done."""
    import threading

    from agent_helpers import run_agent

    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    gray_png(inbox / "done.png", 90)
    growing = inbox / "growing.png"
    gray_png(growing, 150)
    stop = threading.Event()

    def append() -> None:
        while not stop.is_set():
            with open(growing, "ab") as f:
                f.write(b"\0")
            time.sleep(0.1)

    config = tmp_path / "config.toml"
    config.write_text("[watch]\nsettle_seconds = 1.0\nonce_settle_limit = 2.0\n"
                      "rescan_interval = 0.5\n")
    writer = threading.Thread(target=append, daemon=True)
    writer.start()
    try:
        started = time.monotonic()
        result = run_agent(["--config", str(config), "watch", str(inbox), "--outbox",
                            str(outbox), "--model", str(test_model.path), "--once"], timeout=60)
        took = time.monotonic() - started
    finally:
        stop.set()
        writer.join()
    assert result.returncode == 75, result.stdout + result.stderr
    assert "1 file(s) were still being written when --once stopped waiting" in result.stderr
    assert "still being written after 2s: left in the inbox, untouched" in result.stderr
    assert f"find {inbox} -inum {growing.stat().st_ino}" in result.stderr
    assert "Traceback" not in result.stderr
    assert took < 30
    assert sorted(p.name for p in inbox.iterdir()) == ["growing.png"]  # untouched
    assert len(list((outbox / "reports").rglob("*.json"))) == 1  # done.png was done


def test_a_long_retry_round_pings_the_watchdog_between_inputs_and_stops_when_asked(
        folders, test_model, monkeypatch):
    """Inputs that could not be finished (a disk error, say) are retried in one round. The
    round sent no WATCHDOG=1: many inputs on a slow board ran past WatchdogSec and systemd
    killed the agent, each time; and a SIGTERM waited for the whole round."""
    import errno
    import threading

    from edge import sdnotify
    from edge.classifier import Classifier
    from edge.watch import Agent

    pings: list[float] = []
    monkeypatch.setattr(sdnotify, "notify", lambda state: (
        pings.append(time.monotonic()) if state == "WATCHDOG=1" else None) or True)
    monkeypatch.setattr(sdnotify, "watchdog_interval", lambda: 0.02)
    for i in range(10):
        gray_png(folders["inbox"] / f"scan-{i}.png", 20 + 10 * i)
    config = make_config(folders, test_model.path, watch={"retry_interval": 0.05})
    agent = Agent(config, Classifier(config))
    failing, retried, rounds = threading.Event(), [], threading.Event()
    failing.set()
    prepare, run = agent.worker.prepare, agent.worker.run

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def slow_retry(job, **kwargs):  # a retry that takes a while and fails again
        if not failing.is_set():
            return run(job, **kwargs)
        retried.append(time.monotonic())
        if len(retried) == 10:
            rounds.set()
        time.sleep(0.1)
        no_space()

    monkeypatch.setattr(agent.worker, "prepare", lambda job: prepare(job) if
                        not failing.is_set() else no_space())
    monkeypatch.setattr(agent.worker, "run", slow_retry)
    thread = threading.Thread(target=agent.run)
    thread.start()
    try:
        assert rounds.wait(30), "no full retry round"
        first, last = retried[0], retried[9]
        during = [t for t in pings if first <= t <= last]
        assert len(during) >= 5, (len(during), last - first)  # not one ping in a 1 s round
        while len(retried) < 12:  # into the second round, then SIGTERM's flag
            time.sleep(0.01)
        agent.stop_requested.set()
        thread.join(10)
        assert not thread.is_alive()
        assert len(retried) <= 13  # the round stopped; before, it went on through all 10
    finally:
        agent.stop_requested.set()
        thread.join(10)
    failing.clear()
    counts = run_once(config)  # the next start: every input finished, none lost
    assert counts["classified"] == 10 and counts["unfinished"] == 0
    assert len(list((folders["outbox"] / "archive").rglob("scan-*.png"))) == 10
