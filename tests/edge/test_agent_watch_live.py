"""A running agent (``python -m edge watch``): files dropped in, slow copies, SIGTERM, systemd."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from agent_helpers import fast_config, gray_png, pydicom_file, start_agent

from edge.manifest import sha256_file

pytestmark = pytest.mark.slow


class NotifySocket:
    """Plays systemd's part: a thread receives sd_notify datagrams as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except OSError:  # socket.timeout (an OSError) every 0.2 s, or closed
                continue

    def wait_for(self, message: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and message not in self.messages:
            time.sleep(0.05)
        return message in self.messages

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def index_entries(outbox: Path) -> list:
    entries = []
    for f in (outbox / "index").glob("*.jsonl") if (outbox / "index").exists() else []:
        entries += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return entries


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_live_drop_slow_copy_and_clean_stop(tmp_path, test_model, mode):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    config = tmp_path / "config.toml"
    config.write_text("[watch]\nsettle_seconds = 1.5\nsettle_after_close = 0.3\n"
                      "rescan_interval = 2.0\npoll_interval = 0.3\n")
    notify = NotifySocket(tmp_path / "notify.sock")
    args = ["--config", str(config), "watch", str(inbox), "--outbox", str(outbox),
            "--model", str(test_model.path)] + (["--poll"] if mode == "poll" else [])
    proc = start_agent(args, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="400000")
    try:
        assert notify.wait_for("READY=1", 60), "the agent never said READY=1"

        # 1. a copy tool writing a temporary name, then renaming: taken after the rename
        tmp = gray_png(tmp_path / "staging.png", 40)
        part = inbox / "quick.png.part"
        os.replace(str(tmp), str(part))
        time.sleep(0.5)
        assert part.exists(), "a .part file must not be taken"
        os.replace(str(part), str(inbox / "quick.png"))

        # 2. a slow copy straight into the final name, pausing between chunks
        source = pydicom_file("MR_small.dcm").read_bytes()
        slow = inbox / "slow.dcm"
        with open(str(slow), "wb") as handle:
            for i in range(5):
                handle.write(source[i * len(source) // 5:(i + 1) * len(source) // 5])
                handle.flush()
                time.sleep(0.5)
                assert not (outbox / "quarantine").exists() or not os.listdir(
                    str(outbox / "quarantine")), "a partial file was taken"

        assert wait_until(lambda: len(index_entries(outbox)) >= 2, 40), index_entries(outbox)
        entries = {e["file_name"]: e for e in index_entries(outbox)}
        assert entries["slow.dcm"]["outcome"] == "classified"
        full_sha = __import__("hashlib").sha256(source).hexdigest()
        assert entries["slow.dcm"]["id"] == full_sha  # the whole file, not a prefix of it
        assert entries["quick.png"]["outcome"] == "classified"
        assert not os.listdir(str(outbox / "quarantine"))
        assert notify.wait_for("WATCHDOG=1", 5), notify.messages

        # 3. SIGTERM: clean exit, STOPPING=1 told to systemd
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out[-3000:]
        assert notify.wait_for("STOPPING=1", 5)
        assert "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            print(proc.communicate()[0][-5000:])
        notify.close()


def interrupted_backlog(tmp_path: Path, test_model, *signals: int) -> tuple:
    """120 PNG files in an inbox; an agent started on them gets ``signals`` (50 ms apart)
    once its first report is written. Returns (inbox, outbox, the inputs' sha256 by name,
    the agent's arguments, its exit code, its output)."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    for i in range(120):  # enough that the signal always lands mid-backlog
        gray_png(inbox / f"s{i:03d}.png", (i * 6) % 256, size=256)
    inputs = {p.name: sha256_file(p) for p in inbox.iterdir()}
    args = ["--config", str(fast_config(tmp_path)), "watch", str(inbox), "--outbox", str(outbox),
            "--model", str(test_model.path)]
    proc = start_agent(args)
    try:
        assert wait_until(lambda: len(index_entries(outbox)) >= 1, 60)
        for k, signum in enumerate(signals):
            time.sleep(0.05 if k else 0)
            proc.send_signal(signum)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any(inbox.iterdir()), "the backlog finished before the signal: the test proves nothing"
    return inbox, outbox, inputs, args, proc.returncode, out


def test_sigterm_mid_backlog_finishes_the_files_it_took(tmp_path, test_model):
    inbox, outbox, inputs, _, code, out = interrupted_backlog(tmp_path, test_model,
                                                              signal.SIGTERM)
    assert code == 0, out[-3000:]
    assert "SIGTERM received" in out
    assert not os.listdir(str(outbox / ".state" / "jobs")), "stopped in the middle of a file"
    assert not os.listdir(str(outbox / ".state" / "claimed")), "a claimed file was left"
    remaining = {p.name for p in inbox.iterdir()}
    archived = {p.name for p in (outbox / "archive").rglob("*.png")}
    assert remaining | archived == set(inputs) and not remaining & archived
    assert len(index_entries(outbox)) == len(archived)


def test_burst_with_a_small_pending_limit_takes_everything(tmp_path, test_model):
    """More files than [watch] max_pending: memory stays bounded, rescans pick up the rest."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    config = fast_config(tmp_path, "max_pending = 5\n")
    proc = start_agent(["--config", str(config), "watch", str(inbox), "--outbox", str(outbox),
                        "--model", str(test_model.path)])
    try:
        time.sleep(1.0)
        for i in range(60):
            gray_png(inbox / f"b{i:02d}.png", i * 4)
        assert wait_until(lambda: len(index_entries(outbox)) >= 60, 90), len(
            index_entries(outbox))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert not list(inbox.iterdir())
    assert len({e["id"] for e in index_entries(outbox)}) == 60


def test_second_ctrl_c_stops_at_once_with_130_and_loses_nothing(tmp_path, test_model):
    """Ctrl-C twice: the agent stops mid-file (exit 130, one line, no traceback); the next
    run finishes what it had taken, so every input ends up archived exactly once."""
    inbox, outbox, inputs, args, code, out = interrupted_backlog(
        tmp_path, test_model, signal.SIGINT, signal.SIGINT)
    assert code == 130, out[-3000:]
    assert "edge-agent: interrupted" in out
    assert "Traceback" not in out and "Aborted!" not in out, out[-3000:]

    again = start_agent(args[:3] + ["--once"] + args[3:])
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0, out[-3000:]
    archived = {p.name: sha256_file(p) for p in (outbox / "archive").rglob("*.png")}
    assert archived == inputs
    assert not list(inbox.iterdir())
    assert len(index_entries(outbox)) == len(inputs)
