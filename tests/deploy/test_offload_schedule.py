"""The scheduled offload: `install.sh --offload-to DIR` writes edge-agent-offload.timer and
.service and deploy/neuroedge-offload, which stops the agent, runs `edge-agent offload` as
the service user and starts the agent again.

The install is run into a --destdir staging tree (as test_install.py does); the script runs
for real with a stand-in `systemctl` (it records what it is asked and answers is-active as
the test says) and a stand-in `setpriv` (runs the command as this user), once with a
stand-in agent (what it is given, its exit status) and once with the real `edge-agent`
moving a real outbox's old day to another filesystem.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import deploy_fixtures
import pytest
from test_install import INSTALL, UNINSTALL, make_model, run, snapshot

# shared fixtures (not a conftest.py: see deploy_fixtures)
device_model = deploy_fixtures.device_model

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "neuroedge-offload"
SYSTEMD = REPO / "deploy" / "systemd"
UNITS = ("etc/systemd/system/edge-agent-offload.service",
         "etc/systemd/system/edge-agent-offload.timer")


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model")


def _env(path: Path) -> dict[str, str]:
    """offload.env as systemd's EnvironmentFile reads it (KEY="value" lines)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line and not line.startswith("#"))
    return {key: value.strip('"') for key, value in pairs}


def test_install_writes_the_schedule_and_keeps_it_on_upgrade(tmp_path: Path, model: Path):
    dest = tmp_path / "root"
    base = ("--destdir", str(dest), "--model", str(model), "--no-venv")
    out = run(INSTALL, *base, "--offload-to", "/media/usb/neuroedge/", "--offload-keep-days",
              "30").stdout
    assert "wrote /etc/neuroedge/offload.env" in out and "does not exist (yet)" in out
    env = _env(dest / "etc/neuroedge/offload.env")
    assert env == {"OFFLOAD_TO": "/media/usb/neuroedge", "KEEP_DAYS": "30",
                   "OFFLOAD_WHEN": "Sun *-*-* 03:00:00", "MAX_MINUTES": "60",
                   "OUTBOX": "/var/lib/neuroedge/outbox",
                   "SVC_USER": "neuroedge", "AGENT": "/opt/neuroedge/venv/bin/edge-agent",
                   "CONFIG": "/etc/neuroedge/config.toml"}
    script = dest / "opt/neuroedge/bin/neuroedge-offload"
    assert script.read_bytes() == SCRIPT.read_bytes() and os.stat(script).st_mode & 0o777 == 0o755
    timer = (dest / UNITS[1]).read_text()
    assert "OnCalendar=Sun *-*-* 03:00:00\n" in timer and "@WHEN@" not in timer
    assert (dest / UNITS[0]).read_bytes() == (SYSTEMD / "edge-agent-offload.service").read_bytes()

    before = snapshot(dest)
    out = run(INSTALL, *base).stdout  # an upgrade that does not mention the schedule keeps it
    assert snapshot(dest) == before and "offload" not in out

    run(INSTALL, *base, "--offload-to", "/mnt/nas/box1", "--offload-when", "daily",
        "--offload-max-minutes", "20")
    env = _env(dest / "etc/neuroedge/offload.env")
    assert (env["OFFLOAD_TO"], env["KEEP_DAYS"], env["OFFLOAD_WHEN"], env["MAX_MINUTES"]) == (
        "/mnt/nas/box1", "90", "daily", "20")
    assert "OnCalendar=daily\n" in (dest / UNITS[1]).read_text()

    out = run(INSTALL, *base, "--no-offload").stdout
    assert "removed the scheduled offload" in out
    for rel in (*UNITS, "etc/neuroedge/offload.env", "opt/neuroedge/bin"):
        assert not (dest / rel).exists(), rel


def test_custom_prefix_reaches_the_service_and_uninstall_removes_the_schedule(
        tmp_path: Path, model: Path):
    dest = tmp_path / "root"
    run(INSTALL, "--destdir", str(dest), "--model", str(model), "--no-venv", "--prefix",
        "/srv/ne", "--data", "/data/ne", "--offload-to", "/media/usb")
    service = (dest / UNITS[0]).read_text()
    assert "ExecStart=/srv/ne/bin/neuroedge-offload\n" in service
    env = _env(dest / "etc/neuroedge/offload.env")
    assert env["OUTBOX"] == "/data/ne/outbox" and env["AGENT"] == "/srv/ne/venv/bin/edge-agent"
    out = run(UNINSTALL, "--destdir", str(dest), "--prefix", "/srv/ne").stdout
    assert "removed /etc/systemd/system/edge-agent-offload.timer" in out
    assert not any((dest / rel).exists() for rel in (*UNITS, "srv/ne/bin"))
    assert (dest / "etc/neuroedge/offload.env").exists()  # configuration stays


