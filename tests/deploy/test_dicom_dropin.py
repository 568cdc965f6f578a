"""install.sh --dicom: the drop-in that gives the service its DICOM port and the network.

Without it the unit keeps PrivateNetwork=yes (test_systemd_unit.py); with it the unit plus
drop-in must still verify and still rate "OK" in ``systemd-analyze security``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_install import INSTALL, make_model, run, snapshot
from test_systemd_unit import MAX_EXPOSURE, security_rating

from edge.errors import EX_CONFIG

DROPIN = "etc/systemd/system/edge-agent.service.d/dicom.conf"


def directives(text: str) -> dict:
    found: dict = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture()
def staged(tmp_path: Path):
    model = make_model(tmp_path / "model")

    def install(*options: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(INSTALL, "--destdir", str(tmp_path / "root"), "--model", str(model),
                   "--no-venv", *options, check=check)
    return install, tmp_path / "root"


def test_dicom_writes_the_port_and_opens_only_what_it_needs(staged) -> None:
    install, root = staged
    install()
    assert not (root / DROPIN).exists()  # no receiver, no network unless asked
    out = install("--dicom").stdout
    assert f"wrote /{DROPIN}" in out
    d = directives((root / DROPIN).read_text())
    assert d["ExecStart"] == ["", "/opt/neuroedge/venv/bin/edge-agent --config "
                              "/etc/neuroedge/config.toml watch --dicom-port 11112"]
    assert d["PrivateNetwork"] == ["no"]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert d["IPAddressAllow"] == [
        "localhost link-local 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7"]
    assert "AmbientCapabilities" not in d  # 11112 needs no privilege
    before = snapshot(root)
    assert "wrote" not in install().stdout and snapshot(root) == before  # upgrade keeps it
    install("--dicom-port", "104", "--dicom-allow", "10.20.0.0/16 localhost")
    d = directives((root / DROPIN).read_text())
    assert d["ExecStart"][1].endswith("--dicom-port 104")
    assert d["AmbientCapabilities"] == d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert d["IPAddressAllow"] == ["10.20.0.0/16 localhost"]
    assert "removed" in install("--no-dicom").stdout
    assert not (root / DROPIN).parent.exists()


@pytest.mark.parametrize("options, message", [
    (("--dicom-port", "70000"), "from 1 to 65535"),
    (("--dicom-port", "abc"), "from 1 to 65535"),
    (("--dicom", "--dicom-allow", "10.0.0.0/8; rm -rf /"), "--dicom-allow takes"),
])
def test_bad_dicom_options_are_refused_before_anything_is_written(staged, options,
                                                                 message) -> None:
    install, root = staged
    proc = install(*options, check=False)
    assert proc.returncode == 1 and message in proc.stderr
    assert not root.exists() or not (root / DROPIN).exists()


def _verify_copy(root: Path, tmp_path: Path) -> Path:
    """Unit and drop-in with an ExecStart binary that exists here (verify checks it)."""
    stub = tmp_path / "edge-agent"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    folder = tmp_path / "verify"
    (folder / "edge-agent.service.d").mkdir(parents=True)
    for rel, dest in (("etc/systemd/system/edge-agent.service", "edge-agent.service"),
                      (DROPIN, "edge-agent.service.d/dicom.conf")):
        text = (root / rel).read_text().replace("/opt/neuroedge/venv/bin/edge-agent", str(stub))
        (folder / dest).write_text(text)
    return folder / "edge-agent.service"


@pytest.mark.parametrize("port", ["11112", "104"])
def test_unit_with_the_dropin_verifies_and_rates_ok(staged, tmp_path, port) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd)")
    install, root = staged
    install("--dicom-port", port)
    unit = _verify_copy(root, tmp_path)
    proc = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exposure, _rating, proc = security_rating(tool, unit)
    assert "PrivateNetwork=" in proc.stdout  # the drop-in was read: the network is open
    assert exposure <= MAX_EXPOSURE, proc.stdout


def test_the_dropins_command_line_is_the_real_clis(staged, tmp_path) -> None:
    install, root = staged
    install("--dicom")
    line = directives((root / DROPIN).read_text())["ExecStart"][1]
    args = line.split()[1:]
    config = tmp_path / "bad.toml"
    config.write_text(f'[paths]\ninbox = "{tmp_path}"\nmodel = "{tmp_path / "none"}"\n')
    args[args.index("/etc/neuroedge/config.toml")] = str(config)
    proc = subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == EX_CONFIG, proc.stderr  # got as far as the model: args parse
    assert "no such option" not in proc.stderr
