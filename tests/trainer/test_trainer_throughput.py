"""Training throughput: real optimiser steps timed apart from compilation."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

keras = pytest.importorskip("keras")

from trainer.cli import main  # noqa: E402
from trainer.throughput import measure  # noqa: E402


def test_measure_times_real_training_steps():
    record = measure("mlp", batch_size=8, steps=3, warmup=1, image_size=16, hidden_units=(4,))
    assert record["arch"] == "mlp" and record["backend"] == keras.backend.backend()
    assert record["images_per_second"] > 0 and record["median_step_seconds"] > 0
    assert record["images_per_second"] == pytest.approx(8 / record["median_step_seconds"],
                                                        rel=0.01)
    assert record["devices"] and record["final_loss"] == record["final_loss"]  # not NaN


def test_throughput_command_prints_and_writes_json(tmp_path):
    out = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["throughput", "--arch", "mlp", "--image-size", "16",
                                       "--mlp-hidden", "4", "--batch-size", "4", "--steps", "2",
                                       "--warmup", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output
    assert json.loads(out.read_text())["batch_size"] == 4
    result = CliRunner().invoke(main, ["throughput", "--arch", "mlp", "--steps", "0"])
    assert result.exit_code != 0 and "--steps" in result.output
    assert "Traceback" not in result.output
