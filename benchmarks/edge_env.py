"""The device environment the agent runs in: its ``edge-agent`` command, and proof that it
has no TensorFlow (so the memory figures are the device's, not a workstation's)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.errors import BenchmarkError


def agent_command(edge_python: str | None) -> tuple[list[str], str]:
    """``edge-agent`` of the environment holding ``edge_python`` (default: this one)."""
    python = edge_python or sys.executable
    if shutil.which(python) is None and not os.access(python, os.X_OK):
        raise BenchmarkError(f"--edge-python {python} is not an executable Python. Create the "
                             "device environment with `python3 -m venv VENV && VENV/bin/pip "
                             "install -e '.[edge]'` and pass VENV/bin/python")
    script = Path(python).parent / "edge-agent"
    if script.is_file():
        return [str(script)], python
    return [python, "-m", "edge"], python


def describe(python: str) -> dict[str, Any]:
    """Python and package versions of the environment, and whether TensorFlow is importable."""
    code = ("import importlib.util, json, platform, sys\n"
            "from importlib.metadata import version, PackageNotFoundError\n"
            "def v(d):\n"
            "    try: return version(d)\n"
            "    except PackageNotFoundError: return None\n"
            "print(json.dumps({'python': platform.python_version(), "
            "'tensorflow_importable': importlib.util.find_spec('tensorflow') is not None, "
            "'packages': {d: v(d) for d in ('numpy', 'ai-edge-litert', 'tflite-runtime', "
            "'pillow', 'pydicom', 'watchdog', 'click')}}))")
    import json

    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise BenchmarkError(f"{python} cannot describe itself: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# Linux records a process's peak RSS across exec(): a child forked from this big process
# (TensorFlow loaded) would report this process's size. A small launcher in the device
# environment starts the command instead and reports its child's own peak.
_LAUNCHER = ("import resource, subprocess, sys\n"
             "code = subprocess.call(sys.argv[2:])\n"
             "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
             "open(sys.argv[1], 'w').write(str(kb))\n"
             "sys.exit(code)\n")


def launcher_floor_mb(python: str) -> float:
    """Peak RSS of the launcher itself: the smallest peak it can report for a child."""
    # VmHWM: this process's own high-water mark (ru_maxrss of SELF would include ours)
    code = ("import subprocess, sys; subprocess.call([sys.executable, '-c', 'pass']); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return int(done.stdout.strip().splitlines()[-1]) / 1024.0


def run_measured(cmd: list[str], env: dict[str, str] | None = None,
                 first_file: Path | None = None, timeout: float = 600.0,
                 launcher_python: str | None = None, pattern: str = "*.json") -> dict[str, Any]:
    """Run ``cmd``; its wall time, peak RSS in MB and, if ``first_file``'s folder is given,
    when the first file matching ``pattern`` appeared there (the first result).

    Peak RSS is exact only with ``launcher_python`` (see ``_LAUNCHER``); without it the
    figure also counts this process and is left out (None).
    """
    log = tempfile.TemporaryFile()  # not a pipe: a chatty child must never block on it
    rss_file = None
    if launcher_python:
        handle, rss_file = tempfile.mkstemp(prefix="neuroedge-rss-")
        os.close(handle)
        cmd = [launcher_python, "-c", _LAUNCHER, rss_file, *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    first_s = None
    deadline = start + timeout
    while True:
        pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if first_file is not None and first_s is None and first_file.is_dir() and any(
                first_file.glob(pattern)):
            first_s = time.perf_counter() - start
        if time.perf_counter() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise BenchmarkError(f"{' '.join(cmd)} did not finish within {timeout:.0f} s")
        time.sleep(0.002)
    wall = time.perf_counter() - start
    log.seek(0)
    stderr = log.read().decode("utf-8", "replace")
    log.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise BenchmarkError(f"{' '.join(cmd)} exited with {code}: {stderr.strip()[-400:]}")
    if first_file is not None and first_s is None and any(first_file.glob(pattern)):
        first_s = wall
    peak = None
    if rss_file is not None:
        with open(rss_file, encoding="ascii") as handle:
            peak = int(handle.read().strip()) / 1024.0  # Linux: kilobytes
        os.unlink(rss_file)
    return {"seconds": wall, "peak_rss_mb": peak, "first_result_s": first_s}
