"""``python -m trainer``: subcommands, exit codes, one-line errors without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from trainer_testdata import make_dataset

from trainer.cli import main
from trainer.models import MOBILENETV2_WEIGHTS_FILE


def _run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_help_lists_every_subcommand():
    result = _run_module("--help")
    assert result.returncode == 0
    for command in ("train", "evaluate", "summary", "audit-leakage", "diagnose"):
        assert command in result.stdout


def test_missing_data_folder_exits_65_without_traceback(tmp_path):
    result = _run_module("train", "--arch", "dsconv_cbam", "--data", str(tmp_path / "none"))
    assert result.returncode == 65
    assert "error: data folder" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_data_folder_exits_65(tmp_path):
    (tmp_path / "Training" / "glioma").mkdir(parents=True)
    (tmp_path / "Training" / "meningioma").mkdir()
    result = CliRunner().invoke(main, ["train", "--arch", "mlp", "--data", str(tmp_path)])
    assert result.exit_code == 65
    assert "holds no JPEG or PNG images" in result.output


def test_train_needs_arch_and_data():
    result = CliRunner().invoke(main, ["train", "--data", "x"])
    assert result.exit_code == 64 and "needs --arch" in result.output


def test_resume_rejects_changed_settings_and_unknown_runs(tmp_path):
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path), "--lr", "0.1"])
    assert result.exit_code == 64 and "--learning-rate" in result.output
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "gone")])
    assert result.exit_code == 66 and "does not exist" in result.output


def test_option_for_another_architecture_is_refused(tmp_path):
    from trainer_testdata import make_dataset

    make_dataset(tmp_path, train_per_class=2, test_per_class=1)
    result = CliRunner().invoke(main, ["train", "--arch", "mlp", "--data", str(tmp_path),
                                       "--padding", "valid"])
    assert result.exit_code == 64 and "does not take option(s) padding" in result.output


def test_missing_mobilenet_weights_names_the_file(tmp_path, monkeypatch):
    from trainer_testdata import make_dataset

    make_dataset(tmp_path / "data", train_per_class=2, test_per_class=1)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    result = CliRunner().invoke(main, ["train", "--arch", "mobilenetv2", "--data",
                                       str(tmp_path / "data"), "--runs-dir",
                                       str(tmp_path / "runs")])
    assert result.exit_code == 66
    assert MOBILENETV2_WEIGHTS_FILE in result.output
    assert "--backbone-weights none" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("arch", "count"), [("dsconv_cbam", "12,860,230"),
                                             ("dsconv_cbam_gap", "32,230")])
def test_summary_prints_layers_and_parameter_count(arch, count):
    result = CliRunner().invoke(main, ["summary", "--arch", arch])
    assert result.exit_code == 0, result.output
    assert f"parameters: {count}" in result.output
    assert "cbam3" in result.output and "ratio 16 (MLP 8), spatial kernel 5" in result.output


def test_summary_of_mobilenetv2_needs_no_weights_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["summary", "--arch", "mobilenetv2", "--image-size", "64"])
    assert result.exit_code == 0, result.output
    assert "frozen" in result.output and "no ImageNet" not in result.output


def test_evaluate_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path)])
    assert result.exit_code == 66 and "no run.json" in result.output


def test_a_bad_time_limit_is_refused_before_anything_loads(tmp_path):
    data = make_dataset(tmp_path, train_per_class=2, test_per_class=1)
    result = CliRunner().invoke(main, ["train", "--arch", "mlp", "--data", str(data),
                                       "--time-limit", "-1"])
    assert result.exit_code == 64 and "--time-limit must be a positive" in result.output
    assert "Traceback" not in result.output


def test_a_damaged_run_record_is_a_clear_error_not_a_traceback(tmp_path):
    """run.json is read once, typed (trainer.runs.RunRecord): a wrong type names the field."""
    import json

    from trainer.errors import RunError
    from trainer.runs import RunFolder

    (tmp_path / "run.json").write_text(json.dumps({"architecture": "dsconv_cbam",
                                                   "labels": "glioma"}))
    with pytest.raises(RunError, match="'labels' should be list"):
        RunFolder.open(tmp_path).read_record()
    (tmp_path / "run.json").write_text(json.dumps({"labels": ["a", "b"]}))
    record = RunFolder.open(tmp_path).read_record()
    with pytest.raises(RunError, match="has no 'architecture'"):
        record.require("architecture")
    assert record.labels == ("a", "b") and record.status == "unknown"
