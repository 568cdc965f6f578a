"""Start-up time: ``edge-agent --help``, and ``edge-agent watch`` to its first result.

Both run as fresh processes of the device environment. ``--help`` shows what importing the
command costs (heavy imports happen inside the commands that need them). ``watch`` is timed
from process start until the first report appears in the outbox, with one PNG waiting in
the inbox: interpreter start, configuration, model hash check and load, the runtime's
self-test, recovery, the inbox scan and one classification. The first run of each is
reported separately (files not yet in the page cache), then the median of the others.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import edge_env
from benchmarks.agent import _source_pictures, make_inbox
from benchmarks.report import table


def measure(edge_python: str | None, model: str | None, repeats: int,
            work: Path) -> dict[str, Any]:
    cmd, python = edge_env.agent_command(edge_python)
    env = {k: v for k, v in os.environ.items() if k != "NEUROEDGE_CONFIG"}
    helps = [edge_env.run_measured(cmd + ["--help"], env=env)["seconds"]
             for _ in range(repeats + 1)]
    firsts, totals = [], []
    picture = _source_pictures(1, None)
    for _ in range(repeats + 1):
        scratch = Path(tempfile.mkdtemp(prefix="neuroedge-start-", dir=str(work)))
        try:
            make_inbox(scratch / "inbox", "png", picture)
            args = ["watch", str(scratch / "inbox"), "--outbox", str(scratch / "outbox"),
                    "--once"] + (["--model", model] if model else [])
            run = edge_env.run_measured(cmd + args, env=env,
                                        first_file=scratch / "outbox" / "reports")
        finally:
            shutil.rmtree(str(scratch), ignore_errors=True)
        firsts.append(run["first_result_s"])
        totals.append(run["seconds"])
    return {"python": python, "model": model or "shipped", "repeats": repeats,
            "help_first_s": helps[0], "help_median_s": statistics.median(helps[1:]),
            "watch_first_result_first_s": firsts[0],
            "watch_first_result_median_s": statistics.median(firsts[1:]),
            "watch_exit_median_s": statistics.median(totals[1:]),
            "help_samples_s": helps, "watch_first_result_samples_s": firsts}


def markdown(result: dict[str, Any]) -> str:
    rows = [["edge-agent --help", f"{result['help_first_s']:.2f}",
             f"{result['help_median_s']:.2f}"],
            ["edge-agent watch --once: first report written",
             f"{result['watch_first_result_first_s']:.2f}",
             f"{result['watch_first_result_median_s']:.2f}"],
            ["edge-agent watch --once: process exit (1 file)", "-",
             f"{result['watch_exit_median_s']:.2f}"]]
    return table(["command", "first run (s)", f"median of next {result['repeats']} (s)"], rows,
                 ["l", "r", "r"]) + (
        f"\n\n- environment: {result['python']}; model: {result['model']}; one 512x512 PNG "
        "in the inbox; time from process start")
