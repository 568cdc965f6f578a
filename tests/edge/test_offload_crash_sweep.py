"""kill -9 at any disk call of ``edge-agent offload``: the offload's crash sweep.

The offload is the one part of the agent that deletes what a clinic dropped in: it copies
whole old days to DEST (a USB disk), reads each copy back, then removes the sources.
``test_offload.py`` kills it at its named durable steps (``NEUROEDGE_FAILPOINT``), and
``test_offload_fault_sweep.py`` makes each of its disk calls fail, in-process, without
killing it. Here the real ``edge-agent offload`` runs in a subprocess (``crash_at_site.py``,
the crash sweep's) and kills itself with SIGKILL just before, or just after, one of its disk
calls (under the outbox or DEST), on a fresh copy of the fault sweep's history (three days,
the first two moved: duplicates across days, a quarantined input, a report kept because
the third day names it, a DICOM study whose slices came on two days). Then, for every
other case, the agent starts on that outbox (``watch --once``, an empty inbox: what a
reboot after the kill does); then the same offload runs again on a healthy disk, as the
docs say to. The books are the fault sweep's: every input, report, quarantined file and
study report in the outbox or at DEST with the bytes of a healthy run, every index line
naming a file that is there, no offload record left, ``fsck --deep`` clean, the last run
recorded as ok; and no traceback from the killed run, the agent or the rerun.

Cost: a case is a subprocess of about a second, a copy of the history and a rerun. CI runs
every ``CI_STRIDE``-th case; ``NEUROEDGE_CRASH_EVERY=n`` runs every n-th (1: all).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import REPO_ROOT, agent_env, make_config
from disk_sites import Site
from test_agent_crash_sweep import EVERY, HERE, KILLED, RUN_BOUND, Kill, Where, kills
from test_agent_fault_sweep import Trouble
from test_offload_fault_sweep import (  # noqa: F401 - dests, history, interrupted: fixtures
    BEFORE,
    Sweep,
    books,
    contents,
    dests,
    history,
    interrupted,
    run_offload,
)

CI_STRIDE = 16  # every n-th case in CI (about 30 of about 460 in each sweep)


def offload_run(outbox: Path, dest: Path, plan: dict[str, Any], log: Path) -> int:
    """``edge-agent offload`` in a subprocess with ``plan`` (``crash_at_site.py``); its exit
    status (``KILLED``: the kill came), its output in ``log``."""
    roots = [str(outbox.parent), str(dest)]
    args = [sys.executable, str(HERE / "crash_at_site.py"), "offload", str(outbox), "--before",
            BEFORE, "--to", str(dest)]
    env = agent_env(NEUROEDGE_CRASH_PLAN=json.dumps({"roots": roots, **plan}))
    with open(log, "w") as out:
        try:
            return subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  cwd=str(REPO_ROOT), timeout=RUN_BOUND).returncode
        except subprocess.TimeoutExpired:
            pytest.fail(f"the offload did not end within {RUN_BOUND:g}s: {log}")


class OffloadCrashes:
    """Fresh copies of the history, offloaded in a subprocess killed as a ``Kill`` says,
    then (``restart``) the agent started on the outbox, then offloaded again in this
    process on a healthy disk."""

    def __init__(self, outbox: Path, folder: Path, model: Path, classifier: Any,
                 interrupted_dest: Path | None = None) -> None:
        """``outbox``: the history; ``folder``: where each case's DEST is made;
        ``interrupted_dest``: the DEST of an offload stopped dead in ``outbox``."""
        self.sweep = Sweep(outbox, None, folder,  # type: ignore[arg-type]  # no Disk here
                           history_dest=interrupted_dest)
        self.model, self.classifier = model, classifier
        self.expected: tuple[dict[str, bytes], dict[str, bytes]] = ({}, {})

    def census(self, root: Path) -> dict[Site, int]:
        """Every site of a healthy offload with its count, and the books it leaves."""
        outbox, dest = self.sweep.fresh(root)
        out = root / "census.json"
        rc = offload_run(outbox, dest, {"census": str(out)}, root / "census.log")
        assert rc == 0, (root / "census.log").read_text()[-3000:]
        self.expected = (contents(outbox, dest), contents(dest, dest))
        assert books(outbox, dest, self.expected, self.sweep.original) == []
        return {Site(*fields[:4]): fields[4] for fields in json.loads(out.read_text())}

    def case(self, root: Path, kill: Kill, restart: bool) -> list[str] | None:
        """What went wrong (None: the kill was not reached)."""
        outbox, dest = self.sweep.fresh(root)
        log = root / "killed.log"
        if offload_run(outbox, dest, kill.plan(), log) != KILLED:
            return None
        wrong = []
        if "Traceback" in log.read_text():
            wrong.append(f"traceback in the killed run: {log.read_text()[-2000:]}")
        if restart:
            wrong += self._agent_starts(root, outbox)
        again = run_offload(outbox, dest)
        wrong += [f"rerun: {again}"] if again else []
        return wrong + books(outbox, dest, self.expected, self.sweep.original)

    def _agent_starts(self, root: Path, outbox: Path) -> list[str]:
        """The agent's start on the outbox the kill left (a reboot): ``watch --once`` with
        an empty inbox must end well, without a traceback."""
        from edge.watch import Agent

        inbox = root / "inbox"
        inbox.mkdir()
        config = make_config({"inbox": inbox, "outbox": outbox}, self.model,
                             studies={"settle_seconds": 0})
        trouble = Trouble()
        try:
            with trouble.watching():
                counts = Agent(config, self.classifier, once=True).run()
        except Exception as exc:  # noqa: BLE001 - what the sweep looks for
            return [f"the agent's start failed: {exc!r}"]
        return ([f"the agent's start: traceback logged: {t}" for t in trouble.tracebacks]
                + ([f"the agent's start: {counts}"] if counts.get("unfinished") else []))


@pytest.mark.slow
@pytest.mark.parametrize("finishing", [False, True], ids=["fresh", "finishing"])
def test_a_kill_at_any_disk_call_of_an_offload_loses_nothing(
        history, interrupted, dests, tmp_path, test_model, loaded_classifier,  # noqa: F811
        finishing):
    """Each site of a healthy offload, before and after its first and its last call (every
    ``CI_STRIDE``-th case in CI); every other case starts the agent between the kill and
    the rerun. ``finishing``: the outbox has an offload stopped dead while it removed its
    first day, which the run finishes first (a kill in the recovery of a kill)."""
    crashes = (OffloadCrashes(interrupted[0], dests, test_model.path, loaded_classifier,
                              interrupted[1]) if finishing else
               OffloadCrashes(history, dests, test_model.path, loaded_classifier))
    census = crashes.census(tmp_path / "census")
    cases = kills(census, nths=lambda count: [1, count])[::EVERY or CI_STRIDE]
    found, missed = [], []
    start = time.monotonic()
    for i, kill in enumerate(cases):
        wrong = crashes.case(tmp_path / f"case{i}", kill, restart=i % 2 == 1)
        if wrong is None:
            missed.append(str(kill))
        elif wrong:
            found.append(f"{kill}:\n    " + "\n    ".join(wrong))
    print(f"{len(census)} sites, {len(cases)} cases ({len(missed)} not reached) in "
          f"{time.monotonic() - start:.0f} s")
    assert len(missed) <= len(cases) // 10, f"kills not reached: {missed}"
    assert not found, f"{len(found)} case(s):\n" + "\n".join(found)


# --- the findings, one test each ----------------------------------------------------------

@pytest.mark.parametrize("restart", [False, True], ids=["rerun", "agent-then-rerun"])
@pytest.mark.parametrize("where", [
    Where("os.open", "create_temp", "edge/offload.py"),  # its own record, in .state
    Where("os.open", "create_temp", "edge/index.py"),  # DEST's front page
], ids=["record", "dest-page"])
def test_o1_a_kill_while_writing_leaves_no_temporary_file(
        history, dests, tmp_path, test_model, loaded_classifier, where, restart):  # noqa: F811
    """Killed just after a temporary file was made for one of its atomic writes (its run
    record in the outbox's ``.state``; DEST's front page), the offload left that file for
    good: the rerun cleaned temporary files only in the folders it copied into, the agent's
    start-up none at DEST. Now the offload removes its own leftovers, in the outbox (it
    holds its lock) and among DEST's pages, when it starts."""
    crashes = OffloadCrashes(history, dests, test_model.path, loaded_classifier)
    crashes.census(tmp_path / "census")
    found = {}
    for nth in range(1, 7):  # each such write in turn (the pages: the outbox's and DEST's)
        wrong = crashes.case(tmp_path / f"case{nth}", Kill(where, "after", nth), restart)
        if wrong is None:
            break  # no more such writes
        found.update({nth: wrong} if wrong else {})
    assert nth > 1 and found == {}
