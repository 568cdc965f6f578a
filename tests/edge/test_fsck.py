"""``edge-agent fsck``: the outbox invariant, checked and repaired from disk alone."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from agent_helpers import gray_png, make_config, run_agent, run_once

from edge.errors import EX_CONFIG, EX_DATAERR, EX_TEMPFAIL
from edge.fsck import check_outbox


@pytest.fixture()
def outbox(folders, test_model) -> Path:
    """An outbox after a real run: 3 classified, 1 duplicate, 2 quarantined."""
    inbox = folders["inbox"]
    for i, level in enumerate((20, 120, 220)):
        gray_png(inbox / f"scan{i}.png", level)
    gray_png(inbox / "copy.png", 20)
    (inbox / "notes.txt").write_text("not an image")
    (inbox / "empty.dcm").write_bytes(b"")
    counts = run_once(make_config(folders, test_model.path))
    assert (counts["classified"], counts["duplicate"], counts["quarantined"]) == (3, 1, 2)
    return folders["outbox"]


def index_file(outbox: Path) -> Path:
    return next((outbox / "index").glob("*.jsonl"))


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "lock":
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def fsck(outbox: Path, *flags: str):
    return run_agent(["fsck", str(outbox), *flags])


def test_a_healthy_outbox_is_clean(outbox):
    result = fsck(outbox)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problem(s), 0 repaired, 0 pending" in result.stdout
    report = json.loads(fsck(outbox, "--json", "--deep").stdout)
    assert report["counts"] == {"index_lines": 6, "reports": 3, "archived": 4, "quarantined": 2}
    assert report["problems"] == 0


def test_a_lost_index_line_is_rebuilt_from_the_report(outbox):
    path = index_file(outbox)
    lines = path.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["outcome"] != "classified"]
    dropped = [json.loads(line) for line in lines if json.loads(line)["outcome"] == "classified"]
    path.write_text("".join(line + "\n" for line in kept + [json.dumps(e) for e in dropped[1:]]))
    before = tree_digest(outbox)
    dry = fsck(outbox, "--dry-run")
    assert dry.returncode == EX_DATAERR and "has no line in the daily index" in dry.stdout
    assert tree_digest(outbox) == before  # --dry-run changed nothing
    fixed = fsck(outbox)
    assert fixed.returncode == 0 and "rebuilt its index line" in fixed.stdout
    rebuilt = [json.loads(line) for line in path.read_text().splitlines()
               if json.loads(line).get("rebuilt_by") == "fsck"]
    assert len(rebuilt) == 1
    assert rebuilt[0]["moved_to"] == dropped[0]["moved_to"]
    assert rebuilt[0]["id"] == dropped[0]["id"] and rebuilt[0]["label"] == dropped[0]["label"]
    assert "0 problem(s), 0 repaired" in fsck(outbox).stdout  # and it stays mended


def test_a_glued_partial_line_is_kept_aside_and_its_inputs_rebuilt(outbox):
    """What a full disk did to the index before the append was fixed: a partial line with the
    retried line glued onto it."""
    path = index_file(outbox)
    lines = path.read_text().splitlines()
    glued = lines[1][: len(lines[1]) // 2] + lines[1]
    path.write_text("\n".join([lines[0], glued] + lines[2:]) + "\n")
    result = fsck(outbox)
    assert result.returncode == 0, result.stdout
    assert (path.parent / (path.name + ".damaged")).read_text() == glued + "\n"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(e["moved_to"] for e in entries) == sorted(
        json.loads(line)["moved_to"] for line in lines)


def test_a_torn_tail_is_cut_and_the_input_rebuilt(outbox):
    path = index_file(outbox)
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # the last line loses its end
    result = fsck(outbox)
    assert result.returncode == 0, result.stdout
    assert "cut a partial last line" in result.stdout and "rebuilt" in result.stdout
    assert len(path.read_text().splitlines()) == 6


def test_a_quarantined_input_without_its_record_gets_one(outbox):
    record = outbox / "quarantine" / "notes.txt.reason.json"
    record.unlink()
    result = fsck(outbox)
    assert result.returncode == 0, result.stdout
    rebuilt = json.loads(record.read_text())
    assert rebuilt["reason_code"] == "RecordLost" and rebuilt["rebuilt_by"] == "fsck"


def test_an_archived_input_without_report_is_a_problem_it_cannot_repair(outbox):
    report = next((outbox / "reports").glob("*.json"))
    report.unlink()
    result = fsck(outbox)
    assert result.returncode == EX_DATAERR
    assert "its report" in result.stdout and "is missing" in result.stdout


def test_a_changed_archived_input_is_found_with_deep(outbox):
    archived = next(p for p in (outbox / "archive").rglob("*.png"))
    archived.write_bytes(archived.read_bytes() + b"tampered")
    assert fsck(outbox).returncode == 0  # by default archived inputs are not re-read
    deep = fsck(outbox, "--deep")
    assert deep.returncode == EX_DATAERR and "changed after it was archived" in deep.stdout


def test_interrupted_work_is_pending_and_a_running_agent_is_refused(outbox):
    job = outbox / ".state" / "jobs" / "20260101T000000-abc.json"
    job.write_text('{"token": "20260101T000000-abc", "stage": "claimed"}')
    (outbox / ".state" / "claimed" / "20260101T000000-abc").write_bytes(b"x")
    result = fsck(outbox)
    assert result.returncode == EX_TEMPFAIL and "finishes them" in result.stdout
    import fcntl

    fd = os.open(str(outbox / ".state" / "lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        busy = fsck(outbox)
    finally:
        os.close(fd)
    assert busy.returncode == EX_TEMPFAIL and "another edge-agent" in busy.stderr


def test_not_an_outbox(tmp_path):
    result = fsck(tmp_path)
    assert result.returncode == EX_CONFIG and "not an outbox" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_outbox_in_process_leaves_a_clean_outbox_unchanged(outbox):
    before = tree_digest(outbox)
    result = check_outbox(outbox)
    assert not result.of("problem") and not result.of("repaired")
    assert tree_digest(outbox) == before


def test_a_user_who_may_only_read_the_outbox_can_check_it_with_dry_run(outbox):
    # the staff group reads the outbox (UMask=0027) but may not write it: --dry-run must
    # work for them (it raised PermissionError creating .state/lock), and a repair run must
    # say what to do instead of a traceback. Root is made an ordinary reader by dropping its
    # permission-override capabilities.
    import shutil
    import stat
    import subprocess
    import sys

    from agent_helpers import REPO_ROOT, agent_env

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the permission-override capabilities")
    reader = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable,
              "-m", "edge"]
    modes = {}
    for path in [outbox, *outbox.rglob("*")]:
        if not path.is_symlink():
            modes[path] = path.stat().st_mode
            path.chmod(stat.S_IMODE(modes[path]) & ~0o222)
    try:
        checked = subprocess.run(reader + ["fsck", str(outbox), "--dry-run"], text=True,
                                 capture_output=True, timeout=120, env=agent_env(),
                                 cwd=str(REPO_ROOT))
        if "Operation not permitted" in checked.stderr and "setpriv" in checked.stderr:
            pytest.skip("setpriv may not change the bounding set here")
        assert checked.returncode == 0, checked.stderr[-2000:]
        assert "0 problem(s)" in checked.stdout
        repair = subprocess.run(reader + ["fsck", str(outbox)], text=True, capture_output=True,
                                timeout=120, env=agent_env(), cwd=str(REPO_ROOT))
        assert repair.returncode == EX_CONFIG, repair.stderr[-2000:]
        assert "--dry-run" in repair.stderr and "Traceback" not in repair.stderr
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))
