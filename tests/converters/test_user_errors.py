"""User mistakes in the converters: a clear line and the documented exit code, found before
the slow work, and no empty ``--out`` left behind (the user-error audit)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from converters import trust


def _trust(capsys, *args: str) -> tuple[int, str]:
    code = trust.main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("extra, message", [
    (["--pass-rate", "2"], "--pass-rate must be in [0.5, 1)"),
    (["--pass-rate", "nan"], "--pass-rate must be in [0.5, 1)"),
    (["--components", "0"], "--components must be at least 1"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
])
def test_trust_options_are_checked_before_the_model_runs(tmp_path, capsys, monkeypatch, extra,
                                                         message):
    def refuse(*args, **kwargs):
        raise AssertionError("the model ran before the options were checked")

    monkeypatch.setattr(trust, "fit_trust", refuse)
    monkeypatch.setattr(trust, "load_verified", refuse)
    code, err = _trust(capsys, "--model", str(tmp_path / "model"), "--data", str(tmp_path),
                       "--out", str(tmp_path / "out"), *extra)
    assert code == 64 and err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # the tiny_int8 fixture trains and converts a model
def test_trust_out_that_cannot_be_written_is_said_before_the_model_runs(tiny_int8, tmp_path,
                                                                       capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model ran before --out was checked")

    monkeypatch.setattr(trust, "fit_trust", refuse)
    blocker = tmp_path / "img.png"
    blocker.write_bytes(b"x")
    code, err = _trust(capsys, "--model", str(tiny_int8.model_dir), "--data",
                       str(tiny_int8.data_dir), "--out", str(blocker / "t3"))
    assert code == 73 and "is a file, not a folder" in err
    assert blocker.read_bytes() == b"x"


@pytest.mark.slow
def test_a_failed_trust_fit_leaves_no_empty_out(tiny_int8, tmp_path, capsys):
    code, err = _trust(capsys, "--model", str(tiny_int8.model_dir), "--data",
                       str(tmp_path / "no-data"), "--out", str(tmp_path / "new" / "out"))
    assert code == 65 and "does not exist" in err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("target", ["folder", "below-a-file"])
def test_score_json_that_cannot_be_written_is_refused_before_scoring(tmp_path, monkeypatch,
                                                                    target):
    import converters.score as score

    def refuse(*args, **kwargs):
        raise AssertionError("scored before --json was checked")

    monkeypatch.setattr(score, "score_model", refuse)
    (tmp_path / "file").write_text("keep")
    path = tmp_path if target == "folder" else tmp_path / "file" / "score.json"
    result = CliRunner().invoke(score.main, [str(tmp_path), "--no-external", "--json",
                                             str(path)])
    assert result.exit_code == 73, result.output
    assert result.output.startswith("error: cannot write --json")
    assert ("is a folder, not a file" if target == "folder" else "is a file") in result.output
    assert (tmp_path / "file").read_text() == "keep"


@pytest.mark.slow  # the tiny_run fixture trains a model
def test_a_model_that_answers_nan_is_refused_and_nothing_is_written(tiny_run, tmp_path):
    import keras

    import trainer.layers  # noqa: F401
    from converters.tflite import main

    data_dir, run_dir = tiny_run
    nan_run = shutil.copytree(run_dir, tmp_path / "diverged")
    model = keras.saving.load_model(nan_run / "model.keras", compile=False)
    model.set_weights([w * np.nan for w in model.get_weights()])
    model.save(nan_run / "model.keras")
    result = CliRunner().invoke(main, ["--int8", "--model", str(nan_run), "--data",
                                       str(data_dir), "--out", str(tmp_path / "out"),
                                       "--no-dedup", "--no-external", "--no-trust"])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception)
    assert result.exit_code == 66, result.output
    assert "NaN or infinite" in result.output and "lower --lr" in result.output
    assert not (tmp_path / "out").exists()


def test_a_negative_seed_is_a_usage_error(tmp_path):
    from converters.tflite import main

    result = CliRunner().invoke(main, ["--model", str(tmp_path / "m"), "--data", str(tmp_path),
                                       "--out", str(tmp_path / "out"), "--seed", "-1"])
    assert result.exit_code == 64 and "--seed must be 0 or more" in result.output