@pytest.mark.parametrize("args, message", [
    (["--offload-to", "usb"], "--offload-to must be an absolute path"),
    (["--offload-to", "/media/my usb"], "--offload-to must be an absolute path"),
    (["--offload-to", "/media/usb", "--offload-keep-days", "0"], "at least 1"),
    (["--offload-to", "/media/usb", "--offload-keep-days", "ninety"], "number of days"),
    (["--offload-to", "/media/usb", "--offload-when", "someday"], "calendar"),
    (["--offload-keep-days", "30"], "go with --offload-to DIR"),
    (["--offload-max-minutes", "30"], "go with --offload-to DIR"),
    (["--offload-to", "/media/usb", "--offload-max-minutes", "0"], "from 1 to 1440"),
    (["--offload-to", "/media/usb", "--offload-max-minutes", "2h"], "number of minutes"),
])
def test_offload_usage_errors_are_clear(tmp_path: Path, model: Path, args, message):
    proc = run(INSTALL, "--destdir", str(tmp_path / "root"), "--model", str(model),
               "--no-venv", *args, check=False)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "root" / "etc/neuroedge/offload.env").exists()


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd)")
    script = tmp_path / "neuroedge-offload"
    shutil.copy(str(SCRIPT), str(script))
    env = tmp_path / "offload.env"
    env.write_text('OFFLOAD_TO="/media/usb"\n')
    service = (SYSTEMD / "edge-agent-offload.service").read_text().replace(
        "/opt/neuroedge/bin/neuroedge-offload", str(script)).replace(
        "/etc/neuroedge/offload.env", str(env))
    (tmp_path / "edge-agent-offload.service").write_text(service)
    (tmp_path / "edge-agent-offload.timer").write_text(
        (SYSTEMD / "edge-agent-offload.timer").read_text().replace("@WHEN@", "Sun 03:00"))
    for unit in ("edge-agent-offload.service", "edge-agent-offload.timer"):
        proc = subprocess.run([tool, "verify", "--man=no", str(tmp_path / unit)],
                              capture_output=True, text=True, timeout=60)
        complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                      if "edge-agent-offload" in line]
        assert proc.returncode == 0 and complaints == [], proc.stdout + proc.stderr


# --- the script ---------------------------------------------------------------------------

def _stand_ins(folder: Path, active: bool, start_fails: bool = False) -> tuple[dict, Path]:
    """``systemctl`` and ``setpriv`` stand-ins; the environment that puts them first."""
    calls = folder / "calls"
    folder.mkdir()
    (folder / "systemctl").write_text(
        f'#!/bin/sh\necho "systemctl $*" >>{calls}\n'
        f'case "$1" in is-active) exit {0 if active else 3} ;;\n'
        f'  start) exit {1 if start_fails else 0} ;; esac\nexit 0\n')
    (folder / "setpriv").write_text(  # drops --reuid/--regid/--init-groups, runs the rest
        f'#!/bin/sh\necho "setpriv $1 $2" >>{calls}\nshift 4\nexec "$@"\n')
    for name in ("systemctl", "setpriv"):
        (folder / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}
    return env, calls


def _settings(agent: str, outbox: Path, to: Path, keep: str = "30",
              config: str = "/etc/neuroedge/config.toml") -> dict[str, str]:
    return {"OFFLOAD_TO": str(to), "KEEP_DAYS": keep, "OUTBOX": str(outbox),
            "SVC_USER": "root", "AGENT": agent, "CONFIG": config}


def _fake_agent(folder: Path, calls: Path, status: int) -> str:
    agent = folder / "edge-agent"
    agent.write_text(f'#!/bin/sh\necho "edge-agent $*" >>{calls}\nexit {status}\n')
    agent.chmod(0o755)
    return str(agent)


