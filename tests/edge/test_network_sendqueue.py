"""The SR send queue (edge.network.sendqueue) and the SR itself (edge.network.sr)."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from agent_helpers import CountedFile

from edge.network.sender import Sender, SendError
from edge.network.sendqueue import Outgoing, SendQueue
from edge.network.settings import NetworkConfig, PacsConfig, Peer
from edge.network.sr import BASIC_TEXT_SR, COMPREHENSIVE_SR, build_sr, encode, series_uid
from edge.network.verdict import Slice

PEER = Peer("PACS", "127.0.0.1", 104)


def item(key: str, group: str = "g1") -> Outgoing:
    return Outgoing(key=key, study="abc", group=group, sop_class_uid=COMPREHENSIVE_SR,
                    sop_instance_uid="1.2.3", created_at=f"2026-11-20T10:00:0{key[-1]}")


class FakePacs:
    """Fails while ``down``; records what it accepted."""

    def __init__(self) -> None:
        self.down = True
        self.accepted: list[str] = []

    def __call__(self, path, item, peer, network, pacs) -> int:
        if self.down:
            raise SendError(f"no connection to {peer} (PACS down, or unreachable from here)")
        self.accepted.append(path.read_bytes().decode())
        return 0


def one_sr_and_a_pacs_that_is_down(tmp_path):
    """A queue holding one SR, and a sender to a PACS that is down (retries 10 s to 40 s)."""
    queue = SendQueue(tmp_path)
    queue.open()
    queue.enqueue(item("k1"), b"the SR")
    pacs = FakePacs()
    config = PacsConfig(send_to="PACS@127.0.0.1:104", retry_initial=10.0, retry_max=40.0)
    return queue, pacs, config, Sender(queue, PEER, NetworkConfig(), config, send=pacs)


def test_the_queue_survives_a_restart_and_never_holds_a_key_twice(tmp_path):
    queue = SendQueue(tmp_path)
    queue.open()
    assert queue.enqueue(item("k1"), b"sr one")
    assert not queue.enqueue(item("k1"), b"sr one again")  # a replayed judgment
    (queue.folder / "orphan.dcm").write_bytes(b"a crash before its record")
    again = SendQueue(tmp_path)
    again.open()
    assert [i.key for i in again.items()] == ["k1"]
    assert not (again.folder / "orphan.dcm").exists()
    assert again.path_of(again.items()[0]).read_bytes() == b"sr one"


def test_a_newer_judgment_replaces_the_waiting_one(tmp_path):
    queue = SendQueue(tmp_path)
    queue.open()
    queue.enqueue(item("k1"), b"revision 1")
    queue.enqueue(item("k3", group="other"), b"another study")
    queue.enqueue(item("k2"), b"revision 2")
    assert [i.key for i in queue.items()] == ["k2", "k3"]
    assert not (queue.folder / "k1.dcm").exists()


def test_pacs_down_backs_off_then_delivers_once(tmp_path):
    queue, pacs, config, sender = one_sr_and_a_pacs_that_is_down(tmp_path)
    waits = []
    now = time.time()
    for _ in range(5):  # each attempt when it is due, the clock moved on by hand
        sender.send_due(now=now + 10 ** 6)
        (record,) = queue.items()
        waits.append(record.next_attempt - time.time())
    assert [round(w / 10) for w in waits] == [1, 2, 4, 4, 4]  # 10, 20, 40, 40, 40 s +-10%
    assert record.attempts == 5 and "PACS down" in record.last_error
    assert sender.send_due() > 0 and pacs.accepted == []  # not due yet: not tried
    pacs.down = False
    restarted = Sender(SendQueue(tmp_path), PEER, NetworkConfig(), config, send=pacs)
    restarted.send_due(now=now + 10 ** 6)
    assert pacs.accepted == ["the SR"] and queue.items() == []
    sent = [json.loads(line) for line in queue.sent_log.read_text().splitlines()]
    assert [(s["key"], s["attempts"], s["to"]) for s in sent] == [("k1", 6, str(PEER))]
    assert not queue.enqueue(item("k1"), b"the SR")  # sent already: never queued again
    restarted.send_due(now=now + 10 ** 6)
    assert pacs.accepted == ["the SR"]


# --- the SR ----------------------------------------------------------------------------

DOC = {"study_instance_uid": "1.2.3.4", "instances_hash": "ab" * 32, "revision": 2,
       "notice": "NOT FOR CLINICAL USE.", "verdict": "glioma",
       "verdict_reason": "4 of 10 slices ...",
       "counts": {"instances": 10, "confident": 9, "tumour_slices": 4},
       "probabilities": {"glioma": {"max": 0.99, "mean": 0.4},
                         "notumor": {"max": 0.97, "mean": 0.55}},
       "models": [{"name": "toy", "version": "1", "sha256": "f" * 64}],
       "suspicious": [{"sop_instance_uid": "1.2.3.4.5.1", "label": "glioma"}]}
SLICES = [Slice("a" * 64, "1.2.3.4.5.1", "1.2.3.4.5", None, "glioma", 0.99,
                {"glioma": 0.99}, False, sop_class_uid="1.2.840.10008.5.1.4.1.1.4")]


def header() -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PatientName, ds.PatientID, ds.StudyInstanceUID = "Doe^Jane", "PID-1", "1.2.3.4"
    ds.AccessionNumber = "ACC1"
    return ds


@pytest.mark.parametrize("sr_type, sop_class, value_types", [
    ("comprehensive", COMPREHENSIVE_SR, {"TEXT", "NUM", "IMAGE"}),
    ("basic", BASIC_TEXT_SR, {"TEXT", "IMAGE"}),
])
def test_the_sr_is_a_new_series_of_the_same_study(sr_type, sop_class, value_types):
    ds = build_sr(DOC, SLICES, header(), PacsConfig(sr_type=sr_type), predecessor="1.2.9")
    back = pydicom.dcmread(io.BytesIO(encode(ds)))
    assert back.SOPClassUID == sop_class and back.Modality == "SR"
    assert back.StudyInstanceUID == "1.2.3.4" and back.SeriesInstanceUID == series_uid("1.2.3.4")
    assert back.PatientID == "PID-1" and back.AccessionNumber == "ACC1"
    assert back.InstanceNumber == 2 and back.VerificationFlag == "UNVERIFIED"
    assert {item.ValueType for item in back.ContentSequence} == value_types
    texts = {item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue")
             for item in back.ContentSequence}
    assert texts["Verdict"] == "glioma" and texts["Notice"].startswith("NOT FOR CLINICAL USE")
    ref = back.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.9"
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5.1"
    again = build_sr(DOC, SLICES, header(), PacsConfig(sr_type=sr_type))
    assert again.SOPInstanceUID == ds.SOPInstanceUID  # the same judgment, the same instance


def _judged(revision: int, previous: str | None) -> tuple[Outgoing, bytes]:
    """A judgment of study 1.2.3.4 (instances_hash ``"%02d" * 32``) queued as
    ``NetworkServices._on_judged`` queues it: naming no predecessor (the one before, if any,
    was not known to have arrived when it was built)."""
    from edge.network.sr import instance_uid

    digest = f"{revision:02d}" * 32
    doc = {**DOC, "instances_hash": digest, "revision": revision,
           "previous_instances_hash": previous}
    ds = build_sr(doc, SLICES, header(), PacsConfig())
    return Outgoing(key=f"s-{digest[:16]}", study="s", group="s",
                    sop_class_uid=COMPREHENSIVE_SR, sop_instance_uid=instance_uid(
                        "1.2.3.4", digest), created_at=f"2026-12-07T10:00:0{revision}"), \
        encode(ds)


def _predecessors(data: bytes) -> list[str]:
    back = pydicom.dcmread(io.BytesIO(data))
    return [ref.ReferencedSOPInstanceUID for d in back.get("PredecessorDocumentsSequence", [])
            for series in d.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence]


def test_an_sr_judged_while_the_one_before_was_being_sent_names_it(tmp_path):
    """The study is judged again while the sender is sending its first SR: the new SR is
    built naming none (the first was not known to have arrived) and replaces the first in
    the queue; the PACS takes the first. The second must name it when it is sent, or the
    PACS holds two reports of one study with nothing saying which replaces which."""
    queue = SendQueue(tmp_path)
    queue.open()
    first, first_sr = _judged(1, None)
    second, second_sr = _judged(2, "01" * 32)
    queue.enqueue(first, first_sr)
    got: list[bytes] = []

    def pacs(path, item, peer, network, pacs_config):
        got.append(path.read_bytes())
        if item.key == first.key:  # the tracker, meanwhile
            assert not queue.was_sent(first.key)
            assert queue.enqueue(second, second_sr)
        return 0

    sender = Sender(queue, PEER, NetworkConfig(), PacsConfig(), send=pacs)
    sender.send_due()
    sender.send_due()
    assert queue.items() == [] and len(got) == 2 and _predecessors(got[0]) == []
    assert _predecessors(got[1]) == [first.sop_instance_uid]
    back = pydicom.dcmread(io.BytesIO(got[1]))
    assert back.SOPInstanceUID == second.sop_instance_uid and back.InstanceNumber == 2
    sent = [json.loads(line) for line in queue.sent_log.read_text().splitlines()]
    assert [(s["key"], s["group"], s["sop_class_uid"]) for s in sent] == [
        (first.key, "s", COMPREHENSIVE_SR), (second.key, "s", COMPREHENSIVE_SR)]


def test_an_sr_that_replaced_one_never_sent_names_the_last_the_pacs_took(tmp_path):
    """Revision 1 reached the PACS; revision 2 waited (the PACS down) and was replaced by
    revision 3, whose SR names revision 2 (its previous judgment) nowhere, as 2 never
    arrived: sent, it names revision 1, the report the PACS holds. A later restart reads
    that from ``sent.jsonl``, including a line written before lines had a group. An SR
    that names its predecessor already is sent as it is."""
    queue = SendQueue(tmp_path)
    queue.open()
    first, first_sr = _judged(1, None)
    old_line = {"key": first.key, "study": "s", "sop_instance_uid": first.sop_instance_uid,
                "to": str(PEER), "sent_at": "2026-12-01T10:00:00+00:00", "attempts": 1}
    queue.sent_log.write_text(json.dumps(old_line) + "\n")
    queue.enqueue(*_judged(2, "01" * 32))
    third, third_sr = _judged(3, "02" * 32)
    queue.enqueue(third, third_sr)
    got: list[bytes] = []

    def pacs(path, item, peer, network, pacs_config):
        got.append(path.read_bytes())
        return 0

    restarted = SendQueue(tmp_path)
    restarted.open()
    Sender(restarted, PEER, NetworkConfig(), PacsConfig(), send=pacs).send_due()
    assert len(got) == 1 and _predecessors(got[0]) == [first.sop_instance_uid]

    named = build_sr({**DOC, "instances_hash": "04" * 32, "revision": 4}, SLICES, header(),
                     PacsConfig(), predecessor=third.sop_instance_uid)
    fourth = replace(third, key="s-" + "04" * 8, sop_instance_uid=str(named.SOPInstanceUID))
    queued = encode(named)
    restarted.enqueue(fourth, queued)
    Sender(restarted, PEER, NetworkConfig(), PacsConfig(), send=pacs).send_due()
    assert got[1] == queued  # named already: not rewritten
    assert (restarted.folder / "sent.jsonl").read_text().count("\n") == 3


def test_an_sr_never_mixes_studies():
    other = header()
    other.StudyInstanceUID = "9.9.9"
    with pytest.raises(ValueError, match="another study"):
        build_sr(DOC, SLICES, other, PacsConfig())


def test_a_clock_set_back_does_not_hold_an_sr_back(tmp_path):
    """An attempt failed while the clock was a day ahead; the clock is corrected: the SR is
    tried again within ``retry_max``, not a day later."""
    queue, pacs, config, sender = one_sr_and_a_pacs_that_is_down(tmp_path)
    sender.send_due()  # fails: the PACS is down
    (record,) = queue.items()
    path = queue.folder / "k1.json"
    data = json.loads(path.read_text())
    data["next_attempt"] = record.next_attempt + 86400  # written by a clock a day ahead
    path.write_text(json.dumps(data))
    pacs.down = False
    wait = sender.send_due()
    assert wait is None or wait <= 40.0 * 1.1, wait
    if pacs.accepted == []:  # scheduled again within retry_max of the corrected clock
        sender.send_due(now=time.time() + 40.0 * 1.1)
    assert pacs.accepted == ["the SR"] and queue.items() == []


def test_damaged_queue_records_are_rebuilt_or_set_aside_never_silently_dropped(tmp_path,
                                                                              caplog):
    """A record damaged on disk (a torn sector, a hand edit) must neither drop its SR
    silently (never sent, never re-queued: its name is taken) nor stop the SRs queued
    behind it. A record is rebuilt from its SR; an SR that cannot be read either is moved
    to ``damaged/`` with an error that says so."""
    import logging

    from edge.dicom import uid_hash

    caplog.set_level(logging.INFO)
    queue = SendQueue(tmp_path)
    queue.open()
    sr = encode(build_sr(DOC, SLICES, header(), PacsConfig()))
    tag = uid_hash(DOC["study_instance_uid"])
    for key, group in (("k1", tag), ("k2", "g2"), ("k3", "g3"), ("k4", "g4")):
        queue.enqueue(Outgoing(key=key, study=group, group=group, sop_class_uid=COMPREHENSIVE_SR,
                               sop_instance_uid="1.2.3", created_at=f"2026-11-20T10:00:0{key[-1]}"),
                      sr if key != "k4" else b"the SR of the last study")
    (queue.folder / "k1.json").write_bytes(b"\x00\x00garbage")  # unreadable
    record = json.loads((queue.folder / "k2.json").read_text())
    (queue.folder / "k2.json").write_text(json.dumps(dict(record, attempts="x",
                                                          created_at=None)))  # wrong types
    (queue.folder / "k3.json").write_text("{}")
    (queue.folder / "k3.dcm").write_bytes(b"not DICOM")  # and its SR unreadable too
    accepted: list[str] = []
    restarted = SendQueue(tmp_path)
    restarted.open()
    sender = Sender(restarted, PEER, NetworkConfig(), PacsConfig(send_to="PACS@h:104"),
                    send=lambda path, *a: accepted.append(path.name) or 0)
    sender.send_due()
    assert sorted(accepted) == ["k1.dcm", "k2.dcm", "k4.dcm"]
    assert restarted.items() == []
    sent = {json.loads(line)["key"]: json.loads(line) for line in
            restarted.sent_log.read_text().splitlines()}
    assert sorted(sent) == ["k1", "k2", "k4"] and sent["k1"]["study"] == tag
    assert sent["k1"]["sop_instance_uid"] == str(pydicom.dcmread(io.BytesIO(sr)).SOPInstanceUID)
    aside = sorted(p.name for p in (restarted.folder / "damaged").iterdir())
    assert aside == ["k3.dcm", "k3.json"]
    # the same key damaged again later: set aside beside the first pair, replacing nothing
    (restarted.folder / "k3.json").write_text("{}")
    (restarted.folder / "k3.dcm").write_bytes(b"not DICOM either")
    assert restarted.items() == []
    aside = sorted(p.name for p in (restarted.folder / "damaged").iterdir())
    assert aside == ["k3.dcm", "k3.json", "k3~again.dcm", "k3~again.json"]
    assert (restarted.folder / "damaged" / "k3.dcm").read_bytes() == b"not DICOM"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("rebuilt" in m for m in messages) == 2
    assert any("k3" in r.getMessage() and "damaged" in r.getMessage()
               and r.levelno == logging.ERROR for r in caplog.records)


def test_a_damaged_record_found_while_enqueueing_is_repaired_without_a_deadlock(tmp_path):
    queue = SendQueue(tmp_path)
    queue.open()
    sr = encode(build_sr(DOC, SLICES, header(), PacsConfig()))
    queue.enqueue(item("k1", group="g1"), sr)
    (queue.folder / "k1.json").write_text("{")
    done = []
    import threading

    worker = threading.Thread(target=lambda: done.append(queue.enqueue(item("k2", group="g2"),
                                                                       b"sr two")), daemon=True)
    worker.start()
    worker.join(10)
    assert done == [True] and sorted(i.key for i in queue.items()) == ["k1", "k2"]


def test_queueing_costs_do_not_grow_with_the_queue(tmp_path, monkeypatch):
    """A PACS down while thousands of studies are judged (a migration, a long outage): each
    new SR must not re-read every record and every line of ``sent.jsonl`` (that made 1,500
    SRs take 47 s to queue, quadratic). Counted in file reads, not timed."""
    from edge.network import sendqueue

    queue = SendQueue(tmp_path)
    queue.open()
    for n in range(120):
        queue.enqueue(item(f"q{n:04d}", group=f"g{n}"), b"sr")
    for n in range(120):
        queue.delivered(item(f"s{n:04d}", group=f"s{n}"), PEER)
    reads = {"records": 0, "sent bytes": 0}
    real_read_json, real_open = sendqueue.read_json_if_there, open

    def read_json(path):
        reads["records"] += 1
        return real_read_json(path)


    monkeypatch.setattr(sendqueue, "read_json_if_there", read_json)
    monkeypatch.setattr(sendqueue, "open", raising=False,
                        value=lambda *a, **k: CountedFile(real_open(*a, **k), reads, "sent bytes"))
    queue.was_sent("warm-up")  # a queue that has been used: its caches are filled
    queue.items()
    reads.update({"records": 0, "sent bytes": 0})
    for n in range(10):
        assert queue.enqueue(item(f"r{n:04d}", group=f"r{n}"), b"sr")
    assert not queue.enqueue(item("s0001", group="s1"), b"sent already")
    assert reads["records"] <= 20, reads
    assert reads["sent bytes"] <= 2000, reads
    assert len(queue.items()) == 130


def test_a_pacs_that_is_down_is_tried_once_per_backoff_not_once_per_sr(tmp_path, caplog):
    """800 studies judged while the PACS was unreachable wrote 4,326 warnings in 30 s (each
    SR tried and logged on its own, each paying the connection timeout when the PACS's
    network drops packets). One failed connection postpones every SR waiting for it."""
    import logging

    caplog.set_level(logging.INFO)
    queue = SendQueue(tmp_path)
    queue.open()
    for n in range(50):
        queue.enqueue(item(f"k{n:03d}", group=f"g{n}"), b"sr")
    calls = []

    def unreachable(path, item, peer, network, pacs):
        calls.append(item.key)
        raise SendError(f"no connection to {peer} (timed out: the PACS is down or "
                        "unreachable from here)", peer_down=True)

    config = PacsConfig(send_to="PACS@127.0.0.1:104", retry_initial=10.0, retry_max=40.0)
    sender = Sender(queue, PEER, NetworkConfig(), config, send=unreachable)
    sender.send_due()
    assert calls == ["k000"]
    records = queue.items()
    assert len(records) == 50
    assert all(r.next_attempt >= time.time() + 8.0 for r in records)
    assert sum(r.attempts for r in records) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2 and "49 other SR(s) wait" in warnings[1], warnings
    sender.send_due(now=time.time() + 100)  # still down: once more, not 50 times
    assert calls == ["k000", "k000"]
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2
    accepted = []
    back = Sender(queue, PEER, NetworkConfig(), config,
                  send=lambda path, item, *a: accepted.append(item.key) or 0)
    back.send_due(now=time.time() + 1000)  # up again: everything goes in one pass
    assert len(accepted) == 50 and queue.items() == []


def test_an_sr_the_pacs_refuses_does_not_hold_back_the_others(tmp_path):
    """A failure status is about that SR: the others are still tried in the same pass."""
    queue = SendQueue(tmp_path)
    queue.open()
    for n in range(3):
        queue.enqueue(item(f"k{n}", group=f"g{n}"), b"sr")
    calls = []

    def picky(path, item, *args):
        calls.append(item.key)
        if item.key == "k0":
            raise SendError("PACS refused the SR with status 0xA900")
        return 0

    Sender(queue, PEER, NetworkConfig(), PacsConfig(send_to="PACS@h:104"),
           send=picky).send_due()
    assert calls == ["k0", "k1", "k2"] and [i.key for i in queue.items()] == ["k0"]


def test_failure_statuses_are_explained_with_what_to_do():
    from edge.network.sender import describe_store_status

    assert "out of resources" in describe_store_status(0xA701)
    assert "0xA900" in describe_store_status(0xA900) and "sr_type" in describe_store_status(
        0xA900)
    assert "cannot understand" in describe_store_status(0xC123)
    assert "not authorized" in describe_store_status(0x0124)
    assert describe_store_status(0xFE00) == "status 0xFE00; it is tried again"


def _one_sr_queued(folder: Path, sop_instance_uid: str) -> SendQueue:
    """A send queue in ``folder`` holding one Basic Text SR."""
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, sop_instance_uid
    ds.Modality = "SR"
    queue = SendQueue(folder)
    queue.open()
    queue.enqueue(Outgoing(key="k1", study="abc", group="g1", sop_class_uid=BASIC_TEXT_SR,
                           sop_instance_uid=sop_instance_uid,
                           created_at="2026-12-05T05:00:00"), encode(ds))
    return queue


@pytest.mark.parametrize("code, words", [(0xA900, "does not match its SOP class"),
                                         (0xC001, "cannot understand")])
def test_a_real_pacs_refusing_an_sr_is_logged_with_its_meaning_and_the_sr_stays(
        tmp_path, caplog, code, words):
    """pynetdicom as the PACS answers every C-STORE with a failure status: the SR is kept,
    and the log names the status and what it means."""
    import logging
    import socket

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import BasicTextSRStorage

    caplog.set_level(logging.WARNING)
    scp = AE(ae_title="PACS")
    scp.add_supported_context(BasicTextSRStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, lambda event: code)])
    try:
        queue = _one_sr_queued(tmp_path, "1.2.826.0.1.3680043.8.498.1")
        peer = Peer("PACS", "127.0.0.1", port)
        config = PacsConfig(send_to=f"PACS@127.0.0.1:{port}", timeout=5.0)
        sender = Sender(queue, peer, NetworkConfig(), config)
        sender.send_due()
    finally:
        server.shutdown()
    [kept] = queue.items()
    assert kept.attempts == 1 and f"0x{code:04X}" in kept.last_error and words in kept.last_error
    assert kept.refused  # both statuses last until the PACS is changed
    assert f"0x{code:04X}" in caplog.text and words in caplog.text
    assert "Traceback" not in caplog.text


def test_a_queue_folder_that_cannot_be_written_is_said_plainly_without_a_traceback(
        tmp_path, caplog, monkeypatch):
    """Retry bookkeeping that cannot be written (a full disk, a folder owned by someone
    else) logged a traceback every minute; the SR itself stays queued on disk."""
    import logging

    import edge.network.sendqueue as sendqueue

    caplog.set_level(logging.INFO)
    queue = SendQueue(tmp_path)
    queue.open()
    queue.enqueue(item("k1"), b"sr")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(sendqueue, "write_json_atomic", refuse)
    sender = Sender(queue, PEER, NetworkConfig(), PacsConfig(send_to="PACS@h:104"),
                    send=FakePacs())
    sender.start()
    try:
        deadline = time.time() + 10
        while not any("SR queue" in r.getMessage() for r in caplog.records) \
                and time.time() < deadline:
            time.sleep(0.05)
    finally:
        sender.stop(5.0)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    [said] = [r for r in caplog.records if "SR queue" in r.getMessage()]
    assert said.levelname == "ERROR" and "Permission denied" in said.getMessage()
    assert "owner" in said.getMessage()
    assert [i.key for i in SendQueue(tmp_path).items()] == ["k1"]  # still queued


def test_a_refusal_that_lasts_waits_retry_max_is_an_error_once_and_check_lists_it(
        tmp_path, caplog):
    """A PACS that answers 0xA900 (or 0x0124: this box not allowed) will answer the same
    until someone changes it: trying again in 30 s cannot help, so the SR waits retry_max;
    the first refusal is an error naming the fix, the next ones a reminder; `edge-agent
    check` lists such SRs apart from those merely waiting. A passing failure (0xA700) backs
    off as before."""
    import logging

    from edge.checks import _check_sr_queue
    from edge.network.sender import describe_store_status, status_lasts

    assert status_lasts(0xA900) and status_lasts(0x0124) and status_lasts(0xC001)
    assert not status_lasts(0xA700) and not status_lasts(0x0110) and not status_lasts(0xFE00)
    caplog.set_level(logging.INFO)
    queue = SendQueue(tmp_path)
    queue.open()
    queue.enqueue(item("k1", group="g1"), b"sr")
    queue.enqueue(item("k2", group="g2"), b"sr")
    config = PacsConfig(send_to="PACS@127.0.0.1:104", retry_initial=10.0, retry_max=600.0)

    def pacs(path, item, *args):
        code = 0xA900 if item.key == "k1" else 0xA700
        raise SendError(f"{PEER} refused the SR with {describe_store_status(code)}",
                        lasting=status_lasts(code))

    sender = Sender(queue, PEER, NetworkConfig(), config, send=pacs)
    start = time.time()
    sender.send_due(now=start)
    refused, passing = queue.items()
    assert refused.refused and not passing.refused
    assert 540 <= refused.next_attempt - start <= 661  # retry_max +-10 %
    assert passing.next_attempt - start <= 12  # retry_initial +-10 %
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "will refuse it again until that is changed" in errors[0].message
    caplog.clear()
    sender.send_due(now=start + 700)  # both due again: a reminder, not another error
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "attempt 2" in caplog.text
    lines = []
    _check_sr_queue(tmp_path, str(PEER), lambda w, d: lines.append(("ok", d)),
                    lambda w, d: lines.append(("warn", d)))
    (ok_line, warn_line) = lines
    assert ok_line[0] == "ok" and "1 SR(s) waiting" in ok_line[1] and "0xA700" in ok_line[1]
    assert warn_line[0] == "warn" and "1 SR(s) refused" in warn_line[1]
    assert "0xA900" in warn_line[1] and "sr_type" in warn_line[1]
    record = json.loads((queue.folder / "k1.json").read_text())
    record["refused"] = "yes"  # a damaged field: rebuilt from the SR, never dropped
    (queue.folder / "k1.json").write_text(json.dumps(record))
    assert Outgoing.from_dict({**record, "refused": False}).refused is False
    with pytest.raises(ValueError, match="refused is not true or false"):
        Outgoing.from_dict(record)


def test_check_says_when_no_sr_waits_and_counts_those_set_aside(tmp_path):
    from edge.checks import _check_sr_queue

    lines = []
    _check_sr_queue(tmp_path, "PACS@h:104", lambda w, d: lines.append(("ok", d)),
                    lambda w, d: lines.append(("warn", d)))
    assert lines == [("ok", "no SR waiting for PACS@h:104")]
    damaged = tmp_path / ".state" / "outgoing" / "damaged"
    damaged.mkdir(parents=True)
    (damaged / "k9.dcm").write_bytes(b"x")
    lines.clear()
    _check_sr_queue(tmp_path, "PACS@h:104", lambda w, d: lines.append(("ok", d)),
                    lambda w, d: lines.append(("warn", d)))
    assert lines[0][0] == "warn" and "1 SR(s)" in lines[0][1] and "will not be sent" in lines[0][1]


def test_the_front_page_says_which_srs_do_not_reach_the_pacs_and_forgets_them_once_sent(
        tmp_path):
    """A radiographer reads index.html, not the journal: an SR the PACS refuses, or one that
    has failed to reach it, is said there in plain words (and escaped); one only queued is
    not; once the PACS takes them the notice goes at the next rendering."""
    from edge import pages
    from edge.index import DailyIndex

    queue = SendQueue(tmp_path)
    queue.open()
    for key in ("k1", "k2", "k3"):
        queue.enqueue(item(key, group=key), b"sr")
    assert queue.state().page_lines(str(PEER)) == []  # queued, not tried yet: nothing to say
    config = PacsConfig(send_to="PACS@127.0.0.1:104", retry_initial=10.0, retry_max=600.0)
    answers = {"k1": SendError(f"{PEER} refused the SR with status 0x0124: this box is not "
                               "authorized <here>", lasting=True),
               "k2": SendError(f"no connection to {PEER}", peer_down=False)}

    def pacs(path, it, *args):
        if it.key in answers:
            raise answers[it.key]
        return 0

    Sender(queue, PEER, NetworkConfig(), config, send=pacs).send_due()
    state = queue.state()
    assert (state.waiting, state.failing, state.refused, state.damaged) == (1, 1, 1, 0)
    lines = state.page_lines(str(PEER))
    assert len(lines) == 2
    assert "refuses 1 structured report(s)" in lines[0] and "0x0124" in lines[0]
    assert "1 structured report(s) have not reached the PACS" in lines[1]
    assert "no connection" in lines[1]

    index = DailyIndex(tmp_path, alerts=lambda: queue.state().page_lines(str(PEER)))
    assert index.alerts_changed()  # never written by this process
    index.render()
    page = (tmp_path / "index.html").read_text()
    assert "Needs attention" in page and "0x0124" in page and "as of " in page
    assert "&lt;here&gt;" in page and "<here>" not in page
    assert not index.alerts_changed()
    answers.clear()  # the PACS now takes both
    Sender(queue, PEER, NetworkConfig(), config, send=pacs).send_due(now=time.time() + 700)
    assert queue.items() == [] and index.alerts_changed()
    index.render()
    assert "Needs attention" not in (tmp_path / "index.html").read_text()

    damaged = queue.folder / "damaged"
    damaged.mkdir()
    (damaged / "k9.dcm").write_bytes(b"x")
    assert "could not be read back" in queue.state().page_lines(str(PEER))[0]
    assert "Needs attention" not in pages.index_page([("2026-12-05", 3)]).decode()


@pytest.mark.parametrize("where", ["in its association answer", "in its C-STORE answer"])
def test_a_pacs_that_stops_inside_a_pdu_does_not_hang_the_sender(tmp_path, where):
    """A PACS that sends the beginning of a PDU and then nothing, its connection left open (a
    PACS hung mid-answer, a half-open link): pynetdicom clears the socket's timeout once
    connected, so its reader waited for ever, and so did the send (the SR never tried
    again until a restart, and ``watch`` never exited after SIGTERM: the reader is not a
    daemon thread). The attempt now fails after [pacs] timeout and the SR stays queued."""
    import socket
    import struct
    import threading

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import BasicTextSRStorage

    held: list[socket.socket] = []
    release = threading.Event()
    server = listener = None
    partial = struct.pack(">BBL", 0x02, 0, 500) + bytes(20)  # 26 of an A-ASSOCIATE-AC's 506
    if where == "in its association answer":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        def pacs() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                held.append(conn)
                if conn.recv(6):  # an association request, not the sender's port probe
                    conn.sendall(partial)

        threading.Thread(target=pacs, daemon=True).start()
    else:
        def on_store(event):  # a P-DATA answer begun, never finished
            sock = event.assoc.dul.socket.socket
            held.append(sock)
            sock.sendall(struct.pack(">BBL", 0x04, 0, 500) + bytes(20))
            release.wait(60)
            return 0

        scp = AE(ae_title="PACS")
        scp.add_supported_context(BasicTextSRStorage, ["1.2.840.10008.1.2.1"])
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = scp.start_server(("127.0.0.1", port), block=False,
                                  evt_handlers=[(evt.EVT_C_STORE, on_store)])
    queue = _one_sr_queued(tmp_path, "1.2.826.0.1.3680043.8.498.2")
    config = PacsConfig(send_to=f"PACS@127.0.0.1:{port}", timeout=1.0)
    sender = Sender(queue, Peer("PACS", "127.0.0.1", port), NetworkConfig(), config)
    before = {t for t in threading.enumerate() if not t.daemon}
    attempt = threading.Thread(target=sender.send_due, daemon=True)
    started = time.monotonic()
    attempt.start()
    attempt.join(15)
    waited = time.monotonic() - started
    try:
        left = {t for t in threading.enumerate() if not t.daemon} - before
        deadline = time.monotonic() + 5
        while left and time.monotonic() < deadline:  # the reader ends just after the send
            time.sleep(0.1)
            left = {t for t in left if t.is_alive()}
    finally:  # without the bound, closing the PACS's side is what ends the wait
        release.set()
        for conn in held:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        if listener is not None:
            listener.close()
        if server is not None:
            server.shutdown()
        attempt.join(30)
    assert waited < 10, f"the send waited {waited:.0f}s on a PACS stalled inside a PDU"
    assert not left, f"threads that would keep the process alive: {left}"
    [kept] = queue.items()
    assert kept.attempts == 1 and kept.last_error
