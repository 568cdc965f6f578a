"""The agent on the network against independent DICOM software: dcmtk's echoscu and storescu
play the scanner, its storescp the PACS, dsrdump reads the SR back.

Each test runs the real ``edge-agent watch --dicom-port`` in a subprocess. dcmtk is a
Debian package (``apt-get install -y dcmtk``, which ``.ci/run`` does); without it these
tests skip and say so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from agent_helpers import REPO_ROOT, agent_env, fast_config, pydicom_file, run_agent
from network_helpers import PATIENT_ID, StoreSCP, dcmtk, free_port, make_study, tool, wait_for

pytest.importorskip("pynetdicom")

GLIOMA_STUDY = [0.6] * 8 + [0.1] * 5 + [0.6] * 7  # 20 slices, 5 dark ones: glioma


class Agent:
    """``edge-agent watch`` in a subprocess, its log in a file (a pipe could fill up)."""

    def __init__(self, tmp_path: Path, model: Path, config_text: str, port: int | None,
                 name: str = "agent") -> None:
        self.inbox, self.outbox = tmp_path / "inbox", tmp_path / "outbox"
        self.inbox.mkdir(exist_ok=True)
        self.log = tmp_path / f"{name}.log"
        self.port = port
        args = ["--config", str(fast_config(tmp_path, config_text)), "watch", str(self.inbox),
                "--outbox", str(self.outbox), "--model", str(model)]
        if port:
            args += ["--dicom-port", str(port)]
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self) -> Agent:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge", *self.args], stdout=log,
                                         stderr=subprocess.STDOUT, env=agent_env(),
                                         cwd=str(REPO_ROOT))
        if self.port:
            wait_for(lambda: "listening on" in self.text() or self.proc.poll() is not None, 60)
            assert self.proc.poll() is None, self.text()[-3000:]
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def study(self, uid: str) -> dict | None:
        path = self.outbox / "studies" / f"{uid}.json"
        return json.loads(path.read_text()) if path.exists() else None


@pytest.fixture()
def agents():
    running: list[Agent] = []
    yield running
    for agent in running:
        agent.stop()


@pytest.fixture()
def pacs_servers():
    running: list[StoreSCP] = []
    yield running
    for server in running:
        server.stop()


def storescu(port: int, files: list[Path], *options: str, calling: str = "SCANNER"):
    return subprocess.run([tool("storescu"), "-aet", calling, "-aec", "NEUROEDGE", *options,
                           "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def _agent_sending_to_a_pacs(tmp_path: Path, test_model, agents, pacs_servers,
                             settle: float) -> tuple[Agent, StoreSCP, int]:
    """storescp as the PACS, and a running agent with the toy model receiving on a port of
    its own and sending its SRs there."""
    dcmtk()
    if not test_model.toy:
        pytest.skip("needs the toy model's known answers")
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    pacs_servers.append(pacs)
    port = free_port()
    agent = Agent(tmp_path, test_model.path, f"[studies]\nsettle_seconds = {settle}\n[pacs]\n"
                  f"send_to = \"PACS@127.0.0.1:{pacs.port}\"\n", port).start()
    agents.append(agent)
    return agent, pacs, port


def test_a_scanner_sends_a_study_and_the_pacs_gets_one_sr(tmp_path, test_model, agents,
                                                         pacs_servers):
    agent, pacs, port = _agent_sending_to_a_pacs(tmp_path, test_model, agents, pacs_servers,
                                                 settle=2.0)
    echo = subprocess.run([tool("echoscu"), "-aec", "NEUROEDGE", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0, echo.stderr
    uid, files = make_study(tmp_path / "scanner", GLIOMA_STUDY, series=2)
    sent = storescu(port, files)
    assert sent.returncode == 0, sent.stderr
    (sr_file,) = wait_for(pacs.received, 90)
    doc = agent.study(uid)
    assert doc is not None and doc["verdict"] == "glioma", doc and doc["verdict_reason"]
    assert doc["counts"]["instances"] == 20 and len(doc["series"]) == 2
    sr = pydicom.dcmread(str(sr_file))
    assert sr.StudyInstanceUID == uid and sr.Modality == "SR"
    assert sr.SeriesInstanceUID not in {s["series_instance_uid"] for s in doc["series"]}
    assert sr.PatientID == PATIENT_ID and sr.AccessionNumber == "ACC42"
    dump = subprocess.run([tool("dsrdump"), str(sr_file)], capture_output=True, text=True,
                          timeout=60)
    assert dump.returncode == 0 and "W:" not in dump.stderr and "E:" not in dump.stderr
    assert '"Verdict")="glioma"' in dump.stdout and "Comprehensive SR" in dump.stdout
    assert dump.stdout.count("IMAGE:") == 6  # the most suspicious slices, referenced
    # Other storage classes are received too, and refused with their reason, not classified
    others = storescu(port, [pydicom_file("CT_small.dcm"), pydicom_file("test-SR.dcm")])
    assert others.returncode == 0, others.stderr
    records = agent.outbox / "quarantine"
    wait_for(lambda: len(list(records.glob("*.reason.json"))) == 2, 60)
    reasons = [json.loads(p.read_text())["reason"] for p in records.glob("*.reason.json")]
    assert "Modality is CT" in " ".join(reasons)
    assert "no pixel data" in " ".join(reasons)
    time.sleep(3)  # nothing else arrives at the PACS: one judgment, one SR
    assert len(pacs.received()) == 1
    assert agent.stop() == 0
    log = agent.text()
    assert "20 instance(s) stored" in log and "SCANNER@127.0.0.1" in log
    assert "SECRETNAME" not in log and PATIENT_ID not in log and uid not in log


@pytest.mark.slow
def test_compressed_instances_from_storescu(tmp_path, test_model, agents):
    dcmtk()
    from edge.network.receiver import accepted_transfer_syntaxes

    port = free_port()
    agent = Agent(tmp_path, test_model.path, "[studies]\nenabled = false\n", port).start()
    agents.append(agent)
    cases = {"MR_small_jp2klossless.dcm": "-xv", "MR_small_jpeg_ls_lossless.dcm": "-xt",
             "MR_small_RLE.dcm": "-xr"}
    expected = set()
    for name, option in cases.items():
        source = pydicom_file(name)
        syntax = str(pydicom.dcmread(str(source)).file_meta.TransferSyntaxUID)
        if syntax not in accepted_transfer_syntaxes():
            continue  # no decoder here: the receiver does not offer it
        sent = storescu(port, [source], option)
        assert sent.returncode == 0, f"{name}: {sent.stderr}"
        expected.add(syntax)
    if not expected:
        pytest.skip("no compressed-DICOM decoder installed (the dicom-codecs extra)")
    reports = wait_for(lambda: [json.loads(p.read_text()) for p in
                                (agent.outbox / "reports").glob("*.json")]
                       if len(list((agent.outbox / "reports").glob("*.json"))) == len(expected)
                       else None, 60)
    assert {r["dicom"]["transfer_syntax_uid"] for r in reports} == expected
    assert all(r["prediction"]["label"] for r in reports)


@pytest.mark.slow
def test_a_caller_not_allowed_is_refused_and_logged(tmp_path, test_model, agents):
    dcmtk()
    port = free_port()
    agent = Agent(tmp_path, test_model.path,
                  "[network]\nallowed_calling_aets = [\"SCANNER\"]\n", port).start()
    agents.append(agent)
    refused = subprocess.run([tool("echoscu"), "-aet", "INTRUDER", "-aec", "NEUROEDGE", "127.0.0.1",
                              str(port)], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "Rejected" in refused.stderr
    _, files = make_study(tmp_path / "scanner", [0.6])
    assert storescu(port, files, calling="INTRUDER").returncode != 0
    assert storescu(port, files, calling="SCANNER").returncode == 0
    wait_for(lambda: list((agent.outbox / "reports").glob("*.json")), 60)
    log = agent.text()
    assert log.count("refused a DICOM association from INTRUDER@127.0.0.1") == 2
    assert "allowed_calling_aets" in log


def _sending_config(pacs_port: int, retry_max: float, timeout: float) -> str:
    return ("[studies]\nsettle_seconds = 0.5\n[pacs]\n"
            f"send_to = \"PACS@127.0.0.1:{pacs_port}\"\nretry_initial = 0.5\n"
            f"retry_max = {retry_max}\ntimeout = {timeout}\n")


def _agent_sent_a_study(tmp_path, test_model, agents, config: str, slices: int):
    """An agent with ``config``, and a study of ``slices`` slices sent to it by storescu:
    (the agent, its port, the Study Instance UID, its SR queue folder)."""
    port = free_port()
    agent = Agent(tmp_path, test_model.path, config, port).start()
    agents.append(agent)
    uid, files = make_study(tmp_path / "scanner", [0.6] * slices)
    assert storescu(port, files).returncode == 0
    return agent, port, uid, agent.outbox / ".state" / "outgoing"


@pytest.mark.slow
def test_pacs_down_then_up_across_a_restart_the_sr_arrives_once(tmp_path, test_model, agents,
                                                               pacs_servers):
    dcmtk()
    pacs_port = free_port()
    config = _sending_config(pacs_port, retry_max=1.0, timeout=5.0)
    first, port, uid, queue = _agent_sent_a_study(tmp_path, test_model, agents, config, 5)

    def attempts() -> int:
        records = [json.loads(p.read_text()) for p in queue.glob("*.json")]
        return records[0]["attempts"] if records else 0

    wait_for(lambda: attempts() >= 3, 60)  # the PACS is down: retried, backing off
    assert "no connection to PACS@127.0.0.1" in first.text()
    assert first.stop() == 0
    assert len(list(queue.glob("*.dcm"))) == 1  # still queued, on disk
    pacs = StoreSCP(tmp_path / "pacs", pacs_port).start()
    pacs_servers.append(pacs)
    second = Agent(tmp_path, test_model.path, config, port, name="agent2").start()
    agents.append(second)
    (sr_file,) = wait_for(pacs.received, 60)
    assert pydicom.dcmread(str(sr_file)).StudyInstanceUID == uid
    wait_for(lambda: not list(queue.glob("*.json")), 30)
    time.sleep(3)
    assert len(pacs.received()) == 1
    sent = [json.loads(line) for line in (queue / "sent.jsonl").read_text().splitlines()]
    assert len(sent) == 1 and sent[0]["attempts"] >= 4
    assert second.stop() == 0


@pytest.mark.slow
def test_the_front_page_says_the_pacs_is_not_reached_until_the_sr_arrives(
        tmp_path, test_model, agents, pacs_servers):
    """The outbox's index.html, which a radiographer reads, says that a study's SR has not
    reached the PACS while it is down, and stops saying it once storescp has the SR, without
    any new input to the agent."""
    dcmtk()
    pacs_port = free_port()
    config = _sending_config(pacs_port, retry_max=1.0, timeout=5.0)
    agent, _, uid, queue = _agent_sent_a_study(tmp_path, test_model, agents, config, 4)
    front = agent.outbox / "index.html"

    def page() -> str:
        return front.read_text() if front.exists() else ""

    wait_for(lambda: "have not reached the PACS" in page(), 60)
    assert "Needs attention" in page() and f"PACS@127.0.0.1:{pacs_port}" in page()
    pacs = StoreSCP(tmp_path / "pacs", pacs_port).start()
    pacs_servers.append(pacs)
    (sr_file,) = wait_for(pacs.received, 60)
    assert pydicom.dcmread(str(sr_file)).StudyInstanceUID == uid
    wait_for(lambda: front.exists() and "Needs attention" not in page(), 60)
    assert agent.stop() == 0


@pytest.mark.slow
def test_kill_minus_9_while_the_pacs_holds_the_sr_then_it_arrives(tmp_path, test_model, agents,
                                                                  pacs_servers):
    """The agent is killed while its C-STORE of an SR waits for the PACS's answer (storescp
    sleeps 4 s inside the transfer). The SR stays queued on disk; the restarted agent sends
    it again, with the same SOP Instance UID, and records it sent once."""
    dcmtk()
    pacs = StoreSCP(tmp_path / "pacs", free_port(), options=("--sleep-during", "4")).start()
    pacs_servers.append(pacs)
    config = _sending_config(pacs.port, retry_max=2.0, timeout=20.0)
    first, port, uid, queue = _agent_sent_a_study(tmp_path, test_model, agents, config, 4)
    wait_for(lambda: list(queue.glob("*.json")) and pacs.connected(), 90, every=0.01)
    time.sleep(1.0)  # past the agent's reachability check: in the transfer, answer pending
    assert pacs.connected() and not (queue / "sent.jsonl").exists()
    first.kill()
    assert len(list(queue.glob("*.dcm"))) == 1 and not (queue / "sent.jsonl").exists()
    queued = pydicom.dcmread(str(next(queue.glob("*.dcm")))).SOPInstanceUID
    second = Agent(tmp_path, test_model.path, config, port, name="agent2").start()
    agents.append(second)
    wait_for(lambda: (queue / "sent.jsonl").exists(), 90)
    assert not list(queue.glob("*.json")) and not list(queue.glob("*.dcm"))
    sent = [json.loads(line) for line in (queue / "sent.jsonl").read_text().splitlines()]
    assert len(sent) == 1 and sent[0]["sop_instance_uid"] == queued
    received = wait_for(pacs.received, 30)
    # storescp drops the transfer cut by the kill; a PACS that kept it holds the same SOP
    # Instance UID twice, which it treats as one object
    assert {pydicom.dcmread(str(p)).SOPInstanceUID for p in received} == {queued}
    assert {pydicom.dcmread(str(p)).StudyInstanceUID for p in received} == {uid}
    assert second.stop() == 0


@pytest.mark.slow
def test_kill_minus_9_during_a_c_store_burst(tmp_path, test_model, agents):
    """Every instance the sender saw acknowledged is processed once; none twice."""
    import threading

    from network_helpers import send_with_pynetdicom, settle_in_doubt

    port = free_port()
    agent = Agent(tmp_path, test_model.path, "[studies]\nsettle_seconds = 0.5\n", port).start()
    uid, files = make_study(tmp_path / "scanner", [0.6] * 60)
    sop_of = {p: str(pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID)
              for p in files}
    acked: list[str] = []
    done = threading.Event()

    def record(path: Path, status: int) -> None:
        if status == 0:
            acked.append(sop_of[path])

    def burst() -> None:
        try:
            send_with_pynetdicom(port, files, on_status=record)
        except Exception:  # noqa: BLE001 - the receiver vanished mid-association
            pass
        done.set()

    thread = threading.Thread(target=burst, daemon=True)
    thread.start()
    wait_for(lambda: len(acked) >= 20, 120, every=0.001)
    agent.kill()  # mid-burst, mid-processing: no clean-up at all
    assert done.wait(60)
    assert 20 <= len(acked) < 60, len(acked)
    restarted = Agent(tmp_path, test_model.path, "[studies]\nsettle_seconds = 0.5\n", None,
                      name="after")
    restarted.args.append("--once")
    restarted.start()
    assert restarted.proc is not None and restarted.proc.wait(120) == 0, restarted.text()[-3000:]
    outbox = agent.outbox
    reports = [json.loads(p.read_text()) for p in (outbox / "reports").glob("*.json")]
    reported = [r["dicom"]["sop_instance_uid"] for r in reports]
    assert set(acked) <= set(reported)
    assert len(reported) == len(set(reported)), "an instance was reported twice"
    archived = [str(pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID)
                for p in (outbox / "archive").rglob("*.dcm")]
    assert sorted(archived) == sorted(reported), "archive and reports disagree"
    lines = [json.loads(line) for f in (outbox / "index").glob("*.jsonl")
             for line in f.read_text().splitlines()]
    assert len(lines) == len(reported) and {e["outcome"] for e in lines} == {"classified"}
    assert settle_in_doubt(agent.inbox, outbox) == []  # the last answer before the kill
    assert not [p for p in agent.inbox.iterdir()], "left in the inbox"
    assert not os.listdir(outbox / ".state" / "jobs")
    doc = restarted.study(uid)
    assert doc is not None and doc["counts"]["instances"] == len(reported)
    assert not list(outbox.rglob(".neuroedge-*"))
    checked = run_agent(["fsck", str(outbox), "--dry-run", "--deep"])  # the invariant holds
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 problem(s), 0 repaired, 0 pending" in checked.stdout


def test_patient_values_never_reach_the_log_through_pydicom(tmp_path, test_model, agents):
    """A scanner or RIS that formats a birth date as 1970-01-31 (not a valid DA) or writes
    the sex as "female": pydicom warns, quoting the value, when the SR copies the patient
    attributes. Its logger is switched off by the CLI, but importing pydicom later switches
    it back on, and its warnings went to stderr (the journal) too."""
    from network_helpers import send_with_pynetdicom

    port = free_port()
    agent = Agent(tmp_path, test_model.path, "[studies]\nsettle_seconds = 0.5\n[pacs]\n"
                  f"send_to = \"PACS@127.0.0.1:{free_port()}\"\nretry_initial = 60\n",
                  port).start()
    agents.append(agent)
    _, files = make_study(tmp_path / "scanner", [0.1] * 3, PatientBirthDate="1970-01-31",
                          PatientSex="female", StudyTime="25:61", PatientAge="42 years")
    assert send_with_pynetdicom(port, files) == [0] * 3
    queue = agent.outbox / ".state" / "outgoing"
    wait_for(lambda: list(queue.glob("*.dcm")), 60)  # the SR was built: the values copied
    assert pydicom.dcmread(str(next(queue.glob("*.dcm")))).PatientBirthDate == "1970-01-31"
    assert agent.stop() == 0
    log = agent.text()
    for value in ("1970-01-31", "female", "25:61", "42 years"):
        assert value not in log, f"{value!r} is in the log"
    assert "classified input" in log and "is queued for PACS" in log



@pytest.mark.slow
@pytest.mark.parametrize("how", ["same bytes", "another transfer syntax"])
def test_a_scanner_that_sends_a_judged_study_again(tmp_path, test_model, agents, pacs_servers,
                                                   how):
    """The operator presses "send" again after the study was judged and its SR sent. The
    same bytes are duplicates: nothing is classified again, the study keeps its revision
    and the PACS gets no second SR. In another transfer syntax (``storescu -xi``: implicit
    VR) the files are new inputs: each is classified, the study is judged again from its
    same 6 instances (each counted once, by SOP Instance UID) to the same verdict, and the
    PACS gets revision 2, which names the first SR as its predecessor."""
    # settle 2 s: each wave judged once, whole, on a busy CI machine (see the re-judgment sweep)
    agent, pacs, port = _agent_sending_to_a_pacs(tmp_path, test_model, agents, pacs_servers,
                                                 settle=2.0)
    uid, files = make_study(tmp_path / "scanner", GLIOMA_STUDY[:6])
    assert storescu(port, files).returncode == 0
    (first_sr,) = wait_for(pacs.received, 90)
    first = agent.study(uid)
    assert first is not None and first["revision"] == 1

    again = storescu(port, files, *(["-xi"] if how != "same bytes" else []))
    assert again.returncode == 0, again.stderr
    (day,) = (agent.outbox / "index").glob("*.jsonl")
    wait_for(lambda: len(day.read_text().splitlines()) == 12, 60)
    outcomes = [json.loads(line)["outcome"] for line in day.read_text().splitlines()]
    if how == "same bytes":
        assert outcomes == ["classified"] * 6 + ["duplicate"] * 6
        time.sleep(4)  # settle_seconds and more: nothing else reaches the PACS
        assert pacs.received() == [first_sr]
        assert agent.study(uid) == first
    else:
        assert outcomes == ["classified"] * 12
        wait_for(lambda: len(pacs.received()) == 2, 60)
        doc = agent.study(uid)
        assert doc is not None and doc["revision"] == 2
        assert (doc["verdict"], doc["counts"]) == (first["verdict"], first["counts"])
        (second_sr,) = set(pacs.received()) - {first_sr}
        before = pydicom.dcmread(str(first_sr))
        after = pydicom.dcmread(str(second_sr))
        named = after.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
        assert named.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            before.SOPInstanceUID)
    assert agent.stop() == 0
