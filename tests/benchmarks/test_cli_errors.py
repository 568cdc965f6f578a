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
    (["latency", "--threads", "0"], "--threads wants positive integers"),
    (["latency", "--threads", "two"], "--threads wants positive integers"),
    (["agent", "--files", "0"], "--files must be at least 1"),
    (["agent", "--model", "/no/such/model"], "--model /no/such/model does not exist"),
    (["agent", "--fsync-delay-ms", "-5"], "--fsync-delay-ms must be between 0 and 1000"),
    (["latency", "--archs", "vgg16"], "--archs: unknown vgg16"),
    (["soak", "--rounds", "0"], "--rounds must be at least 1"),
    (["soak", "--burst", "0"], "--burst must be at least 1"),
    (["soak", "--max-kill-delay", "0"], "--max-kill-delay must be between 0 and 600"),
])
def test_bad_options_are_explained(args, message):
    done = _run(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_command_is_argparse_usage():
    done = _run("training")
    assert done.returncode == 2 and "invalid choice: 'training'" in done.stderr


def test_render_reprints_a_saved_run(tmp_path):
    import json

    saved = {"quick": True, "seconds": 1.0, "load_average_at_end": "0.10, 0.20, 0.30",
             "machine": {"cpu": "test cpu", "cpus": 2, "memory_gib": 1.0, "system": "Linux",
                         "python": "3.11", "versions": {"numpy": "2"},
                         "load_average_at_start": [0.1, 0.2, 0.3], "date_utc": "now"},
             "sizes": {"rows": [{"arch": "a", "format": "int8", "bytes": 1000,
                                 "fraction_of_float32": 0.25}]},
             "targets": [{"target": "t", "value": "1 ms", "met": True}]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(saved))
    done = _run("--render", str(path))
    assert done.returncode == 0, done.stderr
    assert "| a | int8 | 1,000 | 0.00 | 0.250 |" in done.stdout
    assert "| t | 1 ms | yes |" in done.stdout
    path.write_text("{}")
    bad = _run("--render", str(path))
    assert bad.returncode == 2 and "not a result written by --json" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("content, reason", [
    (b"[1, 2, 3]", "it holds a JSON list, not an object"),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40, "not UTF-8 text: invalid start byte"),
    (b'{"machine": ', "not JSON: Expecting value at line 1"),
    (b'{"machine": [1]}', "Error in its contents)"),
])
def test_render_names_what_is_wrong_with_the_file_without_quoting_it(tmp_path, content, reason):
    path = tmp_path / "saved.json"
    path.write_bytes(content)
    done = _run("--render", str(path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: --render {path}: not a result written by --json")
    assert reason in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr) < 300  # the file's bytes are not in the message
