"""Crash-safe file primitives: atomic writes, no-overwrite moves, safe names, torn lines."""

from __future__ import annotations

import json
import os
import stat

import pytest

from edge.durable import (
    append_lines_durable,
    copy_durable,
    free_name,
    move_no_replace,
    remove_stale_temp_files,
    repair_torn_tail,
    safe_name,
    write_json_atomic,
)


@pytest.mark.parametrize("raw, expected", [
    ("scan.dcm", "scan.dcm"),
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\evil.dcm", "evil.dcm"),
    ("..", "unnamed"),
    (".hidden", "hidden"),
    ("a\nb\x00c.png", "a_b_c.png"),
    ("<script>alert(1)</script>.dcm", "script_.dcm"),
    ("<b>x.dcm", "_b_x.dcm"),
    ("", "unnamed"),
])
def test_safe_name(raw, expected):
    name = safe_name(raw)
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert name.startswith(expected) or name == expected


def test_safe_name_limits_length_and_keeps_extension():
    name = safe_name("x" * 400 + ".dcm")
    assert len(name.encode()) <= 150 and name.endswith(".dcm")
    assert len(safe_name("é" * 300).encode()) <= 150


def test_free_name_and_move_never_overwrite(tmp_path):
    (tmp_path / "a.dcm").write_text("first")
    chosen = free_name(tmp_path, "a.dcm", "1234abcd")
    assert chosen.name == "a~1234abcd.dcm"
    src = tmp_path / "src"
    src.write_text("second")
    with pytest.raises(FileExistsError):
        move_no_replace(src, tmp_path / "a.dcm")
    assert (tmp_path / "a.dcm").read_text() == "first" and src.exists()
    move_no_replace(src, chosen)
    assert chosen.read_text() == "second" and not src.exists()
    chosen2 = free_name(tmp_path, "a.dcm", "1234abcd")
    assert chosen2.name == "a~1234abcd-2.dcm"


@pytest.mark.parametrize("stem", ["x" * 251, "é" * 125 + "x", "M\udcfcller" + "y" * 243])
def test_free_name_fits_a_suffix_beside_a_name_at_the_file_system_limit(tmp_path, stem):
    """An inbox file called back beside its 255-byte name (``edge.claim._give_back``) got
    ``name~earlier.png``, 270 bytes: ENAMETOOLONG, and the file stayed hidden and retried
    for ever. The stem is shortened for the suffix; every candidate can be created."""
    name = stem + ".png"
    assert len(os.fsencode(name)) <= 255
    (tmp_path / name).write_bytes(b"first")
    for expected_suffix in ("~earlier.png", "~earlier-2.png"):
        chosen = free_name(tmp_path, name, "earlier")
        assert chosen.name.endswith(expected_suffix)
        assert len(os.fsencode(chosen.name)) <= 255
        chosen.write_bytes(b"again")  # creatable: no ENAMETOOLONG
    assert (tmp_path / name).read_bytes() == b"first"


def test_free_name_for_the_same_file_again_and_again_never_gives_up(tmp_path):
    """Months of use: an exporter's empty "export finished" marker, dropped after every batch,
    is quarantined each time under the same name and content (``export~e3b0c442-N.done``).
    Choosing the next name probed every earlier copy (two probes each, every time) and gave
    up at 10,000: the input then stayed journaled, retried for ever. Counted in probes; the
    earlier copies are names taken by the group (``reserved``), so no file is made."""
    tag = "e3b0c442"

    class Taken(set):
        probes = 0

        def __contains__(self, path: object) -> bool:
            Taken.probes += 1
            return super().__contains__(path)

    taken = Taken()
    for n in range(10001):
        suffix = "" if n == 0 else (f"~{tag}" if n == 1 else f"~{tag}-{n}")
        taken.add(str(tmp_path / f"export{suffix}.done"))
    chosen = free_name(tmp_path, "export.done", tag, taken, (".reason.json",))
    assert chosen.name == f"export~{tag}-10001.done"
    assert Taken.probes < 100, Taken.probes
    assert str(chosen) in taken and str(chosen) + ".reason.json" in taken
    taken.discard(str(tmp_path / f"export~{tag}-5.done"))  # a hole (moved away) is free too
    again = free_name(tmp_path, "export.done", tag, taken, (".reason.json",))
    assert again.name in (f"export~{tag}-5.done", f"export~{tag}-10002.done")


