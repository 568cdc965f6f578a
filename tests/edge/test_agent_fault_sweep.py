"""A systematic sweep of disk errors: every OS call the agent makes fails once, in turn.

The guarantee is that nothing a clinic drops in is ever lost. The probes before this one
(``test_agent_failed_steps.py``) each found a step whose disk error escaped the per-input
handling, one step at a time. This sweep does it for every call at once: a clean run
records each OS call the ``edge`` package makes under the test's folders, by call site
(the innermost ``edge`` line and the line that asked for it), and then each site is made
to fail in turn, with EIO once and with ENOSPC for half a second (a disk that filled up
and was cleared), in a running agent that retries every 0.05 s. After each run, and a
restart with the disk healthy, every input must be in exactly one place with exactly one
index line, its report or reason record beside it; no log record may carry a traceback;
the agent must stop when asked; ``fsck`` must find nothing. A start-up is swept on a clean
outbox; one that recovers a journal left by a crash is not (yet).

It found four problems on 2026-12-07, each now with a test of its own below (they failed
before their fixes): an I/O error taken for "no such file" (the input counted as moved),
a read error while decoding taken for a damaged file (a good scan quarantined), a disk
error at start-up ending in a traceback or as a configuration error (exit 78, which
systemd does not restart), and the study tracker logging a passing disk error as a
traceback. ``NEUROEDGE_SWEEP_EVERY=n`` sweeps every n-th site only.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from agent_helpers import gray_png, make_config
from disk_sites import Disk, Plan, Site

# --- the agent and its books -------------------------------------------------------------

INPUTS = 6  # four pictures, an identical copy of one, a file that cannot be decoded
REFUSED = {"broken.png"}  # the inputs that must be quarantined
LIVE_BOUND = 30.0  # seconds: a bound on a run, not a timing


def fill_inbox(inbox: Path) -> dict[str, str]:
    """The inputs, by name, with their sha256."""
    from edge.manifest import sha256_file

    for i in range(4):
        gray_png(inbox / f"scan{i}.png", 30 + 60 * i)
    (inbox / "copy.png").write_bytes((inbox / "scan0.png").read_bytes())
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a picture" * 10)
    return {p.name: sha256_file(p) for p in inbox.iterdir()}


def finished(counts: dict[str, int]) -> int:
    return counts["classified"] + counts["duplicate"] + counts["quarantined"]


def agent(folders: dict[str, Path], model: Path, classifier: Any, once: bool,
          **sections: dict[str, Any]) -> Any:
    """The agent, retrying every 0.05 s; ``sections``: more of its configuration."""
    from edge.watch import Agent

    config = make_config(folders, model, **{"watch": {"retry_interval": 0.05}, **sections})
    return Agent(config, classifier, once=once)


def crash(made: Any, exc: Exception) -> str | None:
    """A run that raised, said with when: before the agent was ready (a start that failed,
    under systemd a restart every 30 s, or none after exit 78) or while it ran."""
    from edge.errors import EX_TEMPFAIL, EdgeError

    if isinstance(exc, EdgeError) and exc.exit_code == EX_TEMPFAIL:
        return None  # said in one line, and systemd starts it again: a clean refusal
    when = "while running" if made is not None and made._ready else "at start-up"
    return f"the agent crashed {when}: {exc!r}"


def start_running(made: Any) -> tuple[threading.Thread, list[Exception]]:
    """``made.run()`` on a thread of its own; the list gets what it raised, if anything."""
    errors: list[Exception] = []

    def run() -> None:
        try:
            made.run()
        except Exception as exc:  # noqa: BLE001 - what the sweeps look for
            errors.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    return runner, errors


def run_live(folders: dict[str, Path], model: Path, classifier: Any, inputs: int) -> list[str]:
    """The running agent (retries every 0.05 s), stopped once ``inputs`` are finished or
    ``LIVE_BOUND`` seconds have passed; what went wrong."""
    made = None
    try:
        made = agent(folders, model, classifier, once=False)
    except Exception as exc:  # noqa: BLE001 - what the sweep looks for
        return [w for w in [crash(made, exc)] if w]
    runner, errors = start_running(made)
    deadline = time.monotonic() + LIVE_BOUND
    while time.monotonic() < deadline and finished(made.worker.counts) < inputs \
            and runner.is_alive():
        time.sleep(0.02)
    done = finished(made.worker.counts)
    made.stop_requested.set()
    runner.join(LIVE_BOUND)
    if runner.is_alive():
        pytest.fail(f"the agent did not stop within {LIVE_BOUND:g}s of being asked")
    if errors:
        return [w for w in [crash(made, errors[0])] if w]
    if done < inputs:
        return [f"the running agent finished {done} of {inputs} inputs; the rest waited for "
                "a restart"]
    return []


def run_once(folders: dict[str, Path], model: Path, classifier: Any,
             **sections: dict[str, Any]) -> list[str]:
    """``watch --once``; what went wrong."""
    made = None
    try:
        made = agent(folders, model, classifier, once=True, **sections)
        made.run()
    except Exception as exc:  # noqa: BLE001 - what the sweep looks for
        return [w for w in [crash(made, exc)] if w]
    return []


class Trouble:
    """What a run showed that it must not: log records with a traceback, a thread that
    died with an exception."""

    def __init__(self) -> None:
        self.tracebacks: list[str] = []
        self.thread_deaths: list[str] = []

    @contextmanager
    def watching(self) -> Iterator[None]:
        catcher = _TracebackCatcher(self.tracebacks)
        logger = logging.getLogger("edge")
        logger.addHandler(catcher)
        hook = threading.excepthook

        def died(info: Any) -> None:
            self.thread_deaths.append(f"{info.thread.name}: {info.exc_type.__name__}")

        threading.excepthook = died
        try:
            yield
        finally:
            threading.excepthook = hook
            logger.removeHandler(catcher)


class _TracebackCatcher(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.into.append(record.getMessage())


def books(inputs: dict[str, str], folders: dict[str, Path]) -> list[str]:
    """What is wrong with the outbox once everything should be finished: every input in
    exactly one place with exactly one index line, its report or reason record beside it,
    nothing journaled or left half-written, and ``fsck`` content."""
    from edge.manifest import sha256_file

    inbox, outbox = folders["inbox"], folders["outbox"]
    wrong = []
    left = sorted(p.name for p in inbox.rglob("*") if p.is_file())
    if left:
        wrong.append(f"left in the inbox: {left}")
    stored: collections.Counter[str] = collections.Counter()
    for folder in ("archive", "quarantine"):
        for path in (outbox / folder).rglob("*"):
            if path.is_file() and not path.name.endswith(".reason.json"):
                stored[sha256_file(path)] += 1
                if folder == "quarantine" and not Path(f"{path}.reason.json").is_file():
                    wrong.append(f"quarantined without a reason record: {path.name}")
    expected = collections.Counter(inputs.values())
    if stored != expected:
        wrong.append(f"lost {dict(expected - stored)}, doubled {dict(stored - expected)}")
    lines = [json.loads(line) for f in (outbox / "index").glob("*.jsonl")
             for line in f.read_text().splitlines()]
    tokens = collections.Counter(e["token"] for e in lines)
    if len(lines) != len(inputs) or len(tokens) != len(lines):
        wrong.append(f"{len(lines)} index lines ({len(tokens)} tokens) for {len(inputs)} "
                     f"inputs: {sorted(e['outcome'] for e in lines)}")
    refused = sorted(e["file_name"] for e in lines if e["outcome"] == "quarantined")
    if refused != sorted(n for n in inputs if n in REFUSED):
        wrong.append(f"quarantined: {refused}")
    reports = sorted((outbox / "reports").glob("*.json"))
    for report in reports:
        json.loads(report.read_text())  # whole
    named = {e["id"] for e in lines if e["outcome"] == "classified"}
    if {r.stem for r in reports} != named:
        wrong.append(f"{len(reports)} reports for {len(named)} classified lines")
    return wrong + at_rest(folders)


def at_rest(folders: dict[str, Path]) -> list[str]:
    """What is wrong with an outbox that should be at rest: anything journaled, a temporary
    file left, what ``fsck --deep`` finds."""
    from edge.fsck import check_outbox

    outbox, wrong = folders["outbox"], []
    journal = os.listdir(outbox / ".state" / "jobs") + os.listdir(outbox / ".state" / "claimed")
    if journal:
        wrong.append(f"still journaled: {journal}")
    leftovers = [p.name for p in folders["root"].rglob(".neuroedge-*")]
    if leftovers:
        wrong.append(f"temporary files left: {leftovers}")
    found = check_outbox(outbox, repair=False, deep=True)
    return wrong + [f"fsck {f.kind}: {f.where}: {f.what}" for f in found.findings
                    if f.kind in ("problem", "pending")]


# --- the sweep -----------------------------------------------------------------------------

if TYPE_CHECKING:  # an alias for annotations only: Python 3.8 cannot subscript dict
    Setup = Callable[[dict[str, Path]], dict[str, str]]


def new_folders(root: Path) -> dict[str, Path]:
    (root / "inbox").mkdir(parents=True)
    return {"inbox": root / "inbox", "outbox": root / "outbox", "root": root}


@dataclass
class Runner:
    """Runs the agent on a fresh inbox with ``disk`` failing as a plan says, then once
    more on a healthy disk (a restart), and says what went wrong."""

    disk: Disk
    model: Path
    classifier: Any
    setup: Setup = field(default=lambda folders: fill_inbox(folders["inbox"]))
    live: bool = True  # the running agent; else ``--once``
    to_finish: int | None = None  # inputs a running agent must finish (None: all of them)

    def census(self, root: Path) -> list[Site]:
        """Every site a healthy run calls, in a stable order."""
        folders = new_folders(root)
        self.setup(folders)
        self.disk.calls.clear()
        self.disk.counting = True
        try:
            self._run(folders, INPUTS if self.to_finish is None else self.to_finish)
        finally:
            self.disk.counting = False
        return sorted(self.disk.calls, key=lambda s: (s.line, s.asked_by, s.call))

    def case(self, root: Path, plan: Plan) -> list[str]:
        folders = new_folders(root)
        inputs = self.setup(folders)
        trouble, wrong = Trouble(), []
        with trouble.watching():
            self.disk.plan = plan
            try:
                wrong += self._run(folders, len(inputs) if self.to_finish is None
                                   else self.to_finish)
            finally:
                self.disk.plan = None
            if not plan.failed:
                return []  # not reached this time (another thread's order)
            wrong += [f"restart: {w}" for w in run_once(folders, self.model, self.classifier)]
        wrong += [f"traceback logged: {t}" for t in trouble.tracebacks]
        wrong += [f"thread died: {t}" for t in trouble.thread_deaths]
        return wrong + books(inputs, folders)

    def _run(self, folders: dict[str, Path], inputs: int) -> list[str]:
        if self.live:
            return run_live(folders, self.model, self.classifier, inputs)
        return run_once(folders, self.model, self.classifier)


SAMPLE = int(os.environ.get("NEUROEDGE_SWEEP_EVERY", "1"))  # every n-th site, to go faster


def fail_each(runner: Runner, sites: list[Site], root: Path, error: int,
              lasting: float) -> list[str]:
    """Each site (every ``SAMPLE``-th) fails in its own case; what went wrong, by site."""
    found = []
    for i, site in enumerate(sites[::SAMPLE]):
        wrong = runner.case(root / f"case{i}", Plan(site.__eq__, error, lasting=lasting))
        if wrong:
            found.append(f"{site}:\n    " + "\n    ".join(wrong))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("live", [True, False], ids=["running", "once"])
@pytest.mark.parametrize("error,lasting", [(errno.EIO, 0.0), (errno.ENOSPC, 0.5)],
                         ids=["EIO-once", "ENOSPC-0.5s"])
def test_one_failing_disk_call_loses_nothing(tmp_path, test_model, loaded_classifier,
                                            monkeypatch, error, lasting, live):
    """Each site of a healthy run fails in turn: once with EIO, or with ENOSPC for half a
    second from its first call; in a running agent, or in ``--once``. Then a restart on a
    healthy disk. Nothing may be lost, doubled, left unfinished or logged as a traceback."""
    disk = Disk(tmp_path)
    disk.install(monkeypatch)
    runner = Runner(disk, test_model.path, loaded_classifier, live=live)
    sites = runner.census(tmp_path / "census")
    found = fail_each(runner, sites, tmp_path, error, lasting)
    print(f"{len(sites)} sites")
    assert not found, f"{len(found)} site(s):\n" + "\n".join(found)


# --- the findings, one test each -----------------------------------------------------------

def at(call: str, function: str) -> Callable[[Site], bool]:
    """The sites of one OS call in one ``edge`` function (``Class.method``)."""
    return lambda site: site.call == call and site.function == function


def one_case(tmp_path: Path, model: Path, classifier: Any, monkeypatch: pytest.MonkeyPatch,
             plan: Plan, live: bool = True) -> list[str]:
    disk = Disk(tmp_path)
    disk.install(monkeypatch)
    wrong = Runner(disk, model, classifier, live=live).case(tmp_path / "case", plan)
    assert plan.failed, "the planned failure was never reached"
    return wrong


def test_f1_an_lstat_error_in_the_move_is_not_taken_for_moved_already(
        tmp_path, test_model, loaded_classifier, monkeypatch):
    """``GroupCommit.move`` asked ``os.path.lexists(claimed)``, which answers False on any
    error: one EIO and the input counted as moved. Its index line named an archive file that
    was not there, its record was deleted, and the input stayed in ``.state/claimed`` until
    a restart adopted it as ``recovered-<token>``, whose line was then skipped (the token had
    one): fsck found an archived input with no line. ``durable.lexists`` raises it now."""
    plan = Plan(lambda site: site.call == "lstat" and site.function == "lexists"
                and site.asked_by.startswith("edge/commit.py:"))  # the move's first question
    assert one_case(tmp_path, test_model.path, loaded_classifier, monkeypatch, plan) == []


def test_f2_a_read_error_while_decoding_is_retried_not_a_quarantine(
        tmp_path, test_model, loaded_classifier, monkeypatch):
    """Reading the claimed input for decoding fails once with EIO. The decoders took every
    exception for a damaged file, and the good input was quarantined as undecodable instead
    of retried; now a read that failed for a reason of the machine is raised
    (``decoded.raise_if_passing``) and the input is retried."""
    plan = Plan(at("open", "decode_picture"))
    assert one_case(tmp_path, test_model.path, loaded_classifier, monkeypatch, plan) == []


@pytest.mark.parametrize("call,function", [
    ("mkdir", "Outbox.prepare"),  # ConfigError: exit 78, which systemd does not restart
    ("os.open", "Outbox.lock"),
    ("scandir", "DailyIndex.repair"),
    ("listdir", "Agent._recover"),
    ("mkdir", "StudyTracker.open"),
])
def test_f3_a_disk_error_while_starting_is_a_clean_temporary_failure(
        tmp_path, test_model, loaded_classifier, monkeypatch, call, function):
    """A start whose outbox answers EIO once must say so in one line and exit 75 (systemd
    starts it again), not end in a traceback (exit 1) or as a configuration error (78, not
    restarted: the agent stays down while the inbox fills)."""
    plan = Plan(at(call, function))
    assert one_case(tmp_path, test_model.path, loaded_classifier, monkeypatch, plan) == []


def test_f4_a_read_error_in_the_study_tracker_is_one_line_not_a_traceback(
        tmp_path, test_model, loaded_classifier, monkeypatch):
    """Reading a day's index for the study tracker fails once: ``StudyTracker._run`` caught
    it with ``log.exception``, a traceback in the journal for a passing error; now one
    line, and tried again."""
    plan = Plan(at("open", "StudyTracker.poll"))
    assert one_case(tmp_path, test_model.path, loaded_classifier, monkeypatch, plan) == []
