"""kill -9 at any disk call of the DICOM receive path: the network crash sweep.

The crash sweep (``test_agent_crash_sweep.py``) kills the agent at every disk call of its
pipeline, with files copied into the inbox; the network fault sweep
(``test_network_fault_sweep.py``) makes each disk call of the network path fail, in-process,
without killing it. Here the real ``edge-agent watch --dicom-port`` runs in a subprocess
(``crash_at_site.py``, the crash sweep's) and a scanner (pynetdicom, in this process) sends
it a four-slice MR study over one association once it listens; the agent kills itself with
SIGKILL just before, just after, or (a write) in the middle of the first and the last call
of each site of the network path: a call ``edge/network`` asked for (the receiver's spooled
file, its fsync, rename, link and the inbox's fsync; the study tracker's state and reports;
the study pages), or one reading a received instance as DICOM. A kill can fall in any
thread: the receiver's, the pipeline's, the tracker's. The scanner notes each instance's
answer (the connection dropped: the rest are not acknowledged, a send cut short is given
``ANSWER_BOUND`` to be answered). Then what a clinic does: the agent restarted healthy
(receiving) and the scanner sending again, on one association, every instance it got no
Success for; the agent is stopped with SIGTERM once all four are archived and judged.

The books: every instance acknowledged (all four, after the resend) archived exactly once
with one index line, none quarantined, the study report judged from all four without
notes, nothing in the inbox (the receiver's instances in doubt, second links kept a day
in case a sender did not get its answer, must be links to archived instances:
``network_helpers.settle_in_doubt``), nothing journaled, no temporary file, ``fsck --deep``
clean, no traceback in the output of either run. A healthy run (the census, stopped the
same way) must balance them too.

It found one problem on 2026-12-07, with a test below that failed before its fix
(``test_r1``): an instance stored whose answer a kill stopped (from the link into the inbox
to the C-STORE's answer: 14 of the 204 cases) was stored twice once the scanner sent it
again, archived as a duplicate with a second index line.

Cost: a case is two agents of about two seconds each and a send. CI runs every
``CI_STRIDE``-th case (14 of 210: 54 s here, with the census); ``NEUROEDGE_CRASH_EVERY=n``
runs every n-th (1: all). By hand on the 2-core machine, 2026-12-07 (beside another
session's tests): 204 cases in 14 min 37 s before the fix (14 found, all "stored twice",
no loss, no traceback, no fsck finding, every kill reached), and 210 cases (74 sites: the
fix's rename, link and unlink are sites of their own) in 12 min 23 s after it, nothing
found, every kill reached.

Not covered: sites a healthy run never reaches (the receiver's answer to a failed write,
the recognition of an instance sent again: the fault sweep fails the first, ``test_r1``
passes through the second, neither is killed there); a kill in the scanner's resend to
the restarted agent (a second kill); a power cut (the power-cut sweep models the pipeline's
fsyncs, not the receiver's); the SR queue and the PACS (no ``[pacs]`` here: the fault
sweep has them); associations from several scanners at once.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import REPO_ROOT, agent_env, fast_config
from disk_sites import Site
from network_helpers import free_port, make_study, send_with_pynetdicom, settle_in_doubt
from test_agent_crash_sweep import EVERY, HERE, KILLED, RUN_BOUND, Kill, Where, in_order
from test_agent_fault_sweep import at_rest
from test_network_fault_sweep import sop_uid, stored_instances, study_report, swept

pytest.importorskip("pynetdicom")

LEVELS = [0.1, 0.1, 0.1, 0.6]  # the network fault sweep's study: four MR slices
SUCCESS = 0x0000
CI_STRIDE = 16  # every n-th case in CI (14 of 210, about a minute)
CONFIG = ("[studies]\nsettle_seconds = 0.3\n[network]\nmin_free_mb = 0\n"
          "[limits]\nmax_attempts = 10\n")
# Seconds the scanner waits for each answer: pynetdicom notices a receiver killed while an
# instance was sent only then (its default, 30 s, would make such a case half a minute)
ANSWER_BOUND = 8.0
LISTENING = "DICOM receiver NEUROEDGE listening on"


# --- the agent with its receiver, in a subprocess ------------------------------------------

@dataclass
class Run:
    """One run of ``edge-agent watch --dicom-port`` and what the scanner saw."""

    rc: int | None = None
    statuses: dict[str, int] = field(default_factory=dict)  # SOP Instance UID: its answer
    log: str = ""


@dataclass
class Receiving:
    """The real agent, receiving (``crash_at_site.py`` with a plan), a scanner sending it a
    study over one association once it listens, the agent stopped with SIGTERM once it has
    archived and judged what was acknowledged (a stop can be the site too)."""

    model: Path
    config: Path  # outside the case's folders: reading it is not a site
    study: tuple[str, list[Path]]
    uids: dict[Path, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.uids = {path: str(sop_uid(path)) for path in self.study[1]}

    def run(self, folders: dict[str, Path], plan: dict[str, Any], send: list[Path],
            acknowledged: set[str], log: Path) -> Run:
        """``send``: what the scanner sends; ``acknowledged``: what it got Success for
        before (all of it must be judged before the agent is stopped)."""
        port = free_port()
        args = [sys.executable, str(HERE / "crash_at_site.py"), "--config", str(self.config),
                "watch", str(folders["inbox"]), "--outbox", str(folders["outbox"]),
                "--model", str(self.model), "--dicom-port", str(port)]
        env = agent_env(NEUROEDGE_CRASH_PLAN=json.dumps(
            {"roots": [str(folders["root"])], **plan}))
        run = Run()
        with open(log, "w") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=str(REPO_ROOT))
            deadline = time.monotonic() + RUN_BOUND
            while proc.poll() is None and time.monotonic() < deadline \
                    and LISTENING not in log.read_text():
                time.sleep(0.02)
            if proc.poll() is None and send:
                run.statuses = self.send(port, send)
            done = acknowledged | {u for u, code in run.statuses.items() if code == SUCCESS}
            while proc.poll() is None and time.monotonic() < deadline:
                if finished(folders, self.study[0], done):
                    proc.send_signal(signal.SIGTERM)
                    break
                time.sleep(0.02)
            try:
                run.rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"the agent did not end within {RUN_BOUND:g}s: {log}")
        run.log = log.read_text()
        return run

    def send(self, port: int, paths: list[Path]) -> dict[str, int]:
        """The scanner's C-STOREs, one association: each instance's answer (-1: none; an
        instance after a dropped connection is not sent, so not acknowledged)."""
        try:
            codes = send_with_pynetdicom(port, paths, dimse_timeout=ANSWER_BOUND)
        except AssertionError:  # the agent died before the association was accepted
            codes = []
        return {self.uids[p]: (codes[i] if i < len(codes) else -1)
                for i, p in enumerate(paths)}

    def census(self, root: Path) -> dict[Site, int]:
        """Every site of a healthy run, with its count of calls."""
        folders = new_folders(root)
        out = root / "census.json"
        run = self.run(folders, {"census": str(out)}, self.study[1], set(), root / "census.log")
        assert run.rc == 0, f"the healthy run ended {run.rc}: {run.log[-3000:]}"
        assert sorted(run.statuses.values()) == [SUCCESS] * len(self.study[1]), run.statuses
        wrong = books(folders, self.study, [run], self.uids)
        assert not wrong, f"a healthy run went wrong: {wrong}"
        return {Site(*fields[:4]): fields[4] for fields in json.loads(out.read_text())}

    def case(self, root: Path, kill: Kill) -> list[str] | None:
        """The agent killed as ``kill`` says while the scanner sends; then restarted healthy
        and the scanner sending again what it got no Success for. What went wrong (None:
        the kill was not reached)."""
        folders = new_folders(root)
        killed = self.run(folders, kill.plan(), self.study[1], set(), root / "killed.log")
        if killed.rc != KILLED:
            return None
        acknowledged = {u for u, code in killed.statuses.items() if code == SUCCESS}
        again = [p for p in self.study[1] if self.uids[p] not in acknowledged]
        restart = self.run(folders, {}, again, acknowledged, root / "restart.log")
        wrong = []
        if restart.rc != 0:
            wrong.append(f"the restarted agent ended {restart.rc}: {restart.log[-2000:]}")
        return wrong + books(folders, self.study, [killed, restart], self.uids)


def new_folders(root: Path) -> dict[str, Path]:
    (root / "inbox").mkdir(parents=True)
    return {"inbox": root / "inbox", "outbox": root / "outbox", "root": root}


def index_lines(outbox: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted((outbox / "index").glob("*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]


def finished(folders: dict[str, Path], study_uid: str, acknowledged: set[str]) -> bool:
    """Whether a running agent is done with what was acknowledged: nothing in the inbox
    or the journal, an index line for each, the study judged from each (plain reads: no
    ``edge`` code runs here, so they are no sites)."""
    try:
        if [p for p in os.listdir(folders["inbox"]) if not p.startswith(".neuroedge-")]:
            return False
        state = folders["outbox"] / ".state"
        if os.listdir(state / "jobs") or os.listdir(state / "claimed"):
            return False
        if len(index_lines(folders["outbox"])) < len(acknowledged):
            return False
    except (OSError, ValueError):
        return False
    doc = study_report(folders, study_uid) if acknowledged else {}
    judged = {i.get("sop_instance_uid") for i in (doc or {}).get("instances", [])}
    return doc is not None and acknowledged <= judged


def books(folders: dict[str, Path], study: tuple[str, list[Path]], runs: list[Run],
          uids: dict[Path, str]) -> list[str]:
    """What is wrong once the scanner has sent everything and got Success for it: each
    instance archived once with one index line, the study judged from all of them, none
    quarantined, nothing in the inbox, no temporary file, the outbox at rest and ``fsck
    --deep`` clean, no traceback in any run's output."""
    from edge.dicom import uid_hash

    study_uid, paths = study
    inbox, outbox = folders["inbox"], folders["outbox"]
    wrong = []
    answers: dict[str, int] = {}
    for run in runs:
        answers.update({u: c for u, c in run.statuses.items() if answers.get(u) != SUCCESS})
        if "Traceback" in run.log:
            wrong.append(f"traceback logged: {run.log[-2000:]}")
    every = set(uids.values())
    if {u for u, c in answers.items() if c == SUCCESS} != every:
        wrong.append(f"answers: {sorted(answers.values())} for {len(paths)} instances "
                     "(after the scanner sent again what it got no Success for)")
    wrong += settle_in_doubt(inbox, outbox)  # kept a day, in case they are sent again
    left = sorted(p.name for p in inbox.rglob("*") if p.is_file())
    if left:
        wrong.append(f"left in the inbox: {left}")
    stored, quarantined = stored_instances([outbox])
    wrong += quarantined
    lost = every - set(stored)
    doubled = sorted(uid_hash(u) for u, n in stored.items() if n > 1)
    if lost or doubled:
        wrong.append(f"lost: {len(lost)}, stored twice: {doubled}")
    by_tag = {uid_hash(u): u for u in every}  # received as <time>-<tag>-<hex>.dcm
    lines = index_lines(outbox) if (outbox / "index").is_dir() else []
    named = collections.Counter(by_tag.get((str(e.get("file_name")).split("-") + [""])[1])
                                for e in lines)
    if named != stored:
        wrong.append(f"{len(lines)} index lines for {sum(stored.values())} stored instances: "
                     f"{[(e.get('file_name'), e.get('outcome')) for e in lines]}")
    doc = study_report(folders, study_uid)
    judged = {i.get("sop_instance_uid") for i in (doc or {}).get("instances", [])}
    if judged != every or (doc or {}).get("notes"):
        wrong.append(f"the study was judged from {len(judged)} of {len(every)} instances "
                     f"(notes: {(doc or {}).get('notes')})")
    return wrong + at_rest(folders)


