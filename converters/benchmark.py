"""``python -m converters.benchmark``: every conversion mode of one model, side by side.

Runs the full ``converters.tflite`` pipeline (gate included) once per mode into
``OUT/<mode>/`` and prints one Markdown table: size, op count, float and converted accuracy,
agreement, single-thread latency in each runtime checked, and the gate's verdict. It also
measures what a dynamic batch dimension costs: the int8 graph's op count with batch 1 vs
batch None. The tables in docs/conversion.md come from this command.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from converters.export import MODES
from edge.durable import write_bytes_atomic

log = logging.getLogger("converters.benchmark")


def dynamic_batch_ops(model_path: Path, data: Path, calibration_size: int, seed: int) -> dict:
    """Op counts of the int8 graph exported with a fixed batch of 1 and a dynamic batch."""
    from converters import datasets, export, flatbuffer
    from converters.source import load_keras_model, resolve_source

    source = resolve_source(model_path)
    model, source = load_keras_model(source)
    calibration, _ = datasets.calibration_images(data, source.labels, source.preprocess,
                                                 calibration_size, seed)
    counts = {}
    with tempfile.TemporaryDirectory(prefix="neuroedge-bench-") as tmp:
        for label, batch in (("batch 1", 1), ("dynamic batch", None)):
            saved = export.export_saved_model(model, Path(tmp) / label.replace(" ", "_"), batch)
            counts[label] = flatbuffer.ops_summary(export.convert(saved, "int8", calibration))
    return counts


def _short_error(error: str) -> str:
    """The interpreter's own words (the quoted part) when there are any, for a table cell."""
    quoted = error.split('"')
    text = quoted[1] if len(quoted) >= 3 else error
    text = text.split(". ")[0].replace("|", "/")
    return text if len(text) <= 100 else text[:97] + "..."


def _row(mode: str, report: dict[str, Any], runtimes: list[str]) -> str:
    ev = report.get("evaluation") or {}
    conv = report["conversion"]
    cells = [mode, f"{conv['bytes'] / 1e6:.2f}", str(conv["ops"]["count"])]
    cells += [f"{ev['float_accuracy_pct']:.2f}" if ev else "-",
              f"{ev['quantized_accuracy_pct']:.2f}" if ev else "-",
              f"{-ev['accuracy_drop_pp']:+.2f}" if ev else "-",
              f"{ev['top1_agreement_pct']:.2f}" if ev else "-",
              f"{ev['max_abs_prob_diff']:.3f}" if ev else "-"]
    by_name = {c["name"]: c for c in report["runtimes"]}
    for name in runtimes:
        check = by_name.get(name)
        if check is None:
            cells.append("not checked")
        elif check["ok"]:
            xnn = {True: ", XNNPACK", False: ", no XNNPACK", None: ""}[check.get("xnnpack")]
            cells.append(f"{check['ms_per_image_1_thread']:.1f} ms{xnn}")
        else:
            cells.append("fails: " + _short_error(check["error"]))
    cells.append("pass" if report["passed"] else "REJECTED")
    return "| " + " | ".join(cells) + " |"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Data set folder.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Results: OUT/<mode>/ per mode, OUT/benchmark.md.")
@click.option("--modes", default=",".join(MODES), show_default=True,
              help="Comma-separated conversion modes.")
@click.option("--eval-limit", type=int, help="Stratified evaluation subset size.")
@click.option("--calibration-size", type=int, default=300, show_default=True)
@click.option("--probe-images", type=int, default=16, show_default=True,
              help="Images timed (single thread) in every runtime.")
@click.option("--check-runtime", "check_runtimes", multiple=True, metavar="NAME=PYTHON")
@click.option("--no-batch-ops", is_flag=True, help="Skip the fixed vs dynamic batch op count.")
def main(model: Path, data: Path, out: Path, modes: str, eval_limit: int | None,
         calibration_size: int, probe_images: int, check_runtimes: tuple[str, ...],
         no_batch_ops: bool) -> None:
    """Convert one model in every mode and compare the results in one table."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing chatter, not news
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    from converters.pipeline import ConvertOptions, run_conversion
    from edge.errors import EdgeError

    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    lines = []
    try:
        reports = {}
        for mode in chosen:
            click.echo(f"converting {mode} ...", err=True)
            outcome = run_conversion(ConvertOptions(
                model=model, data=data, out=out / mode, mode=mode, eval_limit=eval_limit,
                calibration_size=calibration_size, probe_images=probe_images,
                check_runtimes=check_runtimes, force=True, command=tuple(sys.argv)))
            reports[mode] = outcome.report
        runtimes = sorted({c["name"] for r in reports.values() for c in r["runtimes"]},
                          key=lambda n: (n != "ai-edge-litert", n))
        first = next(iter(reports.values()))
        ev = first.get("evaluation") or {}
        lines += [f"Model: {model} ({first['source']['architecture']}); evaluation: "
                  f"{ev.get('set', '-')}, {ev.get('n', '-')} images; latency: mean of "
                  f"{probe_images} images, 1 thread, after one warm-up.", "",
                  "| mode | MB | ops | float acc % | tflite acc % | Δ pp | agreement % | "
                  "max abs Δp | " + " | ".join(f"{r} ms/img" for r in runtimes) + " | gate |",
                  "|" + "---|" * (9 + len(runtimes))]
        lines += [_row(mode, reports[mode], runtimes) for mode in chosen]
        if not no_batch_ops:
            click.echo("measuring the op count of a dynamic batch ...", err=True)
            counts = dynamic_batch_ops(model, data, min(calibration_size, 32), 0)
            lines += ["", "| int8 export | ops | op types |", "|---|---|---|"]
            for label, summary in counts.items():
                types = ", ".join(f"{k} {v}" for k, v in summary["by_type"].items())
                lines.append(f"| {label} | {summary['count']} | {types} |")
    except EdgeError as exc:  # ConverterError and TrainerError derive from it
        click.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "benchmark.md", text.encode("utf-8"))
    click.echo(text)


if __name__ == "__main__":
    main()
