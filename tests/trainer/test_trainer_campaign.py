"""What a GPU campaign sends back (campaign_select) and how it is put together again."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from trainer.campaign_select import PART_BYTES, choose, main, read_runs

REPO = Path(__file__).resolve().parents[2]


def _run(root, name, arch, val, official, sensitivity, size=1000, recipe="strong"):
    folder = root / name
    (folder / "evaluation").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "architecture": arch, "recipe": recipe, "status": "completed", "epochs_done": 40,
        "epochs": 40, "best_val_accuracy": val}))
    external = [] if sensitivity is None else [{"name": "br35h-tumour", "metrics": {
        "accuracy": sensitivity, "tumour_sensitivity": sensitivity}}]
    (folder / "evaluation" / "metrics.json").write_text(json.dumps({
        "official": {"accuracy": official}, "deduplicated": {"accuracy": official - 0.05},
        "external": external}))
    if size:
        (folder / "model.keras").write_bytes(b"\0" * size)
    return folder


def test_the_rule_picks_per_architecture_by_tumour_sensitivity(tmp_path):
    _run(tmp_path, "r18-s0", "resnet18", 0.99, 0.980, 0.60)
    _run(tmp_path, "r18-s1", "resnet18", 0.995, 0.985, 0.55)  # better val, worse sensitivity
    _run(tmp_path, "r18-s2", "resnet18", 0.99, 0.970, 0.90)  # best sensitivity, below 97.5 %
    _run(tmp_path, "res-s0", "dsconv_cbam_res", 0.96, 0.960, 0.70)  # none eligible: by val
    _run(tmp_path, "res-s1", "dsconv_cbam_res", 0.97, 0.965, 0.20)
    _run(tmp_path, "gap", "dsconv_cbam_gap", 0.90, 0.890, None, size=0)  # no weights here
    runs = read_runs(tmp_path)
    assert len(runs) == 6
    assert choose(runs, max_parts=2) == ["r18-s0", "res-s1"]  # eligible architectures first
    # the parts left carry the other runs, eligible first, for the int8 rule back here
    assert choose(runs) == ["r18-s0", "res-s1", "r18-s1", "r18-s2", "res-s0"]
    assert choose(runs, max_parts=4) == ["r18-s0", "res-s1", "r18-s1", "r18-s2"]
    # none eligible: each architecture's best by validation accuracy, then by sensitivity
    assert choose(runs, min_official=0.99) == ["r18-s1", "res-s1", "r18-s2", "res-s0",
                                               "r18-s0"]


def test_the_parts_and_bytes_limits(tmp_path):
    big = 3 * PART_BYTES - 10  # three parts
    _run(tmp_path, "r18", "resnet18", 0.99, 0.98, 0.9, size=big)
    _run(tmp_path, "res", "dsconv_cbam_res", 0.97, 0.98, 0.8, size=PART_BYTES // 2)
    runs = read_runs(tmp_path)
    assert choose(runs, max_parts=5, max_bytes=4 * PART_BYTES) == ["r18", "res"]
    assert choose(runs, max_parts=3, max_bytes=4 * PART_BYTES) == ["r18"]
    assert choose(runs, max_parts=5, max_bytes=PART_BYTES) == ["res"]


def test_the_first_campaigns_rule_returns_the_best_paper_family_run(tmp_path):
    _run(tmp_path, "bn", "dsconv_cbam_bn", 0.97, 0.96, None, recipe="paper")
    _run(tmp_path, "paper", "dsconv_cbam", 0.958, 0.95, None, recipe="paper")
    _run(tmp_path, "r18", "resnet18", 0.99, 0.98, 0.9)
    runs = read_runs(tmp_path)
    assert choose(runs, rule="val") == ["bn"]
    assert choose(runs, rule="val", above=0.98) == []
    with pytest.raises(ValueError, match="unknown rule"):
        choose(runs, rule="test")


def test_command_writes_the_list_and_a_table(tmp_path, capsys):
    _run(tmp_path / "runs", "r18", "resnet18", 0.99, 0.98, 0.9)
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "return.txt")]) == 0
    assert (tmp_path / "return.txt").read_text() == "r18\n"
    out = capsys.readouterr().out
    assert "| r18 | resnet18 | strong | completed | 40/40 | 99.00 | 98.00 |" in out
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 66


@pytest.mark.skipif(shutil.which("bash") is None or sys.platform == "win32", reason="bash")
def test_collect_reassembles_every_returned_model_and_checks_it(tmp_path):
    src, dest = tmp_path / "files", tmp_path / "dest"
    src.mkdir()
    runs = tmp_path / "work"
    payloads = {"r18": b"a" * (PART_BYTES + 17), "res": b"b" * 999}
    lines = []
    for run, data in payloads.items():
        (runs / "runs" / run).mkdir(parents=True)
        (runs / "runs" / run / "run.json").write_text("{}")
        for i in range(0, len(data), PART_BYTES):
            (src / f"weights-{run}.part-{i // PART_BYTES:02d}").write_bytes(
                data[i:i + PART_BYTES])
        lines.append(f"{hashlib.sha256(data).hexdigest()}  runs/{run}/model.keras\n")
    (src / "weights.sha256").write_text("".join(lines))
    with tarfile.open(src / "results.tar.gz", "w:gz") as tar:
        tar.add(runs / "runs", arcname="runs")
    done = subprocess.run(["bash", str(REPO / "trainer" / "campaign-collect.sh"), str(src),
                           str(dest)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for run, data in payloads.items():
        assert (dest / "runs" / run / "model.keras").read_bytes() == data
    (src / "weights-res.part-00").write_bytes(b"corrupt")
    bad = subprocess.run(["bash", str(REPO / "trainer" / "campaign-collect.sh"), str(src),
                          str(tmp_path / "dest2")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "does not match its sha256" in bad.stderr
