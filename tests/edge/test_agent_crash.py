"""Never lose an input: kill -9 at every step, then restart, and check the books balance."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import (
    fast_config,
    gray_png,
    other_filesystem,
    pydicom_file,
    run_agent,
    start_agent,
)
from PIL import Image

from edge.failpoints import CROSS_FILESYSTEM_POINTS, POINTS
from edge.manifest import sha256_file

pytestmark = pytest.mark.slow


def once_args(folder: Path, inbox: Path, outbox: Path, model: Path) -> list[str]:
    return ["--config", str(fast_config(folder)), "watch", str(inbox), "--outbox", str(outbox),
            "--model", str(model), "--once"]


def fill_inbox(inbox: Path) -> dict[str, str]:
    gray_png(inbox / "a.png", 30)
    gray_png(inbox / "b.png", 220)
    (inbox / "c.dcm").write_bytes(pydicom_file("CT_small.dcm").read_bytes())  # refused
    gray_png(inbox / "d.png", 30)  # same content as a.png
    (inbox / "e.dcm").write_bytes(pydicom_file("MR_small.dcm").read_bytes())
    return {p.name: sha256_file(p) for p in inbox.iterdir()}


def assert_books_balance(inputs: dict[str, str], inbox: Path, outbox: Path,
                         refused: set) -> None:
    """Every input is in exactly one place, with exactly one index line; nothing is pending."""
    assert not [p for p in inbox.rglob("*") if p.is_file()], "inputs left in the inbox"
    stored = collections.Counter()
    for folder in ("archive", "quarantine"):
        for p in (outbox / folder).rglob("*"):
            if p.is_file() and not p.name.endswith(".reason.json"):
                stored[sha256_file(p)] += 1
    assert stored == collections.Counter(inputs.values()), "inputs lost or duplicated"
    lines = [json.loads(line) for f in (outbox / "index").glob("*.jsonl")
             for line in f.read_text().splitlines()]
    assert len(lines) == len(inputs), f"{len(lines)} index lines for {len(inputs)} inputs"
    assert len({e["token"] for e in lines}) == len(lines)
    classified = {sha for name, sha in inputs.items() if name not in refused}
    reports = {p.stem for p in (outbox / "reports").glob("*.json")}
    assert reports == classified
    for sha in reports:
        json.loads((outbox / "reports" / f"{sha}.json").read_text())  # complete, valid JSON
    for name in refused:
        assert (outbox / "quarantine" / f"{name}.reason.json").is_file()
    assert not os.listdir(outbox / ".state" / "jobs")
    assert not os.listdir(outbox / ".state" / "claimed")
    leftovers = [p for p in outbox.rglob(".neuroedge-*")]
    assert not leftovers, leftovers
    checked = run_agent(["fsck", str(outbox), "--dry-run", "--deep"])  # the same, independently
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 problem(s), 0 repaired, 0 pending" in checked.stdout


def crash_at(point: str, args: list[str]) -> None:
    """The agent killed (SIGKILL) the second time it reaches ``point``."""
    crashed = run_agent(args, NEUROEDGE_FAILPOINT=f"{point}:2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]


def restart_and_balance(args: list[str], inputs: dict[str, str], inbox: Path,
                        outbox: Path) -> subprocess.CompletedProcess:
    finished = run_agent(args)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_books_balance(inputs, inbox, outbox, refused={"c.dcm"})
    return finished


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_step_then_restart(tmp_path, test_model, point):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    inputs = fill_inbox(inbox)
    args = once_args(tmp_path, inbox, outbox, test_model.path)
    crash_at(point, args)
    # the five inputs are claimed as one group: the crash leaves several jobs half done
    records = os.listdir(outbox / ".state" / "jobs")
    assert records, "the crash left no intent record to replay"
    finished = restart_and_balance(args, inputs, inbox, outbox)
    assert f"resuming {len(records)} input(s)" in finished.stderr


@pytest.mark.parametrize("point", CROSS_FILESYSTEM_POINTS)
def test_kill_during_a_claim_across_filesystems_then_restart(tmp_path, test_model, point):
    # the inbox on another filesystem: each input is hidden under its own folder, copied,
    # then unlinked; a crash between those steps must leave it in exactly one place
    import shutil
    import tempfile

    other = Path(tempfile.mkdtemp(dir=str(other_filesystem(tmp_path))))
    try:
        inbox, outbox = other / "inbox", tmp_path / "outbox"
        inbox.mkdir()
        inputs = fill_inbox(inbox)
        args = once_args(tmp_path, inbox, outbox, test_model.path)
        crash_at(point, args)
        assert list(inbox.glob(".neuroedge-held-*")), "the crash left no hidden input"
        restart_and_balance(args, inputs, inbox, outbox)
    finally:
        shutil.rmtree(str(other), ignore_errors=True)


def test_random_kill_minus_9_during_a_burst(tmp_path, test_model):
    """Real SIGKILLs at moments the test does not choose, several times in a row."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    rng = np.random.default_rng(7)
    for i in range(24):
        noise = rng.integers(0, 256, (512, 512), dtype=np.uint8)
        Image.fromarray(noise).save(str(inbox / f"img{i:02d}.png"))
    (inbox / "ct.dcm").write_bytes(pydicom_file("CT_small.dcm").read_bytes())
    inputs = {p.name: sha256_file(p) for p in inbox.iterdir()}
    args = once_args(tmp_path, inbox, outbox, test_model.path)
    kills = 0
    for delay in (0.0, 0.03, 0.07):
        proc = start_agent(args)
        index_dir = outbox / "index"
        deadline = time.monotonic() + 60
        start_count = _archived(outbox)
        while time.monotonic() < deadline and proc.poll() is None:
            if _archived(outbox) > start_count:  # it is working: kill it mid-stream
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
        assert index_dir.exists()
    final = run_agent(args)
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= 2
    assert_books_balance(inputs, inbox, outbox, refused={"ct.dcm"})


def _archived(outbox: Path) -> int:
    folder = outbox / "archive"
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
