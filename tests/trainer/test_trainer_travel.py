"""What a GPU-machine call carries, measured before it is made (trainer.travel), and the
script that makes the campaign's carried files fit (trainer/campaign-prepare.sh)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from trainer_testdata import make_dataset

from trainer.cli import main
from trainer.errors import OptionError
from trainer.travel import BLOCK, LIMIT, TravelError, check, measure

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text("/.gpu/\n/.whl/\n/runs/\n")
    (repo / "code.py").write_bytes(b"x" * 5000)  # tracked: two blocks
    (repo / "deleted.txt").write_text("gone")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    (repo / "deleted.txt").unlink()  # tracked but deleted: does not travel
    (repo / "notes.txt").write_bytes(b"n" * 10)  # untracked, not ignored: travels
    (repo / "runs").mkdir()
    (repo / "runs" / "model.keras").write_bytes(b"w" * 100_000)  # ignored, not carried
    (repo / ".gpu").mkdir()
    (repo / ".gpu" / "pack.tar.gz").write_bytes(b"p" * 9000)
    return repo


def test_the_tree_counts_what_git_would_send_and_carried_paths_count_apart(checkout):
    tree, gpu = measure(checkout, [".gpu"])
    assert tree.name == "working tree" and gpu.name == ".gpu"
    names = {path for _, path in tree.largest}
    assert names == {".gitignore", "code.py", "notes.txt"}  # not runs/, not deleted.txt
    assert tree.files == 3
    assert tree.bytes == 5000 + 10 + len("/.gpu/\n/.whl/\n/runs/\n")
    assert tree.counted == (2 + 1 + 1) * BLOCK  # whole blocks, one at least
    assert (gpu.files, gpu.bytes, gpu.counted) == (1, 9000, 3 * BLOCK)


def test_a_shared_folder_travels_even_where_git_ignores_it(checkout):
    (checkout / ".gitignore").write_text("/.gpu/\n/runs/\n/shared/big.bin\n")
    (checkout / "shared").mkdir()
    (checkout / "shared" / "big.bin").write_bytes(b"s" * 20_000)
    (checkout / "shared" / "small.txt").write_text("s")
    tree, = measure(checkout)
    names = {path for _, path in tree.largest}
    assert {"shared/big.bin", "shared/small.txt"} <= names
    assert tree.files == 5  # shared/small.txt once, though git lists it too


def test_over_the_limit_the_call_is_refused_naming_the_largest_files(checkout):
    parts = measure(checkout, [".gpu"])
    assert check(parts, limit=10 * BLOCK, margin=0) == []  # 7 blocks fit in 10
    with pytest.raises(TravelError) as caught:
        check(parts, limit=10 * BLOCK, margin=4 * BLOCK)
    message = str(caught.value)
    assert "would refuse the call" in message
    assert ".gpu/pack.tar.gz (0.0 MB)" in message and "code.py" in message
    assert "lower quality" in message


def test_a_carried_folder_of_many_files_is_told_to_be_a_tar_file(checkout):
    loose = checkout / ".gpu" / "pack"
    loose.mkdir()
    for i in range(501):
        (loose / f"{i}.webp").write_bytes(b"i")
    warnings = check(measure(checkout, [".gpu"]), limit=2**30)
    assert len(warnings) == 1 and "502 files: tar it" in warnings[0]
    with pytest.raises(TravelError, match="502 files: tar it"):
        check(measure(checkout, [".gpu"]), limit=100 * BLOCK, margin=0)


def test_the_command_prints_the_table_and_fails_cleanly(checkout, monkeypatch):
    runner = CliRunner()
    fits = runner.invoke(main, ["travel", "--repo", str(checkout), "--carry", ".gpu"])
    assert fits.exit_code == 0, fits.output
    assert "working tree" in fits.output and ".gpu" in fits.output
    assert "MiB to spare" in fits.output

    over = runner.invoke(main, ["travel", "--repo", str(checkout), "--carry", ".gpu",
                                "--limit-mib", "0.02", "--margin-mib", "0"])
    assert over.exit_code == 1
    assert "MiB over" in over.output and "error: a device call would carry" in over.output

    missing = runner.invoke(main, ["travel", "--repo", str(checkout), "--carry", ".whl"])
    assert missing.exit_code == 64 and "--carry .whl: no such file or folder" in missing.output
    outside = runner.invoke(main, ["travel", "--repo", str(checkout), "--carry", "../x"])
    assert outside.exit_code == 64 and "not inside the checkout" in outside.output
    bad = runner.invoke(main, ["travel", "--repo", str(checkout), "--margin-mib", "64"])
    assert bad.exit_code == 64 and "--margin-mib" in bad.output


def test_a_folder_that_is_no_git_checkout_is_said_so(tmp_path):
    result = CliRunner().invoke(main, ["travel", "--repo", str(tmp_path)])
    assert result.exit_code == 64 and "is not a git checkout" in result.output  # not 1: size
    with pytest.raises(OptionError):
        measure(tmp_path, ["nothing"])


def test_a_sub_folder_of_the_checkout_is_refused_not_measured_alone(checkout):
    """git lists a sub-folder's files alone; the tool sends the whole checkout."""
    (checkout / "sub").mkdir()
    (checkout / "sub" / "big.bin").write_bytes(b"b" * 100_000)
    result = CliRunner().invoke(main, ["travel", "--repo", str(checkout / "sub")])
    assert result.exit_code == 64 and "not its top level" in result.output
    assert str(checkout.resolve()) in result.output


