"""The shipping rule as code (converters.rule): which converted model ships, and why not the
others. Each model here is a copy of the shipped one with its manifest's figures changed;
the model file is the shipped one, so its sha256 check passes unless a test breaks it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from converters.rule import judge, main, pick
from edge.manifest import default_model_dir

SHIPPED = default_model_dir()
pytestmark = pytest.mark.skipif(SHIPPED is None, reason="no shipped model in edge/models")


def _model(tmp_path: Path, name: str, official=98.6, dedup=96.0, br35h=85.0, drop=0.1,
           agreement=99.5, required=("tflite-runtime",), n=None, external=True,
           pictures=None) -> Path:
    folder = tmp_path / name
    shutil.copytree(SHIPPED, folder)
    path = folder / "model.json"
    data = json.loads(path.read_text())
    data["name"], data["version"] = name, "9.0.0"
    metrics = data["metrics"]
    metrics.update(quantized_accuracy_pct=official, accuracy_drop_pp=drop,
                   top1_agreement_pct=agreement)
    if n is not None:
        metrics["n"] = n
    metrics["dedup"]["quantized_accuracy_pct"] = dedup
    if external:
        metrics["external"][0]["quantized_tumour_sensitivity_pct"] = br35h
        if pictures is not None:
            metrics["external"][0]["tumour_images"] = pictures
    else:
        metrics["external"] = []
    data["thresholds"]["required_runtimes"] = list(required)
    path.write_text(json.dumps(data))
    return folder


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_the_candidate_that_finds_the_most_br35h_tumours_is_picked(tmp_path):
    better = _model(tmp_path, "better", br35h=91.0, official=97.6)
    worse = _model(tmp_path, "worse", br35h=80.0, official=99.0)
    result = _run(better, worse)
    assert result.exit_code == 0, result.output
    assert f"The rule's pick: better 9.0.0 ({better})." in result.output
    assert "(shipped)" in result.output and "candidate, behind the pick" in result.output
    assert "br35h 91.00 % >= 90 %" in result.output  # the targets, judged on the pick
    assert "official 97.60 % < 98.5 %" in result.output


def test_no_better_candidate_keeps_the_shipped_model(tmp_path):
    below = _model(tmp_path, "below", br35h=95.0, official=97.4)  # out: below 97.5 %
    result = _run(below)
    assert result.exit_code == 0, result.output
    assert "the shipped model: nothing changes" in result.output
    assert "official accuracy 97.4 % (at least 97.5 %)" in result.output


@pytest.mark.parametrize("change, reason", [
    (dict(drop=1.2), "int8 costs 1.2 points against its float model (at most 1)"),
    (dict(agreement=97.9), "top-1 agreement with its float model 97.9 % (at least 98 %)"),
    (dict(required=()), "tflite-runtime was not required at conversion"),
    (dict(external=False), "no br35h-tumour tumour sensitivity in its manifest"),
])
def test_each_gate_condition_puts_a_model_out(tmp_path, change, reason):
    judged = judge(_model(tmp_path, "m", br35h=99.0, **change))
    assert any(reason in out for out in judged.out), judged.out
    result = _run(tmp_path / "m")
    assert "The rule's pick: dsconv_cbam_res" in result.output  # the shipped one stays
    assert reason in result.output


def test_ties_go_to_the_deduplicated_then_the_official_accuracy(tmp_path):
    a = judge(_model(tmp_path, "a", br35h=88.0, dedup=96.0, official=98.0))
    b = judge(_model(tmp_path, "b", br35h=88.0, dedup=96.5, official=97.8))
    c = judge(_model(tmp_path, "c", br35h=88.0, dedup=96.5, official=98.1))
    assert pick([a, b, c]) is c
    assert pick([a, b]) is b
    assert pick([a, judge(_model(tmp_path, "a2", br35h=88.0, dedup=96.0, official=98.0))]) is a


def test_a_model_file_that_does_not_match_its_manifest_is_out(tmp_path):
    folder = _model(tmp_path, "tampered", br35h=99.0)
    with open(folder / "model.tflite", "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    judged = judge(folder)
    assert judged.out and "corrupt or was replaced" in judged.out[0]
    assert pick([judged]) is None


def test_a_model_scored_on_part_of_the_test_split_is_out(tmp_path):
    part = judge(_model(tmp_path, "part", br35h=99.0, n=400))
    whole = judge(SHIPPED, shipped=True)
    assert pick([whole, part]) is whole
    assert "measured on 400 test images, the others on 1311" in part.out[-1]


def test_a_subset_is_out_against_a_whole_split_model_that_is_out_itself(tmp_path):
    """Without the shipped model, a model scored on 400 pictures was the only candidate
    when the whole-split one beside it was out for another reason."""
    part = judge(_model(tmp_path, "part", br35h=99.0, n=400))
    whole_but_out = judge(_model(tmp_path, "whole", official=90.0))
    assert pick([part, whole_but_out]) is None
    assert "measured on 400 test images" in part.out[-1]


def test_br35h_figures_over_other_pictures_are_not_ranked_against_each_other(tmp_path):
    """A model scored on another copy of the folder (95 pictures against the shipped
    model's 89) found more, and was picked: the figures are not comparable. Now none of
    them is a candidate until all are scored on the same folder; the shipped model stays."""
    other = judge(_model(tmp_path, "other", br35h=99.0, pictures=95))
    same = judge(_model(tmp_path, "same", br35h=88.0))
    shipped = judge(SHIPPED, shipped=True)
    assert other.external_n == 95 and shipped.external_n == 89
    assert pick([shipped, other, same]) is None
    assert "counts 95 pictures, another model's 89" in other.out[-1]
    assert "counts 89 pictures, another model's 95" in same.out[-1]
    same = judge(tmp_path / "same")
    assert pick([judge(SHIPPED, shipped=True), same]) is same  # the same pictures: as before


def test_no_candidate_at_all_says_so_and_writes_the_json(tmp_path):
    out = _model(tmp_path, "out", official=90.0)
    record = tmp_path / "rule.json"
    result = _run("--no-shipped", out, "--json", record)
    assert result.exit_code == 0, result.output
    assert "No candidate: the shipped model stays (rule 3)." in result.output
    data = json.loads(record.read_text())
    assert data["pick"] is None and data["models"][0]["candidate"] is False
    assert data["models"][0]["name"] == "out"


def test_user_mistakes_are_one_line_errors(tmp_path):
    assert "no model to judge" in _run().output
    missing = _run(tmp_path / "nope")
    assert missing.exit_code == 64 and "not a folder" in missing.output
    both = _run("--shipped", SHIPPED, "--no-shipped", SHIPPED)
    assert both.exit_code == 64 and "contradict" in both.output
    no_manifest = tmp_path / "empty"
    no_manifest.mkdir()
    result = _run(no_manifest)
    assert result.exit_code == 0 and "no model manifest at" in result.output
