"""Study reports (edge.network.studies) from the agent's own per-slice reports."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pydicom
import pytest
from agent_helpers import gray_png, make_config, run_once
from network_helpers import PATIENT_ID, make_study

from edge.network.studies import StudyTracker
from edge.network.study_pages import slice_pictures
from edge.report import valid_uid

# 4 of 10 slices dark (the toy model: glioma), the rest mid-grey (notumor)
GLIOMA_STUDY = [0.6, 0.6, 0.6, 0.1, 0.1, 0.1, 0.1, 0.6, 0.6, 0.6]


def study_doc(outbox: Path, uid: str) -> dict:
    return json.loads((outbox / "studies" / f"{uid}.json").read_text())


def test_a_study_copied_as_files_is_judged_whole_and_linked(folders, test_model, caplog):
    if not test_model.toy:
        pytest.skip("needs the toy model's known answers")
    caplog.set_level(logging.DEBUG)
    uid, _ = make_study(folders["inbox"], GLIOMA_STUDY, series=2)
    gray_png(folders["inbox"] / "photo.png", 128)  # not DICOM: no study
    config = make_config(folders, test_model.path, studies={"settle_seconds": 600})
    counts = run_once(config)  # --once judges at the end, however young the study
    assert counts["classified"] == 11
    outbox = folders["outbox"]
    doc = study_doc(outbox, uid)
    assert doc["schema"] == "neuroedge.study/1" and doc["revision"] == 1
    assert doc["verdict"] == "glioma", doc["verdict_reason"]
    assert doc["counts"]["instances"] == 10 and doc["counts"]["tumour_slices"] == 4
    assert [s["instances"] for s in doc["series"]] == [5, 5]
    assert len(doc["suspicious"]) == 6
    assert {s["label"] for s in doc["suspicious"][:4]} == {"glioma"}
    assert all(i["archived_as"].startswith("archive/") for i in doc["instances"])
    page = (outbox / "studies" / f"{uid}.html").read_text()
    assert "Verdict: glioma" in page
    pictures = [slice_pictures(outbox, s["report"]) for s in doc["suspicious"]]
    assert all(alts[0][0] == "model input" for alts in pictures)  # each slice's own picture
    assert page.count("data:image/png;base64,") == sum(len(p) for p in pictures)
    for alts in pictures:  # and its heat-map, where the slice report has one
        assert all(uri in page for _, uri in alts)
    day_page = next((outbox / "index").glob("*.html")).read_text()
    assert f"../studies/{uid}.html" in day_page
    assert "studies/index.html" in (outbox / "index.html").read_text()
    assert uid in (outbox / "studies" / "index.html").read_text()
    written = "".join(p.read_text() for p in (outbox / "studies").iterdir())
    assert "SECRETNAME" not in written and PATIENT_ID not in written
    assert "SECRETNAME" not in caplog.text and uid not in caplog.text
    assert list((outbox / "studies").iterdir()) and not list(
        (outbox / ".state" / "studies").glob("1*.json"))  # nothing pending any more


def test_more_instances_later_rejudge_the_study(folders, test_model):
    if not test_model.toy:
        pytest.skip("needs the toy model's known answers")
    config = make_config(folders, test_model.path, studies={"settle_seconds": 0})
    uid, _ = make_study(folders["inbox"] / "first", [0.6] * 5)
    run_once(config)
    first = study_doc(folders["outbox"], uid)
    assert first["verdict"] == "notumor" and first["revision"] == 1
    make_study(folders["inbox"] / "later", [0.1] * 4, study_uid=uid)
    run_once(config)
    second = study_doc(folders["outbox"], uid)
    assert second["revision"] == 2 and second["counts"]["instances"] == 9
    assert second["verdict"] == "glioma"
    assert second["previous_instances_hash"] == first["instances_hash"]
    assert not list((folders["outbox"] / "studies").glob(".neuroedge-*"))
    run_once(config)  # nothing new: nothing re-judged
    assert study_doc(folders["outbox"], uid)["revision"] == 2


def test_a_replayed_judgment_keeps_its_revision(folders, test_model):
    """A crash between writing the study report and forgetting the pending study."""
    config = make_config(folders, test_model.path, studies={"settle_seconds": 0})
    uid, _ = make_study(folders["inbox"], [0.6] * 4)
    run_once(config)
    outbox = folders["outbox"]
    before = study_doc(outbox, uid)
    members = {i["report"]: i["archived_as"] for i in before["instances"]}
    (outbox / ".state" / "studies" / f"{uid}.json").write_text(json.dumps(
        {"study": uid, "members": members, "changed_at": time.time() - 5}))
    judged = []
    tracker = StudyTracker(outbox, config.studies, ["glioma", "meningioma", "notumor",
                                                    "pituitary"], {"review_threshold": 0.6},
                           on_judged=lambda doc, slices: judged.append(doc))
    tracker.open()
    tracker.finish()
    after = study_doc(outbox, uid)
    assert after["revision"] == before["revision"] == 1
    assert after["created_at"] == before["created_at"]
    assert len(judged) == 1 and judged[0]["instances_hash"] == before["instances_hash"]


def test_the_first_start_does_not_group_what_was_indexed_before(folders, test_model, caplog):
    config = make_config(folders, test_model.path, studies={"enabled": False})
    uid, _ = make_study(folders["inbox"], [0.6] * 4)
    run_once(config)  # an agent from before study reports
    assert not (folders["outbox"] / "studies").exists()
    caplog.set_level(logging.INFO)
    run_once(make_config(folders, test_model.path, studies={"settle_seconds": 0}))
    assert "study tracking starts now" in caplog.text
    assert not (folders["outbox"] / "studies" / f"{uid}.json").exists()


def test_settling_and_hostile_study_uids(tmp_path):
    outbox = tmp_path / "outbox"
    (outbox / "index").mkdir(parents=True)
    from edge.network.settings import StudiesConfig

    tracker = StudyTracker(outbox, StudiesConfig(settle_seconds=60), ["a", "notumor"], {})
    tracker.open()
    line = {"outcome": "classified", "id": "a" * 64, "study": "1.2.3", "moved_to": "archive/x"}
    bad = dict(line, id="b" * 64, study="../../etc/passwd")
    torn = json.dumps(dict(line, id="c" * 64, study="1.2.4"))[:40]  # still being appended
    (outbox / "index" / "2026-11-20.jsonl").write_text(
        json.dumps(line) + "\n" + json.dumps(bad) + "\n" + torn)
    assert tracker.poll() == 2
    assert list(tracker._pending) == ["1.2.3"]
    now = tracker._pending["1.2.3"]["changed_at"]
    assert tracker.due(now + 59) == [] and tracker.due(now + 60) == ["1.2.3"]
    assert (outbox / ".state" / "studies" / "1.2.3.json").is_file()
    assert not valid_uid("1.2.3.") and not valid_uid("1" * 65) and valid_uid("1.2.840.10008")
    restarted = StudyTracker(outbox, StudiesConfig(), ["a", "notumor"], {})
    restarted.open()  # the pending study and the cursor survive
    assert list(restarted._pending) == ["1.2.3"] and restarted.poll() == 0


def test_archived_instances_keep_what_the_sr_needs(folders, test_model):
    """The SR copies the patient and study attributes from an archived instance."""
    from edge.network.sr import read_header

    config = make_config(folders, test_model.path, studies={"settle_seconds": 0})
    uid, _ = make_study(folders["inbox"], [0.6] * 3)
    run_once(config)
    doc = study_doc(folders["outbox"], uid)
    header = read_header(folders["outbox"] / doc["instances"][0]["archived_as"])
    assert header.PatientID == PATIENT_ID and header.StudyInstanceUID == uid
    assert header.AccessionNumber == "ACC42" and "PixelData" not in header
    assert isinstance(header, pydicom.Dataset)


def test_a_model_without_the_normal_label(tmp_path, caplog):
    from edge.config import config_from_dict
    from edge.errors import ConfigError
    from edge.network.services import NetworkServices

    labels = ["tumour", "no_tumour"]
    caplog.set_level(logging.WARNING)
    default = NetworkServices(config_from_dict({}), tmp_path, tmp_path, labels, print)
    assert default.tracker is None  # an old config with another model keeps working
    assert "study reports are off" in caplog.text
    with pytest.raises(ConfigError, match="not one of the model's labels"):
        NetworkServices(config_from_dict({"studies": {"normal_label": "healthy"}}), tmp_path,
                        tmp_path, labels, print)
    chosen = config_from_dict({"studies": {"normal_label": "no_tumour"}})
    assert NetworkServices(chosen, tmp_path, tmp_path, labels, print).tracker is not None
    with pytest.raises(ConfigError, match="send_to needs study reports"):
        NetworkServices(config_from_dict({"studies": {"enabled": False},
                                          "pacs": {"send_to": "P@h:104"}}), tmp_path,
                        tmp_path, labels, print)


def test_an_index_cut_back_and_appended_again_is_reread(tmp_path):
    """A failed append is cut back (issue 14); if lines are appended again before the next
    poll, reading on from the old offset would start mid-line and miss one."""
    from edge.network.settings import StudiesConfig

    outbox = tmp_path / "outbox"
    (outbox / "index").mkdir(parents=True)
    tracker = StudyTracker(outbox, StudiesConfig(), ["a", "notumor"], {})
    tracker.open()
    day = outbox / "index" / "2026-11-20.jsonl"

    def line(n: int) -> str:
        return json.dumps({"outcome": "classified", "id": f"{n:064x}", "study": "1.2.3",
                           "moved_to": f"archive/{n}"}) + "\n"

    day.write_text(line(1) + line(2))
    assert tracker.poll() == 2
    day.write_text(line(1) + line(3) + line(4))  # line 2 cut back, two others appended
    tracker.poll()
    assert sorted(tracker._pending["1.2.3"]["members"]) == [f"{n:064x}" for n in (1, 2, 3, 4)]


def test_a_clock_set_back_does_not_hold_a_study_back(tmp_path, monkeypatch):
    """The box's clock was a day ahead when a study arrived (no RTC, a wrong manual date)
    and is then corrected: the study is judged ``settle_seconds`` after the agent next looks
    at it, not a day later. (Set forward, a study is only judged early; more instances
    later re-judge it.)"""
    from edge.network.settings import StudiesConfig

    outbox = tmp_path / "outbox"
    (outbox / "index").mkdir(parents=True)
    tracker = StudyTracker(outbox, StudiesConfig(settle_seconds=60), ["a", "notumor"], {})
    tracker.open()
    line = {"outcome": "classified", "id": "a" * 64, "study": "1.2.3", "moved_to": "archive/x"}
    (outbox / "index" / "2026-11-20.jsonl").write_text(json.dumps(line) + "\n")
    ahead = time.time() + 86400
    real_time = time.time
    with monkeypatch.context() as clock:  # noted while the clock was a day ahead
        clock.setattr(time, "time", lambda: real_time() + 86400)
        assert tracker.poll() == 1
    assert tracker._pending["1.2.3"]["changed_at"] >= ahead - 5
    now = time.time()
    assert tracker.due(now) == []  # just noted, as far as the corrected clock can tell
    assert tracker.due(now + 61) == ["1.2.3"]
    restarted = StudyTracker(outbox, StudiesConfig(settle_seconds=60), ["a", "notumor"], {})
    restarted.open()  # the same after a restart: its saved time is in the future
    now = time.time()
    assert restarted.due(now) == [] and restarted.due(now + 61) == ["1.2.3"]


def _minimal_report(outbox: Path, report_id: str, study: str, sop: str) -> None:
    report = {"id": report_id, "needs_review": False,
              "prediction": {"label": "notumor", "confidence": 0.97,
                             "probabilities": {"a": 0.03, "notumor": 0.97}},
              "dicom": {"study_instance_uid": study, "sop_instance_uid": sop,
                        "series_instance_uid": study + ".1"}}
    (outbox / "reports").mkdir(exist_ok=True)
    (outbox / "reports" / f"{report_id}.json").write_text(json.dumps(report))


def test_one_study_that_cannot_be_judged_does_not_stop_the_others(tmp_path, caplog):
    """Whatever goes wrong judging one study (here its SR cannot be built) must not stop
    the tracker judging every other study, nor retry that one twice a second."""
    from edge.network.settings import StudiesConfig

    caplog.set_level(logging.INFO)
    outbox = tmp_path / "outbox"
    (outbox / "index").mkdir(parents=True)
    lines = []
    for n, study in enumerate(["1.2.1", "1.2.2", "1.2.1", "1.2.2"]):
        report_id = f"{n:x}" * 64
        _minimal_report(outbox, report_id[:64], study, f"{study}.1.{n}")
        lines.append(json.dumps({"outcome": "classified", "id": report_id[:64],
                                 "study": study, "moved_to": None}))
    (outbox / "index" / "2026-11-20.jsonl").write_text("\n".join(lines) + "\n")
    attempts = []

    def on_judged(doc, slices):
        attempts.append(doc["study_instance_uid"])
        if doc["study_instance_uid"] == "1.2.1":  # the oldest: judged first
            raise ValueError("cannot build this study's SR")

    tracker = StudyTracker(outbox, StudiesConfig(settle_seconds=0.0, min_slices=1),
                           ["a", "notumor"], {}, html=False, on_judged=on_judged)
    (outbox / ".state" / "studies").mkdir(parents=True)
    (outbox / ".state" / "studies" / "cursor.json").write_text('{"offsets": {}}')
    tracker.open()
    tracker.start()
    try:
        wait = time.monotonic() + 10
        while "1.2.2" not in attempts and time.monotonic() < wait:
            time.sleep(0.05)
        time.sleep(2.0)  # four polls: a failed study is not tried again at once
    finally:
        tracker.stop()
    assert "1.2.2" in attempts, "the other study was never judged"
    assert attempts.count("1.2.1") == 1, attempts
    assert (outbox / "studies" / "1.2.2.json").is_file()
    assert "1.2.1" in tracker._pending  # still pending: tried again later, or at the next start
    failures = [r for r in caplog.records if "could not judge study" in r.getMessage()]
    assert len(failures) == 1 and "retrying in" in failures[0].getMessage()


def _tracker_with_two_studies(tmp_path):
    from edge.network.settings import StudiesConfig

    outbox = tmp_path / "outbox"
    (outbox / "index").mkdir(parents=True)
    lines = []
    for n, study in enumerate(["1.2.1", "1.2.2"]):
        report_id = (f"{n:x}" * 64)[:64]
        _minimal_report(outbox, report_id, study, f"{study}.1.{n}")
        lines.append(json.dumps({"outcome": "classified", "id": report_id, "study": study,
                                 "moved_to": None}))
    (outbox / "index" / "2026-11-20.jsonl").write_text("\n".join(lines) + "\n")
    (outbox / ".state" / "studies").mkdir(parents=True)
    (outbox / ".state" / "studies" / "cursor.json").write_text('{"offsets": {}}')
    tracker = StudyTracker(outbox, StudiesConfig(settle_seconds=0.0, min_slices=1),
                           ["a", "notumor"], {}, html=True)
    tracker.open()
    return outbox, tracker


def test_a_damaged_study_report_is_left_out_of_the_studies_page_with_a_warning(tmp_path,
                                                                                  caplog):
    """A study report edited by hand (a field gone, a wrong type) must not stop the page
    listing every other study, nor raise on every pass."""
    caplog.set_level(logging.INFO)
    outbox, tracker = _tracker_with_two_studies(tmp_path)
    for name, doc in (("1.9.1.json", {"schema": "neuroedge.study/1", "verdict": "glioma"}),
                      ("1.9.2.json", {"schema": "neuroedge.study/1", "counts": "many",
                                      "study_instance_uid": "1.9.2"})):
        (outbox / "studies" / name).write_text(json.dumps(doc))
    tracker.finish()
    tracker.finish()  # a second pass: the same files, no second warning
    page = (outbox / "studies" / "index.html").read_text()
    assert "1.2.1" in page and "1.2.2" in page and "1.9.1" not in page
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    damaged = [r.getMessage() for r in caplog.records if "left out of" in r.getMessage()]
    assert len(damaged) == 2 and any("1.9.1.json" in m for m in damaged), damaged


def test_the_studies_page_reads_only_study_reports_that_changed(tmp_path, monkeypatch):
    import edge.network.studies as studies

    outbox, tracker = _tracker_with_two_studies(tmp_path)
    tracker.finish()
    read = []
    real = studies.read_json_if_there
    monkeypatch.setattr(studies, "read_json_if_there", lambda p: read.append(p) or real(p))
    tracker._render_index()
    assert [p for p in read if p.parent.name == "studies"] == []
    doc = json.loads((outbox / "studies" / "1.2.1.json").read_text())
    doc["verdict"] = "needs_review"
    (outbox / "studies" / "1.2.1.json").write_text(json.dumps(doc, indent=1))
    tracker._render_index()
    assert [p.name for p in read if p.parent.name == "studies"] == ["1.2.1.json"]
    page = (outbox / "studies" / "index.html").read_text()
    assert '<strong class="flag">needs review</strong>' in page and "needs_review" not in page


def test_a_study_whose_sr_cannot_be_queued_says_so(tmp_path, caplog):
    """An SR queue that cannot be written was reported as 'could not write the report of
    study', sending the reader to the wrong folder."""
    caplog.set_level(logging.INFO)
    outbox, tracker = _tracker_with_two_studies(tmp_path)
    queued = outbox / ".state" / "outgoing" / "abc.dcm"

    def on_judged(doc, slices):
        raise PermissionError(13, "Permission denied", str(queued))

    tracker.on_judged = on_judged
    tracker.finish()
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert said and all("SR queue" in m and "Permission denied" in m for m in said), said
    assert "1.2.1" in tracker._pending  # tried again later


