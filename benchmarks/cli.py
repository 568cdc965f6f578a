"""``python -m benchmarks [latency|int8|agent|reports|memory|startup|sizes|trust|soak|
network|history|all]``: the suite's CLI.

Every subcommand prints Markdown tables (progress goes to stderr) and, with ``--json OUT``,
writes every number it measured, with the machine and versions, to ``OUT``. ``--quick``
shrinks repeats and file counts so that ``all --quick`` takes a few minutes on two cores.
``soak`` (kill -9 the agent at random moments, then check the books) measures reliability,
not speed, and is not part of ``all``; nor is ``network`` (a study over DICOM, scanner to
PACS; needs dcmtk), nor ``reports`` (the report pictures piece by piece, a look inside
``agent``), nor ``history`` (a year of a clinic's outbox, built on disk: gigabytes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import models as model_set
from benchmarks.errors import BenchmarkError
from benchmarks.report import machine_info, machine_markdown, table
from edge.durable import write_bytes_atomic

log = logging.getLogger("benchmarks")
COMMANDS = ("latency", "int8", "agent", "reports", "memory", "startup", "sizes", "trust",
            "soak", "network", "history", "all")
NOT_IN_ALL = ("reports", "soak", "network", "history", "all")
TARGETS = {"int8_ms": 4.0, "int8_speedup": 2.5, "agent_overhead_pct": 15.0, "rss_mb": 120.0}


def _pairs(values: list[str] | None, option: str) -> dict[str, Path]:
    pairs = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise BenchmarkError(f"{option} wants NAME=PATH, got {value!r}")
        if not Path(path).exists():
            raise BenchmarkError(f"{option} {value}: {path} does not exist")
        pairs[name] = Path(path)
    return pairs


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="all", choices=COMMANDS,
                        help="what to measure (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and files: a few minutes for `all`")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write all numbers as JSON")
    parser.add_argument("--markdown", type=Path, metavar="OUT", help="write the tables too")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="measure nothing: print the tables of a run saved with --json")
    parser.add_argument("--work", type=Path, help="scratch folder (default: the system's temp)")
    parser.add_argument("--cache", type=Path,
                        help="keep converted models here and reuse them in later runs")
    lat = parser.add_argument_group("latency, sizes and int8")
    lat.add_argument("--archs", default=",".join(model_set.ARCHS),
                     help="architectures to build, any of the trainer's registry "
                          "(default: %(default)s)")
    lat.add_argument("--formats", help="formats (default: all five; --quick: keras,float32,int8)")
    lat.add_argument("--threads", default="1,2", help="thread counts (default: %(default)s)")
    lat.add_argument("--runs", type=int, help="timed runs per model (default 100; quick 20)")
    lat.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    lat.add_argument("--keras-model", action="append", metavar="ARCH=PATH",
                     help="a trained model (run folder or .keras) for ARCH instead of random "
                          "weights; repeatable")
    lat.add_argument("--tflite", action="append", metavar="NAME=PATH",
                     help="also time this converted model (a .tflite or a model folder), e.g. "
                          "shipped=edge/models; repeatable")
    lat.add_argument("--tflite-runtime-python", metavar="PYTHON",
                     help="Python of a venv with tflite-runtime (default: "
                          "$NEUROEDGE_TFLITE_RUNTIME_PYTHON; without one that column is skipped)")
    lat.add_argument("--calibration-data", type=Path, metavar="DIR",
                     help="calibrate int8 on this data set's Training images (default: "
                          "synthetic phantoms)")
    lat.add_argument("--calibration-size", type=int, default=32,
                     help="calibration images (default %(default)s)")
    agent = parser.add_argument_group("agent, memory and startup")
    agent.add_argument("--model", help="model folder for the agent (default: the shipped one)")
    agent.add_argument("--files", type=int, help="files per inbox (default 500; quick 50); "
                       "reports: pictures (default 100; quick 20)")
    agent.add_argument("--data", type=Path, metavar="DIR",
                       help="make the inboxes from this data set's Testing images (converted "
                            "in the scratch folder, deleted after) instead of phantoms")
    agent.add_argument("--agent-threads", type=int, default=0,
                       help="[runtime] threads for the agent runs (default 0: the runtime's)")
    agent.add_argument("--no-tmpfs", action="store_true",
                       help="skip the agent run on /dev/shm")
    agent.add_argument("--heatmap", choices=("occlusion", "model", "none"), default="occlusion",
                       help="the agent's [report] heatmap (default occlusion, the agent's "
                            "default: 49 more runs of the model per file; its time is shown "
                            "apart and not counted as the agent's overhead)")
    agent.add_argument("--fsync-delay-ms", type=float, default=0.0, metavar="MS",
                       help="add MS of sleep to every fsync of the agent run on disk: emulates "
                            "slow storage (an SD card); the targets are not judged then")
    agent.add_argument("--edge-python", metavar="PYTHON",
                       help="Python of the device environment (pip install '.[edge]', no "
                            "TensorFlow) for memory and startup (default: this one)")
    agent.add_argument("--rss-files", type=int, help="files per kind for memory (default 100; "
                                                     "quick 20)")
    agent.add_argument("--startup-repeats", type=int, help="default 5; quick 2")
    soak = parser.add_argument_group("soak (uses --model too)")
    soak.add_argument("--rounds", type=int, help="bursts, each ended by a kill -9 (default 20; "
                                                 "quick 5)")
    soak.add_argument("--burst", type=int, help="inputs per burst (default 40; quick 15)")
    soak.add_argument("--max-kill-delay", type=float, default=2.0, metavar="S",
                      help="each run is killed after a random 0..S seconds (default %(default)s)")
    soak.add_argument("--seed", type=int, default=0, help="inputs and delays (default 0)")
    trust = parser.add_argument_group("trust (issue 13; needs --data, uses --model)")
    trust.add_argument("--external", type=Path, metavar="DIR",
                       help="a folder of tumour images from another source, in a sub-folder "
                            "named tumour (e.g. ../shared/data/br35h-tumour)")
    net = parser.add_argument_group("network (storescu -> edge-agent -> storescp; uses --model, "
                                    "--data)")
    net.add_argument("--slices", type=int, help="slices in the study (default 200; quick 40)")
    net.add_argument("--network-runs", type=int, help="runs (default 3; quick 1)")
    net.add_argument("--study-settle", type=float, default=2.0, metavar="S",
                     help="[studies] settle_seconds for the runs (default %(default)s)")
    hist = parser.add_argument_group("history (an outbox of months of use; uses --model)")
    hist.add_argument("--scales", metavar="DAYSxPERDAY,...",
                      help="outboxes to build and measure, days x inputs a day (default "
                           "30x1000,365x1000: about 4 GB in --work; quick: 3x100,30x100)")
    hist.add_argument("--keep", action="store_true",
                      help="leave the outboxes in --work (deleted once measured otherwise)")
    return parser


def _scales(value: str) -> list[tuple[int, int]]:
    scales = []
    for item in _csv(value):
        days, sep, per_day = item.partition("x")
        if not (sep and days.isdigit() and per_day.isdigit() and int(days) and int(per_day)):
            raise BenchmarkError(f"--scales wants DAYSxPERDAY items like 365x1000, got {item!r}")
        scales.append((int(days), int(per_day)))
    return scales


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("edge", "tensorflow", "absl", "converters", "pydicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from edge.errors import EdgeError  # every package's errors derive from it

    try:
        if args.render is not None:
            result, text = None, render_file(args.render)
        else:
            result, text = run(args)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 1) or 1)
    print(text)
    if args.markdown:
        _write(args.markdown, text + "\n")
    if args.json and result is not None:
        _write(args.json, json.dumps(result, indent=2, default=str) + "\n")


def render_file(path: Path) -> str:
    """The report of a saved ``--json`` result; a wrong file is named with the reason, never
    quoted (a binary file's bytes would fill the terminal)."""
    not_ours = f"--render {path}: not a result written by --json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BenchmarkError(f"--render {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BenchmarkError(f"{not_ours} (not UTF-8 text: {exc.reason} at byte "
                             f"{exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{not_ours} (not JSON: {exc.msg} at line {exc.lineno}, column "
                             f"{exc.colno})") from None
    if not isinstance(result, dict):
        raise BenchmarkError(f"{not_ours} (it holds a JSON {type(result).__name__}, not an "
                             f"object)")
    try:
        return render(result)
    except KeyError as exc:
        raise BenchmarkError(f"{not_ours} (it lacks {exc})") from None
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise BenchmarkError(f"{not_ours} ({type(exc).__name__} in its contents)") from None


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, text.encode("utf-8"))
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror}", file=sys.stderr)
        sys.exit(1)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Run the chosen measurements; return (JSON-ready result, Markdown text)."""
    wanted = set(COMMANDS) - set(NOT_IN_ALL) if args.command == "all" else {args.command}
    if args.command == "all" and args.data is None:
        wanted.discard("trust")  # it needs the data set
    validate(args)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    result: dict[str, Any] = {"command": ["python", "-m", "benchmarks", *sys.argv[1:]],
                              "quick": args.quick, "machine": info}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="neuroedge-bench-", dir=args.work) as tmp:
        work = Path(tmp)
        built: list[model_set.BuiltModel] = []
        calibration = None
        if wanted & {"latency", "sizes", "int8"}:
            calibration, calibration_name = _calibration(args)
            built = _build(args, work, calibration, calibration_name, wanted)
        if "latency" in wanted:
            from benchmarks import latency

            threads = [int(t) for t in _csv(args.threads)]
            runs = args.runs or (20 if args.quick else 100)
            lat = latency.measure(built, threads, runs, args.warmup, args.tflite_runtime_python)
            lat.update(runs=runs, warmup=args.warmup, threads=threads)
            result["latency"] = lat
        if "sizes" in wanted:
            from benchmarks import sizes

            result["sizes"] = sizes.measure(built)
        if "int8" in wanted:
            result["int8"] = _int8(args, built, calibration)
        if "agent" in wanted:
            from benchmarks import agent

            files = args.files or (50 if args.quick else 500)
            result["agent"] = agent.measure(args.model or _shipped(), files, ("png", "dicom"),
                                            args.data, work, args.agent_threads,
                                            tmpfs_too=not args.no_tmpfs,
                                            fsync_delay_ms=args.fsync_delay_ms,
                                            heatmap=args.heatmap)
        if "reports" in wanted:
            from benchmarks import reports

            result["reports"] = reports.measure(args.model or _shipped(),
                                                args.files or (20 if args.quick else 100),
                                                args.data)
        if "memory" in wanted:
            from benchmarks import memory

            files = args.rss_files or (20 if args.quick else 100)
            result["memory"] = memory.measure(args.edge_python, args.model, files, work,
                                              args.data)
        if "startup" in wanted:
            from benchmarks import startup

            repeats = args.startup_repeats or (2 if args.quick else 5)
            result["startup"] = startup.measure(args.edge_python, args.model, repeats, work)
        if "trust" in wanted:
            from benchmarks import trust

            if args.data is None:
                raise BenchmarkError("trust needs --data ../shared/data/brain-tumor-mri (its "
                                     "Testing split)")
            result["trust"] = trust.measure(args.model or _shipped(), args.data, args.external,
                                            work, args.seed)
        if "soak" in wanted:
            from benchmarks import soak

            result["soak"] = soak.measure(args.model or _shipped(),
                                          args.rounds or (5 if args.quick else 20),
                                          args.burst or (15 if args.quick else 40), args.seed,
                                          work, args.max_kill_delay)
        if "network" in wanted:
            from benchmarks import network

            result["network"] = network.measure(
                args.model or _shipped(), args.slices or (40 if args.quick else 200),
                args.network_runs or (1 if args.quick else 3), args.data, work,
                args.study_settle)
        if "history" in wanted:
            from benchmarks import history

            scales = _scales(args.scales or ("3x100,30x100" if args.quick
                                             else "30x1000,365x1000"))
            where = args.work if args.keep and args.work is not None else work
            result["history"] = history.measure(args.model or _shipped(), scales, where,
                                                keep=args.keep)
    result["targets"] = targets(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_at_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return result, render(result)


def render(result: dict[str, Any]) -> str:
    """The Markdown report of a result (also from a saved ``--json`` file: ``--render``)."""
    sections = [f"# NeuroEdge benchmarks ({'quick' if result.get('quick') else 'full'})\n",
                machine_markdown(result["machine"])]
    if "latency" in result:
        from benchmarks import latency

        lat = result["latency"]
        sections += [f"## Inference latency per image ({lat['runs']} runs after {lat['warmup']} "
                     "warm-up, TFLiteClassifier.predict / Keras call)",
                     latency.markdown(lat, lat["threads"])]
    if "sizes" in result:
        from benchmarks import sizes

        sections += ["## Model size on disk", sizes.markdown(result["sizes"])]
    if "int8" in result:
        from benchmarks import int8_study

        sections += ["## Why int8 is not faster here", int8_study.markdown(result["int8"])]
    if "agent" in result:
        from benchmarks import agent

        sections += ["## The agent end to end", agent.markdown(result["agent"])]
    if "reports" in result:
        from benchmarks import reports

        sections += ["## The pictures of a report, piece by piece", reports.markdown(
            result["reports"])]
    if "memory" in result:
        from benchmarks import memory

        sections += ["## Peak memory of the agent (device environment)",
                     memory.markdown(result["memory"])]
    if "startup" in result:
        from benchmarks import startup

        sections += ["## Start-up time", startup.markdown(result["startup"])]
    if "trust" in result:
        from benchmarks import trust

        sections += ["## How far the answers can be trusted (issue 13)",
                     trust.markdown(result["trust"])]
    if "soak" in result:
        from benchmarks import soak

        sections += ["## Crash soak: kill -9 at random moments, then the books",
                     soak.markdown(result["soak"])]
    if "network" in result:
        from benchmarks import network

        sections += ["## A study over the DICOM network, scanner to PACS",
                     network.markdown(result["network"])]
    if "history" in result:
        from benchmarks import history

        sections += ["## Months of use: the agent with a large outbox",
                     history.markdown(result["history"])]
    if result.get("targets"):
        sections += ["## Targets (issue 7)", targets_markdown(result["targets"])]
    sections.append(f"_Measured in {result['seconds']:.0f} s; load average at the end: "
                    f"{result['load_average_at_end']}._")
    return "\n\n".join(sections)


def validate(args: argparse.Namespace) -> None:
    """Every option checked before anything slow starts (a typo must not cost a build)."""
    for path, option in ((args.data, "--data"), (args.calibration_data, "--calibration-data")):
        if path is not None and not (path / "Testing").is_dir() and not (
                path / "Training").is_dir():
            raise BenchmarkError(f"{option} {path} is not the data set folder (no Training/ or "
                                 "Testing/ inside); pass ../shared/data/brain-tumor-mri")
    known = model_set.known_archs()
    unknown = sorted(set(_csv(args.archs)) - set(known))
    if unknown:
        raise BenchmarkError(f"--archs: unknown {', '.join(unknown)}; choose from "
                             f"{', '.join(known)}")
    bad = sorted(set(_csv(args.formats or "")) - set(model_set.FORMATS))
    if bad:
        raise BenchmarkError(f"--formats: unknown {', '.join(bad)}; choose from "
                             f"{', '.join(model_set.FORMATS)}")
    try:
        threads = [int(t) for t in _csv(args.threads)]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise BenchmarkError(f"--threads wants positive integers like 1,2; got {args.threads!r}")
    for value, option in ((args.runs, "--runs"), (args.files, "--files"),
                          (args.rss_files, "--rss-files"),
                          (args.startup_repeats, "--startup-repeats"),
                          (args.rounds, "--rounds"), (args.burst, "--burst")):
        if value is not None and value < 1:
            raise BenchmarkError(f"{option} must be at least 1, got {value}")
    if args.scales is not None:
        _scales(args.scales)
    if not 0 < args.max_kill_delay <= 600:
        raise BenchmarkError(f"--max-kill-delay must be between 0 and 600 seconds, got "
                             f"{args.max_kill_delay:g}")
    if not 0 <= args.fsync_delay_ms <= 1000:
        raise BenchmarkError(f"--fsync-delay-ms must be between 0 and 1000, got "
                             f"{args.fsync_delay_ms:g}")
    trained = _pairs(args.keras_model, "--keras-model")
    stray = sorted(set(trained) - set(_csv(args.archs)) - {model_set.PAPER_ARCH})
    if stray:
        raise BenchmarkError(f"--keras-model {stray[0]}=...: {stray[0]} is not among --archs")
    _pairs(args.tflite, "--tflite")
    if args.external is not None and not args.external.is_dir():
        raise BenchmarkError(f"--external {args.external} is not a folder; pass "
                             "../shared/data/br35h-tumour")
    if args.model is not None and not Path(args.model).exists():
        raise BenchmarkError(f"--model {args.model} does not exist; pass a folder holding "
                             "model.tflite and model.json")
    if args.edge_python is not None:
        from benchmarks import edge_env

        edge_env.agent_command(args.edge_python)


def _shipped() -> str:
    from edge.manifest import default_model_dir

    shipped = default_model_dir()
    if shipped is None:
        raise BenchmarkError("no model is shipped with this checkout: pass --model DIR")
    return str(shipped)


def _calibration(args: argparse.Namespace) -> tuple[Any, str]:
    size = 8 if args.quick else args.calibration_size
    if args.calibration_data is not None:
        images = model_set.real_calibration(args.calibration_data, size)
        return images, f"{len(images)} Training images of {args.calibration_data}"
    return model_set.synthetic_calibration(size), f"{size} synthetic phantoms"


def _build(args: argparse.Namespace, work: Path, calibration: Any, calibration_name: str,
           wanted: set[str]) -> list[model_set.BuiltModel]:
    archs = _csv(args.archs)
    formats = _csv(args.formats) if args.formats else (
        ["keras", "float32", "int8"] if args.quick else list(model_set.FORMATS))
    if "int8" in wanted and model_set.PAPER_ARCH not in archs:
        archs = [model_set.PAPER_ARCH, *archs]
    if "int8" in wanted:
        formats = list(dict.fromkeys([*formats, "float32", "int8"]))
    trained = _pairs(args.keras_model, "--keras-model")
    cache = args.cache or work / "models"
    built = model_set.build_models(cache, archs, formats, calibration, calibration_name, trained)
    for name, path in _pairs(args.tflite, "--tflite").items():
        built.append(model_set.model_from_file(path, name))
    return built


def _int8(args: argparse.Namespace, built: list[model_set.BuiltModel],
          calibration: Any) -> dict[str, Any]:
    from benchmarks import int8_study

    paper = {m.fmt: m for m in built if m.arch == model_set.PAPER_ARCH}
    runs = 15 if args.quick else 40
    rounds = 2 if args.quick else 3
    profiles = []
    for fmt in (("int8",) if args.quick else ("int8", "float32")):
        log.info("profiling %s %s layer by layer", model_set.PAPER_ARCH, fmt)
        profile = int8_study.op_profile(Path(paper[fmt].path), runs, rounds)
        profile["label"] = f"{model_set.PAPER_ARCH} {fmt} ({paper[fmt].weights} weights)"
        profiles.append(profile)
    log.info("timing the heavy layers alone")
    kernels = int8_study.kernel_table(runs, quick=args.quick)
    log.info("converting and timing the variants")
    trained = _pairs(args.keras_model, "--keras-model").get(model_set.PAPER_ARCH)
    keras_model, weights = model_set.keras_model_for(model_set.PAPER_ARCH, trained)
    variants = int8_study.variants(keras_model, calibration, runs, quick=args.quick)
    log.info("timing the interpreter's switches")
    switches = int8_study.interpreter_options(Path(paper["int8"].path), runs)
    return {"profiles": profiles, "kernels": kernels, "variants": variants,
            "variants_model": f"{model_set.PAPER_ARCH} ({weights} weights)",
            "interpreter_options": switches,
            "interpreter_model": f"{model_set.PAPER_ARCH} int8 ({paper['int8'].weights} weights)"}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 7 this run measured: the value and whether it is met."""
    rows: list[dict[str, Any]] = []
    lat = result.get("latency")
    if lat:
        paper = {r["format"]: r for r in lat["rows"] if r["arch"] == model_set.PAPER_ARCH
                 and r["runtime"] == "ai-edge-litert" and r["threads"] == 1 and "error" not in r}
        if "int8" in paper:
            ms = paper["int8"]["median_ms"]
            rows.append({"target": f"paper int8, 1 thread, ai-edge-litert: <= "
                                   f"{TARGETS['int8_ms']:g} ms", "value": f"{ms:.2f} ms",
                         "met": ms <= TARGETS["int8_ms"]})
            speedup = paper["int8"].get("speedup_vs_float32")
            if speedup is not None:
                rows.append({"target": f"paper int8 >= {TARGETS['int8_speedup']:g}x faster "
                                       "than float32 (1 thread)", "value": f"{speedup:.2f}x",
                             "met": speedup >= TARGETS["int8_speedup"]})
    agent = result.get("agent")
    if agent and "png" in agent["kinds"] and not agent.get("fsync_delay_ms"):
        for place in ("disk", "tmpfs"):
            run = agent["kinds"]["png"].get(f"agent_{place}")
            if run:
                pct = run["overhead_vs_bare_pct"]
                rows.append({"target": f"agent overhead, PNG, outbox on {place}: <= "
                                       f"{TARGETS['agent_overhead_pct']:g}% of bare inference",
                             "value": f"{pct:.0f}% ({run['overhead_ms_per_file']:.1f} ms/file)",
                             "met": pct <= TARGETS["agent_overhead_pct"]})
    memory = result.get("memory")
    if memory:
        rows.append({"target": f"agent peak RSS, device environment: <= "
                               f"{TARGETS['rss_mb']:g} MB", "value":
                     f"{memory['peak_rss_mb']:.1f} MB", "met": memory["met"]})
    return rows


def targets_markdown(rows: list[dict[str, Any]]) -> str:
    return table(["target", "this run", "met"],
                 [[r["target"], r["value"], "yes" if r["met"] else "**no**"] for r in rows],
                 ["l", "r", "l"])