def test_sweeping_a_big_folder_for_temporary_files_holds_no_listing(tmp_path):
    """Start-up sweeps ``reports/`` (three files per input: a million entries after a year)
    for temporary files a crash left; it held the whole listing in memory (about 390 bytes
    an entry: 390 MB on a 1 GB board) to find none. Peak memory for 10,000 entries."""
    import tracemalloc

    folder = tmp_path / "reports"
    folder.mkdir()
    for n in range(10000):
        (folder / f"{n:064x}.json").touch()
    (folder / ".neuroedge-abc.tmp").write_text("partial")
    tracemalloc.start()
    try:
        assert remove_stale_temp_files(folder) == 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000, peak  # one entry at a time; the listing took 3.9 MB


def test_atomic_json_leaves_no_temp_files(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["r.json"]
    (tmp_path / ".neuroedge-abc.tmp").write_text("partial")
    (tmp_path / "keep.tmp").write_text("not ours")
    assert remove_stale_temp_files(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == ["keep.tmp", "r.json"]


def test_torn_index_line_is_cut(tmp_path):
    index = tmp_path / "day.jsonl"
    append_lines_durable(index, ['{"n": 1}'])
    append_lines_durable(index, ['{"n": 2}', '{"n": 3}'])
    with open(index, "a") as handle:
        handle.write('{"n": 4, "trunc')
    assert repair_torn_tail(index) is True
    assert index.read_text() == '{"n": 1}\n{"n": 2}\n{"n": 3}\n'
    assert repair_torn_tail(index) is False


@pytest.fixture()
def service_umask():
    """The systemd unit's UMask=0027 for the duration of a test (process-wide)."""
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_new_files_follow_the_umask_not_mkstemps_0600(tmp_path, service_umask):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": 1})
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the neuroedge group can read it
    fd = os.open(str(tmp_path / "src"), os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"input")
    copy_durable(fd, tmp_path / "copy")
    os.close(fd)
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o640
    assert (tmp_path / "copy").read_bytes() == b"input"


def test_the_agents_outputs_are_readable_by_its_group(folders, test_model, service_umask):
    from agent_helpers import gray_png, make_config, run_once

    gray_png(folders["inbox"] / "a.png", 80)
    (folders["inbox"] / "notes.txt").write_text("not an image")
    run_once(make_config(folders, test_model.path))
    outbox = folders["outbox"]
    written = [p for p in outbox.rglob("*") if p.is_file() and ".state" not in p.parts]
    assert {p.suffix for p in written} >= {".json", ".html", ".jsonl"}
    unreadable = [str(p.relative_to(outbox)) for p in written
                  if not p.stat().st_mode & stat.S_IRGRP]
    assert not unreadable


def test_atomic_path_serves_writers_that_want_a_name(tmp_path):
    import numpy as np

    from edge.durable import atomic_path

    target = tmp_path / "stats.npz"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path and not target.exists()
        np.savez(tmp, a=np.arange(3))  # savez keeps a name that ends in .npz as it is
    assert np.load(target)["a"].tolist() == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["stats.npz"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "half.npz") as tmp:
        tmp.write_bytes(b"half written")
        raise RuntimeError("the writer failed")
    assert sorted(os.listdir(tmp_path)) == ["stats.npz"]  # nothing half-written is left
    with pytest.raises(FileExistsError), atomic_path(target, replace=False) as tmp:
        tmp.write_bytes(b"must not replace")
    assert np.load(target)["a"].tolist() == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["stats.npz"]


def test_temp_files_with_an_extension_are_cleaned_too(tmp_path):
    (tmp_path / ".neuroedge-0123.tmp.npz").write_bytes(b"partial")
    (tmp_path / ".neuroedge-notours.npz").write_bytes(b"not a temp file")
    assert remove_stale_temp_files(tmp_path) == 1
    assert os.listdir(tmp_path) == [".neuroedge-notours.npz"]