@pytest.mark.parametrize("active, status", [(True, 0), (True, 66), (False, 0)])
def test_the_script_stops_offloads_and_starts_the_agent_again(tmp_path: Path, active: bool,
                                                              status: int):
    """Stop (only a running agent), offload with the settings, start again whatever the
    offload did (only if it was running); the exit status is the offload's."""
    env, calls = _stand_ins(tmp_path / "bin", active)
    agent = _fake_agent(tmp_path / "bin", calls, status)
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
        env={**env, **_settings(agent, Path("/data/outbox"), Path("/media/usb"))})
    assert proc.returncode == status, proc.stdout + proc.stderr
    offload = ("edge-agent --config /etc/neuroedge/config.toml offload /data/outbox "
               "--keep-days 30 --to /media/usb --other-disk --max-minutes 60")
    expected = ["systemctl is-active --quiet edge-agent.service",
                *(["systemctl stop edge-agent.service"] if active else []),
                "setpriv --reuid=0 --regid=0", offload,
                *(["systemctl start edge-agent.service"] if active else [])]
    assert calls.read_text().splitlines() == expected


def test_an_offload_past_its_time_is_stopped_and_the_agent_started_again(tmp_path: Path):
    """An offload that does not end (here: one that sleeps; on a box, a share or disk that
    stopped answering) is stopped once MAX_MINUTES + GRACE_MINUTES are up (here the tests'
    2-second deadline), and the agent is started again: the outbox is never left without
    its agent for longer than that."""
    env, calls = _stand_ins(tmp_path / "bin", active=True)
    agent = tmp_path / "bin" / "edge-agent"
    agent.write_text(f'#!/bin/sh\necho "edge-agent $*" >>{calls}\necho $$ >{tmp_path}/pid\n'
                     'exec sleep 600\n')
    agent.chmod(0o755)
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
        env={**env, **_settings(str(agent), Path("/data/outbox"), Path("/media/usb")),
             "MAX_MINUTES": "5", "NEUROEDGE_OFFLOAD_DEADLINE_S": "2"})
    assert proc.returncode == 124, proc.stdout + proc.stderr
    assert time.monotonic() - started < 30  # TERM was enough: no minute's wait for KILL
    assert "still runs 2 s after it began" in proc.stderr and "nothing is lost" in proc.stderr
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    lines = calls.read_text().splitlines()
    assert lines[-2].endswith("--other-disk --max-minutes 5"), lines
    assert lines[-1] == "systemctl start edge-agent.service"


def test_the_script_says_what_is_missing_and_a_failed_restart(tmp_path: Path):
    env, calls = _stand_ins(tmp_path / "bin", active=True, start_fails=True)
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 78 and "OFFLOAD_TO is not set" in proc.stderr
    assert not calls.exists()  # nothing stopped
    agent = _fake_agent(tmp_path / "bin", calls, 0)
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
        env={**env, **_settings(agent, Path("/data/outbox"), Path("/media/usb"))})
    assert proc.returncode == 1 and "did not start again" in proc.stderr


def test_the_script_moves_a_real_outboxs_old_day(tmp_path: Path, device_model: Path,
                                                 monkeypatch):
    """The real `edge-agent` under the script: the old day goes to a folder on another
    filesystem, the recent one stays; the agent's next start finds no failure to name."""
    sys.path.insert(0, str(REPO / "tests" / "edge"))
    from agent_helpers import gray_png, make_config, other_filesystem, run_once

    from edge import commit
    from edge.offload import LAST_NAME, last_offload_alerts

    folders = {"inbox": tmp_path / "inbox", "outbox": tmp_path / "outbox"}
    folders["inbox"].mkdir()
    config = make_config(folders, device_model)
    for day, level in (("2025-03-01", 40), ("2025-03-02", 200)):
        gray_png(folders["inbox"] / f"scan-{day}.png", level)
        monkeypatch.setattr(commit, "local_day", lambda day=day: day)
        assert run_once(config)["classified"] == 1
    monkeypatch.undo()
    keep = str((datetime.date.today() - datetime.date(2025, 3, 2)).days)
    env, calls = _stand_ins(tmp_path / "bin", active=True)
    agent = shutil.which("edge-agent", path=os.path.dirname(sys.executable))
    assert agent is not None
    settings = tmp_path / "agent.toml"
    settings.write_text("")  # the defaults
    with tempfile.TemporaryDirectory(dir=str(other_filesystem(tmp_path))) as usb:
        proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                              timeout=120, env={**env, **_settings(
                                  agent, folders["outbox"], Path(usb), keep, str(settings))})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (Path(usb) / "index" / "2025-03-01.jsonl").is_file()
    assert [p.name for p in (folders["outbox"] / "index").glob("*.jsonl")] == [
        "2025-03-02.jsonl"]
    assert (folders["outbox"] / ".state" / LAST_NAME).is_file()
    assert last_offload_alerts(folders["outbox"]) == []
    assert calls.read_text().splitlines()[-1] == "systemctl start edge-agent.service"
