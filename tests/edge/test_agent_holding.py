"""A failure that persists (writing reports fails with EIO): the agent takes at most
``MAX_UNFINISHED`` inputs out of the inbox, the others wait there untouched, and taking
resumes by itself once a retry finishes the ones it holds. Before, it went on emptying the
inbox into ``.state`` while no report appeared."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent_helpers import REPO_ROOT, agent_env, fast_config, gray_png, make_config

from edge.retries import MAX_UNFINISHED

INPUTS = MAX_UNFINISHED + 20
HOLD_LINE = "new inputs wait in the inbox, untouched"
RESUME_LINE = "taking new inputs again"

# The agent's CLI with writing reports failing (EIO) while the file SWITCH exists: a real
# process, for its exit code, its log and SIGTERM. (A chmod does not stop root.)
FAILING_AGENT = """
import errno, sys
from pathlib import Path
from edge import commit
switch = Path(sys.argv[1])
real = commit.write_bytes_atomic
def broken(path, data, *args, **kwargs):
    if path.parent.name == "reports" and switch.exists():
        raise OSError(errno.EIO, "Input/output error")
    return real(path, data, *args, **kwargs)
commit.write_bytes_atomic = broken
import edge.cli
sys.argv = ["edge-agent", *sys.argv[2:]]
edge.cli.main()
"""


def _inputs(inbox: Path) -> dict[str, bytes]:
    """INPUTS distinct PNGs (distinct contents: no duplicates); their bytes by name."""
    for i in range(INPUTS):
        gray_png(inbox / f"scan{i:02d}.png", 20 + 3 * i)
    return {p.name: p.read_bytes() for p in inbox.iterdir()}


def _assert_rest_untouched(inbox: Path, before: dict[str, bytes], left: int) -> None:
    now = {p.name: p.read_bytes() for p in inbox.iterdir()}
    assert len(now) == left, sorted(now)
    assert all(before[name] == data for name, data in now.items())


def _assert_all_reported_once(outbox: Path, before: dict[str, bytes]) -> None:
    """Every input has its report, its archived copy and one index line; none twice."""
    reports = {p.stem for p in (outbox / "reports").glob("*.json")}
    assert reports == {hashlib.sha256(data).hexdigest() for data in before.values()}
    archived = sorted(p.read_bytes() for p in (outbox / "archive").rglob("*.png"))
    assert archived == sorted(before.values())
    lines = [json.loads(line) for f in (outbox / "index").glob("*.jsonl")
             for line in f.read_text().splitlines()]
    assert len(lines) == INPUTS and len({e["token"] for e in lines}) == INPUTS
    assert {e["outcome"] for e in lines} == {"classified"}
    assert list((outbox / ".state" / "jobs").iterdir()) == []
    assert list((outbox / ".state" / "claimed").iterdir()) == []


def _said(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


def test_a_persistent_failure_leaves_new_inputs_in_the_inbox_until_a_retry_succeeds(
        folders, test_model, monkeypatch, caplog):
    """The running agent: exactly MAX_UNFINISHED inputs are taken, the rest stay in the
    inbox byte for byte through many retry rounds (which still run), the log says so once
    and the front page says so; once writes work again every input gets one report."""
    from edge import commit
    from edge.classifier import Classifier
    from edge.watch import Agent

    caplog.set_level(logging.INFO)
    inbox, outbox = folders["inbox"], folders["outbox"]
    before = _inputs(inbox)
    failing = threading.Event()
    failing.set()
    real = commit.write_bytes_atomic

    def broken(path, data, *args, **kwargs):
        if path.parent.name == "reports" and failing.is_set():
            raise OSError(errno.EIO, "Input/output error")
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(commit, "write_bytes_atomic", broken)
    config = make_config(folders, test_model.path, watch={"retry_interval": 0.2})
    agent = Agent(config, Classifier(config), once=False)
    retries = []
    run = agent.worker.run
    monkeypatch.setattr(agent.worker, "run", lambda job, **kw: retries.append(job) or run(
        job, **kw))
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 180  # a bound, not a timing
        while time.monotonic() < deadline and not _said(caplog, HOLD_LINE):
            time.sleep(0.05)
        assert _said(caplog, HOLD_LINE) == 1
        started = len(retries)
        # retry rounds go on while holding, all failing (each tries the 32 kept reports
        # again, without classifying them again): a whole round, however slow the machine
        # (seconds under arm64 emulation)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(retries) < started + MAX_UNFINISHED:
            time.sleep(0.05)
        assert len(retries) >= started + MAX_UNFINISHED
        # each input's failure said once, not again at every round: a round is one line
        failed = [r for r in caplog.records if "could not be finished (" in r.getMessage()
                  and r.levelno == logging.ERROR]
        assert len(failed) == MAX_UNFINISHED
        assert _said(caplog, f"{MAX_UNFINISHED} still could not be finished") == 1
        _assert_rest_untouched(inbox, before, INPUTS - MAX_UNFINISHED)
        assert len(list((outbox / ".state" / "claimed").iterdir())) == MAX_UNFINISHED
        assert not list((outbox / "reports").glob("*.json"))
        assert _said(caplog, HOLD_LINE) == 1  # once, not once per tick or per round
        hold = [r.getMessage() for r in caplog.records if HOLD_LINE in r.getMessage()][0]
        assert "Input/output error" in hold and str(outbox) in hold
        alerts = " ".join(agent._page_alerts())
        assert "New inputs are not being taken" in alerts and "wait in the inbox" in alerts

        failing.clear()
        deadline = time.monotonic() + 180  # a bound, not a timing
        while time.monotonic() < deadline and (
                agent.worker.counts["classified"] < INPUTS or list(inbox.iterdir())):
            time.sleep(0.05)
    finally:
        failing.clear()
        agent.stop_requested.set()
        runner.join(60)
    assert not runner.is_alive()
    assert agent.worker.counts["classified"] == INPUTS
    _assert_all_reported_once(outbox, before)
    assert _said(caplog, HOLD_LINE) == 1 and _said(caplog, RESUME_LINE) == 1
    assert "New inputs are not being taken" not in " ".join(agent._page_alerts())


def _failing_once(tmp_path: Path, switch: Path, inbox: Path, outbox: Path, model: Path):
    args = ["--config", str(fast_config(tmp_path)), "watch", str(inbox), "--outbox",
            str(outbox), "--model", str(model), "--once"]
    return subprocess.run([sys.executable, "-c", FAILING_AGENT, str(switch), *args],
                          capture_output=True, text=True, env=agent_env(), cwd=str(REPO_ROOT),
                          timeout=600)


def test_once_leaves_the_rest_in_the_inbox_exits_75_and_says_why(tmp_path, test_model):
    """`watch --once` with the failure: takes MAX_UNFINISHED, leaves the rest in the inbox
    untouched and exits 75 saying why; started again with the failure still there, the
    replayed inputs fail again and it takes none; once writes work, all are reported."""
    inbox, outbox, switch = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "failing"
    inbox.mkdir()
    switch.touch()
    before = _inputs(inbox)
    result = _failing_once(tmp_path, switch, inbox, outbox, test_model.path)
    assert result.returncode == 75, result.stderr[-3000:]
    left = INPUTS - MAX_UNFINISHED
    _assert_rest_untouched(inbox, before, left)
    assert result.stderr.count(HOLD_LINE) == 1, result.stderr[-3000:]
    summary = result.stderr.strip().splitlines()[-1]
    assert f"{MAX_UNFINISHED} input(s) could not be finished" in summary
    assert f"{left} more were left in the inbox, untouched" in summary
    assert "Traceback" not in result.stderr
    page = (outbox / "index.html").read_text()
    assert "New inputs are not being taken" in page

    # the next start replays the journal first: the failure is still there
    result = _failing_once(tmp_path, switch, inbox, outbox, test_model.path)
    assert result.returncode == 75, result.stderr[-3000:]
    _assert_rest_untouched(inbox, before, left)
    assert result.stderr.count(HOLD_LINE) == 1, result.stderr[-3000:]
    assert len(list((outbox / ".state" / "claimed").iterdir())) == MAX_UNFINISHED

    switch.unlink()
    result = _failing_once(tmp_path, switch, inbox, outbox, test_model.path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(inbox.iterdir()) == []
    _assert_all_reported_once(outbox, before)
    assert "New inputs are not being taken" not in (outbox / "index.html").read_text()


def test_sigterm_while_holding_stops_promptly(tmp_path, test_model):
    """The service, holding: SIGTERM stops it within seconds, the held inputs still in the
    inbox and the taken ones journaled."""
    inbox, outbox, switch = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "failing"
    inbox.mkdir()
    switch.touch()
    before = _inputs(inbox)
    args = ["--config", str(fast_config(tmp_path, "retry_interval = 0.5\n")), "watch",
            str(inbox), "--outbox", str(outbox), "--model", str(test_model.path)]
    log = (tmp_path / "agent.log").open("w")
    agent = subprocess.Popen([sys.executable, "-c", FAILING_AGENT, str(switch), *args],
                             stdout=log, stderr=subprocess.STDOUT, env=agent_env(),
                             cwd=str(REPO_ROOT))
    try:
        deadline = time.monotonic() + 180  # a bound, not a timing
        while time.monotonic() < deadline and HOLD_LINE not in (tmp_path / "agent.log"
                                                                ).read_text():
            time.sleep(0.1)
        assert HOLD_LINE in (tmp_path / "agent.log").read_text()
        time.sleep(1.5)  # a few retry rounds
        sent = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(120)
        stopped_in = time.monotonic() - sent
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log.close()
    text = (tmp_path / "agent.log").read_text()
    # promptly: within the job in hand (seconds under arm64 emulation), not after the
    # retries or never
    assert stopped_in < 30, text[-3000:]
    assert code == 75, text[-3000:]  # inputs left journaled to retry, as before
    _assert_rest_untouched(inbox, before, INPUTS - MAX_UNFINISHED)
    assert len(list((outbox / ".state" / "jobs").glob("*.json"))) == MAX_UNFINISHED
    assert text.count(HOLD_LINE) == 1


def test_a_retry_writes_the_report_found_the_first_time_without_classifying_again(
        folders, test_model, monkeypatch, caplog):
    """While writing reports fails, each retry round used to decode, classify and draw the
    occlusion heat-map of every waiting input again (seconds per input on a board). The
    report found the first time is kept: however many rounds fail, each input is classified
    once, and the report finally written is complete (JSON, page, heat-map) and the same."""
    from edge import commit
    from edge.classifier import Classifier
    from edge.watch import Agent

    inbox, outbox = folders["inbox"], folders["outbox"]
    count = 5
    for i in range(count):
        gray_png(inbox / f"scan{i}.png", 40 + 20 * i)
    failing = threading.Event()
    failing.set()
    real = commit.write_bytes_atomic
    writes: dict[str, list[bytes]] = {}  # what each attempt wrote (or tried to), by file

    def broken(path, data, *args, **kwargs):
        if path.parent.name == "reports":
            writes.setdefault(path.name, []).append(data)
            if path.suffix == ".json" and failing.is_set():  # the last write of a report
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(commit, "write_bytes_atomic", broken)
    config = make_config(folders, test_model.path, watch={"retry_interval": 0.1})
    agent = Agent(config, Classifier(config), once=False)
    classified = []
    classify = agent.worker.classifier.classify
    monkeypatch.setattr(agent.worker.classifier, "classify",
                        lambda decoded: classified.append(1) or classify(decoded))
    retries = []  # after each retry, how many reports were kept for the next one
    run = agent.worker.run

    def retry(job, **kw):
        try:
            return run(job, **kw)
        finally:  # counted here, between two retries: read from this thread, kept() could
            retries.append(agent.worker.in_flight.kept())  # catch one taken for a retry

    monkeypatch.setattr(agent.worker, "run", retry)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 180  # bounds, not timings
        while time.monotonic() < deadline and len(retries) < 4 * count:
            time.sleep(0.05)
        assert len(retries) >= 4 * count  # four failed rounds at least
        assert len(classified) == count
        assert retries[-1] == count
        failing.clear()
        while time.monotonic() < deadline and agent.worker.counts["classified"] < count:
            time.sleep(0.05)
    finally:
        failing.clear()
        agent.stop_requested.set()
        runner.join(60)
    assert not runner.is_alive()
    assert agent.worker.counts["classified"] == count
    assert len(classified) == count  # once each, however many rounds failed
    assert agent.worker.in_flight.kept() == 0
    reports = sorted((outbox / "reports").glob("*.json"))
    assert len(reports) == count
    for path in reports:
        report = json.loads(path.read_text())
        page, png = path.with_suffix(".html").name, report["heatmap"]["file"]
        # every attempt wrote the whole report, pictures too, the same bytes each time
        tries = writes[path.name]
        assert len(tries) >= 2 and len(writes[page]) == len(writes[png]) == len(tries)
        for name in (path.name, page, png):
            assert len(set(writes[name])) == 1
            assert (outbox / "reports" / name).read_bytes() == writes[name][0]
        assert report["input"]["file_name"] in (outbox / "reports" / page).read_text()


def test_a_kept_report_is_not_used_for_changed_bytes_and_the_oldest_go_first():
    """``InFlight``'s kept reports: taken once, only for the same bytes; bounded."""
    from edge.prepare import InFlight, Prepared

    flight = InFlight()
    flight.hold("a" * 64, "t1")
    kept = Prepared(sha256="a" * 64, report={"x": 1})
    flight.release("a" * 64, "t1", keep=kept)
    assert flight.holder("a" * 64) is None  # identical inputs are not held up meanwhile
    assert flight.take_kept("t1", "b" * 64) is None  # the claimed file changed: classify
    assert flight.take_kept("t1", "a" * 64) is None  # forgotten either way
    flight.release("a" * 64, "t1", keep=kept)
    assert flight.take_kept("t1", "a" * 64) is kept
    for i in range(InFlight.KEEP_AT_MOST + 3):
        flight.release(f"{i:064d}", f"t{i}", keep=Prepared(sha256=f"{i:064d}"))
    assert flight.kept() == InFlight.KEEP_AT_MOST
    assert flight.take_kept("t0", f"{0:064d}") is None  # the oldest went first
    last = InFlight.KEEP_AT_MOST + 2
    assert flight.take_kept(f"t{last}", f"{last:064d}") is not None
