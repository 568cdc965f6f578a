"""Which trained runs a GPU campaign sends back (``trainer/campaign.sh``), and a table of all.

The lent GPU machine returns at most 8 files of 16 MiB (64 MiB together): one ResNet-18
(45 MB) and a few small models, not every seed. So the choice is made there, on what that
machine can measure: the float model on the pack's copy of the test split and on the
external check (``evaluation/metrics.json`` of each run).

- ``rule`` (default): per architecture, the run the shipping rule of docs/results.md would
  pick: official accuracy >= ``min_official``, then the best tumour sensitivity on the
  external check (ties: official accuracy, then validation accuracy); an architecture with no
  such run sends its best by validation accuracy. The int8 gate, which decides shipping, is
  run back on the workstation (TensorFlow is not on the GPU machine), so the parts left over
  then carry the other runs, in the same order (eligible first, then the best tumour
  sensitivity): the rule is applied again there on their int8 models, and a run not sent
  back could not be judged at all.
- ``val``: the best paper-family run by validation accuracy above ``above`` (the first
  campaigns' choice; 51 MB fits once).

Architectures are taken best first while their parts (15 MiB each) and bytes fit.
Stdlib only: the GPU machine has no TensorFlow.

    python -m trainer.campaign_select RUNS_DIR --out return.txt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from edge.durable import write_bytes_atomic
from trainer.errors import RunError
from trainer.runs import RunRecord

PART_BYTES = 15 * 1024 * 1024


def read_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """One summary per run folder: config, outcome and the evaluation's headline numbers."""
    runs = []
    for run_json in sorted(Path(runs_dir).glob("*/run.json")):
        folder = run_json.parent
        try:
            record = RunRecord.from_dict(json.loads(run_json.read_text(encoding="utf-8")),
                                         str(run_json))
        except (OSError, ValueError, RunError):
            continue
        metrics = {}
        try:
            metrics = json.loads((folder / "evaluation" / "metrics.json").read_text("utf-8"))
        except (OSError, ValueError):
            pass
        model = folder / "model.keras"
        sensitivity = external_accuracy = None
        for ext in metrics.get("external") or []:
            sens = ext["metrics"].get("tumour_sensitivity")
            if sens is not None and sensitivity is None:
                sensitivity = sens
                external_accuracy = ext["metrics"]["accuracy"]
        runs.append({
            "name": folder.name, "arch": record.architecture or "?",
            "recipe": record.recipe, "status": record.status,
            "epochs_done": record.epochs_done, "epochs": record.epochs,
            "val": record.best_val_accuracy or 0.0,
            "official": (metrics.get("official") or {}).get("accuracy"),
            "dedup": (metrics.get("deduplicated") or {}).get("accuracy"),
            "external": external_accuracy, "sensitivity": sensitivity,
            "bytes": model.stat().st_size if model.is_file() else None,
        })
    return runs


def _rule_key(run: dict[str, Any]) -> tuple[float, float, float]:
    sens = run["sensitivity"] if run["sensitivity"] is not None else -1.0
    return (sens, run["official"] or 0.0, run["val"])


def choose(runs: list[dict[str, Any]], rule: str = "rule", min_official: float = 0.975,
           above: float = 0.0, max_parts: int = 5,
           max_bytes: int = 50 * 1024 * 1024) -> list[str]:
    """The run names whose weights go back, best first (see the module docstring)."""
    with_model = [r for r in runs if r["bytes"]]
    if rule == "val":
        from trainer.registry import ARCHITECTURE_INFO

        family = [r for r in with_model if r["val"] > above and ARCHITECTURE_INFO.get(
            r["arch"]) is not None and ARCHITECTURE_INFO[r["arch"]].paper_family]
        picks = sorted(family, key=lambda r: r["val"], reverse=True)[:1]
    elif rule == "rule":
        picks = []
        for arch in dict.fromkeys(r["arch"] for r in with_model):
            mine = [r for r in with_model if r["arch"] == arch]
            eligible = [r for r in mine if (r["official"] or 0.0) >= min_official]
            pick = (max(eligible, key=_rule_key) if eligible
                    else max(mine, key=lambda r: (r["val"], *_rule_key(r))))
            picks.append({**pick, "eligible": bool(eligible)})
        picks.sort(key=lambda r: (r["eligible"], *_rule_key(r)), reverse=True)
        named = {r["name"] for r in picks}
        rest = [{**r, "eligible": (r["official"] or 0.0) >= min_official}
                for r in with_model if r["name"] not in named]
        picks += sorted(rest, key=lambda r: (r["eligible"], *_rule_key(r)), reverse=True)
    else:
        raise ValueError(f"unknown rule {rule!r}; use 'rule' or 'val'")
    chosen, parts, size = [], 0, 0
    for run in picks:
        need = math.ceil(run["bytes"] / PART_BYTES)
        if parts + need <= max_parts and size + run["bytes"] <= max_bytes:
            chosen.append(run["name"])
            parts += need
            size += run["bytes"]
    return chosen


def table(runs: list[dict[str, Any]], chosen: list[str]) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    lines = ["| run | arch | recipe | status | epochs | val | official | dedup | external | "
             "tumour sensitivity | MB | returned |", "|" + "---|" * 12]
    for r in runs:
        size = "-" if not r["bytes"] else f"{r['bytes'] / 1e6:.1f}"
        returned = "yes" if r["name"] in chosen else ""
        lines.append(f"| {r['name']} | {r['arch']} | {r['recipe']} | {r['status']} | "
                     f"{r['epochs_done']}/{r['epochs']} | {pct(r['val'])} | {pct(r['official'])} | "
                     f"{pct(r['dedup'])} | {pct(r['external'])} | {pct(r['sensitivity'])} | "
                     f"{size} | {returned} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.campaign_select",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--rule", choices=("rule", "val"), default="rule")
    parser.add_argument("--min-official", type=float, default=0.975)
    parser.add_argument("--above", type=float, default=0.0)
    parser.add_argument("--max-parts", type=int, default=5)
    parser.add_argument("--max-mib", type=float, default=50.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        print(f"error: {args.runs_dir} is not a folder of run folders", file=sys.stderr)
        return 66
    runs = read_runs(args.runs_dir)
    chosen = choose(runs, args.rule, args.min_official, args.above, args.max_parts,
                    int(args.max_mib * 1024 * 1024))
    print(table(runs, chosen))
    write_bytes_atomic(args.out, "".join(f"{name}\n" for name in chosen).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
