"""deploy/install.sh and deploy/uninstall.sh, run for real into throwaway trees.

Two ways, both without side effects on this machine:
- ``--destdir``: a staging tree, as any user (no user, owners or systemctl);
- as root inside a private mount namespace whose /etc is a throwaway copy, so the real
  ``useradd`` and ``chown`` run and the owners can be checked.
Each checks every path the script creates, its mode (and owner), and that a second run
changes nothing at all: paths, modes, owners, contents and modification times.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import deploy_fixtures
import pytest

from edge.config import load_config
from edge.manifest import ModelManifest, TensorSpec, sha256_file, write_manifest
from edge.preprocess import DEFAULT_SPEC

# shared fixtures (not a conftest.py: see deploy_fixtures)
device_model = deploy_fixtures.device_model

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"
UNINSTALL = REPO / "deploy" / "uninstall.sh"

# Every path a --destdir install creates, with its mode (the staging tree's own parents
# such as /etc and /var/lib are created too and are not listed).
EXPECTED = {
    "etc/neuroedge": 0o750,
    "etc/neuroedge/config.toml": 0o640,
    "etc/neuroedge/config.example.toml": 0o644,
    "etc/systemd/system": 0o755,
    "etc/systemd/system/edge-agent.service": 0o644,
    "opt/neuroedge": 0o755,
    "opt/neuroedge/models": 0o755,
    "opt/neuroedge/models/toy-1.0.0": 0o755,
    "opt/neuroedge/models/toy-1.0.0/model.json": 0o644,
    "opt/neuroedge/models/toy-1.0.0/model.tflite": 0o644,
    "opt/neuroedge/models/current": None,  # a symlink
    "var/lib/neuroedge": 0o750,
    "var/lib/neuroedge/inbox": 0o2770,
    "var/lib/neuroedge/outbox": 0o750,
    "var/lib/neuroedge/outbox/.state": 0o700,
}


def make_model(folder: Path, version: str = "1.0.0", payload: bytes = b"tflite bytes") -> Path:
    """A model folder install.sh accepts: a .tflite and its manifest (sha256 matches)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.tflite").write_bytes(payload)
    manifest = ModelManifest(
        name="toy", version=version, architecture="toy_cnn",
        labels=("glioma", "meningioma", "notumor", "pituitary"), model_file="model.tflite",
        model_sha256=sha256_file(folder / "model.tflite"), quantization="int8",
        input=TensorSpec((1, 224, 224, 3), "int8", 1 / 255, -128),
        output=TensorSpec((1, 4), "int8", 1 / 256, -128), preprocess=DEFAULT_SPEC)
    write_manifest(manifest, folder / "model.json")
    return folder


