"""Free space on the outbox's disk: below [watch] min_free_mb no new input is taken, the
inputs wait in the inbox untouched, and they are taken once space is back."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from agent_helpers import gray_png, make_config, run_agent

from edge.diskspace import MB, SpaceGuard


def _config(folder, name: str, min_free_mb: str):
    path = folder / name
    path.write_text("[watch]\nsettle_seconds = 0.0\nrescan_interval = 1.0\n"
                    f"min_free_mb = {min_free_mb}\n")
    return path


def test_the_guard_says_low_once_and_back_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    free = [500 * MB]
    guard = SpaceGuard(tmp_path, 200, every=5.0, measure=lambda path: free[0])
    assert guard.room(now=0.0) and guard.page_lines() == []
    free[0] = 150 * MB
    assert guard.room(now=1.0)  # not measured again within `every`
    assert not guard.room(now=6.0) and not guard.room(now=12.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "only 150 MB free" in warnings[0].getMessage()
    assert "min_free_mb = 200" in warnings[0].getMessage()
    [line] = guard.page_lines()
    assert "New inputs are not being taken" in line and "150 MB" in line
    free[0] = 900 * MB
    assert guard.room(now=18.0) and guard.page_lines() == []
    assert "900 MB free again" in caplog.text
    unreadable = SpaceGuard(tmp_path, 200, measure=lambda path: None)
    assert unreadable.room(now=0.0)  # cannot tell: the writes themselves will say
    off = SpaceGuard(tmp_path, 0, measure=lambda path: 0)
    assert off.room(now=0.0)


def test_once_leaves_the_inputs_untouched_and_says_why(tmp_path, test_model):
    """A real floor above the disk's free space (no mock): `watch --once` takes nothing,
    exits 75 saying how many inputs wait and why; with the floor lowered it takes them all."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    names = [gray_png(inbox / f"scan{i}.png", 40 * i + 30).name for i in range(3)]
    args = ["watch", str(inbox), "--outbox", str(outbox), "--model", str(test_model.path),
            "--once"]
    full = _config(tmp_path, "full.toml", "1e12")
    result = run_agent(["--config", str(full), *args])
    assert result.returncode == 75, result.stdout + result.stderr
    assert "3 input(s) were left in the inbox, untouched" in result.stderr
    assert "min_free_mb = 1e+12" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in inbox.iterdir()) == names
    assert not (outbox / "reports").exists() or not list((outbox / "reports").iterdir())
    page = (outbox / "index.html").read_text()
    assert "New inputs are not being taken" in page

    roomy = _config(tmp_path, "roomy.toml", "0")
    result = run_agent(["--config", str(roomy), *args])
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(inbox.iterdir()) == []
    assert "New inputs are not being taken" not in (outbox / "index.html").read_text()


def test_watch_waits_for_space_then_takes_the_inputs(folders, test_model, caplog):
    """The running agent: while the outbox's disk is low it takes nothing, says so on the
    front page, and takes everything within seconds of space coming back."""
    from edge.classifier import Classifier
    from edge.watch import Agent

    caplog.set_level(logging.INFO)
    config = make_config(folders, test_model.path)
    agent = Agent(config, Classifier(config), once=False)
    free = [10 * MB]
    agent.space = SpaceGuard(folders["outbox"], 200, every=0.1, measure=lambda path: free[0])
    for i in range(3):
        gray_png(folders["inbox"] / f"scan{i}.png", 50 + 40 * i)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        front = folders["outbox"] / "index.html"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                front.exists() and "New inputs are not being taken" in front.read_text()):
            time.sleep(0.1)
        assert "New inputs are not being taken" in front.read_text()
        assert len(list(folders["inbox"].iterdir())) == 3  # untouched
        free[0] = 900 * MB
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and list(folders["inbox"].iterdir()):
            time.sleep(0.1)
        assert list(folders["inbox"].iterdir()) == []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "New inputs are not being taken" in \
                front.read_text():
            time.sleep(0.2)
        assert "New inputs are not being taken" not in front.read_text()
    finally:
        agent.stop_requested.set()
        runner.join(60)
    assert not runner.is_alive()
    assert agent.worker.counts["classified"] == 3
    assert "taking new inputs" in caplog.text


@pytest.mark.parametrize("value", ["-1", "\"lots\""])
def test_a_bad_floor_is_a_config_error(tmp_path, value):
    config = _config(tmp_path, "bad.toml", value)
    result = run_agent(["--config", str(config), "check"])
    assert result.returncode == 78 and "min_free_mb" in result.stderr
    assert "Traceback" not in result.stderr
