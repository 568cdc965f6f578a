"""Property-based and fuzz tests: damaged bytes and hostile names through the real agent.

Two properties, checked with hypothesis on inputs it makes (and shrinks when one fails):

- **The decoder**: any bytes at all either decode to an 8-bit picture within the limits, or
  are refused with an ``UnsupportedInputError`` (a reason in words). Nothing else escapes,
  and nothing hangs (an alarm stops an example that runs too long).
- **The agent**: a batch of mutated PNG, JPEG and DICOM files under random names (undecodable
  bytes, control characters, names of reason records, sub-folders) goes through the real
  worker; afterwards every input is archived with its report, quarantined with its reason
  record, or still in the inbox (only names the agent ignores by design); every JSON parses
  (strictly: no NaN); every page is UTF-8; ``fsck`` finds nothing wrong; the run ends.

Examples are derandomised, so CI runs the same bounded set every time; set
``NEUROEDGE_FUZZ_EXAMPLES`` to run more locally.
"""

from __future__ import annotations

import collections
import io
import json
import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import make_config, make_dicom, run_once
from PIL import Image

from edge.config import DicomConfig, LimitsConfig
from edge.errors import UnsupportedInputError
from edge.inbox import is_ignored_name
from edge.inputs import decode_file

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("NEUROEDGE_FUZZ_EXAMPLES", "0"))
EXAMPLE_SECONDS = 30  # an example running longer than this is a hang


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 255, (48, 48), dtype=np.uint8)
    png, jpg = io.BytesIO(), io.BytesIO()
    Image.fromarray(picture).save(png, format="PNG")
    Image.fromarray(picture).save(jpg, format="JPEG", quality=85)
    progressive = io.BytesIO()
    Image.fromarray(np.stack([picture] * 3, -1)).save(progressive, format="JPEG",
                                                       progressive=True)
    with tempfile.TemporaryDirectory() as folder:
        dcm = Path(folder) / "x.dcm"
        make_dicom(dcm, (picture.astype(np.uint16) * 16), bits_stored=12, slope=1.5,
                   intercept=-3.0, window=(2000, 4000))
        dicom = dcm.read_bytes()
    return {"png": png.getvalue(), "jpeg": jpg.getvalue(),
            "jpeg-progressive": progressive.getvalue(), "dicom": dicom}


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed file damaged the ways copies and attackers damage files."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite", "append"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[position:position + len(chunk)] = chunk
        else:
            data += draw(st.binary(max_size=64))
    return bytes(data)


_numbers = st.sampled_from(["1", "0", "-1", "2.5", "NaN", "inf", "-inf", "1e308", "-1e308",
                            "abc", "", "1\\2", " 7 "])


@st.composite
def odd_dicom(draw: st.DrawFn) -> bytes:
    """A DICOM whose header values are drawn, not damaged bytes: the decoder must cope with
    every combination of geometry, pixel format, rescale and window a file can claim."""
    from pydicom import dcmread
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    def raw(tag: int, vr: str, text: str) -> None:  # as the bytes say, never validated
        value = text.encode("latin-1")
        value += b" " * (len(value) % 2)
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)

    ds = dcmread(io.BytesIO(SEEDS["dicom"]))
    for keyword, values in (
            ("Rows", [0, 1, 16, 48, 65535]), ("Columns", [0, 1, 16, 48, 65535]),
            ("BitsAllocated", [0, 1, 7, 8, 16, 32, 64]), ("BitsStored", [0, 1, 8, 12, 16, 40]),
            ("HighBit", [0, 7, 11, 15, 63]), ("PixelRepresentation", [0, 1, 2]),
            ("SamplesPerPixel", [0, 1, 2, 3, 4])):
        if draw(st.booleans()):
            setattr(ds, keyword, draw(st.sampled_from(values)))
    for tag, vr, values in (
            (0x00280008, "IS", ["0", "1", "2", "-3", "x", ""]),  # Number of Frames
            (0x00280004, "CS", ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "HSV",
                                "PALETTE COLOR", "X" * 16]),
            (0x00080060, "CS", ["MR", "CT", "", "mr", "M\\R"])):  # Modality
        if draw(st.booleans()):
            raw(tag, vr, draw(st.sampled_from(values)))
    for tag in (0x00281053, 0x00281052, 0x00281050, 0x00281051):  # slope, intercept, window
        if draw(st.booleans()):
            raw(tag, "DS", draw(_numbers))
    if draw(st.booleans()):
        ds.PixelData = ds.PixelData[:draw(st.integers(0, len(ds.PixelData) + 64))]
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


contents = st.one_of(mutated(), odd_dicom(), st.binary(max_size=512))

