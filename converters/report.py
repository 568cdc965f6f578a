"""The conversion report: a table for the terminal, ``report.json`` for machines.

The same dictionary feeds both, so what a person reads and what a script checks cannot
differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge.durable import write_bytes_atomic

REPORT_JSON = "report.json"
REPORT_FORMAT = 1


def write_report(folder: Path, report: dict[str, Any]) -> Path:
    """``report.json``, atomically (``edge.durable``). Python's JSON, NaN allowed as it always
    was here: a statistic that is not a number is reported, not a reason to fail."""
    path = folder / REPORT_JSON
    write_bytes_atomic(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    return path


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def evaluation_table(title: str, comp: dict[str, Any], mode: str) -> list[str]:
    """Float vs converted on one evaluation set, with per-class recall and confusion matrices."""
    lines = [f"{title}: {comp['n']} images", f"  {'':26}{'float':>10}{mode:>10}{'Δ (pp)':>10}"]

    def row(name: str, f: float | None, q: float | None, d: float | None) -> None:
        delta = "" if d is None else f"{d:+.2f}"
        lines.append(f"  {name:26}{_pct(f):>10}{_pct(q):>10}{delta:>10}")

    row("accuracy", comp["float_accuracy_pct"], comp["quantized_accuracy_pct"],
        -comp["accuracy_drop_pp"])
    for label, pc in comp["per_class"].items():
        row(f"recall {label} (n={pc['support']})", pc["float_recall_pct"],
            pc["quantized_recall_pct"], pc["recall_delta_pp"])
    lines.append(f"  {'macro F1':26}{comp['float_macro_f1']:>10.4f}"
                 f"{comp['quantized_macro_f1']:>10.4f}")
    lines.append(f"  {'top-1 agreement':26}{'':>10}{_pct(comp['top1_agreement_pct']):>10}"
                 f"   ({comp['disagreements']} of {comp['n']} differ)")
    lines.append(f"  {'mean |Δ probability|':26}{'':>10}{comp['mean_abs_prob_diff']:>10.4f}")
    lines.append(f"  {'max |Δ probability|':26}{'':>10}{comp['max_abs_prob_diff']:>10.4f}")
    labels = list(comp["per_class"])
    short = [label[:6] for label in labels]
    width = max(6, *(len(s) for s in short)) + 1
    head = "".join(f"{s:>{width}}" for s in short)
    lines.append("  confusion matrices (rows = true, columns = predicted)")
    lines.append(f"  {'float':12}{head}    {mode:12}{head}")
    for i, label in enumerate(labels):
        f = "".join(f"{v:>{width}}" for v in comp["float_confusion_matrix"][i])
        q = "".join(f"{v:>{width}}" for v in comp["quantized_confusion_matrix"][i])
        lines.append(f"  {label[:12]:12}{f}    {label[:12]:12}{q}")
    return lines


def runtime_table(checks: list[dict[str, Any]]) -> list[str]:
    lines = ["Runtimes (the device's edge.runtime code, default delegates)",
             f"  {'runtime':16}{'version':10}{'XNNPACK':9}{'ms/img 1 thr':>13}  "
             f"{'check':46}verdict"]
    for c in checks:
        xnn = {True: "yes", False: "no", None: "?"}[c.get("xnnpack")]
        ms = "" if c.get("ms_per_image_1_thread") is None else f"{c['ms_per_image_1_thread']:.1f}"
        if c.get("compared_with"):
            what = (f"{c['images']} images vs {c['compared_with']}: max|Δp| "
                    f"{c['max_abs_prob_diff']:.4f}" if c.get("max_abs_prob_diff") is not None
                    else f"vs {c['compared_with']}")
        else:
            what = "loads, runs; evaluated the test set" if c["ok"] else "load and run"
        verdict = "ok" if c["ok"] else f"FAILED: {c['error']}"
        if c["ok"] and c.get("compared_with") and c.get("accepted_by"):
            verdict += f": {c['accepted_by']}"
        lines.append(f"  {c['name']:16}{c.get('version') or '-':10}{xnn:9}{ms:>13}  "
                     f"{what:46}{verdict}")
    return lines


def summary_text(report: dict[str, Any]) -> str:
    """Everything a person needs to accept or investigate the conversion, as plain text."""
    mode = report["mode"]
    src, conv = report["source"], report["conversion"]
    lines = [f"NeuroEdge {mode} conversion of {src['model']} ({src['architecture']})"]
    if conv.get("ops"):
        calib = conv.get("calibration") or {}
        calib_text = (f", calibrated on {calib['n']} {calib['split']} images (seed "
                      f"{calib['seed']})" if calib else "")
        lines.append(f"  {conv['ops']['count']} ops, batch 1, {conv['bytes'] / 1e6:.2f} MB"
                     f"{calib_text}")
    if conv.get("keep_float_ops"):
        kept = ", ".join(f"{op} x{n}" for op, n in conv["float_ops"].items())
        lines.append(f"  kept in float32 (--keep-float): {kept}; input and output int8")
    if report.get("test_time", "none") != "none":
        from edge.views import DESCRIPTIONS

        lines.append(f"  test time: {report['test_time']}: every answer below is "
                     f"{DESCRIPTIONS[report['test_time']]}, as the agent will run it")
    lines.append("")
    if report.get("evaluation"):
        ev = report["evaluation"]
        lines += evaluation_table(f"Evaluation on {ev['set']}", ev, mode)
        lines.append("")
    if report.get("evaluation_dedup"):
        dd = report["evaluation_dedup"]
        lines += evaluation_table(f"Deduplicated subset ({dd['list']})", dd, mode)
        lines.append("")
    if "evaluation_external" in report and report.get("evaluation"):
        from converters.external_check import table_lines

        lines += table_lines(report["evaluation_external"], mode)
        lines.append("")
    if report.get("runtimes"):
        lines += runtime_table(report["runtimes"])
        lines.append("")
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    gate, th = report["gate"], report["thresholds"]
    if gate["passed"]:
        lines.append(f"GATE PASSED (max drop {th['max_drop_pp']:g} pp, min agreement "
                     f"{th['min_agreement_pct']:g}%): wrote {report['output']['model']} and "
                     f"{report['output']['manifest']}")
    else:
        lines.append("GATE FAILED: no model was written.")
        lines += [f"  - {r}" for r in gate["reasons"]]
        debug = report.get("quant_debug") or {}
        if debug.get("suggestions"):
            lines.append("What to try:")
            lines += [f"  {i}. {s}" for i, s in enumerate(debug["suggestions"], start=1)]
        lines.append(f"Details: {report['output']['report']}"
                     + (f" and {report['output']['quant_debug']}"
                        if report["output"].get("quant_debug") else ""))
    return "\n".join(lines)