def run(script: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script.name} {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def snapshot(root: Path) -> dict:
    """Everything a re-run could change: type, mode, owner, content hash, mtime."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = "dir"
            result[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                content, st.st_mtime_ns)
    return result


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model")


def test_destdir_install_creates_exactly_the_layout(tmp_path: Path, model: Path) -> None:
    dest = tmp_path / "root"
    out = run(INSTALL, "--destdir", str(dest), "--model", str(model), "--no-venv").stdout
    assert "installed model toy-1.0.0" in out
    created = {k: v for k, v in snapshot(dest).items()
               if k not in ("etc", "opt", "var", "var/lib", "etc/systemd")}
    assert set(created) == set(EXPECTED)
    for rel, mode in EXPECTED.items():
        if mode is not None:
            assert created[rel][1] == mode, f"{rel}: {oct(created[rel][1])} != {oct(mode)}"
    models = dest / "opt/neuroedge/models"
    assert os.readlink(models / "current") == "toy-1.0.0"
    for name in ("model.json", "model.tflite"):
        assert (models / "toy-1.0.0" / name).read_bytes() == (model / name).read_bytes()

    # The config is the agent's own example with the paths filled in, and the agent reads it.
    config = load_config(str(dest / "etc/neuroedge/config.toml"))
    assert config.paths.inbox == "/var/lib/neuroedge/inbox"
    assert config.paths.outbox == "/var/lib/neuroedge/outbox"
    assert config.paths.model == "/opt/neuroedge/models/current"
    assert (dest / "etc/neuroedge/config.example.toml").read_bytes() == (
        REPO / "edge/config.example.toml").read_bytes()
    assert (dest / "etc/systemd/system/edge-agent.service").read_bytes() == (
        REPO / "deploy/systemd/edge-agent.service").read_bytes()


def test_second_run_changes_nothing(tmp_path: Path, model: Path) -> None:
    dest = tmp_path / "root"
    args = ("--destdir", str(dest), "--model", str(model), "--no-venv")
    run(INSTALL, *args)
    before = snapshot(dest)
    out = run(INSTALL, *args).stdout
    assert snapshot(dest) == before
    assert "wrote" not in out and "kept the existing /etc/neuroedge/config.toml" in out


def test_upgrade_switches_model_and_keeps_config(tmp_path: Path, model: Path) -> None:
    dest = tmp_path / "root"
    run(INSTALL, "--destdir", str(dest), "--model", str(model), "--no-venv")
    config = dest / "etc/neuroedge/config.toml"
    config.write_text(config.read_text() + "\n# edited by the clinic\n")
    edited = config.read_bytes()
    v2 = make_model(tmp_path / "v2", version="2.0.0", payload=b"better tflite bytes")
    out = run(INSTALL, "--destdir", str(dest), "--model", str(v2), "--no-venv").stdout
    models = dest / "opt/neuroedge/models"
    assert os.readlink(models / "current") == "toy-2.0.0"
    assert (models / "toy-1.0.0/model.tflite").read_bytes() == b"tflite bytes"  # kept
    assert config.read_bytes() == edited
    assert "kept the existing" in out
    # Without --model an upgrade keeps the current model.
    out = run(INSTALL, "--destdir", str(dest), "--no-venv").stdout
    assert "keeping the current model toy-2.0.0" in out
    assert os.readlink(models / "current") == "toy-2.0.0"
    # ... and says which model this package ships, and how to switch to it
    shipped = json.loads((REPO / "edge/models/model.json").read_text())
    assert f"this package ships the model {shipped['name']}-{shipped['version']}" in out
    assert "--model " + str(REPO / "edge/models") in out and "edge-agent validate" in out


def test_custom_paths_are_written_into_unit_and_config(tmp_path: Path, model: Path) -> None:
    dest = tmp_path / "root"
    run(INSTALL, "--destdir", str(dest), "--model", str(model), "--no-venv",
        "--prefix", "/srv/neuro", "--data", "/data/clinic", "--user", "triage")
    unit = (dest / "etc/systemd/system/edge-agent.service").read_text()
    assert "ExecStart=/srv/neuro/venv/bin/edge-agent --config /etc/neuroedge/config.toml" in unit
    assert "ReadWritePaths=-/data/clinic/inbox -/data/clinic/outbox" in unit
    assert "User=triage\n" in unit and "Group=triage\n" in unit
    assert "/opt/neuroedge" not in unit and "/var/lib/neuroedge" not in unit
    config = load_config(str(dest / "etc/neuroedge/config.toml"))
    assert config.paths.inbox == "/data/clinic/inbox"
    assert config.paths.model == "/srv/neuro/models/current"
    assert (dest / "data/clinic/inbox").is_dir() and (dest / "srv/neuro/models/toy-1.0.0").is_dir()


def test_a_new_model_under_a_pinned_config_says_the_agent_will_not_run_it(
        tmp_path: Path, model: Path) -> None:
    """config.toml may name one model folder instead of models/current: install.sh said
    "the agent now runs model toy-2.0.0" while the agent went on with the pinned one."""
    dest = tmp_path / "root"
    out = run(INSTALL, "--destdir", str(dest), "--model", str(model), "--no-venv").stdout
    assert "the agent now runs model toy-1.0.0" in out
    config = dest / "etc/neuroedge/config.toml"
    text = config.read_text()
    assert 'model = "/opt/neuroedge/models/current"' in text
    config.write_text(text.replace('model = "/opt/neuroedge/models/current"',
                                   'model = "/opt/neuroedge/models/toy-1.0.0"'))
    second = make_model(tmp_path / "v2", version="2.0.0", payload=b"other bytes")
    out = run(INSTALL, "--destdir", str(dest), "--model", str(second), "--no-venv").stdout
    assert "the agent now runs" not in out
    assert ("models/current now names toy-2.0.0, but the agent does not run it: "
            "/etc/neuroedge/config.toml pins [paths] model = /opt/neuroedge/models/toy-1.0.0"
            in out)
    assert os.readlink(dest / "opt/neuroedge/models/current") == "toy-2.0.0"


def test_an_upgrade_that_forgot_data_is_refused_before_changing_anything(
        tmp_path: Path, model: Path) -> None:
    """The kept config.toml names the first install's --data; an upgrade without it used to
    rewrite the unit's ReadWritePaths= to /var/lib/neuroedge, leaving the agent's own folders
    read-only in its sandbox: the service then stopped with exit 78, not restarted."""
    dest = tmp_path / "root"
    run(INSTALL, "--destdir", str(dest), "--model", str(model), "--no-venv",
        "--data", "/data/clinic")
    before = snapshot(dest)
    proc = run(INSTALL, "--destdir", str(dest), "--no-venv", check=False)
    assert proc.returncode == 1
    assert 'inbox = "/data/clinic/inbox", outbox = "/data/clinic/outbox"' in proc.stderr
    assert "pass the --data the first install was given" in proc.stderr
    assert snapshot(dest) == before  # nothing changed, not even a folder created
    # the documented way to put the inbox elsewhere, a drop-in, is accepted
    config = dest / "etc/neuroedge/config.toml"
    config.write_text(config.read_text().replace('"/data/clinic/inbox"', '"/mnt/pacs/inbox"'))
    proc = run(INSTALL, "--destdir", str(dest), "--no-venv", "--data", "/data/clinic",
               check=False)
    assert proc.returncode == 1 and 'inbox = "/mnt/pacs/inbox"' in proc.stderr
    assert "outbox" not in proc.stderr.split("where the service")[0]
    dropin = dest / "etc/systemd/system/edge-agent.service.d"
    dropin.mkdir()
    (dropin / "override.conf").write_text("[Service]\nReadWritePaths=/mnt/pacs/inbox\n")
    run(INSTALL, "--destdir", str(dest), "--no-venv", "--data", "/data/clinic")
    unit = (dest / "etc/systemd/system/edge-agent.service").read_text()
    assert "ReadWritePaths=-/data/clinic/inbox -/data/clinic/outbox" in unit


@pytest.mark.parametrize("damage, message", [
    (lambda m: (m / "model.tflite").write_bytes(b"other bytes"), "corrupt"),
    (lambda m: (m / "model.json").unlink(), "has no model.json"),
    (lambda m: (m / "model.tflite").unlink(), "does not exist"),
])
def test_bad_model_is_refused_before_anything_is_written(tmp_path: Path, model: Path,
                                                         damage, message) -> None:
    damage(model)
    dest = tmp_path / "root"
    proc = run(INSTALL, "--destdir", str(dest), "--model", str(model), "--no-venv", check=False)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert list(dest.iterdir()) == []


def test_changed_model_with_the_same_version_is_refused(tmp_path: Path, model: Path) -> None:
    dest = tmp_path / "root"
    run(INSTALL, "--destdir", str(dest), "--model", str(model), "--no-venv")
    other = make_model(tmp_path / "other", payload=b"retrained, same version")
    proc = run(INSTALL, "--destdir", str(dest), "--model", str(other), "--no-venv", check=False)
    assert proc.returncode == 1 and "new version" in proc.stderr
    assert (dest / "opt/neuroedge/models/toy-1.0.0/model.tflite").read_bytes() == b"tflite bytes"


def test_files_reach_the_disk_before_the_link_that_names_them(tmp_path: Path,
                                                               model: Path) -> None:
    """A power cut just after an upgrade must not leave models/current naming a folder whose
    files never reached the disk (the agent would then refuse to start: exit 78, not
    restarted), nor an empty config.toml. The system calls of a real run say whether the
    data was flushed before the link was switched, and before the script ended."""
    strace = shutil.which("strace")
    if strace is None or subprocess.run([strace, "-o", os.devnull, "true"],
                                        capture_output=True).returncode != 0:
        pytest.skip("needs a working strace (apt install strace; ptrace allowed)")
    log = tmp_path / "calls"
    dest = tmp_path / "root"
    proc = subprocess.run(
        [strace, "-f", "-qq", "-o", str(log), "-e",
         "trace=sync,syncfs,fsync,fdatasync,rename,renameat,renameat2",
         "bash", str(INSTALL), "--destdir", str(dest), "--model", str(model), "--no-venv"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    calls = [line.split(None, 1)[1] for line in log.read_text().splitlines()
             if "(" in line and "= 0" in line]
    syncs = [i for i, call in enumerate(calls) if call.startswith(("sync", "fsync", "fdatasync"))]
    renames = [i for i, call in enumerate(calls) if call.startswith("rename")]
    model_in_place = [i for i in renames if '/toy-1.0.0"' in calls[i]]
    link = [i for i in renames if '/current"' in calls[i]]
    assert len(model_in_place) == 1 and len(link) == 1, calls
    assert any(model_in_place[0] < i < link[0] for i in syncs), calls
    assert syncs and syncs[-1] > renames[-1], calls  # config.toml and the unit too


@pytest.mark.parametrize("args, message", [
    (["--prefix", "relative/path"], "absolute path"),
    (["--user", "Bad User"], "plain user name"),
    (["--frobnicate"], "unknown option"),
    (["--model"], "needs a value"),
    (["--python", "python-does-not-exist"], "no 'python-does-not-exist' interpreter"),
    (["--wheels", "/nonexistent/wheelhouse"], "is not a folder"),
])
def test_usage_errors_are_clear(tmp_path: Path, model: Path, args, message) -> None:
    proc = run(INSTALL, "--destdir", str(tmp_path / "root"), "--model", str(model), *args,
               check=False)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr


def test_python_older_than_3_8_is_refused(tmp_path: Path, model: Path) -> None:
    """JetPack's own python3 is 3.6: the script must say to use python3.8."""
    fake = tmp_path / "python3.6"
    fake.write_text('#!/bin/sh\ncase "$*" in *version_info*) exit 1 ;; *) echo 3.6.9 ;; esac\n')
    fake.chmod(0o755)
    proc = run(INSTALL, "--destdir", str(tmp_path / "root"), "--model", str(model),
               "--python", str(fake), check=False)
    assert proc.returncode == 1
    assert "Python 3.6.9" in proc.stderr and "--python python3.8" in proc.stderr


def test_first_install_without_model_takes_the_shipped_one_or_says_what_to_do(
        tmp_path: Path) -> None:
    proc = run(INSTALL, "--destdir", str(tmp_path / "root"), "--no-venv", check=False)
    shipped = REPO / "edge/models/model.json"
    if not shipped.is_file():
        assert proc.returncode == 1 and "pass --model DIR" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(shipped.read_text())
    folder = f"{manifest['name']}-{manifest['version']}"
    models = tmp_path / "root/opt/neuroedge/models"
    assert os.readlink(models / "current") == folder
    assert (models / folder / manifest["model_file"]).read_bytes() == (
        REPO / "edge/models" / manifest["model_file"]).read_bytes()


def test_uninstall_removes_the_service_and_keeps_the_data(tmp_path: Path, model: Path) -> None:
    dest = tmp_path / "root"
    run(INSTALL, "--destdir", str(dest), "--model", str(model), "--no-venv")
    venv = dest / "opt/neuroedge/venv/bin"
    venv.mkdir(parents=True)
    (venv / "edge-agent").write_text("#!/bin/sh\n")
    dropin = dest / "etc/systemd/system/edge-agent.service.d"
    dropin.mkdir()
    ours = dropin / "dicom.conf"  # as install.sh --dicom writes it
    ours.write_text("[Service]\nPrivateNetwork=no\n")
    # the site's own (systemctl edit): a share's ReadWritePaths= is configuration, and
    # without it a reinstalled agent cannot move files out of that share
    override = dropin / "override.conf"
    override.write_text("[Unit]\nRequiresMountsFor=/mnt/pacs\n"
                        "[Service]\nReadWritePaths=/mnt/pacs/inbox\n")
    inbox_file = dest / "var/lib/neuroedge/inbox/scan.dcm"
    inbox_file.write_bytes(b"waiting")
    report = dest / "var/lib/neuroedge/outbox/reports/abc.json"
    report.parent.mkdir()
    report.write_text("{}")

    out = run(UNINSTALL, "--destdir", str(dest)).stdout
    assert not (dest / "etc/systemd/system/edge-agent.service").exists()
    assert not ours.exists() and not (dest / "opt/neuroedge/venv").exists()
    assert override.read_text().endswith("ReadWritePaths=/mnt/pacs/inbox\n")
    assert "kept the site's own drop-ins" in out and "override.conf" in out
    assert inbox_file.read_bytes() == b"waiting" and report.read_text() == "{}"
    assert (dest / "etc/neuroedge/config.toml").is_file()
    assert (dest / "opt/neuroedge/models/toy-1.0.0/model.tflite").is_file()
    assert "kept the data" in out
    run(UNINSTALL, "--destdir", str(dest))  # again: nothing left to remove, no error
    assert override.is_file()
    # a reinstall finds the site's drop-in where systemd reads it
    run(INSTALL, "--destdir", str(dest), "--model", str(model), "--no-venv")
    assert override.is_file() and (dest / "etc/systemd/system/edge-agent.service").is_file()


# --- as root, for real, in a private mount namespace -------------------------------------------

NAMESPACE_SCRIPT = r"""
set -eu
# Everything install.sh writes under /etc goes to a throwaway copy; the rest to $T.
[ -d "$T/etc" ] || cp -a /etc "$T/etc"
mount --bind "$T/etc" /etc
bash "$INSTALL" --model "$MODEL" --prefix "$T/opt" --data "$T/data" --no-venv --no-systemctl
getent passwd neuroedge > "$T/passwd-entry"
getent group neuroedge > "$T/group-entry"
"""


def _private_namespace_available() -> str:
    if os.geteuid() != 0:
        return "needs root (install.sh creates a user and changes owners)"
    if shutil.which("unshare") is None or shutil.which("useradd") is None:
        return "needs unshare and useradd"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True)
    return "" if probe.returncode == 0 else "cannot create a mount namespace here"


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_root_install_sets_owners_and_is_idempotent(tmp_path: Path, model: Path) -> None:
    why = _private_namespace_available()
    if why:
        pytest.skip(why)
    env = dict(os.environ, T=str(tmp_path), INSTALL=str(INSTALL), MODEL=str(model))

    def install() -> str:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                               NAMESPACE_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    out = install()
    assert "created system user neuroedge" in out
    user = (tmp_path / "passwd-entry").read_text().strip().split(":")
    uid, gid, shell = int(user[2]), int(user[3]), user[6]
    assert uid < 1000 and shell.endswith("nologin")  # a system account, no login
    assert user[5] == str(tmp_path / "data")

    owners = {
        "opt": (0, 0), "opt/models": (0, 0), "opt/models/toy-1.0.0/model.tflite": (0, 0),
        "data": (uid, gid), "data/inbox": (uid, gid), "data/outbox": (uid, gid),
        "data/outbox/.state": (uid, gid),
        "etc/neuroedge": (0, gid), "etc/neuroedge/config.toml": (0, gid),
        "etc/neuroedge/config.example.toml": (0, 0),
        "etc/systemd/system/edge-agent.service": (0, 0),
    }
    snap = snapshot(tmp_path)
    for rel, (want_uid, want_gid) in owners.items():
        assert snap[rel][2:4] == (want_uid, want_gid), rel
    assert snap["data/inbox"][1] == 0o2770 and snap["etc/neuroedge/config.toml"][1] == 0o640

    before = {k: v for k, v in snap.items() if k.startswith(("opt", "data", "etc/neuroedge",
                                                             "etc/systemd/system/edge-agent"))}
    out = install()
    assert "created" not in out and "wrote" not in out
    after = {k: v for k, v in snapshot(tmp_path).items() if k in before}
    assert after == before


