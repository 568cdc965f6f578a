"""deploy/systemd/edge-agent.service: valid, hardened, commented, and true to the agent.

``systemd-analyze`` checks are skipped (with the reason) where it is not installed; the
tests never install anything. The notify test runs the real agent against a fake
``$NOTIFY_SOCKET``, which is what ``Type=notify`` and ``WatchdogSec=`` rely on.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import deploy_fixtures
import pytest

from edge.errors import EX_CONFIG, EX_UNAVAILABLE

# shared fixtures (not a conftest.py: see deploy_fixtures)
device_model = deploy_fixtures.device_model


REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "edge-agent.service"
MAX_EXPOSURE = 2.0  # systemd-analyze security: 2.0 or lower rates "OK" (lower is better)

HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_UNIX",
    "UMask": "0027", "PrivateDevices": "yes", "PrivateNetwork": "yes",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
    "RestrictNamespaces": "yes", "LockPersonality": "yes", "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes", "SystemCallArchitectures": "native",
    "MemoryDenyWriteExecute": "yes", "DevicePolicy": "closed",
}


def directives(text: str) -> dict:
    """``{key: [values]}`` of the [Service] section."""
    section, found = "", {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_unit_has_the_required_settings() -> None:
    d = directives(UNIT.read_text())
    for key, value in HARDENING.items():
        assert d.get(key) == [value], f"{key}={d.get(key)}"
    assert d["Type"] == ["notify"] and d["Restart"] == ["on-failure"]
    assert int(re.match(r"(\d+)min", d["WatchdogSec"][0]).group(1)) >= 1
    prevent = d["RestartPreventExitStatus"][0].split()
    assert str(EX_CONFIG) in prevent and str(EX_UNAVAILABLE) in prevent
    assert d["User"] == ["neuroedge"] and d["Group"] == ["neuroedge"]
    assert d["ExecStart"] == [
        "/opt/neuroedge/venv/bin/edge-agent --config /etc/neuroedge/config.toml watch"]
    assert d["ReadWritePaths"] == ["-/var/lib/neuroedge/inbox -/var/lib/neuroedge/outbox"]
    assert "@system-service" in d["SystemCallFilter"]


def test_every_service_setting_is_commented() -> None:
    """Each setting sits in a block (lines between blank lines) that explains it."""
    text = UNIT.read_text()
    service = text.split("[Service]", 1)[1].split("[Install]", 1)[0]
    for block in re.split(r"\n\s*\n", service):
        lines = [line for line in block.strip().splitlines() if line.strip()]
        settings = [line for line in lines if not line.startswith("#")]
        if settings:
            assert any(line.startswith("# ") for line in lines), f"uncommented: {settings}"


def _unit_for_verify(tmp_path: Path, text: str) -> Path:
    """A copy whose ExecStart binary exists here (verify checks that it does)."""
    stub = tmp_path / "edge-agent"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = text.replace("/opt/neuroedge/venv/bin/edge-agent", str(stub))
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text)
    return unit


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd)")
    return path


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    unit = _unit_for_verify(tmp_path, UNIT.read_text())
    proc = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if "edge-agent.service" in line]
    assert complaints == []


def security_rating(tool: str, unit: Path) -> tuple[float, str, subprocess.CompletedProcess]:
    """``systemd-analyze security`` of a unit file: (exposure, rating, the finished run)."""
    proc = subprocess.run([tool, "security", "--offline=yes", "--no-pager",
                           f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit)],
                          capture_output=True, text=True, timeout=60)
    if "--offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip("this systemd-analyze is older than 250 (no --offline)")
    match = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+) (\w+)",
                      proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1)), match.group(2), proc


def test_systemd_analyze_security_rates_ok(tmp_path: Path) -> None:
    exposure, rating, proc = security_rating(_systemd_analyze(),
                                             _unit_for_verify(tmp_path, UNIT.read_text()))
    assert exposure <= MAX_EXPOSURE, proc.stdout
    assert rating in ("SAFE", "OK")
    assert proc.returncode == 0


def test_unit_command_line_exits_78_on_a_bad_config(tmp_path: Path) -> None:
    """ExecStart's arguments are the real CLI's, and a bad config gives the exit status
    that RestartPreventExitStatus= names, so systemd stops restarting."""
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ninbox = "{tmp_path / "inbox"}"\n'
                      f'model = "{tmp_path / "no-such-model"}"\n')
    (tmp_path / "inbox").mkdir()
    args = UNIT.read_text().split("ExecStart=", 1)[1].splitlines()[0].split()[1:]
    args[args.index("/etc/neuroedge/config.toml")] = str(config)
    proc = subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == EX_CONFIG, proc.stderr
    assert "Traceback" not in proc.stderr
    config.write_text("[paths]\nsetle_seconds = 1\n")  # a typo: unknown key
    proc = subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == EX_CONFIG and "unknown key" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX sockets")
def test_agent_speaks_the_notify_protocol(tmp_path: Path, device_model: Path) -> None:
    """READY=1 once watching, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    agent = subprocess.Popen(
        [sys.executable, "-m", "edge", "watch", str(inbox), "--model", str(device_model)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    messages = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and messages.count("WATCHDOG=1") < 2:
            messages.append(sock.recv(4096).decode())
        assert messages[0] == "READY=1", messages
        assert messages.count("WATCHDOG=1") >= 2, messages
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
        while True:
            sock.settimeout(1)
            try:
                messages.append(sock.recv(4096).decode())
            except OSError:
                break
    finally:
        if agent.poll() is None:
            agent.kill()
        sock.close()
    assert agent.returncode == 0, stderr
    assert messages[-1] == "STOPPING=1", messages
    assert any(m.startswith("STATUS=") for m in messages)


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    return sock, path


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX sockets")
def test_a_backlog_replayed_at_start_up_extends_the_start_timeout_per_input(
        tmp_path: Path, device_model: Path) -> None:
    """Inputs left in the journal by a crash are finished before READY=1. systemd's start
    timeout (TimeoutStartSec) covered all of them at once: a long backlog on a slow board
    was killed mid-replay at every start, each start counting one more attempt. Now each
    input extends it (EXTEND_TIMEOUT_USEC), so the timeout bounds one input."""
    from PIL import Image

    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    for i in range(3):
        Image.new("L", (64, 64), 40 * i).save(inbox / f"scan-{i}.png")
        # an old backlog: settled at the first scan, so the three are claimed in one group
        # (just written, each settles on its own millisecond, and may be claimed alone)
        os.utime(inbox / f"scan-{i}.png", (time.time() - 3600,) * 2)
    args = [sys.executable, "-m", "edge", "watch", str(inbox), "--outbox", str(outbox),
            "--model", str(device_model)]
    crashed = subprocess.run([*args, "--once"], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, NEUROEDGE_FAILPOINT="after_claim"))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    journaled = len(list((outbox / ".state" / "jobs").iterdir()))
    assert journaled == 3 and not list(inbox.iterdir())

    sock, notify_path = _notify_socket(tmp_path)
    sock.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    agent = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    messages: list[str] = []
    try:
        while "READY=1" not in messages:
            messages.append(sock.recv(4096).decode())
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
        sock.close()
    assert agent.returncode == 0, stderr
    extended = [m for m in messages[:messages.index("READY=1")]
                if m.startswith("EXTEND_TIMEOUT_USEC=")]
    assert len(extended) == journaled, messages
    assert all(int(m.split("=")[1]) >= 60_000_000 for m in extended)
    assert not list((outbox / ".state" / "jobs").iterdir())
    assert len(list((outbox / "archive").rglob("scan-*.png"))) == 3