# --- the sweep ----------------------------------------------------------------------------

def network_kills(census: dict[Site, int]) -> list[Kill]:
    """Each site of the network path (``edge/network`` asked for it, or it reads a received
    instance as DICOM) at its first and last call, before and after; each write there
    (the received data set's, through a file object; the study's files) cut short too."""
    cases = []
    for site in in_order(census):
        if not swept(site):
            continue
        whens = ("before", "after", "cut") if site.call in ("write", "file.write") else (
            "before", "after")
        cases += [Kill(site, when, nth) for nth in sorted({1, census[site]}) for when in whens]
    return cases


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path]]:
    """The study the scanner sends, made once (outside the folders the ``Disk`` watches)."""
    return make_study(tmp_path_factory.mktemp("study"), LEVELS)


@pytest.fixture
def receiving(tmp_path: Path, test_model: Any, study: tuple[str, list[Path]]) -> Receiving:
    (tmp_path / "config").mkdir()
    return Receiving(test_model.path, fast_config(tmp_path / "config", CONFIG), study)


@pytest.mark.slow
def test_a_kill_at_any_disk_call_of_the_dicom_receive_path_loses_nothing(
        tmp_path, receiving):
    """Each site of the network path of a healthy run, killed at its first and last call
    (every ``CI_STRIDE``-th case in CI); then the agent restarted and the scanner sending
    again what it got no Success for; every instance stored once."""
    census = receiving.census(tmp_path / "census")
    cases = network_kills(census)
    chosen = cases[::EVERY or CI_STRIDE]
    found: list[str] = []
    missed: list[Kill] = []
    start = time.monotonic()
    for i, kill in enumerate(chosen):
        wrong = receiving.case(tmp_path / f"case{i}", kill)
        if wrong is None:
            missed.append(kill)
        elif wrong:
            found.append(f"{kill}:\n    " + "\n    ".join(wrong))
    print(f"{len(census)} sites, {len([s for s in census if swept(s)])} on the network path; "
          f"{len(chosen)} of {len(cases)} cases ({len(missed)} not reached) in "
          f"{time.monotonic() - start:.0f} s" + "".join(f"\n  not reached: {m}" for m in missed))
    # A site's last call may not come in a case: how often the study tracker writes its
    # state depends on how the instances fall between its polls (CI, busy: 2 of 15 such
    # kills missed). Its first call comes in every run: those must all but never miss.
    firsts = [m for m in missed if m.nth == 1]
    assert len(firsts) <= len(chosen) // 10 and len(missed) <= len(chosen) // 3, \
        f"kills not reached: {[str(m) for m in missed]}"
    assert not found, f"{len(found)} case(s):\n" + "\n".join(found)



# --- the findings, one test each ----------------------------------------------------------

@pytest.mark.parametrize("nth", [1, 4], ids=["first", "last"])
def test_r1_an_instance_stored_but_not_acknowledged_is_stored_once_when_sent_again(
        tmp_path, receiving, nth):
    """Killed once the received instance had its name in the inbox and the folder was
    fsynced, before the C-STORE was answered: the scanner had no Success for it and sent
    it again to the restarted agent, which stored it a second time (archived as a
    duplicate, with a second index line), though the docs said a kill before the answer
    left only a temporary file. Now the receiver keeps its temporary file as a second link
    to the instance until the sender's next request (or release) shows the answer arrived;
    an instance sent again with the same bytes as one in doubt is answered with success
    and not stored again."""
    kill = Kill(Where("fsync", "fsync_dir", "edge/network/receiver.py"), "after", nth)
    wrong = receiving.case(tmp_path / "case", kill)
    assert wrong is not None, "the kill was not reached"
    assert wrong == []
