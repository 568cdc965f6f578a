"""User mistakes get one clear line and a documented exit code, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from converters.tflite import main

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_help_lists_every_mode_and_the_gate():
    done = subprocess.run([sys.executable, "-m", "converters.tflite", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for option in ("--int8", "--float16", "--dynamic", "--float32", "--max-drop",
                   "--min-agreement", "--calibration-size", "--eval-data", "--dedup-list",
                   "--check-runtime", "--eval-limit", "--keep-float"):
        assert option in done.stdout


def test_missing_model_is_a_one_line_error_in_a_real_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "converters.tflite", "--int8", "--model", str(tmp_path / "nope"),
         "--data", str(tmp_path), "--out", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 66
    assert done.stderr.strip().startswith("error: --model")
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_not_a_keras_file(tmp_path):
    (tmp_path / "model.h5").write_bytes(b"x")
    result = _cli("--model", str(tmp_path / "model.h5"), "--data", str(tmp_path),
                  "--out", str(tmp_path / "out"))
    assert result.exit_code == 66 and ".keras" in result.output


def test_run_folder_without_run_json(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.keras").write_bytes(b"x")
    result = _cli("--model", str(tmp_path / "run"), "--data", str(tmp_path),
                  "--out", str(tmp_path / "out"))
    assert result.exit_code == 66 and "run.json" in result.output and "--labels" in result.output


@pytest.mark.slow  # the tiny_run fixture trains a model
def test_bad_options_are_usage_errors(tmp_path, tiny_run):
    data_dir, run_dir = tiny_run
    base = ["--model", str(run_dir), "--data", str(data_dir), "--out", str(tmp_path / "o")]
    cases = [
        (["--max-drop", "-1"], "--max-drop"),
        (["--min-agreement", "101"], "--min-agreement"),
        (["--calibration-size", "0"], "--calibration-size"),
        (["--check-runtime", "tflite-runtime"], "NAME=PYTHON"),
        (["--check-runtime", "tensorflowlite=/usr/bin/python3"], "unknown runtime"),
        (["--check-runtime", f"tflite-runtime={tmp_path / 'no-python'}"],
         "not an executable Python"),
        (["--labels", "a,b,c,d"], "contradicts the run's labels"),
        (["--int8", "--dynamic"], "give one conversion mode"),
    ]
    for extra, message in cases:
        result = _cli(*base, *extra)
        assert result.exit_code == 64, (extra, result.output)
        assert message in result.output, (extra, result.output)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_bare_keras_needs_labels(tmp_path, tiny_run):
    _, run_dir = tiny_run
    bare = tmp_path / "bare" / "tiny.keras"
    bare.parent.mkdir()
    shutil.copyfile(run_dir / "model.keras", bare)
    result = _cli("--model", str(bare), "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 64 and "--labels glioma,meningioma" in result.output


@pytest.mark.slow
def test_bad_data_folder_and_wrong_labels(tmp_path, tiny_run):
    data_dir, run_dir = tiny_run
    result = _cli("--model", str(run_dir), "--data", str(tmp_path / "missing"),
                  "--out", str(tmp_path / "o"))
    assert result.exit_code == 65 and "does not exist" in result.output
    bare = tmp_path / "tiny.keras"
    shutil.copyfile(run_dir / "model.keras", bare)
    result = _cli("--model", str(bare), "--labels", "a,b", "--data", str(data_dir),
                  "--out", str(tmp_path / "o"))
    assert result.exit_code == 65 and "not among the model's classes" in result.output
    two = tmp_path / "two-classes"
    for split in ("Training", "Testing"):
        for label in ("glioma", "meningioma"):
            shutil.copytree(data_dir / split / label, two / split / label)
    result = _cli("--model", str(bare), "--labels", "glioma,meningioma", "--data", str(two),
                  "--out", str(tmp_path / "o"))
    assert result.exit_code == 66 and "2 labels were given" in result.output
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip file")
    result = _cli("--model", str(broken), "--labels", "glioma,meningioma,notumor,pituitary",
                  "--data", str(data_dir),
                  "--out", str(tmp_path / "o"))
    assert result.exit_code == 66 and "cannot load the Keras model" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_bare_keras_with_labels_converts(tmp_path, tiny_run):
    data_dir, run_dir = tiny_run
    bare = tmp_path / "bare" / "tiny.keras"
    bare.parent.mkdir()
    shutil.copyfile(run_dir / "model.keras", bare)
    result = _cli("--float32", "--model", str(bare), "--labels",
                  "glioma,meningioma,notumor,pituitary", "--data", str(data_dir),
                  "--out", str(tmp_path / "o"), "--no-dedup", "--name", "toy",
                  "--model-version", "1.0")
    assert result.exit_code == 0, result.output
    assert "GATE PASSED" in result.output and "top-1 agreement" in result.output
    manifest = json.loads((tmp_path / "o" / "model.json").read_text())
    assert manifest["name"] == "toy" and manifest["version"] == "1.0"
    assert manifest["architecture"] == "tiny_cbam"  # the Keras model's own name
    assert manifest["preprocess"]["height"] == 32  # default spec at the model's input size
    assert manifest["provenance"]["source"]["preprocess_from"] == "default"