def test_a_carried_folder_whose_name_starts_with_two_dots_is_inside(checkout):
    (checkout / "..odd").mkdir()
    (checkout / "..odd" / "f").write_bytes(b"f")
    tree, odd = measure(checkout, ["..odd"])
    assert (odd.name, odd.files) == ("..odd", 1)


# --- trainer/campaign-prepare.sh -----------------------------------------------------------

def _prepare_env(repo: Path, data: Path, external: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHON=sys.executable, DATA=str(data), EXTERNAL=str(external),
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests" / "trainer")]))
    env.update(extra)
    return env


@pytest.fixture
def campaign_checkout(checkout, tmp_path):
    """A checkout with the script's own files, a tiny data set and external check, and the
    three wheels present already (nothing is downloaded in a test)."""
    (checkout / ".gpu" / "pack.tar.gz").unlink()
    (checkout / "trainer").mkdir()
    shutil.copy(REPO / "trainer" / "campaign.sh", checkout / "trainer")
    (checkout / ".whl").mkdir()
    for name in ("keras", "namex", "optree"):
        version = importlib.metadata.version(name)
        (checkout / ".whl" / f"{name}-{version}-py3-none-any.whl").write_bytes(b"wheel")
    data = make_dataset(tmp_path / "data", train_per_class=3, test_per_class=2)
    external = tmp_path / "br35h-tumour" / "tumour"
    external.mkdir(parents=True)
    shutil.copy(next((data / "Testing" / "glioma").iterdir()), external / "y1.jpg")
    return checkout, data, external.parent


def _prepare(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "trainer" / "campaign-prepare.sh")], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=300)


def test_prepare_makes_one_tar_file_of_the_pack_and_measures_the_call(campaign_checkout):
    repo, data, external = campaign_checkout
    done = _prepare(repo, _prepare_env(repo, data, external))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "packing" in done.stdout and "at WebP quality 85" in done.stdout
    assert "ready: pack at WebP quality 85" in done.stdout
    assert "MiB to spare" in done.stdout
    assert not (repo / ".gpu" / "pack").exists()  # loose files never travel
    with tarfile.open(repo / ".gpu" / "pack.tar.gz") as pack:
        names = pack.getnames()
    assert "pack/pack.json" in names and len([n for n in names if n.endswith(".webp")]) == 20
    with tarfile.open(repo / ".gpu" / "br35h-tumour.tar.gz") as check_tar:
        assert "br35h-tumour/tumour/y1.jpg" in check_tar.getnames()

    again = _prepare(repo, _prepare_env(repo, data, external))  # kept, not made again
    assert again.returncode == 0 and "keeping .gpu/pack.tar.gz" in again.stdout


