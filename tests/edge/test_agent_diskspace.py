"""Free space on the outbox's disk: below [watch] min_free_mb no new input is taken, the
inputs wait in the inbox untouched, and they are taken once space is back; [watch]
warn_days ahead of that, the log, the front page and `check` say when it will be."""

from __future__ import annotations

import json
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


class _Clock:
    """A wall clock the test moves by hand (hours from 2026-12-01 00:00 UTC)."""

    def __init__(self) -> None:
        self.t = 1_796_083_200.0

    def __call__(self) -> float:
        return self.t

    def hours(self, n: float) -> None:
        self.t += n * 3600


def _fill(forecast, clock: _Clock, free_mb: list, days: float, mb_a_day: float) -> None:
    """Hourly measurements while the disk fills at ``mb_a_day``."""
    for _ in range(round(days * 24)):
        clock.hours(1)
        free_mb[0] -= mb_a_day / 24
        forecast.observe(round(free_mb[0] * MB))


def test_the_forecast_says_ahead_when_the_floor_will_be_reached(tmp_path):
    """100 MB a day from 2,000 MB free, floor 200, warning 14 days ahead: silent until a day
    of samples exists, then a forecast that is not yet a warning, then the warning with the
    rate, the days left and what to do. An offload (free space up by 1,000 MB) is not
    counted as negative use: the rate stays, only the days left grow."""
    from edge.diskspace import DiskForecast

    clock, free = _Clock(), [2000.0]
    history = tmp_path / "disk-usage.json"
    forecast = DiskForecast(history, 200 * MB, warn_days=14, clock=clock)
    _fill(forecast, clock, free, days=0.5, mb_a_day=100)
    assert forecast.rate is None and not forecast.warning()
    assert "not enough history yet" in forecast.describe()
    _fill(forecast, clock, free, days=2, mb_a_day=100)
    assert forecast.rate == pytest.approx(100 * MB, rel=0.01)
    assert forecast.days_left == pytest.approx(15.5, abs=0.1) and not forecast.warning()
    _fill(forecast, clock, free, days=4, mb_a_day=100)  # 1,350 MB left: 11.5 days
    assert forecast.warning() and forecast.days_left == pytest.approx(11.5, abs=0.1)
    said = forecast.describe()
    assert "1,350 MB free, 100 MB a day used over the last 6.5 days" in said
    then = time.strftime("%Y-%m-%d", time.localtime(clock.t + 11.5 * 86_400))  # a local day
    assert f"about 12 days (around {then})" in said and "min_free_mb = 200" in said

    free[0] += 1000  # an offload
    clock.hours(1)
    forecast.observe(round(free[0] * MB))
    assert forecast.rate == pytest.approx(100 * MB, rel=0.02) and not forecast.warning()

    again = DiskForecast(history, 200 * MB, warn_days=14, clock=clock)  # a restart
    again.observe(round(free[0] * MB))
    assert again.rate == forecast.rate and again.days_left == forecast.days_left


def test_the_history_is_bounded_and_survives_a_clock_set_back_and_damage(tmp_path, caplog):
    from edge.diskspace import DiskForecast

    clock, free = _Clock(), [5000.0]
    history = tmp_path / "disk-usage.json"
    forecast = DiskForecast(history, 200 * MB, warn_days=14, clock=clock)
    _fill(forecast, clock, free, days=30, mb_a_day=50)
    for _ in range(100):  # measured every 5 s: one sample an hour is kept
        clock.hours(0.01)
        forecast.observe(round(free[0] * MB))
    samples = json.loads(history.read_text())["samples"]
    assert len(samples) == 7 * 24 + 1  # a week (the window), hourly
    assert forecast.rate == pytest.approx(50 * MB, rel=0.01)

    clock.hours(-0.1)  # a time server's small correction: the history stays
    forecast.observe(round(free[0] * MB))
    assert forecast.rate == pytest.approx(50 * MB, rel=0.01)
    clock.hours(-48)  # a board without a real-time clock, set back
    forecast.observe(round(free[0] * MB))
    assert forecast.rate is None and len(json.loads(history.read_text())["samples"]) == 1

    caplog.set_level(logging.INFO)
    for damage in ("{not json", '{"schema": "other", "samples": []}',
                   '{"schema": "neuroedge.disk-usage/1", "samples": [["x", 1]]}'):
        history.write_text(damage)
        fresh = DiskForecast(history, 200 * MB, warn_days=14, clock=clock)
        fresh.observe(round(free[0] * MB))  # starts afresh, never an error
        assert fresh.rate is None
    assert "could not be read; starting it afresh" in caplog.text


def test_the_guard_warns_once_a_day_on_the_page_and_in_the_log(tmp_path, caplog):
    """The running agent's view: the warning is logged once a local day while it lasts,
    stands on the front page, and gives way to the "not being taken" line at the floor."""
    from edge.diskspace import DiskForecast

    caplog.set_level(logging.INFO)
    clock, free = _Clock(), [1000.0]
    forecast = DiskForecast(tmp_path / "disk-usage.json", 200 * MB, warn_days=14, clock=clock)
    guard = SpaceGuard(tmp_path, 200, every=0.0, measure=lambda path: round(free[0] * MB),
                       forecast=forecast)
    for hour in range(24 * 5):  # 100 MB a day: 8 days left on day one, 4 on day five
        clock.hours(1)
        free[0] -= 100 / 24
        assert guard.room(now=float(hour))
    said = [r.getMessage() for r in caplog.records if "is filling" in r.getMessage()]
    assert len(said) == 5 and all("edge-agent offload" in line for line in said)
    [line] = guard.page_lines()
    assert line.startswith("The disk holding the outbox is filling: 500 MB free")
    assert "about 3 days" in line and "edge-agent offload" in line
    free[0] = 150
    clock.hours(1)
    assert not guard.room(now=1000.0)
    [line] = guard.page_lines()
    assert line.startswith("New inputs are not being taken")
    off = SpaceGuard(tmp_path, 200, every=0.0, measure=lambda path: 10**12, forecast=None)
    assert off.room(now=0.0) and off.page_lines() == []


def test_check_reads_the_agents_history(tmp_path, test_model):
    """`edge-agent check` says how fast the outbox's disk fills, from the agent's samples,
    and warns within [watch] warn_days of the floor (a warning, not a failed check)."""
    from edge.diskspace import HISTORY_SCHEMA, free_bytes

    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    (outbox / ".state").mkdir(parents=True)
    args = ["check", "--model", str(test_model.path), "--inbox", str(inbox), "--outbox",
            str(outbox)]
    result = run_agent(args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not enough history yet" in result.stdout

    now, free = time.time(), free_bytes(outbox)
    a_day = free // 10  # ten days of room left at this rate, far below the floor: a warning
    samples = [[now - 86_400 * (3 - i), free + a_day * (3 - i)] for i in range(3)]
    (outbox / ".state" / "disk-usage.json").write_text(
        json.dumps({"schema": HISTORY_SCHEMA, "samples": samples}))
    result = run_agent(args)
    assert result.returncode == 0, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if "disk space" in line]
    assert line.startswith("WARNING disk space: filling:") and "edge-agent offload" in line
    assert "a day used over the last 3 days" in line and "about 10 days" in line
    assert "all checks passed" in result.stdout