# --- as root, with an agent the service user can run: the model is checked before use ----------

UPGRADE_SCRIPT = r"""
set -eu
[ -d "$T/etc" ] || cp -a /etc "$T/etc"
mount --bind "$T/etc" /etc
bash "$INSTALL" --prefix "$T/opt" --data "$T/data" --no-venv --no-systemctl "$@"
"""


def _service_venv(venv: Path) -> str:
    """A venv at ``venv`` whose ``bin/edge-agent`` runs this checkout with this venv's
    packages, for a user who cannot read this interpreter's home (pip would need an index).
    Returns why it cannot be made here, or ""."""
    python = Path(f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}")
    if not python.is_file():
        return f"no {python} (the same Python version as this venv, outside /root)"
    packages = Path(sysconfig.get_paths()["purelib"])
    for folder in (packages, REPO):
        for part in [folder, *folder.parents]:
            if not part.stat().st_mode & stat.S_IXOTH:
                return f"{part} cannot be entered by other users"
    subprocess.run([str(python), "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True, timeout=120)
    site = venv / "lib" / python.name / "site-packages"
    # addsitedir also runs that folder's .pth files (the editable install of this checkout)
    (site / "neuroedge-test.pth").write_text(f"import site; site.addsitedir({str(packages)!r})\n")
    agent = venv / "bin" / "edge-agent"
    agent.write_text(f"#!{venv}/bin/python\nimport sys\nfrom edge.entry import main\n"
                     "sys.exit(main())\n")
    agent.chmod(0o755)
    return ""


@pytest.fixture()
def open_tree():
    """A folder the service user can enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="neuroedge-deploy-", dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_a_model_that_fails_the_check_never_becomes_current(open_tree: Path,
                                                            device_model: Path) -> None:
    """A new model the runtime cannot load used to become models/current before
    `edge-agent check` failed: the running agent went on with the old one, and the next
    restart or reboot left the service failed (exit 69, not restarted)."""
    why = _private_namespace_available() or _service_venv(open_tree / "opt" / "venv")
    if why:
        pytest.skip(why)
    env = dict(os.environ, T=str(open_tree), INSTALL=str(INSTALL))

    def install(model: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                               UPGRADE_SCRIPT, "install", "--model", str(model)], env=env,
                              capture_output=True, text=True, timeout=300)

    first = shutil.copytree(device_model, open_tree / "model-v1")
    proc = install(first)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout  # the check ran, as the service user
    models = open_tree / "opt" / "models"
    v1 = os.readlink(models / "current")
    assert v1.startswith("toy-brightness-")

    # bytes that match their manifest (install.sh accepts them) but are no TFLite model
    broken = make_model(open_tree / "broken", version="9.0.0", payload=b"not a tflite model")
    proc = install(broken)
    assert proc.returncode == 1
    assert "check failed" in proc.stderr and f"current still names {v1}" in proc.stderr
    assert os.readlink(models / "current") == v1
    assert (models / v1 / "model.tflite").read_bytes() == (first / "model.tflite").read_bytes()

    # a good new version passes the check and becomes current
    second = shutil.copytree(device_model, open_tree / "model-v2")
    manifest = json.loads((second / "model.json").read_text())
    manifest["version"] = "2"
    (second / "model.json").write_text(json.dumps(manifest))
    proc = install(second)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.readlink(models / "current") == "toy-brightness-2"
    assert "the agent now runs model toy-brightness-2" in proc.stdout
