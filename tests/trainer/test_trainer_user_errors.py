"""User mistakes in the trainer: one line, the documented exit code, before the slow work,
and nothing lost (issue: the user-error audit)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from click.testing import CliRunner  # noqa: E402
from trainer_testdata import make_dataset  # noqa: E402

import trainer.train  # noqa: E402
from edge.preprocess import PreprocessSpec  # noqa: E402
from trainer.cli import main  # noqa: E402
from trainer.errors import DivergedError, RunError  # noqa: E402
from trainer.runs import RunFolder  # noqa: E402
from trainer.train import TrainConfig, resume, train  # noqa: E402

SPEC = PreprocessSpec(height=32, width=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), train_per_class=8, test_per_class=2)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A completed two-epoch mlp run (seconds)."""
    return train(TrainConfig(arch="mlp", data_dir=str(data),
                             runs_dir=str(tmp_path_factory.mktemp("runs")), name="mlp",
                             epochs=2, batch_size=16, spec=SPEC, use_cache=False,
                             model_options={"hidden_units": (8,)}), verbose=0)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if the data set is decoded: the error must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the data set was decoded before the mistake was found")

    monkeypatch.setattr(trainer.train, "load_training_data", refuse)


def _cli(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception, result.output)
    assert "Traceback" not in result.output
    return result


def _train(data, *extra: str):
    return _cli("train", "--arch", "mlp", "--data", str(data), "--image-size", "32", *extra)


def test_an_unusable_runs_dir_or_name_is_said_before_decoding(data, tmp_path, no_decoding):
    picture = tmp_path / "img.png"
    picture.write_bytes(b"not a folder")
    for runs_dir in (picture, picture / "runs"):
        result = _train(data, "--runs-dir", str(runs_dir), "--name", "x")
        assert result.exit_code == 73, result.output
        assert result.output.startswith("error: --runs-dir") and "is a file" in result.output
    result = _train(data, "--runs-dir", str(tmp_path / "runs"), "--name", "a/b")
    assert result.exit_code == 64 and "--name 'a/b'" in result.output
    assert "no '/'" in result.output
    assert picture.read_bytes() == b"not a folder" and not (tmp_path / "runs").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_runs_dir_is_said_before_decoding(data, tmp_path, no_decoding):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = _train(data, "--runs-dir", str(locked))
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 73 and "cannot be written" in result.output


@pytest.mark.parametrize("extra, message", [
    (["--lr", "inf"], "--learning-rate must be a finite positive number"),
    (["--lr", "nan"], "--learning-rate must be a finite positive number"),
    (["--lr", "0"], "--learning-rate must be a finite positive number"),
    (["--optimizer", "adamw", "--weight-decay", "inf"], "--weight-decay must be a finite"),
    (["--optimizer", "adamw", "--weight-decay", "nan"], "--weight-decay must be a finite"),
    (["--time-limit", "inf"], "--time-limit must be a positive number of seconds"),
    (["--time-limit", "nan"], "--time-limit must be a positive number of seconds"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--image-size", "100000"], "--image-size must be between 32 and 1024"),
    (["--arch", "resnet18", "--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--arch", "resnet18", "--dropout", "nan"], "--dropout must be in [0, 1)"),
    (["--arch", "resnet18", "--dropout", "-0.1"], "--dropout must be in [0, 1)"),
])
def test_bad_training_values_exit_64_before_decoding(data, tmp_path, no_decoding, extra,
                                                      message):
    result = _train(data, "--runs-dir", str(tmp_path / "runs"), *extra)
    assert result.exit_code == 64, result.output
    assert message in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["1.5", "nan", "-0.1"])
def test_summary_refuses_a_dropout_outside_0_1(value):
    result = _cli("summary", "--arch", "resnet18", "--dropout", value)
    assert result.exit_code == 64 and "--dropout must be in [0, 1)" in result.output


def test_summary_refuses_a_huge_image_size():
    # a pooled head: without the bound this builds (and tries to train) at 100000 x 100000
    result = _cli("summary", "--arch", "dsconv_cbam_gap", "--image-size", "100000")
    assert result.exit_code == 64 and "between 32 and 1024" in result.output


