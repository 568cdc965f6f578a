"""User errors end with a clear message and an exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["sizes", "--archs", "resnet"], "--archs: unknown resnet"),
    (["sizes", "--formats", "int4"], "--formats: unknown int4"),
    (["sizes", "--keras-model", "dsconv_cbam"], "--keras-model wants NAME=PATH"),
    (["sizes", "--tflite", "x=/no/such/model"], "/no/such/model does not exist"),
    (["agent", "--data", "/no/such/data"], "is not the data set folder"),
    (["memory", "--edge-python", "/no/such/python"], "is not an executable Python"),
])
def test_bad_options_are_explained(args, message):
    done = _run(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_command_is_argparse_usage():
    done = _run("training")
    assert done.returncode == 2 and "invalid choice: 'training'" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["latency", "--threads", "0"], "--threads wants positive integers"),
    (["latency", "--threads", "two"], "--threads wants positive integers"),
    (["agent", "--files", "0"], "--files must be at least 1"),
    (["agent", "--model", "/no/such/model"], "--model /no/such/model does not exist"),
    (["latency", "--archs", "mlp"], "--archs: unknown mlp"),
])
def test_more_bad_options(args, message):
    done = _run(*args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
