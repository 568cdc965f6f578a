"""Print the tables of docs/results.md from the evaluation files in docs/results/<run>/.

    python docs/results/tables.py

Each run folder here holds what `python -m trainer evaluate` wrote (metrics.json) and the
run's run.json; nothing is typed in by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAPER = {"dsconv_cbam": 97.41, "dsconv_cbam_bn": 97.41, "dsconv_cbam_gap": 97.41,
         "mobilenetv2": 96.72, "mlp": 89.47}

# (run folder, what differs from the paper's recipe)
RUNS = [
    ("dsconv_cbam_bn", "BatchNorm in each block (the shipped model)"),
    ("dsconv_cbam_bn-seed1", "as above, seed 1"),
    ("dsconv_cbam_bn-aug", "as above, with --augment"),
    ("dsconv_cbam", "none: the paper's model as published"),
    ("dsconv_cbam_gap", "BatchNorm, GlobalAveragePooling instead of Flatten (32 k params)"),
    ("mobilenetv2", "no ImageNet weights (unreachable here)"),
    ("mobilenetv2-recal", "no ImageNet weights; BN statistics recalibrated before each "
                          "validation; stopped after 1 epoch by the time limit"),
    ("mlp", "none (structure unpublished: Flatten -> Dense 128 -> Dense 4)"),
    ("mlp-lr1e-4", "learning rate 1e-4 instead of 1e-3"),
]


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _load(run: str) -> tuple[dict, dict] | None:
    folder = HERE / run
    if not (folder / "metrics.json").is_file():
        return None
    return (json.loads((folder / "metrics.json").read_text()),
            json.loads((folder / "run.json").read_text()))


def table3() -> str:
    lines = ["| Run | Architecture | Deviation from the paper | Test files | Accuracy | "
             "Precision | Recall | F1 | Kappa | Dedup. accuracy (n) | Paper accuracy | "
             "Best epoch (val. acc.) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for run, deviation in RUNS:
        loaded = _load(run)
        if loaded is None:
            continue
        metrics, record = loaded
        official, dedup = metrics["official"], metrics.get("deduplicated")
        files = "pack copy" if "neuroedge-campaign" in metrics["data_dir"] else "original"
        dedup_text = f"{_pct(dedup['accuracy'])} ({dedup['n']})" if dedup else "n/a"
        lines.append(
            f"| {run} | {record['architecture']} | {deviation} | {files} | "
            f"{_pct(official['accuracy'])} | {_pct(official['macro']['precision'])} | "
            f"{_pct(official['macro']['recall'])} | {_pct(official['macro']['f1'])} | "
            f"{official['kappa']:.4f} | {dedup_text} | {PAPER[record['architecture']]:.2f} | "
            f"{record['best_epoch']} of {record['epochs_done']} "
            f"({_pct(record['best_val_accuracy'])}) |")
    return "\n".join(lines)


def per_class(run: str) -> str:
    metrics, _ = _load(run)
    lines = ["| Class | Precision | Recall | F1 | Specificity | AUC | Support | "
             "Dedup. recall (support) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    dedup = metrics.get("deduplicated") or {"per_class": {}}
    for label in metrics["labels"]:
        c = metrics["official"]["per_class"][label]
        d = dedup["per_class"].get(label)
        dedup_text = f"{_pct(d['recall'])} ({d['support']})" if d and d["support"] else "n/a"
        lines.append(f"| {label} | {_pct(c['precision'])} | {_pct(c['recall'])} | "
                     f"{_pct(c['f1'])} | {_pct(c['specificity'])} | {_pct(c['auc'])} | "
                     f"{c['support']} | {dedup_text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table3())
    print()
    print(per_class("dsconv_cbam_bn"))
