"""What an adversarial probe of the agent found (issue 14), one test per finding.

Each test reproduces the attack as it was reported and checks the promise the agent makes:
every input ends archived with a report, quarantined with a reason, or still in the inbox
with a clear message; every JSON it writes parses; no traceback; the process ends.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import (
    agent_env,
    fast_config,
    gray_png,
    make_config,
    make_dicom,
    pydicom_file,
    run_agent,
    run_once,
    save_dicom,
)
from PIL import Image

from edge.config import DicomConfig, LimitsConfig, config_from_dict
from edge.errors import (
    EX_CONFIG,
    EX_DATAERR,
    EX_TEMPFAIL,
    ConfigError,
    DecodeError,
    InputLimitError,
)
from edge.inputs import decode_file


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def all_json_parses(outbox: Path) -> None:
    for path in outbox.rglob("*.json"):
        strict_json(path.read_text(encoding="utf-8"))
    for path in outbox.rglob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            strict_json(line)


def stored_contents(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in folder.rglob("*") if p.is_file()]


def agent_args(tmp_path: Path, model: Path, config_text: str = "") -> list[str]:
    return ["--config", str(fast_config(tmp_path, config_text)), "watch",
            str(tmp_path / "inbox"), "--outbox", str(tmp_path / "outbox"), "--model",
            str(model), "--once"]


def png_bytes(size: tuple[int, int], level: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0]), level, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def head_jpeg(quality: int = 90, progressive: bool = False, colour: bool = False) -> bytes:
    """A 512x512 head-like JPEG with texture everywhere (no flat mid-grey anywhere)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    picture = ((np.hypot(yy - 256, xx - 256) < 200) * 120
               + rng.integers(0, 40, (512, 512))).astype(np.uint8)
    if colour:
        picture = np.stack([picture, picture // 2, picture // 3], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=quality,
                                  progressive=progressive)
    return buffer.getvalue()


# --- 1. a reason record must never overwrite an input ------------------------------------

def test_1_reason_record_never_overwrites_a_quarantined_input(folders, test_model):
    inbox = folders["inbox"]
    first = inbox / "x.png.reason.json"
    first.write_bytes(b"a text file named like a reason record")
    second = inbox / "x.png"
    second.write_bytes(b"a text file named x.png")
    os.utime(first, (1_000_000, 1_000_000))  # older: taken first, in the same group
    os.utime(second, (2_000_000, 2_000_000))
    inputs = [first.read_bytes(), second.read_bytes()]
    counts = run_once(make_config(folders, test_model.path))
    assert counts["quarantined"] == 2
    quarantine = folders["outbox"] / "quarantine"
    kept = stored_contents(quarantine)
    for content in inputs:
        assert content in kept, "a quarantined input was overwritten"
    records = [strict_json(p.read_text()) for p in quarantine.iterdir()
               if p.read_bytes().startswith(b"{")]
    assert sorted(r["file_name"] for r in records) == ["x.png", "x.png.reason.json"]
    for record in records:  # each record sits beside its own input
        assert (folders["outbox"] / record["moved_to"]).read_bytes() in inputs


def test_1_destination_names_are_free_for_the_input_and_its_record(tmp_path):
    from edge.durable import free_name

    folder = tmp_path
    (folder / "x.png.reason.json").write_text("{}")  # a record whose input was moved away
    reserved: set[str] = set()
    chosen = free_name(folder, "x.png", "abcd", reserved, companions=(".reason.json",))
    assert chosen.name != "x.png"
    assert not Path(str(chosen) + ".reason.json").exists()
    again = free_name(folder, "x.png.reason.json", "abcd", reserved,
                       companions=(".reason.json",))
    assert str(again) not in {str(chosen), str(chosen) + ".reason.json"}
    assert {str(chosen), str(chosen) + ".reason.json"} <= reserved


# --- 2. no endless loop choosing a quarantine name ---------------------------------------

def test_2_same_refused_file_again_after_its_copy_was_moved_away(tmp_path, test_model):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "broken.png").write_bytes(b"not a picture")
    args = agent_args(tmp_path, test_model.path)
    assert run_agent(args, timeout=60).returncode == 0
    quarantine = tmp_path / "outbox" / "quarantine"
    (quarantine / "broken.png").rename(tmp_path / "looked-at.png")  # staff took it away
    assert (quarantine / "broken.png.reason.json").exists()
    (inbox / "broken.png").write_bytes(b"not a picture")
    try:
        again = run_agent(args, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the agent hung choosing a quarantine name")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not list(inbox.iterdir())
    assert stored_contents(quarantine).count(b"not a picture") == 1


# --- 3. file names that are not UTF-8 ----------------------------------------------------

def test_3_a_file_name_that_is_not_utf8_is_processed(tmp_path, test_model):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    raw = os.path.join(os.fsencode(str(inbox)), b"M\xfcller.png")
    with open(raw, "wb") as handle:
        handle.write(png_bytes((64, 64), 120))
    with open(os.path.join(os.fsencode(str(inbox)), b"notes-\xff.txt"), "wb") as handle:
        handle.write(b"not an image")
    gray_png(inbox / "plain.png", 30)
    result = run_agent(agent_args(tmp_path, test_model.path), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not os.listdir(inbox)
    outbox = tmp_path / "outbox"
    all_json_parses(outbox)
    lines = [strict_json(line) for f in (outbox / "index").glob("*.jsonl")
             for line in f.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3
    names = {e["file_name"] for e in lines}
    assert "M\ufffdller.png" in names  # the undecodable byte is shown, not dropped
    for page in outbox.rglob("*.html"):
        page.read_bytes().decode("utf-8")  # every page is valid UTF-8
    for path in outbox.rglob("*"):
        os.fsencode(path.name).decode("utf-8")  # every name the agent made is UTF-8


# --- 4. damaged JPEGs are refused, not classified ----------------------------------------

@pytest.mark.parametrize("colour", [False, True])
def test_4_jpeg_cut_in_half_with_its_end_marker_added_back(tmp_path, colour):
    data = head_jpeg(colour=colour)
    path = tmp_path / "half.jpg"
    path.write_bytes(data[:len(data) // 2] + b"\xff\xd9")
    with pytest.raises(DecodeError, match="ends early"):
        decode_file(path, DicomConfig(), LimitsConfig())


def test_4_jpeg_whose_header_claims_more_pixels_than_it_holds(tmp_path):
    data = bytearray(head_jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = (7000).to_bytes(2, "big") + (7000).to_bytes(2, "big")
    path = tmp_path / "claims-7000.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(DecodeError, match="ends early"):
        decode_file(path, DicomConfig(), LimitsConfig())


def test_4_progressive_jpeg_missing_its_last_scans(tmp_path):
    data = head_jpeg(progressive=True)
    path = tmp_path / "prog.jpg"
    path.write_bytes(data[:len(data) // 3] + b"\xff\xd9")
    with pytest.raises(DecodeError, match="scans"):
        decode_file(path, DicomConfig(), LimitsConfig())


@pytest.mark.parametrize("progressive", [False, True])
def test_4_whole_jpegs_still_decode(tmp_path, progressive):
    path = tmp_path / "whole.jpg"
    path.write_bytes(head_jpeg(progressive=progressive))
    assert decode_file(path, DicomConfig(), LimitsConfig()).picture.size == (512, 512)
    flat = tmp_path / "flat.jpg"  # a picture that really is flat mid-grey is not "damaged"
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(str(flat), quality=95)
    assert decode_file(flat, DicomConfig(), LimitsConfig()).picture.size == (64, 64)


# --- 5. DICOM with non-finite rescale values ----------------------------------------------

NON_FINITE = [
    pytest.param({"slope": "NaN"}, id="slope-nan"),
    pytest.param({"intercept": "inf"}, id="intercept-inf"),
    pytest.param({"slope": "1e308"}, id="slope-1e308"),
]


def nonfinite_dicom(path: Path, slope: str = "1", intercept: str = "0") -> Path:
    pixels = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    make_dicom(path, pixels, bits_stored=12)
    from pydicom import dcmread
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = dcmread(str(path))
    for tag, text in ((0x00281053, slope), (0x00281052, intercept)):  # written as given
        value = text.encode() + b" " * (len(text) % 2)
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), "DS", len(value), value, 0, False, True)
    ds.save_as(str(path))
    return path


@pytest.mark.parametrize("values", NON_FINITE)
def test_5_non_finite_rescale_is_refused_with_its_reason(tmp_path, values):
    path = nonfinite_dicom(tmp_path / "x.dcm", **values)
    with pytest.raises(DecodeError, match="Rescale"):
        decode_file(path, DicomConfig(), LimitsConfig())


def test_5_watch_quarantines_them_at_once_and_classify_prints_valid_json(tmp_path,
                                                                         test_model):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    paths = [nonfinite_dicom(inbox / f"n{i}.dcm", **p.values[0])
             for i, p in enumerate(NON_FINITE)]
    result = run_agent(["classify", "--model", str(test_model.path)] + [str(p) for p in paths])
    assert result.returncode == EX_DATAERR, result.stderr[-2000:]
    entries = strict_json(result.stdout)
    assert [e["status"] for e in entries] == ["refused"] * 3
    watched = run_agent(agent_args(tmp_path, test_model.path), timeout=120)
    assert watched.returncode == 0, watched.stderr[-2000:]
    records = [strict_json(p.read_text()) for p in
               (tmp_path / "outbox" / "quarantine").glob("*.reason.json")]
    assert len(records) == 3
    for record in records:
        assert "Rescale" in record["reason"] and "stopped the agent" not in record["reason"]


def test_5_a_report_that_cannot_be_written_as_json_quarantines_the_input(folders, test_model,
                                                                        monkeypatch):
    """The class of bug: whatever value a decoder lets through, the input is not retried
    forever. (Here the classifier is made to return NaN.)"""
    from edge.classifier import Classifier

    original = Classifier._decide

    def nan_decide(self, probs, pixels, timings):
        return original(self, np.full_like(probs, np.nan), pixels, timings)

    monkeypatch.setattr(Classifier, "_decide", nan_decide)
    gray_png(folders["inbox"] / "a.png", 90)
    counts = run_once(make_config(folders, test_model.path))
    assert counts["unfinished"] == 0
    all_json_parses(folders["outbox"])
    assert counts["quarantined"] == 1 or counts["classified"] == 1


# --- 6. a full disk during the index append ----------------------------------------------

def test_6_failed_index_append_leaves_no_partial_line(tmp_path, monkeypatch):
    import errno

    from edge import durable
    from edge.index import DailyIndex

    index = DailyIndex(tmp_path)
    index.append("2026-01-01", [({"token": "t1", "n": 1}, False)])
    real_write = os.write
    calls = {"n": 0}

    def half_then_enospc(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            real_write(fd, bytes(data)[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(durable.os, "write", half_then_enospc)
    with pytest.raises(OSError):
        index.append("2026-01-01", [({"token": "t2", "n": 2}, False)])
    assert index.contains("2026-01-01", "t2") is False  # a partial line is not a record
    index.append("2026-01-01", [({"token": "t2", "n": 2}, True)])
    lines = index.path_for("2026-01-01").read_text().splitlines()
    assert [strict_json(line)["token"] for line in lines] == ["t1", "t2"]


def test_6_a_torn_tail_is_cut_before_the_next_append(tmp_path):
    from edge.index import DailyIndex

    index = DailyIndex(tmp_path)
    index.append("2026-01-01", [({"token": "t1"}, False)])
    with open(index.path_for("2026-01-01"), "a") as handle:
        handle.write('{"token": "t2", "tor')  # a crash mid-append, not yet repaired
    assert not index.contains("2026-01-01", "t2")
    index.append("2026-01-01", [({"token": "t2"}, True)])
    lines = index.path_for("2026-01-01").read_text().splitlines()
    assert [strict_json(line)["token"] for line in lines] == ["t1", "t2"]


def test_6_disk_full_during_appends_every_input_ends_with_one_index_line(folders, test_model,
                                                                         monkeypatch):
    import errno

    from edge import durable

    for i in range(12):
        gray_png(folders["inbox"] / f"i{i:02d}.png", 10 + 15 * i)
    real_write = os.write
    state = {"appends": 0}

    def flaky_write(fd, data):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(".jsonl"):
            state["appends"] += 1
            if state["appends"] % 3 == 1:
                real_write(fd, bytes(data)[:max(1, len(data) // 3)])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(durable.os, "write", flaky_write)
    config = make_config(folders, test_model.path, watch={"retry_interval": 0.05})
    for _ in range(6):
        counts = run_once(config)
        if not counts["unfinished"]:
            break
    monkeypatch.setattr(durable.os, "write", real_write)
    counts = run_once(config)
    assert counts["unfinished"] == 0
    lines = [strict_json(line) for f in (folders["outbox"] / "index").glob("*.jsonl")
             for line in f.read_text().splitlines()]
    assert len(lines) == 12 and len({e["token"] for e in lines}) == 12


# --- 7. decoding memory is bounded ---------------------------------------------------------

MEMORY_PROBE = """
import resource, sys
from pathlib import Path
from edge.config import DicomConfig, LimitsConfig
from edge.errors import UnsupportedInputError
from edge.inputs import decode_file
from edge.preprocess import resize_uint8
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    resize_uint8(decode_file(Path(sys.argv[1]), DicomConfig(), LimitsConfig()).picture)
    outcome = "decoded"
except UnsupportedInputError as exc:
    outcome = "refused: " + str(exc)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(outcome)
print((peak - base) / 1024)
"""


def _decode_peak_mb(path: Path) -> tuple[str, float]:
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True,
                            text=True, timeout=300, env=agent_env())
    assert result.returncode == 0, result.stderr[-2000:]
    outcome, peak = result.stdout.strip().splitlines()[-2:]
    return outcome, float(peak)


@pytest.mark.slow
def test_7_a_huge_16_bit_png_within_the_pixel_limit_stays_in_a_memory_budget(tmp_path):
    values = np.zeros((7000, 7000), np.uint16)
    values[3000:4000, 3000:4000] = 4000
    path = tmp_path / "big16.png"
    Image.fromarray(values).save(str(path))
    assert path.stat().st_size < 2 * 2**20  # a small file that expands enormously
    outcome, peak = _decode_peak_mb(path)
    assert peak < 400, f"decoding took {peak:.0f} MB above the interpreter ({outcome})"


@pytest.mark.slow
def test_7_a_huge_dicom_within_the_pixel_limit_stays_in_a_memory_budget(tmp_path):
    pixels = np.zeros((6000, 6000), np.uint16)
    pixels[2000:3000, 2000:3000] = 3000
    path = make_dicom(tmp_path / "big.dcm", pixels, bits_stored=12, slope=2.0, intercept=-5.0)
    outcome, peak = _decode_peak_mb(path)
    assert peak < 400, f"decoding took {peak:.0f} MB above the interpreter ({outcome})"


def test_7_the_decode_budget_refuses_from_the_header(tmp_path):
    values = np.zeros((3000, 3000), np.uint16)
    path = tmp_path / "wide16.png"
    Image.fromarray(values).save(str(path))
    limits = LimitsConfig(max_decode_mb=16)
    with pytest.raises(Exception, match=r"max_decode_mb"):
        decode_file(path, DicomConfig(), limits)


# --- 8. the right words for small and elongated pictures ----------------------------------

@pytest.mark.parametrize("size, words", [((8, 8), "only 8x8 pixels"),
                                         ((2000, 40), "aspect ratio")])
def test_8_small_and_elongated_pictures_say_so(tmp_path, size, words):
    path = tmp_path / "odd.png"
    path.write_bytes(png_bytes(size))
    with pytest.raises(Exception) as caught:
        decode_file(path, DicomConfig(), LimitsConfig())
    assert words in str(caught.value) and "damaged" not in str(caught.value)


# --- 9. absurd thread counts ---------------------------------------------------------------

def test_9_absurd_thread_count_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="threads"):
        config_from_dict({"runtime": {"threads": 100000}})
    config = tmp_path / "c.toml"
    config.write_text("[runtime]\nthreads = 100000\n")
    result = run_agent(["--config", str(config), "check"])
    assert result.returncode == EX_CONFIG and "threads" in result.stderr
    assert "Traceback" not in result.stderr


# --- 10. classify never blocks on a FIFO or a device --------------------------------------

def test_10_classify_refuses_fifos_and_devices_at_once(tmp_path, test_model):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    png = gray_png(tmp_path / "ok.png", 60)
    try:
        result = run_agent(["classify", "--model", str(test_model.path), str(fifo), "/dev/zero",
                            str(png)], timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("classify blocked on a FIFO or a device")
    assert result.returncode == EX_DATAERR, result.stderr[-2000:]
    entries = strict_json(result.stdout)
    assert [e["status"] for e in entries] == ["refused", "refused", "classified"]
    assert "not a regular file" in entries[0]["reason"]
    assert "not a regular file" in entries[1]["reason"]


# --- 11. the minor findings ----------------------------------------------------------------

def test_11_bidi_override_never_reaches_html_raw(folders, test_model):
    gray_png(folders["inbox"] / "scan\u202egnp.exe", 90)
    run_once(make_config(folders, test_model.path))
    pages = list(folders["outbox"].rglob("*.html"))
    assert pages
    for page in pages:
        assert "\u202e" not in page.read_text(encoding="utf-8"), page.name


def test_11_planted_tag_text_is_not_logged(tmp_path, test_model):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pixels = np.full((64, 64), 100, np.uint16)
    make_dicom(inbox / "a.dcm", pixels, modality="DOEJOHN")
    make_dicom(inbox / "b.dcm", pixels, photometric="SMITHJANE")
    result = run_agent(agent_args(tmp_path, test_model.path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DOEJOHN" not in result.stderr and "SMITHJANE" not in result.stderr
    reasons = " ".join(p.read_text() for p in
                       (tmp_path / "outbox" / "quarantine").glob("*.reason.json"))
    assert "DOEJOHN" in reasons and "SMITHJANE" in reasons  # the record keeps the detail


def test_11_a_file_over_the_size_limit_is_refused_before_it_is_hashed(folders, test_model,
                                                                       monkeypatch):
    from edge import prepare

    big = folders["inbox"] / "big.png"
    big.write_bytes(png_bytes((64, 64)) + b"\0" * (3 * 2**20))
    hashed = []
    real = prepare.sha256_file
    monkeypatch.setattr(prepare, "sha256_file", lambda p: hashed.append(p) or real(p))
    counts = run_once(make_config(folders, test_model.path, limits={"max_file_mb": 1}))
    assert counts["quarantined"] == 1 and not hashed
    record = next((folders["outbox"] / "quarantine").glob("*.reason.json"))
    assert "max_file_mb" in strict_json(record.read_text())["reason"]


def _deep_folder(root: Path, min_length: int) -> tuple[int, str]:
    """Create nested folders under ``root`` until the path is ``min_length`` bytes long,
    without ever naming the long path (the system would refuse it). Returns (fd, leaf)."""
    fd = os.open(str(root), os.O_RDONLY)
    length, depth = len(str(root)), 0
    while length < min_length:
        name = f"level{depth:03d}" + "x" * 200
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd, length, depth = child, length + len(name) + 1, depth + 1
    return fd, f"{depth} levels"


def test_11_a_file_nested_past_the_path_limit_is_reported_and_once_says_unfinished(tmp_path,
                                                                                   test_model):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    gray_png(inbox / "ok.png", 50)
    fd, _ = _deep_folder(inbox, 4200)
    with os.fdopen(os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as out:
        out.write(png_bytes((64, 64)))
    os.close(fd)
    result = run_agent(agent_args(tmp_path, test_model.path), timeout=120)
    assert result.returncode == EX_TEMPFAIL, result.stderr[-2000:]
    assert "-inum" in result.stderr  # says how to find it without naming it
    assert "Traceback" not in result.stderr


def test_11_bomb_messages_quote_max_pixels(tmp_path):
    width = height = 10_000  # 100 M pixels: above Pillow's own limit too
    raw = b"".join(b"\0" + b"\0" * width for _ in range(16))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with pytest.raises(Exception, match=r"max_pixels") as caught:
        decode_file(path, DicomConfig(), LimitsConfig())
    assert "89478485" not in str(caught.value) and "178956970" not in str(caught.value)


@pytest.mark.parametrize("section, key", [("watch", "rescan_interval"),
                                          ("limits", "max_file_mb"),
                                          ("watch", "settle_seconds")])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_11_non_finite_config_numbers_are_refused(section, key, value):
    with pytest.raises(ConfigError, match=key):
        config_from_dict({section: {key: value}})


def test_11_type_errors_read_as_english():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"watch": {"max_pending": "many"}})
    assert "must be an integer" in str(caught.value)


def test_decode_memory_probe_uses_no_more_than_the_interpreter_for_small_files(tmp_path):
    """The probe itself is sound: a small PNG costs a few MB."""
    path = gray_png(tmp_path / "small.png", 40)
    outcome, peak = _decode_peak_mb(path)
    assert outcome == "decoded" and peak < 50


def test_5_a_passing_failure_is_not_counted_as_a_crash(folders, test_model, monkeypatch):
    """The false "stopped the agent 3 times": a job left waiting for a retry when the agent
    stops cleanly (a full disk) did not crash it, however often that happens."""
    import errno

    from edge import commit

    gray_png(folders["inbox"] / "a.png", 90)
    real = commit.write_bytes_atomic

    def disk_full(path, data, *args, **kwargs):
        if path.parent.name == "reports":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(commit, "write_bytes_atomic", disk_full)
    config = make_config(folders, test_model.path, limits={"max_attempts": 2})
    for _ in range(4):
        assert run_once(config)["unfinished"] == 1
    front = (folders["outbox"] / "index.html").read_text()  # what a radiographer sees
    assert "1 input(s) were taken but could not be finished yet" in front
    assert "No space left on device" in front
    monkeypatch.setattr(commit, "write_bytes_atomic", real)
    counts = run_once(config)
    assert counts["classified"] == 1 and counts["quarantined"] == 0
    assert "could not be finished" not in (folders["outbox"] / "index.html").read_text()


# --- 12. bombs that pass the header checks (exploratory pass, 2026-12-06) -----------------

def _with_last_scan_repeated(data: bytes, times: int) -> bytes:
    """A JPEG whose last scan is repeated ``times`` more times before its end marker: libjpeg
    decodes each repeat as a pass over the whole picture (a warning, not an error)."""
    pos, last = 2, None
    while data[pos + 1] != 0xD9:
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        end = pos + 2 + length
        if data[pos + 1] == 0xDA:  # a scan: its entropy-coded data runs to the next marker
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
            last = (pos, end)
        pos = end
    assert last is not None
    return data[:pos] + data[last[0]:last[1]] * times + data[pos:]


def test_12_a_jpeg_with_thousands_of_scans_is_refused_before_decoding(tmp_path):
    """A 57 kB progressive JPEG repeating its last scan 2,000 times took 5.6 s to decode
    (2048x2048): a few MB of such scans would stall the agent for hours."""
    path = tmp_path / "scans.jpg"
    path.write_bytes(_with_last_scan_repeated(head_jpeg(progressive=True), 2000))
    with pytest.raises(InputLimitError, match="scans"):
        decode_file(path, DicomConfig(), LimitsConfig())
    path.write_bytes(_with_last_scan_repeated(head_jpeg(progressive=True), 3))
    assert decode_file(path, DicomConfig(), LimitsConfig()).picture.size == (512, 512)


def _jpeg_dicom(path: Path, frames: list[bytes]) -> Path:
    """An 8-bit MR DICOM in JPEG Baseline whose encapsulated frames are ``frames``."""
    from pydicom.encaps import encapsulate

    from edge.benchmark import new_mr_dataset

    ds = new_mr_dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 7, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    return save_dicom(ds, path)


def test_12_a_dicom_whose_jpeg_frame_has_thousands_of_scans_is_refused_before_decoding(
        tmp_path):
    """The same bomb as a DICOM frame: JPEG Baseline and Extended DICOMs holding the
    progressive JPEG that repeats one scan 2,000 times (Pillow and pylibjpeg both decode a
    progressive stream whatever the transfer syntax says) took 16 s to decode at 2048x2048
    (58 kB). The frame checked is the one decoded, the middle one: a harmless first frame
    hid a bomb behind it, and a middle frame declaring 3000x3000 pixels behind a 512x512
    header was decoded in full before failing (8000x8000: a 400 MB peak instead of 90 MB)."""
    bomb = _with_last_scan_repeated(head_jpeg(progressive=True), 2000)
    whole = head_jpeg()
    dicom, limits = DicomConfig(), LimitsConfig()
    with pytest.raises(InputLimitError, match="compressed frame has more than 100 scans"):
        decode_file(_jpeg_dicom(tmp_path / "one.dcm", [bomb]), dicom, limits)
    with pytest.raises(InputLimitError, match="compressed frame 1 has more than 100 scans"):
        decode_file(_jpeg_dicom(tmp_path / "middle.dcm", [whole, bomb, whole]), dicom, limits)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((3000, 3000), np.uint8)).save(buffer, format="JPEG")
    with pytest.raises(InputLimitError, match="declares 3000x3000 pixels"):
        decode_file(_jpeg_dicom(tmp_path / "large.dcm", [whole, buffer.getvalue(), whole]),
                    dicom, limits)
    # JPEG-LS too (its entropy-coded data has 0xFF followed by bytes below 0x80)
    import pydicom
    from pydicom.encaps import encapsulate

    from edge.codestream import first_fragment

    ds = pydicom.dcmread(str(pydicom_file("MR_small_jpeg_ls_lossless.dcm")))
    frame = first_fragment(ds.PixelData)  # its only fragment
    scan, end = frame.find(b"\xff\xda"), frame.rfind(b"\xff\xd9")
    ds.PixelData = encapsulate([frame[:end] + frame[scan:end] * 150 + frame[end:]])
    ds.save_as(str(tmp_path / "ls.dcm"))
    with pytest.raises(InputLimitError, match="compressed frame has more than 100 scans"):
        decode_file(tmp_path / "ls.dcm", dicom, limits)
    # JPEG DICOMs as encoders write them still decode
    few = _with_last_scan_repeated(head_jpeg(progressive=True), 3)
    for frames in ([few], [whole, few, whole], [whole, whole]):
        result = decode_file(_jpeg_dicom(tmp_path / "fine.dcm", frames), dicom, limits)
        assert result.picture.size == (512, 512)
    assert decode_file(pydicom_file("MR_small_jpeg_ls_lossless.dcm"), dicom,
                       limits).picture.size == (64, 64)
    for name, modality, size in (("SC_rgb_jpeg_dcmtk.dcm", "OT", (100, 100)),
                                 ("SC_rgb_jpeg_gdcm.dcm", "OT", (100, 100)),
                                 ("JPGExtended.dcm", "NM", (256, 1024))):
        accept = DicomConfig(modalities=(modality,))
        assert decode_file(pydicom_file(name), accept, limits).picture.size == size


def _deflated_dicom(path: Path, blob_mb: float) -> Path:
    """An MR DICOM in Deflated Explicit VR Little Endian carrying ``blob_mb`` MB of zeros in
    a private element: a few kB on disk per MB in memory."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from edge.benchmark import new_mr_dataset

    ds = new_mr_dataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.add_new(0x00091010, "OB", bytes(int(blob_mb * 2**20)))
    ds.PixelData = (np.arange(64 * 64, dtype=np.uint16) % 4000).tobytes()
    return save_dicom(ds, path)


def test_12_a_deflated_dicom_that_inflates_past_the_budget_is_refused(tmp_path):
    """pydicom inflates a deflated data set whole, in memory: a 307 kB file took 700 MB
    while [limits] max_decode_mb is 256. The inflated size is counted first, in chunks."""
    bomb = _deflated_dicom(tmp_path / "bomb.dcm", 24)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(InputLimitError, match=r"deflate.*max_decode_mb"):
        decode_file(bomb, DicomConfig(), LimitsConfig(max_decode_mb=16))
    small = _deflated_dicom(tmp_path / "small.dcm", 0.01)
    assert decode_file(small, DicomConfig(), LimitsConfig(max_decode_mb=16)).picture.size == (
        64, 64)


def test_12_a_folder_that_vanishes_is_not_counted_as_unreadable(tmp_path, monkeypatch, caplog):
    """The inbox removed for a moment while `watch` ran made it exit 75 at SIGTERM, saying
    "1 place(s) in the inbox could not be read ... their files are still there" (and "find
    INBOX -inum 0"); so did a sub-folder removed between its listing and its scan under
    `--once`. Gone is not unreadable: nothing is left there."""
    import logging

    from edge.inbox import Inbox

    root = tmp_path / "inbox"
    (root / "study").mkdir(parents=True)
    gray_png(root / "study" / "a.png", 60)
    inbox = Inbox(root, True, 1.0, 0.5, 100)
    real_scandir = os.scandir

    def vanishing(path):  # the sub-folder is removed just after the root was listed
        if os.path.basename(str(path)) == "study":
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", vanishing)
    inbox.scan()
    monkeypatch.setattr(os, "scandir", real_scandir)
    assert inbox.unreachable == {}
    with caplog.at_level(logging.WARNING, logger="edge.inbox"):
        (root / "study" / "a.png").unlink()
        (root / "study").rmdir()
        root.rmdir()
        inbox.scan()
        inbox.scan()
        root.mkdir()
        gray_png(root / "b.png", 60)
        inbox.scan()
    assert inbox.unreachable == {}
    assert list(inbox.pending) == [str(root / "b.png")]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "does not exist any more" in said[0] and "is back" in said[1]
