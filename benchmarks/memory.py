"""Peak memory (RSS) of ``edge-agent watch --once`` in the device environment.

The agent runs as its own process from the edge-only environment (no TensorFlow), on an
inbox of PNG and DICOM files; peak RSS comes from the kernel (``wait4``'s ``ru_maxrss``).
``edge-agent --help`` in the same environment gives the floor (Python, click, the agent's
modules) so the table shows what the runtime, the model and the work add.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import edge_env
from benchmarks.agent import _source_pictures, make_inbox
from benchmarks.report import table

TARGET_MB = 120.0


def measure(edge_python: str | None, model: str | None, files: int, work: Path,
            data_dir: Path | None = None) -> dict[str, Any]:
    cmd, python = edge_env.agent_command(edge_python)
    info = edge_env.describe(python)
    env = {k: v for k, v in os.environ.items() if k != "NEUROEDGE_CONFIG"}
    result: dict[str, Any] = {"python": python, "environment": info, "files": files,
                              "model": model or "shipped", "rows": []}
    result["launcher_floor_mb"] = edge_env.launcher_floor_mb(python)
    floor = edge_env.run_measured(cmd + ["--help"], env=env, launcher_python=python)
    result["rows"].append({"what": "edge-agent --help", "files": 0, **floor})
    pictures = _source_pictures(files, data_dir)
    for kinds in (("png",), ("png", "dicom")):
        scratch = Path(tempfile.mkdtemp(prefix="neuroedge-rss-", dir=str(work)))
        try:
            inbox = scratch / "inbox"
            for kind in kinds:
                make_inbox(inbox / kind, kind, pictures)
            args = ["watch", str(inbox), "--outbox", str(scratch / "outbox"), "--once"]
            if model:
                args += ["--model", model]
            run = edge_env.run_measured(cmd + args, env=env, launcher_python=python,
                                        first_file=scratch / "outbox" / "reports")
            reports = len(list((scratch / "outbox" / "reports").glob("*.json")))
        finally:
            shutil.rmtree(str(scratch), ignore_errors=True)
        result["rows"].append({"what": "edge-agent watch --once (" + " + ".join(
            k.upper() for k in kinds) + ")", "files": files * len(kinds), "reports": reports,
            **run})
    result["peak_rss_mb"] = max(r["peak_rss_mb"] for r in result["rows"])
    result["target_mb"] = TARGET_MB
    result["met"] = result["peak_rss_mb"] <= TARGET_MB
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = [[r["what"], str(r["files"]), f"{r['peak_rss_mb']:.1f}", f"{r['seconds']:.1f}"]
            for r in result["rows"]]
    env = result["environment"]
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    verdict = "met" if result["met"] else "NOT met"
    return table(["process", "files", "peak RSS (MB)", "seconds"], rows,
                 ["l", "r", "r", "r"]) + (
        f"\n\n- environment: {result['python']} (Python {env['python']}; {packages}); "
        f"TensorFlow importable there: {'yes' if env['tensorflow_importable'] else 'no'}"
        f"\n- peak RSS from the kernel (ru_maxrss) of the agent process, started by a small "
        f"launcher whose own peak ({result['launcher_floor_mb']:.1f} MB) is the lowest figure "
        "it could report"
        f"\n- model: {result['model']}; target: at most {result['target_mb']:.0f} MB "
        f"peak RSS: {verdict} ({result['peak_rss_mb']:.1f} MB)")