@pytest.mark.parametrize("args, message", [
    (["evaluate", "RUN", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["evaluate", "RUN", "--batch-size", "-1"], "--batch-size must be at least 1"),
    (["evaluate", "RUN", "--limit", "-3"], "--limit must be at least 1"),
    (["pack", "--data", "D", "--out", "O", "--quality", "500"], "--quality must be 1..100"),
    (["audit-shortcuts", "D", "--folds", "0"], "--folds must be at least 2"),
    (["audit-shortcuts", "D", "--seed", "-1"], "--seed must be 0 or more"),
    (["diagnose", "--data", "D", "--lr", "inf"], "--learning-rate must be a finite"),
])
def test_wrong_option_values_exit_64_as_documented(tmp_path, args, message):
    args = [str(tmp_path / a) if a in ("RUN", "D", "O") else a for a in args]
    result = _cli(*args)
    assert result.exit_code == 64, result.output
    assert message in result.output


def test_a_diverging_run_stops_with_a_clear_error_and_stays_inspectable(data, tmp_path):
    runs = tmp_path / "runs"
    result = _train(data, "--runs-dir", str(runs), "--name", "hot", "--lr", "1e30",
                    "--epochs", "3", "--batch-size", "16", "--mlp-hidden", "8", "--no-cache")
    assert result.exit_code == 64, result.output
    assert "training diverged in epoch 1" in result.output and "lower --lr" in result.output
    run = RunFolder.open(runs / "hot")
    record = run.read_record().raw
    assert record["status"] == "diverged" and record["diverged_at_epoch"] == 1
    assert not run.model.exists() and not list(run.checkpoints.glob("*.keras"))
    history = json.loads((run.path / "history.json").read_text())
    assert not np.isfinite(history["loss"][0])
    evaluated = _cli("evaluate", str(run.path), "--no-external")
    assert evaluated.exit_code == 66 and "diverged in epoch 1" in evaluated.output
    with pytest.raises(RunError, match="lower --lr"):
        resume(run.path, verbose=0)


def test_a_later_divergence_keeps_the_good_epochs_for_resume(data, tmp_path):
    class Explode(keras.callbacks.Callback):  # NaN weights after the first epoch
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.set_weights([w * np.nan for w in self.model.get_weights()])

    config = TrainConfig(arch="mlp", data_dir=str(data), runs_dir=str(tmp_path), name="late",
                         epochs=3, batch_size=16, spec=SPEC, use_cache=False,
                         model_options={"hidden_units": (8,)})
    with pytest.raises(DivergedError, match="diverged in epoch 2.*epoch 1 is kept"):
        train(config, verbose=0, callbacks=[Explode()])
    run = RunFolder.open(tmp_path / "late")
    assert run.read_state()["epochs_done"] == 1 and run.best_checkpoint.is_file()
    assert run.read_record().raw["status"] == "diverged"
    resume(run.path, epochs=3, verbose=0)  # asked for explicitly: from the good epoch
    assert run.read_record().raw["status"] == "completed" and run.model.is_file()


def test_evaluating_a_model_that_answers_nan_is_a_clear_error(finished, tmp_path):
    import trainer.layers  # noqa: F401

    copy = shutil.copytree(finished.path, tmp_path / "nan")
    model = keras.saving.load_model(copy / "model.keras", compile=False)
    model.set_weights([w * np.nan for w in model.get_weights()])
    model.save(copy / "model.keras")
    result = _cli("evaluate", str(copy), "--no-external", "--no-cache")
    assert result.exit_code == 66, result.output
    assert "NaN or infinite probabilities" in result.output and "lower --lr" in result.output
    assert not (copy / "evaluation" / "metrics.json").exists()


def test_a_finished_run_whose_model_was_deleted_says_so_and_resume_restores_it(finished,
                                                                              tmp_path):
    copy = RunFolder(shutil.copytree(finished.path, tmp_path / "lost"))
    copy.model.unlink()
    result = _cli("evaluate", str(copy.path), "--no-external")
    assert result.exit_code == 66
    assert "finished training (completed)" in result.output
    assert "best.keras" in result.output and "--resume" in result.output
    before = copy.read_record().raw
    resume(copy.path, verbose=0)  # writes model.keras from best.keras; trains nothing
    assert copy.model.is_file() and copy.read_record().raw == before
    assert _cli("evaluate", str(copy.path), "--no-external", "--no-cache").exit_code == 0
    copy.model.unlink()
    copy.best_checkpoint.unlink()
    result = _cli("evaluate", str(copy.path), "--no-external")
    assert result.exit_code == 66 and "both gone" in result.output
    with pytest.raises(RunError, match="both gone"):
        resume(copy.path, verbose=0)


def test_ctrl_c_during_training_exits_130_with_one_line(data, tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) anywhere in a command: 'interrupted' and 130, no traceback."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.train, "load_training_data", interrupted)
    result = _train(data, "--runs-dir", str(tmp_path / "runs"), "--name", "x")
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == "interrupted"