_suffixes = st.sampled_from(["", ".png", ".jpg", ".dcm", ".reason.json", ".png.reason.json",
                             ".part", "~"])
raw_names = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
names = st.tuples(raw_names, _suffixes).map(lambda t: t[0] + t[1].encode())


def _alarm(_signum, _frame):
    raise TimeoutError(f"an example ran longer than {EXAMPLE_SECONDS} s: a hang")


@pytest.fixture()
def alarm():
    previous = signal.signal(signal.SIGALRM, _alarm)
    yield lambda: signal.alarm(EXAMPLE_SECONDS)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_the_undamaged_seeds_decode():
    """The properties below are not met by refusing everything."""
    for name, data in SEEDS.items():
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(data)
            assert decode_file(path, DicomConfig(), LimitsConfig()).picture.size == (48, 48)


@settings(max_examples=EXAMPLES or 600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=contents)
def test_any_bytes_decode_or_are_refused_with_a_reason(alarm, data):
    alarm()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input"
        path.write_bytes(data)
        try:
            decoded = decode_file(path, DicomConfig(), LimitsConfig())
        except UnsupportedInputError as exc:
            assert str(exc).strip()
            hypothesis.event(f"refused: {exc.__class__.__name__}")
            return
    hypothesis.event(f"decoded: {decoded.kind}")
    assert decoded.picture.mode in ("L", "RGB")
    assert min(decoded.picture.size) >= LimitsConfig().min_side
    json.dumps(decoded.details, allow_nan=False)  # what goes into the report is JSON


def _strict(text: str):
    def refuse(name: str):
        raise ValueError(name)
    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow  # a whole agent per example: under arm64 emulation, minutes
@settings(max_examples=EXAMPLES // 5 or 100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(names, contents, st.booleans()), min_size=1, max_size=8))
def test_the_agent_keeps_every_input_whatever_it_is_called(test_model, alarm, batch):
    alarm()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        inbox, outbox = root / "inbox", root / "outbox"
        inbox.mkdir()
        placed: list[tuple[bytes, bytes]] = []
        for raw_name, data, nested in batch:
            parent = os.path.join(os.fsencode(str(inbox)), b"sub") if nested else os.fsencode(
                str(inbox))
            os.makedirs(parent, exist_ok=True)
            path = os.path.join(parent, raw_name)
            if os.path.lexists(path):
                continue
            with open(path, "wb") as handle:
                handle.write(data)
            placed.append((raw_name, data))
        counts = run_once(make_config({"inbox": inbox, "outbox": outbox}, test_model.path))
        assert counts["unfinished"] == 0 and counts["unreachable"] == 0
        _assert_every_input_kept(inbox, outbox, placed)


def _assert_every_input_kept(inbox: Path, outbox: Path,
                             placed: list[tuple[bytes, bytes]]) -> None:
    from edge.fsck import check_outbox
    from edge.manifest import sha256_file

    left = collections.Counter()
    for dirpath, _dirs, files in os.walk(os.fsencode(str(inbox))):
        for name in files:
            assert is_ignored_name(os.fsdecode(name)), f"{name!r} left in the inbox"
            with open(os.path.join(dirpath, name), "rb") as handle:
                left[handle.read()] += 1
    expected_left = collections.Counter(data for name, data in placed
                                        if is_ignored_name(os.fsdecode(name)))
    assert left == expected_left
    stored = collections.Counter()
    archive, quarantine = outbox / "archive", outbox / "quarantine"
    for path in (archive.rglob("*") if archive.exists() else []):
        if path.is_file():
            stored[path.read_bytes()] += 1
            assert (outbox / "reports" / f"{sha256_file(path)}.json").is_file()
    if quarantine.exists():
        names = {p.name for p in quarantine.iterdir()}
        for name in names:
            if name + ".reason.json" in names:
                record = _strict((quarantine / (name + ".reason.json")).read_text("utf-8"))
                stored[(quarantine / name).read_bytes()] += 1
                assert record["moved_to"] == f"quarantine/{name}"
    taken = collections.Counter(data for name, data in placed
                                if not is_ignored_name(os.fsdecode(name)))
    assert stored == taken, "an input was lost or duplicated"
    for path in (outbox / "reports").glob("*.json"):  # inputs may be called *.json too
        _strict(path.read_text("utf-8"))
    for path in outbox.rglob("*.jsonl"):
        for line in path.read_text("utf-8").splitlines():
            _strict(line)
    for path in outbox.rglob("*.html"):
        path.read_bytes().decode("utf-8")
    result = check_outbox(outbox, repair=False, deep=True)
    assert not result.of("problem") and not result.of("pending"), result.to_dict()
