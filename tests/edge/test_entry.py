"""The console script without the device extra: one line saying what to install."""

from __future__ import annotations

import subprocess
import sys


def test_a_missing_dependency_is_named_with_the_install_command():
    code = ("import sys; sys.modules['click'] = None\n"  # as if click were not installed
            "from edge.entry import main\nmain()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 69
    assert "needs the Python package 'click'" in done.stderr
    assert "pip install 'neuroedge[edge]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_agent_runs_through_the_entry_point():
    done = subprocess.run([sys.executable, "-m", "edge", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "watch" in done.stdout
