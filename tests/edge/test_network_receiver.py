"""The DICOM receiver (edge.network.receiver) with pynetdicom clients: no model needed."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from agent_helpers import make_dicom, pydicom_file
from network_helpers import (
    PATIENT_ID,
    echo_with_pynetdicom,
    free_port,
    make_study,
    send_with_pynetdicom,
    wait_for,
)

from edge.errors import ConfigError, ReceiverUnavailableError
from edge.network.receiver import OUT_OF_RESOURCES, DicomReceiver, accepted_transfer_syntaxes
from edge.network.settings import NetworkConfig

pytest.importorskip("pynetdicom")


@pytest.fixture()
def receiver(tmp_path):
    """Start a receiver on a free port; yields (receiver, inbox, received paths)."""
    started: list[DicomReceiver] = []
    received: list[str] = []

    def start(**settings) -> tuple[DicomReceiver, Path, list[str]]:
        inbox = tmp_path / "inbox"
        inbox.mkdir(exist_ok=True)
        config = NetworkConfig(dicom_port=free_port(), **settings)
        rx = DicomReceiver(config, inbox, received.append)
        rx.start()
        started.append(rx)
        return rx, inbox, received

    yield start
    for rx in started:
        rx.stop()


def inbox_files(inbox: Path) -> list[Path]:
    """The inbox's files, but for the second links the receiver keeps to instances whose
    answer its sender has not confirmed yet (``receiver.in_doubt``)."""
    from edge.network.receiver import in_doubt

    kept = set(in_doubt(inbox))
    return sorted(p for p in inbox.iterdir() if str(p) not in kept)


def test_echo_and_a_multi_slice_study_land_whole_in_the_inbox(receiver, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    rx, inbox, received = receiver()
    assert echo_with_pynetdicom(rx.port) == (True, 0x0000)
    study, paths = make_study(tmp_path / "study", [0.1, 0.6] * 6)
    statuses = send_with_pynetdicom(rx.port, paths)
    assert statuses == [0x0000] * 12
    files = inbox_files(inbox)
    assert len(files) == 12 and sorted(received) == [str(p) for p in files]
    assert all(p.suffix == ".dcm" and not p.name.startswith(".") for p in files)
    sent = {pydicom.dcmread(str(p)).SOPInstanceUID: p for p in paths}
    for path in files:
        ds = pydicom.dcmread(str(path))
        assert ds.StudyInstanceUID == study
        original = pydicom.dcmread(str(sent[ds.SOPInstanceUID]))
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert PATIENT_ID not in path.name and "SECRETNAME" not in path.name
    assert rx.counts["instances"] == 12 and rx.counts["failed"] == 0
    assert "12 instance(s) stored" in caplog.text and "SCANNER@127.0.0.1" in caplog.text
    assert "SECRETNAME" not in caplog.text and PATIENT_ID not in caplog.text
    assert all(uid not in caplog.text for uid in sent)  # UIDs are logged as hashes


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_transfer_syntaxes_arrive_as_sent(receiver, name):
    source = pydicom_file(name)
    syntax = str(pydicom.dcmread(str(source)).file_meta.TransferSyntaxUID)
    if syntax not in accepted_transfer_syntaxes():
        pytest.skip(f"no decoder for {name} here (the dicom-codecs extra)")
    rx, inbox, _ = receiver()
    assert send_with_pynetdicom(rx.port, [source]) == [0x0000]
    (path,) = inbox_files(inbox)
    ds = pydicom.dcmread(str(path))
    assert str(ds.file_meta.TransferSyntaxUID) == syntax  # stored as sent, not re-encoded
    reference = pydicom.dcmread(str(pydicom_file("MR_small.dcm"))).pixel_array
    assert np.array_equal(ds.pixel_array, reference)


def test_only_decodable_compressed_syntaxes_are_offered(monkeypatch, receiver, tmp_path):
    from edge import dicom_compat

    j2k = "1.2.840.10008.1.2.4.90"
    real = dicom_compat.decoder_problem
    monkeypatch.setattr(dicom_compat, "decoder_problem",
                        lambda uid: "no decoder" if str(uid) == j2k else real(uid))
    assert j2k not in accepted_transfer_syntaxes()
    assert accepted_transfer_syntaxes()[:2] == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    rx, _, _ = receiver()
    from pynetdicom import AE

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", [j2k])
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="NEUROEDGE")
    try:  # the sender learns at negotiation that it must send uncompressed
        assert assoc.is_established
        assert [cx.transfer_syntax[0] for cx in assoc.accepted_contexts] == [
            "1.2.840.10008.1.2.1"]
    finally:
        assoc.release()


def test_a_refused_caller_is_logged_with_its_ae_title(receiver, caplog):
    caplog.set_level(logging.INFO)
    rx, inbox, _ = receiver(allowed_calling_aets=("SCANNER",))
    assert echo_with_pynetdicom(rx.port, calling="INTRUDER") == (False, None)
    assert echo_with_pynetdicom(rx.port, calling="SCANNER") == (True, 0x0000)
    refused = [r for r in caplog.records if "refused a DICOM association" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING
    assert "INTRUDER@127.0.0.1" in refused[0].getMessage()
    assert "allowed_calling_aets" in refused[0].getMessage()
    assert rx.counts["refused"] == 1 and not inbox_files(inbox)


def test_a_failed_store_is_not_acknowledged_and_says_who_sent_it(receiver, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rx, inbox, received = receiver(min_free_mb=10 ** 9)  # no disk is that free
    _, paths = make_study(tmp_path / "study", [0.5, 0.5])
    assert send_with_pynetdicom(rx.port, paths) == [OUT_OF_RESOURCES] * 2
    assert not inbox_files(inbox) and not received  # nothing half-written is left behind
    failures = [r.getMessage() for r in caplog.records if "failed to store" in r.getMessage()]
    assert len(failures) == 2 and all("SCANNER@127.0.0.1" in m for m in failures)
    assert "min_free_mb" in failures[0] and "SECRETNAME" not in caplog.text
    assert rx.counts["failed"] == 2


def test_leftovers_of_an_interrupted_transfer_are_removed_at_start(receiver, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / ".neuroedge-0123456789abcdef.tmp").write_bytes(b"half an instance")
    (inbox / ".someone-elses.tmp").write_bytes(b"not ours")
    receiver()
    assert sorted(p.name for p in inbox.iterdir()) == [".someone-elses.tmp"]


def test_a_port_in_use_and_a_privileged_port_are_clear_errors(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        port = holder.getsockname()[1]
        rx = DicomReceiver(NetworkConfig(dicom_port=port), inbox, lambda p: None)
        with pytest.raises(ReceiverUnavailableError, match="in use by another program"):
            rx.start()
    if os.geteuid() != 0:
        rx = DicomReceiver(NetworkConfig(dicom_port=104), inbox, lambda p: None)
        with pytest.raises(ConfigError, match="CAP_NET_BIND_SERVICE"):
            rx.start()
    # a failed start leaves nothing patched: another receiver can start in this process
    ok = DicomReceiver(NetworkConfig(dicom_port=free_port()), inbox, lambda p: None)
    ok.start()
    ok.stop()


_CLIENT = """
import sys
sys.path.insert(0, sys.argv[3])
from network_helpers import send_with_pynetdicom
from pathlib import Path
print(send_with_pynetdicom(int(sys.argv[1]), [Path(sys.argv[2])]))
"""


def test_a_large_instance_is_streamed_to_disk_not_held_in_memory(receiver, tmp_path):
    """40 MB arrive while the receiving process allocates a small fraction of that."""
    big = make_dicom(tmp_path / "big.dcm", np.random.default_rng(0).integers(
        0, 4000, (10, 1024, 2048), dtype=np.uint16), frames=10)
    size = big.stat().st_size
    assert size > 40e6
    rx, inbox, _ = receiver()
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        run = subprocess.run([sys.executable, "-c", _CLIENT, str(rx.port), str(big),
                              str(Path(__file__).parent)], capture_output=True, text=True,
                             timeout=300)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run.returncode == 0 and run.stdout.strip() == "[0]", run.stderr[-2000:]
    (path,) = inbox_files(inbox)
    assert path.stat().st_size >= size - 1000  # the whole instance (its meta may differ)
    assert peak < size / 8, f"peak {peak / 1e6:.1f} MB traced for a {size / 1e6:.0f} MB instance"
    assert time.monotonic() - t0 < 300


def test_a_burst_of_associations_is_bounded(receiver, tmp_path, caplog):
    """More simultaneous senders than [network] max_associations: never more than that many
    are open at once, the others are refused and logged, and as senders do, they try again
    later: every instance arrives."""
    import threading

    from pynetdicom import AE

    caplog.set_level(logging.INFO)
    rx, inbox, _ = receiver(max_associations=2)
    _, paths = make_study(tmp_path / "study", [0.5] * 40)
    datasets = [pydicom.dcmread(str(p)) for p in paths]
    start, lock = threading.Barrier(4), threading.Lock()
    state = {"open": 0, "most": 0, "refused": 0}
    codes: list[int] = []

    def sender(part: int) -> None:
        ae = AE(ae_title=f"SENDER{part}")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])
        start.wait()
        for _ in range(100):
            assoc = ae.associate("127.0.0.1", rx.port, ae_title="NEUROEDGE")
            if assoc.is_established:
                break
            with lock:
                state["refused"] += 1
            time.sleep(0.2)  # refused: the sender retries later
        else:
            return
        with lock:
            state["open"] += 1
            state["most"] = max(state["most"], state["open"])
        got = [int(assoc.send_c_store(ds).Status) for ds in datasets[part::4]]
        time.sleep(0.5)  # hold the association while the others try
        with lock:
            state["open"] -= 1
            codes.extend(got)
        assoc.release()

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == [0] * 40 and len(inbox_files(inbox)) == 40
    assert state["most"] <= 2 and state["refused"] >= 2
    assert rx.counts["refused"] == state["refused"]
    assert caplog.text.count("max_associations (2) are already open") == state["refused"]


def test_a_silent_connection_is_closed_and_frees_its_slot(receiver):
    """A TCP connection that never asks for an association is closed after [network]
    acse_timeout, and the one slot it held serves a real caller again."""
    rx, _, _ = receiver(max_associations=1, acse_timeout=1)
    silent = socket.create_connection(("127.0.0.1", rx.port), timeout=10)
    try:
        started = time.monotonic()
        silent.settimeout(10)
        try:
            closed = silent.recv(1) == b""
        except ConnectionResetError:
            closed = True
        waited = time.monotonic() - started
    finally:
        silent.close()
    assert closed and 0.5 < waited < 5, waited
    assert echo_with_pynetdicom(rx.port) == (True, 0)


def test_a_bad_acse_timeout_is_refused():
    from edge.config import AgentConfig

    with pytest.raises(ConfigError, match="acse_timeout.*between 1 and 300"):
        AgentConfig().override("network", acse_timeout=0.1)


# --- a disk that fills, a folder that cannot be written, a transfer given up (net probe) ---


def _spool_names(inbox: Path) -> list[str]:
    return sorted(p.name for p in inbox.iterdir() if p.name.startswith(".neuroedge-"))


@pytest.mark.parametrize("fault", ["full during the transfer", "cannot create"])
def test_a_disk_that_fails_during_a_transfer_answers_a700_and_keeps_nothing(
        receiver, tmp_path, monkeypatch, caplog, fault):
    """The write fails in the middle of an instance (ENOSPC) or before its first byte (the
    inbox cannot be written): the sender gets Out of Resources, the reason is logged once
    with the caller and no traceback, no partial file stays to keep the disk full, and the
    same association stores the next instance once the disk has room again."""
    import errno

    from edge.network import receiver as receiver_module

    caplog.set_level(logging.INFO)
    rx, inbox, received = receiver()
    big = make_dicom(tmp_path / "big.dcm", np.random.default_rng(1).integers(
        0, 4000, (1024, 1024), dtype=np.uint16))
    _, (small,) = make_study(tmp_path / "study", [0.5])
    state = {"full": True, "written": 0}
    real_fdopen, real_create = os.fdopen, receiver_module.create_temp

    class FillingDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            state["written"] += len(data)
            if state["full"] and state["written"] > 300_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    def create_temp(folder, *args):
        if state["full"] and fault == "cannot create":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_create(folder, *args)

    monkeypatch.setattr(receiver_module.os, "fdopen",
                        lambda *a, **k: FillingDisk(real_fdopen(*a, **k)))
    monkeypatch.setattr(receiver_module, "create_temp", create_temp)

    def second(path, status):
        state["full"] = False  # the sender retries once the disk has room

    statuses = send_with_pynetdicom(rx.port, [big, small], on_status=second)
    assert statuses == [OUT_OF_RESOURCES, 0x0000]
    assert len(received) == 1 and _spool_names(inbox) == []
    assert [p.name for p in inbox_files(inbox)] == [Path(received[0]).name]
    failures = [r for r in caplog.records if "failed to store" in r.getMessage()]
    assert len(failures) == 1 and "SCANNER@127.0.0.1" in failures[0].getMessage()
    assert ("No space left on device" if fault.startswith("full") else "Permission denied") \
        in failures[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert rx.counts["failed"] == 1 and rx.counts["instances"] == 1


def _send_part_of_an_instance(port: int, path: Path, pdus: int):
    """Open an association and send the first ``pdus`` P-DATA of a C-STORE, then stop:
    the association stays open, the instance half sent (returns the association)."""
    from pynetdicom import AE
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    ds = pydicom.dcmread(str(path))
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(str(ds.SOPClassUID), ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="NEUROEDGE")
    assert assoc.is_established
    req = C_STORE()
    req.MessageID, req.Priority = 1, 2
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    req.DataSet = io.BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    context = assoc.accepted_contexts[0].context_id
    for n, pdu in enumerate(message.encode_msg(context, 16384)):
        if n >= pdus:
            break
        assoc.dul.send_pdu(pdu)
    return assoc


@pytest.mark.parametrize("how", ["abort", "connection lost"])
def test_a_transfer_given_up_leaves_no_partial_file(receiver, tmp_path, how):
    """A sender that aborts (or whose connection drops) in the middle of an instance: its
    partial file is removed when the association ends, not an hour later; a flaky link
    that retries a large instance must not fill the disk with copies of its first half."""
    rx, inbox, received = receiver()
    big = make_dicom(tmp_path / "big.dcm", np.random.default_rng(2).integers(
        0, 4000, (1024, 1024), dtype=np.uint16))
    for _ in range(3):  # a flaky link: the same instance tried again and again
        assoc = _send_part_of_an_instance(rx.port, big, pdus=20)
        wait_for(lambda: [p for p in inbox.iterdir() if p.stat().st_size > 100_000], 10)
        if how == "abort":
            assoc.abort()
        else:  # the socket closes under the association, no A-ABORT sent
            assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
            assoc.dul.socket.socket.close()
            assoc.abort()
        wait_for(lambda: not _spool_names(inbox), 10)
    assert not received and not inbox_files(inbox)
    assert send_with_pynetdicom(rx.port, [big]) == [0x0000]  # and it still receives


@pytest.mark.parametrize("payload", [b"", b"\x08\x00\x16\x00"], ids=["empty", "truncated"])
def test_an_empty_or_truncated_data_set_is_kept_not_lost(receiver, tmp_path, payload):
    """A C-STORE whose data set is zero bytes long (one last fragment with nothing in it)
    or ends inside its first element: a sender's bug, probed with raw PDVs. The receiver
    answers, keeps what came (the inbox then quarantines it with its reason: "holds no
    readable DICOM elements"), and the association goes on to store the next instance."""
    from pydicom.uid import generate_uid
    from pynetdicom import AE, evt
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    rx, inbox, received = receiver()
    answers: list[int] = []

    def on_message(event):  # the raw request is not pending, so read the answer here
        answers.append(int(event.message.command_set.Status))

    mr = "1.2.840.10008.5.1.4.1.1.4"
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(mr, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="NEUROEDGE",
                         evt_handlers=[(evt.EVT_DIMSE_RECV, on_message)])
    assert assoc.is_established
    try:
        req = C_STORE()
        req.MessageID, req.AffectedSOPClassUID, req.Priority = 1, mr, 2
        req.AffectedSOPInstanceUID = sop = generate_uid()
        req.DataSet = io.BytesIO(b"x")  # so the command says a data set follows
        message = C_STORE_RQ()
        message.primitive_to_message(req)
        context = assoc.accepted_contexts[0].context_id
        for pdu in message.encode_msg(context, 16384):
            cid, pdv = pdu.presentation_data_value_list[0]
            if pdv[0] & 1 == 0:  # the data set's fragment: replaced by ``payload``
                pdu.presentation_data_value_list[0] = (cid, b"\x02" + payload)
            assoc.dul.send_pdu(pdu)
        wait_for(lambda: answers, 10)
        assert answers == [0x0000]
        (kept,) = inbox_files(inbox)
        assert received == [str(kept)]
        meta = pydicom.filereader.read_file_meta_info(str(kept))
        assert meta.MediaStorageSOPInstanceUID == sop  # whose it was stays known
        assert kept.read_bytes().endswith(payload)
        _, paths = make_study(tmp_path / "next", [0.6])
        assert assoc.send_c_store(pydicom.dcmread(str(paths[0]))).Status == 0x0000
        assert len(inbox_files(inbox)) == 2
    finally:
        assoc.release()


# --- a peer that stops inside a PDU, or announces a huge one (network probe, 2026-12-06) ---


def _stall_inside_a_pdu(port: int, where: str, tmp_path: Path):
    """A peer that sends the beginning of a PDU and then nothing, its connection left open:
    (the raw socket, the association or None)."""
    import struct

    if where == "before its association":  # 100 bytes of a 1000-byte A-ASSOCIATE-RQ
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(struct.pack(">BBL", 0x01, 0, 1000) + bytes(100))
        return raw, None
    big = make_dicom(tmp_path / "big.dcm", np.random.default_rng(3).integers(
        0, 4000, (512, 512), dtype=np.uint16))
    assoc = _send_part_of_an_instance(port, big, pdus=5)
    wait_for(lambda: assoc.dul.to_provider_queue.empty(), 10)  # its PDUs are out, whole
    time.sleep(0.3)
    raw = assoc.dul.socket.socket
    raw.sendall(struct.pack(">BBL", 0x04, 0, 1000) + bytes(10))  # 16 of a P-DATA's 1006
    return raw, assoc


def _closed_by_the_receiver(raw: socket.socket, assoc, timeout: float) -> bool:
    if assoc is not None:
        try:
            wait_for(lambda: not assoc.is_established, timeout)
            return True
        except AssertionError:
            return False
    raw.settimeout(timeout)
    try:
        return raw.recv(1) == b""
    except ConnectionResetError:
        return True
    except OSError:  # still open when the time was up
        return False


@pytest.mark.parametrize("where", ["before its association", "inside an instance"])
def test_a_peer_that_stops_inside_a_pdu_is_closed_and_frees_its_slot(
        receiver, tmp_path, monkeypatch, caplog, where):
    """pynetdicom reads a PDU until all the bytes its length announces have come, on a socket
    without a timeout, and its timers (acse_timeout, the idle timeout) cannot run meanwhile:
    a peer that stopped inside a PDU held its connection, and one of max_associations, for
    ever. Four such peers (a crashed scanner, a half-open link) and nothing was received any
    more. A PDU must now arrive whole within PDU_READ_SECONDS of its start."""
    from edge.network import receiver as receiver_module

    monkeypatch.setattr(receiver_module, "PDU_READ_SECONDS", 1.0)
    caplog.set_level(logging.WARNING)
    rx, inbox, received = receiver(max_associations=1)
    raw, assoc = _stall_inside_a_pdu(rx.port, where, tmp_path)
    try:
        started = time.monotonic()
        closed = _closed_by_the_receiver(raw, assoc, 10)
        waited = time.monotonic() - started
    finally:  # without the bound, this is what ends the read (else the receiver never stops)
        if assoc is not None:
            assoc.abort()
        raw.close()
    assert closed and waited < 5, waited
    assert "a PDU it began did not arrive whole within 1s" in caplog.text
    wait_for(lambda: echo_with_pynetdicom(rx.port) == (True, 0), 10)  # the slot is free again
    wait_for(lambda: not _spool_names(inbox), 10)
    assert not received and not inbox_files(inbox)


def test_stopping_does_not_wait_for_a_peer_stalled_inside_a_pdu(receiver, tmp_path):
    """SIGTERM while a peer is stalled inside a PDU: ``watch`` waited for that peer for ever
    (pynetdicom's shutdown waits for each association's reader, itself waiting on the peer),
    until systemd killed it. The receiver now stops within about a second."""
    import threading

    rx, inbox, _ = receiver()
    stalled = [_stall_inside_a_pdu(rx.port, where, tmp_path)
               for where in ("before its association", "inside an instance")]
    time.sleep(0.5)
    stopper = threading.Thread(target=rx.stop, daemon=True)
    started = time.monotonic()
    stopper.start()
    stopper.join(10)
    waited = time.monotonic() - started
    for raw, assoc in stalled:  # without the fix, this is what lets stop() return
        if assoc is not None:
            assoc.abort()
        raw.close()
    stopper.join(30)
    assert waited < 5, f"stop() waited {waited:.1f}s for stalled peers"
    assert not inbox_files(inbox)  # the partial instance is not kept


def test_a_pdu_announced_longer_than_the_limit_is_not_read_into_memory(receiver):
    """A PDU's length field says up to 4 GB, and pynetdicom read as much as it said into
    memory before looking at it, before any association and whatever the negotiated maximum
    (128 kB): one connection could take the box's memory. Past PDU_READ_LIMIT it is closed
    unread, and the receiver goes on."""
    import struct

    from edge.network.receiver import PDU_READ_LIMIT

    rx, _, _ = receiver()
    tracemalloc.start()
    sent = 0
    try:
        peer = socket.create_connection(("127.0.0.1", rx.port), timeout=10)
        try:
            peer.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFF00))
            chunk = bytes(1 << 20)
            while sent < 64 << 20:
                peer.sendall(chunk)
                sent += len(chunk)
        except OSError:  # closed by the receiver
            pass
        finally:
            peer.close()
        time.sleep(0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent < 16 << 20, f"{sent / 1e6:.0f} MB were taken before the connection closed"
    assert peak < 2 * PDU_READ_LIMIT, f"peak {peak / 1e6:.1f} MB traced"
    assert echo_with_pynetdicom(rx.port) == (True, 0)
