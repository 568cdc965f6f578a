"""The leakage audit finds planted copies, leaves unrelated pictures alone, explains bad input."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from trainer import audit
from trainer.errors import DataError, OptionError

SIZE = 256


def synthetic_scan(seed: int) -> Image.Image:
    """A made-up axial "brain": a skull ring, random blobs and texture inside, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cy, cx = SIZE / 2 + rng.uniform(-12, 12, 2)
    a, b = rng.uniform(85, 115, 2)
    angle = rng.uniform(0, np.pi)
    u = ((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)) / a
    v = (-(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)) / b
    r = np.sqrt(u**2 + v**2)
    image = np.where(r < 1.0, 90.0, 5.0) + np.where((r > 0.9) & (r < 1.0), 120.0, 0.0)
    texture = rng.normal(0, 1, (SIZE // 8, SIZE // 8))
    texture = np.kron(texture, np.ones((8, 8)))
    image += np.where(r < 0.9, 25 * texture, 0)
    for _ in range(int(rng.integers(6, 11))):
        by, bx = rng.uniform(-0.6, 0.6, 2) * [b, a] + [cy, cx]
        ry, rx = rng.uniform(6, 30, 2)
        blob = ((y - by) / ry) ** 2 + ((x - bx) / rx) ** 2 < 1
        image[blob] += rng.uniform(-70, 110)
    image += rng.normal(0, 6, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "L")


def _jpeg_bytes(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _shift(image: Image.Image, dx: int, dy: int) -> Image.Image:
    out = Image.new("L", image.size, 0)
    out.paste(image, (dx, dy))
    return out


# Planted test pictures: name -> (training picture it copies, how)
PLANTED = {
    "exact_copy": ("a", 0),
    "jpeg_reencoded": ("a", 1),
    "resized_half": ("a", 2),
    "resized_larger": ("b", 0),
    "shifted_2px": ("b", 1),
    "brighter": ("b", 2),
    "darker_contrast": ("a", 3),
    "mirrored": ("b", 3),
}


def _edit(name: str, source: bytes) -> bytes:
    image = Image.open(io.BytesIO(source)).convert("L")
    if name == "exact_copy":
        return source
    if name == "jpeg_reencoded":
        return _jpeg_bytes(image, 60)
    if name == "resized_half":
        return _jpeg_bytes(image.resize((SIZE // 2, SIZE // 2), Image.LANCZOS))
    if name == "resized_larger":
        return _jpeg_bytes(image.resize((SIZE * 3 // 2, SIZE * 3 // 2), Image.BICUBIC))
    if name == "shifted_2px":
        return _jpeg_bytes(_shift(image, 2, 2))
    if name == "brighter":
        return _jpeg_bytes(ImageEnhance.Brightness(image).enhance(1.3))
    if name == "darker_contrast":
        return _jpeg_bytes(ImageEnhance.Contrast(image.point(lambda v: v * 0.8)).enhance(0.7))
    if name == "mirrored":
        return _jpeg_bytes(image.transpose(Image.FLIP_LEFT_RIGHT))
    raise AssertionError(name)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training: 2 classes x 10 synthetic scans. Testing: 8 planted copies, 6 unrelated."""
    root = tmp_path_factory.mktemp("planted")
    sources: dict[tuple[str, int], bytes] = {}
    for c, cls in enumerate("ab"):
        folder = root / "Training" / cls
        folder.mkdir(parents=True)
        for i in range(10):
            data = _jpeg_bytes(synthetic_scan(100 * c + i))
            sources[(cls, i)] = data
            (folder / f"tr_{cls}{i}.jpg").write_bytes(data)
    for cls in "ab":
        (root / "Testing" / cls).mkdir(parents=True)
    for name, (cls, i) in PLANTED.items():
        (root / "Testing" / cls / f"{name}.jpg").write_bytes(_edit(name, sources[(cls, i)]))
    for k in range(6):
        cls = "ab"[k % 2]
        (root / "Testing" / cls / f"unrelated_{k}.png").write_bytes(
            _png(synthetic_scan(1000 + k)))
    return root


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def audited(planted: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("audit-out")
    return out, audit.audit_leakage(planted, out)


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "pairs.csv", newline="", encoding="utf-8") as handle:
        return {Path(r["test_path"]).stem: r for r in csv.DictReader(handle)}


def test_every_planted_copy_is_found_with_its_source(audited: tuple[Path, dict]) -> None:
    out, _ = audited
    rows = _rows(out)
    for name, (cls, i) in PLANTED.items():
        row = rows[name]
        assert row["duplicate"] == "1", f"{name} not flagged: {row}"
        assert row["train_path"] == f"Training/{cls}/tr_{cls}{i}.jpg", name
        assert float(row["similarity"]) >= audit.DEFAULT_THRESHOLD, name
    assert rows["exact_copy"]["sha_identical"] == "1"
    assert float(rows["exact_copy"]["similarity"]) == 1.0
    assert rows["jpeg_reencoded"]["sha_identical"] == "0"
    assert rows["mirrored"]["mirrored"] == "1"
    assert rows["shifted_2px"]["mirrored"] == "0"


def test_unrelated_pictures_are_not_flagged(audited: tuple[Path, dict]) -> None:
    out, summary = audited
    rows = _rows(out)
    unrelated = [r for name, r in rows.items() if name.startswith("unrelated_")]
    assert len(unrelated) == 6
    for row in unrelated:
        assert row["duplicate"] == "0", row
        assert float(row["similarity"]) < audit.DEFAULT_THRESHOLD - 0.05, row
    planted_low = min(float(rows[name]["similarity"]) for name in PLANTED)
    assert planted_low - max(float(r["similarity"]) for r in unrelated) > 0.15
    # The control (best other-class match) of unrelated synthetic scans is low too.
    assert summary["control"]["at_or_above_threshold"] == 0


def test_dedup_list_keeps_exactly_the_unrelated_pictures(audited: tuple[Path, dict]) -> None:
    out, summary = audited
    kept = audit.load_dedup_list(out / "dedup_test.txt")
    assert kept == {f"Testing/{'ab'[k % 2]}/unrelated_{k}.png" for k in range(6)}
    header = [line for line in (out / "dedup_test.txt").read_text().splitlines()
              if line.startswith("#")]
    assert any(f"threshold: {audit.DEFAULT_THRESHOLD}" in line for line in header)
    assert any("duplicates: 8; kept: 6" in line for line in header)
    assert summary["duplicates"] == 8 and summary["kept"] == 6
    assert summary["sha_identical"] == 1 and summary["mirrored"] == 1
    assert summary["per_class"]["a"] == {"test": 7, "duplicates": 4, "kept": 3,
                                         "sha_identical": 1, "mirrored": 0,
                                         "class_mismatch": 0}
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["duplicates"] == 8 and on_disk["threshold"] == audit.DEFAULT_THRESHOLD


def test_sweep_is_monotonic_and_threshold_changes_the_list(planted: Path,
                                                           audited: tuple[Path, dict],
                                                           tmp_path: Path) -> None:
    _, summary = audited
    counts = [row["duplicates"] for row in summary["sweep"]]
    assert counts == sorted(counts, reverse=True)
    strict = audit.audit_leakage(planted, tmp_path, threshold=1.0)
    assert strict["duplicates"] == 1  # only the byte-identical copy survives threshold 1.0
    assert len(audit.load_dedup_list(tmp_path / "dedup_test.txt")) == 13


def test_without_mirror_search_the_mirrored_copy_is_missed(planted: Path,
                                                           tmp_path: Path) -> None:
    summary = audit.audit_leakage(planted, tmp_path, mirror=False)
    assert summary["duplicates"] == 7 and summary["mirrored"] == 0
    assert "Testing/b/mirrored.jpg" in audit.load_dedup_list(tmp_path / "dedup_test.txt")


def test_missing_or_malformed_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        audit.audit_leakage(tmp_path / "nowhere", tmp_path / "out")
    for cls in "ab":
        (tmp_path / "data" / "Training" / cls).mkdir(parents=True)
        (tmp_path / "data" / "Training" / cls / "x.png").write_bytes(_png(synthetic_scan(1)))
    with pytest.raises(DataError, match="no Testing/ folder"):
        audit.audit_leakage(tmp_path / "data", tmp_path / "out")


def test_unreadable_picture_is_named_in_the_error(planted: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(planted, data)
    (data / "Testing" / "a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"Testing/a/broken\.jpg.*Fix or remove"):
        audit.audit_leakage(data, tmp_path / "out")


def test_bad_threshold_and_output_are_clear_errors(planted: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"threshold must be in \(0, 1\]"):
        audit.audit_leakage(planted, tmp_path, threshold=1.5)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OptionError, match="is a file"):
        audit.audit_leakage(planted, tmp_path / "file")


def test_load_dedup_list_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*audit-leakage"):
        audit.load_dedup_list(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("# header\nTesting/a/x.jpg\n/abs/path.jpg\n")
    with pytest.raises(DataError, match="line 3.*not a path relative"):
        audit.load_dedup_list(bad)
    good = tmp_path / "good.txt"
    good.write_text("# c\n\nTesting\\a\\x.jpg\n  Testing/b/y.png  \n")
    assert audit.load_dedup_list(good) == {"Testing/a/x.jpg", "Testing/b/y.png"}


def test_module_command_line(planted: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert audit.main([str(planted), "--out", str(tmp_path / "o"), "-q"]) == 0
    assert (tmp_path / "o" / "pairs.csv").is_file()
    code = audit.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")])
    assert code == DataError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- real data


def _training_preparation(path: Path) -> bytes:
    """The data set README's recipe for Training: <= 256 px, Lanczos, grayscale JPEG 92."""
    image = Image.open(path)
    image.thumbnail((256, 256), Image.LANCZOS)
    buffer = io.BytesIO()
    image.convert("L").save(buffer, "JPEG", quality=92, optimize=True)
    return buffer.getvalue()


@pytest.mark.dataset
@pytest.mark.slow
def test_real_byte_identical_pairs_are_found(dataset_dir: Path, tmp_path: Path) -> None:
    """Ground truth from the data itself: a Testing picture put through Training's recipe
    that comes out byte-identical to a Training file is a copy of it; the audit must pair
    them. A Training file copied into Testing must come out sha-identical."""
    train_by_sha: dict[str, list[str]] = {}
    for line in (dataset_dir / "SHA256SUMS").read_text().splitlines():
        sha, rel = line.split(None, 1)
        rel = rel.strip().lstrip("*")
        if rel.startswith("Training/"):
            train_by_sha.setdefault(sha, []).append(rel)
    truth: dict[str, list[str]] = {}
    rng = random.Random(0)
    for cls in ("meningioma", "notumor"):
        files = sorted((dataset_dir / "Testing" / cls).glob("*.jpg"))
        for path in rng.sample(files, 60):
            sha = hashlib.sha256(_training_preparation(path)).hexdigest()
            if sha in train_by_sha:
                truth[f"Testing/{cls}/{path.name}"] = train_by_sha[sha]
    if len(truth) < 5:
        pytest.skip("this Pillow does not reproduce the data set's Training JPEGs byte for "
                    f"byte ({len(truth)} matches); no ground truth")

    # A small data folder: the sampled test pictures, their Training twins, 200 others.
    data = tmp_path / "data"
    for rel in truth:
        _copy(dataset_dir, data, rel)
    partners = {rel for twins in truth.values() for rel in twins}
    others = sorted(p.relative_to(dataset_dir).as_posix()
                    for p in (dataset_dir / "Training").glob("*/*.jpg"))
    for rel in partners | set(rng.sample(others, 200)):
        _copy(dataset_dir, data, rel)
    exact_source = sorted(partners)[0]
    exact = f"Testing/{exact_source.split('/')[1]}/byte_identical_copy.jpg"
    shutil.copyfile(dataset_dir / exact_source, data / exact)

    summary = audit.audit_leakage(data, tmp_path / "out")
    with open(tmp_path / "out" / "pairs.csv", newline="") as handle:
        rows = {r["test_path"]: r for r in csv.DictReader(handle)}
    for rel, twins in truth.items():
        assert rows[rel]["duplicate"] == "1", rel
        assert rows[rel]["train_path"] in twins, (rel, rows[rel]["train_path"], twins)
    assert rows[exact]["sha_identical"] == "1"
    assert rows[exact]["train_path"] in train_by_sha[
        hashlib.sha256((dataset_dir / exact_source).read_bytes()).hexdigest()]
    assert summary["sha_identical"] == 1


def _copy(src_root: Path, dst_root: Path, rel: str) -> None:
    target = dst_root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src_root / rel, target)


@pytest.mark.dataset
def test_committed_audit_matches_the_data_set(dataset_dir: Path) -> None:
    """docs/leakage/ describes this data set: every test picture once, counts consistent."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "leakage"
    summary = json.loads((docs / "summary.json").read_text())
    tests = {p.relative_to(dataset_dir).as_posix()
             for p in (dataset_dir / "Testing").glob("*/*") if p.is_file()}
    with open(docs / "pairs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["test_path"] for r in rows} == tests
    kept = audit.load_dedup_list(docs / "dedup_test.txt")
    assert kept <= tests
    assert kept == {r["test_path"] for r in rows if r["duplicate"] == "0"}
    assert len(kept) == summary["kept"] == len(tests) - summary["duplicates"]
    assert all((dataset_dir / r["train_path"]).is_file() for r in rows)


def test_ctrl_c_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(audit, "audit_leakage", interrupted)
    assert audit.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