def test_a_disk_error_that_stays_is_retried_less_and_less_often(tmp_path, monkeypatch,
                                                                caplog):
    """A study whose judgment failed on a disk error was tried again after each
    ``settle_seconds``: with an error that stays (and settle_seconds = 0, every poll) that
    rewrote its report and logged a line twice a second. The first retry still comes at
    once; then 30 s, 60 s, ... up to 15 min; a success forgets the count."""
    import errno

    from edge.network import studies

    outbox, tracker = _tracker_with_two_studies(tmp_path)
    tracker.poll()
    assert sorted(tracker.due()) == ["1.2.1", "1.2.2"]
    clock = [1000.0]
    monkeypatch.setattr(studies.time, "monotonic", lambda: clock[0])
    calls = []
    judge = tracker.judge

    def failing(uid):
        calls.append(uid)
        if uid == "1.2.1":
            raise OSError(errno.EIO, "Input/output error", str(outbox / "reports" / "x.json"))
        return judge(uid)

    monkeypatch.setattr(tracker, "judge", failing)

    def one_poll():
        return [uid for uid in tracker.due(now=time.time() + 1) if tracker._judge_safely(uid)]

    assert one_poll() == ["1.2.2"]
    assert one_poll() == []  # the first retry: at once (after settle_seconds)
    assert calls.count("1.2.1") == 2
    for _ in range(20):  # parked for 30 s now
        one_poll()
    assert calls.count("1.2.1") == 2
    clock[0] += 31
    one_poll()
    assert calls.count("1.2.1") == 3
    clock[0] += 31  # now 60 s
    one_poll()
    assert calls.count("1.2.1") == 3
    clock[0] += 30
    one_poll()
    assert calls.count("1.2.1") == 4
    assert "retrying in 60s" in caplog.text

    monkeypatch.setattr(tracker, "judge", judge)  # the disk answers again
    clock[0] += 121
    assert one_poll() == ["1.2.1"]
    assert "1.2.1" not in tracker._failures
