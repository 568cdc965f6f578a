"""install.sh's program: one venv per install under venvs/, a link venv naming the one the
agent runs, switched only once the new one runs (and, as root, passed `edge-agent check`).

pip used to upgrade the venv the running agent imports from: an input read mid-upgrade
could fail on a half-written package. These tests install small hand-made neuroedge wheels
(an `edge-agent` that answers --version and check) offline, from an empty wheelhouse, so
they need no network and no TensorFlow.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from test_install import (
    INSTALL,
    UNINSTALL,
    _private_namespace_available,
    make_model,
    open_tree,  # noqa: F401 - a fixture
    run,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="Linux only (venv layout)")]

AGENT = '''import sys
VERSION, CHECK_EXIT = {version!r}, {check_exit!r}
def main():
    if "--version" in sys.argv:
        print("edge-agent, version " + VERSION)
    elif "check" in sys.argv:
        print("all checks passed" if CHECK_EXIT == 0 else "check: this program is broken")
        return CHECK_EXIT
    return 0
'''


def fake_wheel(folder: Path, version: str, check_exit: int = 0) -> Path:
    """A neuroedge wheel whose `edge-agent` prints ``version`` and exits ``check_exit``
    from `check`: what install.sh needs of the real one, in a few hundred bytes."""
    info = f"neuroedge-{version}.dist-info"
    files = {
        "edge/__init__.py": "",
        "edge/entry.py": AGENT.format(version=version, check_exit=check_exit),
        f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: neuroedge\nVersion: {version}\n"
                             "Provides-Extra: edge\nProvides-Extra: dicom-codecs\n"),
        f"{info}/WHEEL": ("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                          "Tag: py3-none-any\n"),
        f"{info}/entry_points.txt": "[console_scripts]\nedge-agent = edge.entry:main\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"neuroedge-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return wheel


def tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture()
def staged(tmp_path: Path):
    """install(wheel) into one --destdir tree, offline; returns (install, prefix)."""
    dest, model, wheels = tmp_path / "root", make_model(tmp_path / "model"), tmp_path / "wheels"
    wheels.mkdir()

    def install(wheel: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(INSTALL, "--destdir", str(dest), "--model", str(model), "--wheel",
                   str(wheel), "--wheels", str(wheels), *extra, check=check)

    return install, dest / "opt" / "neuroedge"


def venvs(prefix: Path) -> list[str]:
    return sorted(p.name for p in (prefix / "venvs").iterdir())


def agent_version(prefix: Path) -> str:
    return subprocess.run([str(prefix / "venv" / "bin" / "edge-agent"), "--version"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_each_install_gets_its_own_venv_and_the_running_one_is_never_touched(
        tmp_path: Path, staged) -> None:
    install, prefix = staged
    out = install(fake_wheel(tmp_path / "w1", "1.0")).stdout
    assert "built neuroedge 1.0" in out
    (first,) = venvs(prefix)
    assert os.readlink(prefix / "venv") == f"venvs/{first}"
    assert agent_version(prefix) == "edge-agent, version 1.0"

    # the same wheel again: nothing new, the link unchanged
    out = install(fake_wheel(tmp_path / "w1", "1.0")).stdout
    assert "the program is unchanged (neuroedge 1.0)" in out
    assert venvs(prefix) == [first] and os.readlink(prefix / "venv") == f"venvs/{first}"

    # an agent started from the first venv and not restarted since (--no-start)
    before = tree_hash(prefix / "venvs" / first)
    runner = subprocess.Popen([str(prefix / "venvs" / first / "bin" / "python"), "-c",
                               "import time; time.sleep(120)"])
    try:
        time.sleep(1.1)  # the venvs' names carry the second they were made
        install(fake_wheel(tmp_path / "w2", "2.0"))
        second = os.readlink(prefix / "venv").split("/")[1]
        assert agent_version(prefix) == "edge-agent, version 2.0"
        # what the running agent imports from is exactly as it was
        assert tree_hash(prefix / "venvs" / first) == before
        time.sleep(1.1)
        out = install(fake_wheel(tmp_path / "w3", "3.0")).stdout
        third = os.readlink(prefix / "venv").split("/")[1]
        # the one before (a rollback) and the one still in use are kept
        assert venvs(prefix) == sorted([first, second, third])
        assert f"kept /opt/neuroedge/venvs/{first}: a running process still uses it" in out
    finally:
        runner.kill()
        runner.wait()
    time.sleep(1.1)
    out = install(fake_wheel(tmp_path / "w4", "4.0")).stdout
    fourth = os.readlink(prefix / "venv").split("/")[1]
    assert venvs(prefix) == sorted([third, fourth])
    assert f"removed the old program /opt/neuroedge/venvs/{first}" in out
    assert agent_version(prefix) == "edge-agent, version 4.0"


def test_a_failed_build_changes_nothing(tmp_path: Path, staged) -> None:
    install, prefix = staged
    install(fake_wheel(tmp_path / "w1", "1.0"))
    (first,) = venvs(prefix)
    proc = install(tmp_path / "w1" / "neuroedge-1.0-py3-none-any.whl", "--extras",
                   "edge,not-there", check=False)
    assert proc.returncode == 0  # pip only warns about an unknown extra
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"not a zip file")
    proc = install(broken, check=False)
    assert proc.returncode == 1
    assert "the agent still runs the program it had" in proc.stderr
    assert venvs(prefix) == [first] and os.readlink(prefix / "venv") == f"venvs/{first}"


def test_a_venv_folder_from_an_older_install_becomes_a_link(tmp_path: Path, staged) -> None:
    install, prefix = staged
    legacy = prefix / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(legacy)], check=True)
    # and what a power cut left of an earlier run: a link not renamed, a folder moved aside
    (prefix / ".venv-old.123" / "bin").mkdir(parents=True)
    (prefix / ".venv.tmp.124").symlink_to("venvs/gone")
    install(fake_wheel(tmp_path / "w1", "1.0"))
    assert legacy.is_symlink() and agent_version(prefix) == "edge-agent, version 1.0"
    assert not list(prefix.glob(".venv*"))  # nothing left aside
    run(UNINSTALL, "--destdir", str(tmp_path / "root"))
    assert not legacy.is_symlink() and not (prefix / "venvs").exists()


UPGRADE_SCRIPT = r"""
set -eu
[ -d "$T/etc" ] || cp -a /etc "$T/etc"
mount --bind "$T/etc" /etc
bash "$INSTALL" --prefix "$T/opt" --data "$T/data" --no-systemctl "$@"
"""


def test_a_program_that_fails_the_check_never_becomes_the_venv(open_tree: Path) -> None:  # noqa: F811
    """As root: the new venv's `edge-agent check` runs as the service user before the link
    names it; failing, the agent keeps the program it had and the new venv is removed."""
    why = _private_namespace_available()
    if why:
        pytest.skip(why)
    env = dict(os.environ, T=str(open_tree), INSTALL=str(INSTALL))
    model, wheels = make_model(open_tree / "model"), open_tree / "wheels"
    wheels.mkdir()

    def install(wheel: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                               UPGRADE_SCRIPT, "install", "--model", str(model), "--wheel",
                               str(wheel), "--wheels", str(wheels)], env=env,
                              capture_output=True, text=True, timeout=300)

    prefix = open_tree / "opt"
    proc = install(fake_wheel(open_tree / "w1", "1.0"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout  # the new venv's agent, as the service user
    good = os.readlink(prefix / "venv")
    time.sleep(1.1)
    proc = install(fake_wheel(open_tree / "w2", "2.0", check_exit=1))
    assert proc.returncode == 1
    assert "this program is broken" in proc.stdout
    assert f"is removed again: {prefix}/venv still names {good}" in proc.stdout
    assert os.readlink(prefix / "venv") == good
    assert venvs(prefix) == [good.split("/")[1]]