def test_prepare_tries_lower_qualities_then_fails_naming_what_to_carry_less(campaign_checkout):
    repo, data, external = campaign_checkout
    env = _prepare_env(repo, data, external, LIMIT_MIB="0.02", MARGIN_MIB="0",
                       QUALITIES="85 60")
    done = _prepare(repo, env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "quality 85 does not fit" in done.stdout and "quality 60 does not fit" in done.stdout
    assert 'no pack quality of "85 60" makes the call fit' in done.stderr
    assert "The largest files" in done.stderr and "Traceback" not in done.stderr
    assert not (repo / ".gpu" / "pack.tar.gz").exists() and not (repo / ".gpu" / "pack").exists()


def test_prepare_refuses_folders_git_would_send(campaign_checkout):
    repo, data, external = campaign_checkout
    (repo / ".gitignore").write_text("/runs/\n/.whl/\n")
    done = _prepare(repo, _prepare_env(repo, data, external))
    assert done.returncode == 2
    assert ".gpu/ is not ignored by git; add /.gpu/ to .gitignore" in done.stderr
    assert not (repo / ".gpu" / "pack.tar.gz").exists()  # nothing made


def test_prepare_refuses_two_versions_of_one_wheel(campaign_checkout):
    repo, data, external = campaign_checkout
    (repo / ".whl" / "namex-0.0.1-py3-none-any.whl").write_bytes(b"old")
    done = _prepare(repo, _prepare_env(repo, data, external))
    assert done.returncode == 2 and "several namex wheels in .whl/: keep one" in done.stderr


# The campaign's carried files as measured on 2026-12-07 (docs/gpu-campaign.md): the pack
# at WebP quality 80, the external check, the wheels.
CARRIED_AT_80 = 47_167_005 + 1_845_727 + 2_893_481


def test_the_repository_leaves_room_for_the_campaign_call():
    """A tree that grows past this (a large file committed, or left untracked and not
    ignored) pushes the campaign's pack below quality 80 or out of the call."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tree = measure(REPO)[0]
    room = LIMIT - 2**20 - CARRIED_AT_80 - tree.counted
    assert room > 0, (f"the working tree counts {tree.counted / 2**20:.1f} MiB and leaves no "
                      f"room for the GPU campaign's carried files at quality 80; its largest: "
                      f"{tree.largest}")


def test_prepare_refuses_a_wheel_of_another_version_than_installed(campaign_checkout):
    repo, data, external = campaign_checkout
    (repo / ".whl" / f"keras-{importlib.metadata.version('keras')}-py3-none-any.whl").unlink()
    (repo / ".whl" / "keras-0.0.1-py3-none-any.whl").write_bytes(b"old")
    done = _prepare(repo, _prepare_env(repo, data, external))
    assert done.returncode == 2 and "is not the keras" in done.stderr


def test_prepare_stops_when_tar_fails_and_leaves_no_half_pack(campaign_checkout, tmp_path):
    """tar failing in an `a && b` list did not stop the script (set -e skips such lists):
    the call was measured without a pack, "fitted", and the script ended in a traceback."""
    repo, data, external = campaign_checkout
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "tar").write_text('#!/bin/sh\nfor a; do case "$a" in *pack.tar.gz.tmp) '
                              ': > "$a";; esac; done\nexit 2\n')
    (fake / "tar").chmod(0o755)
    env = _prepare_env(repo, data, external, EXTERNAL="none")
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    done = _prepare(repo, env)
    assert done.returncode == 1 and "tar could not write .gpu/pack.tar.gz" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (repo / ".gpu").iterdir()) == []
