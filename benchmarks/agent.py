"""The agent end to end on a backlog inbox, stage by stage, against bare inference.

For each input kind (PNG, DICOM) one inbox of N files is made in a scratch folder:
synthetic phantom heads, or pictures derived from the data set's Testing images when
``--data`` is given (converted on the fly, deleted afterwards, never committed). Then, in
this process and with the same model and runtime settings:

- bare inference: ``decode_file`` + ``Classifier.classify`` on every file in a loop, the
  least any program that classifies files must do;
- the agent: ``Agent(..., once=True).run()`` on a copy of the inbox (claim, hash, decode,
  classify, reports, archive, index, with every fsync), its methods wrapped in timers.

The agent runs on three threads: the main loop (hash, decode, classify), the claimer
(taking the next group of files out of the inbox) and the committer (reports, journal,
archive, index; ``edge.pipeline``). The main thread's stages add up to the wall time; the
other two run beside it and are shown as their busy time per file. The
agent's overhead is its wall time per file minus the bare time per file. The outbox lives
on the scratch folder's disk (real fsyncs); ``--tmpfs-too`` repeats the agent run with
inbox and outbox on /dev/shm, where fsync is free, to split disk-bound from CPU-bound cost.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import ratio, table

log = logging.getLogger(__name__)

STAGES = ("inbox scan + settle check", "waiting for the claimer", "hash (sha256)", "decode",
          "preprocess", "invoke", "occlusion heat-map (49 more invokes)",
          "duplicate check + report build",
          "heat-map + page, drawn here while the queue is full",
          "waiting for the committer", "loop, other")
CLAIMER_STAGES = ("claim (journal + rename)", "idle")
COMMITTER_STAGES = ("reports (thumbnail + HTML + JSON)", "decide (journal)", "archive (move)",
                    "index (append)", "idle")


def _source_pictures(count: int, data_dir: Path | None, seed: int = 0) -> list[np.ndarray]:
    """8-bit grayscale pictures: Testing images (cycled) or noisy phantoms at 512x512."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    if data_dir is not None:
        paths = sorted(Path(data_dir, "Testing").glob("*/*.jpg"))
        if not paths:
            from benchmarks.errors import BenchmarkError

            raise BenchmarkError(f"{data_dir} has no Testing/<class>/*.jpg images; pass the "
                                 "data set folder (../shared/data/brain-tumor-mri) or drop --data")
        chosen = [paths[i] for i in rng.permutation(len(paths))[:count]]
        chosen = (chosen * (count // max(1, len(chosen)) + 1))[:count]
        return [np.asarray(Image.open(str(p)).convert("L")) for p in chosen]
    from edge.sample_inbox import phantom

    base = phantom(512).astype(np.int16)
    return [np.clip(base + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
            for _ in range(count)]


def make_inbox(folder: Path, kind: str, pictures: list[np.ndarray]) -> int:
    """Write one file per picture; return the bytes written. mtimes set in the past so the
    whole backlog counts as settled at start-up (as files copied in earlier do)."""
    from PIL import Image

    from edge.benchmark import synthetic_mr

    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    past = time.time() - 3600
    for i, picture in enumerate(pictures):
        if kind == "png":
            path = folder / f"scan{i:05d}.png"
            Image.fromarray(picture).save(str(path))
        else:
            path = synthetic_mr(folder / f"scan{i:05d}.dcm", pixels=picture)
        os.utime(str(path), (past, past))
        total += path.stat().st_size
    return total


class StageClock:
    """Cumulative wall time spent in wrapped callables, by stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        setattr(owner, name, timed)


def _config(model: str, inbox: Path | None, outbox: Path | None, threads: int,
            heatmap: str = "occlusion") -> Any:
    from edge.config import config_from_dict

    paths: dict[str, str] = {"model": model}
    if inbox is not None:
        paths.update(inbox=str(inbox), outbox=str(outbox))
    return config_from_dict({"paths": paths, "runtime": {"threads": threads},
                             "report": {"heatmap": heatmap}}, "benchmark")


def bare_inference(model: str, inbox: Path, threads: int) -> dict[str, Any]:
    """decode + preprocess + invoke per file in a tight loop (files stay where they are), with
    the model's own heat-map (cheap), as before the occlusion map: that one is timed apart
    in the agent's run."""
    from edge.benchmark import time_bare
    from edge.classifier import Classifier
    from edge.inputs import decode_file

    config = _config(model, None, None, threads, "model")
    classifier = Classifier(config)
    files = sorted(inbox.iterdir())
    classifier.classify(decode_file(files[0], config.dicom, config.limits))  # warm-up
    start = time.perf_counter()
    decode, prep, infer = time_bare(classifier, config, files)
    wall = time.perf_counter() - start
    return {"files": len(files), "seconds": wall, "ms_per_file": 1000 * wall / len(files),
            "files_per_s": len(files) / wall, "decode_ms": statistics.mean(decode),
            "preprocess_ms": statistics.mean(prep), "invoke_ms": statistics.mean(infer),
            "invoke_median_ms": statistics.median(infer), "runtime": classifier.runtime_name}


def agent_run(model: str, inbox: Path, outbox: Path, threads: int,
              fsync_delay_ms: float = 0.0, heatmap: str = "occlusion") -> dict[str, Any]:
    """The whole agent on the backlog, with per-stage and fsync timers. ``fsync_delay_ms``
    adds that much sleep to every fsync: slow storage (an SD card), emulated. ``heatmap``:
    the agent's ``[report] heatmap`` (occlusion: 49 more runs of the model per file)."""
    from edge.classifier import Classifier
    from edge.watch import Agent

    config = _config(model, inbox, outbox, threads, heatmap)
    classifier = Classifier(config)
    files = len(list(inbox.iterdir()))
    agent = Agent(config, classifier, once=True)
    clock = StageClock()
    worker = agent.worker
    clock.wrap(agent, "_claimed", "wait for claims")
    groups: list[int] = []
    real_commit = worker.commit

    def counted_commit(group: list[Any]) -> Any:
        groups.append(len(group))
        return real_commit(group)

    worker.commit = counted_commit  # type: ignore[method-assign]
    for name, stage in (("claim", "claim"), ("prepare", "prepare"), ("render", "render")):
        clock.wrap(worker, name, stage)
    for name, stage in (("write_report", "reports (thumbnail + HTML + JSON)"),
                        ("decide", "decide (journal)"), ("move", "archive (move)"),
                        ("record", "index (append)")):
        clock.wrap(worker.committing, name, stage)
    clock.wrap(agent.committer, "submit", "wait")
    clock.wrap(agent.committer, "close", "wait")
    clock.wrap(agent.inbox, "scan", "scan")
    clock.wrap(agent.inbox, "take_ready", "take_ready")
    clock.wrap(agent, "_render_index", "render index pages")
    real_fsync = os.fsync
    fsyncs = {"n": 0, "s": 0.0}
    lock = threading.Lock()  # both of the agent's threads fsync

    def counted_fsync(fd: int) -> None:
        start = time.perf_counter()
        try:
            real_fsync(fd)
            if fsync_delay_ms:
                time.sleep(fsync_delay_ms / 1000)
        finally:
            with lock:
                fsyncs["n"] += 1
                fsyncs["s"] += time.perf_counter() - start

    os.fsync = counted_fsync
    try:
        start = time.perf_counter()
        counts = agent.run()
        wall = time.perf_counter() - start
    finally:
        os.fsync = real_fsync
    timings: dict[str, list[float]] = defaultdict(list)
    for path in (outbox / "reports").glob("*.json"):
        for key, value in json.loads(path.read_text(encoding="utf-8"))["timings_ms"].items():
            timings[key].append(float(value))
    per = {k: sum(v) / files for k, v in timings.items()}  # ms per file
    s = {k: 1000 * v / files for k, v in clock.seconds.items()}
    classify = sum(per.get(k, 0) for k in ("hash", "decode", "preprocess", "inference",
                                           "heatmap"))
    stages = {  # the main thread: these add up to the wall time
        "inbox scan + settle check": s.get("scan", 0) + s.get("take_ready", 0),
        "waiting for the claimer": s.get("wait for claims", 0),
        "hash (sha256)": per.get("hash", 0),
        "decode": per.get("decode", 0),
        "preprocess": per.get("preprocess", 0),
        "invoke": per.get("inference", 0),
        "occlusion heat-map (49 more invokes)": per.get("heatmap", 0),
        "duplicate check + report build": s.get("prepare", 0) - classify,
        "heat-map + page, drawn here while the queue is full": s.get("render", 0),
        # queue full (the committer behind), and draining it at the end; the pictures it
        # draws meanwhile are the row above
        "waiting for the committer": s.get("wait", 0) - s.get("render", 0),
    }
    ms_per_file = 1000 * wall / files
    stages["loop, other"] = ms_per_file - sum(stages.values())  # index pages included
    committer = {name: s.get(name, 0) for name in COMMITTER_STAGES[:-1]}
    committer["idle"] = ms_per_file - sum(committer.values())
    claimer = {"claim (journal + rename)": s.get("claim", 0)}
    claimer["idle"] = ms_per_file - sum(claimer.values())
    return {"files": files, "counts": counts, "seconds": wall, "ms_per_file": ms_per_file,
            "files_per_s": files / wall, "stages_ms": stages, "committer_ms": committer,
            "claimer_ms": claimer,
            "fsync_per_file": fsyncs["n"] / files, "fsync_ms_per_file": 1000 * fsyncs["s"] / files,
            "commit_groups": len(groups), "mean_group": statistics.mean(groups) if groups else 0.0,
            "fsync_delay_ms": fsync_delay_ms, "heatmap": heatmap,
            "heatmap_ms_per_file": per.get("heatmap", 0.0),
            "runtime": classifier.runtime_name}


def measure(model: str, files: int, kinds: tuple[str, ...] | list[str], data_dir: Path | None,
            work: Path, threads: int = 0, tmpfs_too: bool = False,
            fsync_delay_ms: float = 0.0, heatmap: str = "occlusion") -> dict[str, Any]:
    results: dict[str, Any] = {"model": model, "files": files, "threads": threads,
                               "fsync_delay_ms": fsync_delay_ms, "heatmap": heatmap,
                               "source": str(data_dir) + " Testing images" if data_dir
                               else "synthetic phantom heads (512x512)", "kinds": {}}
    pictures = _source_pictures(files, data_dir)
    places = [("disk", work)]
    if tmpfs_too and Path("/dev/shm").is_dir():
        places.append(("tmpfs", Path("/dev/shm")))
    for kind in kinds:
        entry: dict[str, Any] = {}
        scratch = Path(tempfile.mkdtemp(prefix=f"neuroedge-agent-{kind}-", dir=str(work)))
        try:
            source = scratch / "source"
            entry["inbox_mb"] = make_inbox(source, kind, pictures) / 1e6
            log.info("%s: bare inference on %d files", kind, files)
            entry["bare"] = bare_inference(model, source, threads)
            for place, root in places:
                run_dir = Path(tempfile.mkdtemp(prefix="neuroedge-agent-run-", dir=str(root)))
                try:
                    shutil.copytree(str(source), str(run_dir / "inbox"), copy_function=shutil.copy2)
                    log.info("%s: the agent on %d files (%s)", kind, files, place)
                    run = agent_run(model, run_dir / "inbox", run_dir / "outbox", threads,
                                    fsync_delay_ms if place == "disk" else 0.0, heatmap)
                finally:
                    shutil.rmtree(str(run_dir), ignore_errors=True)
                bare = entry["bare"]
                # the agent's own cost: the heat-map's runs of the model are the model's
                run["overhead_ms_per_file"] = (run["ms_per_file"] - bare["ms_per_file"]
                                               - run["heatmap_ms_per_file"])
                run["overhead_vs_bare_pct"] = 100 * (ratio(run["overhead_ms_per_file"],
                                                           bare["ms_per_file"]) or 0.0)
                run["overhead_vs_invoke_pct"] = 100 * (ratio(run["overhead_ms_per_file"],
                                                             bare["invoke_ms"]) or 0.0)
                entry[f"agent_{place}"] = run
        finally:
            shutil.rmtree(str(scratch), ignore_errors=True)
        results["kinds"][kind] = entry
    return results


def markdown(result: dict[str, Any]) -> str:
    kinds = list(result["kinds"])
    columns = [(k, place) for k in kinds for place in ("disk", "tmpfs")
               if f"agent_{place}" in result["kinds"][k]]
    head = ["stage (ms per file)"] + [f"{k.upper()} agent ({p})" for k, p in columns]
    head += [f"{k.upper()} bare" for k in kinds]
    rows = []
    bare_key = {"decode": "decode_ms", "preprocess": "preprocess_ms", "invoke": "invoke_ms"}
    first_run = result["kinds"][kinds[0]][f"agent_{columns[0][1]}"]
    threaded = "committer_ms" in first_run  # runs saved before the committer thread: one list
    for stage in first_run["stages_ms"]:
        row = [f"main: {stage}" if threaded else stage] + [
            f"{result['kinds'][k][f'agent_{p}']['stages_ms'].get(stage, 0):.2f}"
            for k, p in columns]
        row += [f"{result['kinds'][k]['bare'][bare_key[stage]]:.2f}" if stage in bare_key
                else "-" for k in kinds]
        rows.append(row)
    for thread, names in (("claimer", CLAIMER_STAGES), ("committer", COMMITTER_STAGES)):
        for stage in names if threaded else ():
            rows.append([f"{thread}: {stage}"] + [
                f"{result['kinds'][k][f'agent_{p}'].get(f'{thread}_ms', {}).get(stage, 0):.2f}"
                for k, p in columns] + ["-" for _ in kinds])

    def agent_cells(fn: Callable[[dict[str, Any]], str]) -> list[str]:
        return [fn(result["kinds"][k][f"agent_{p}"]) for k, p in columns]

    rows.append(["**total**"] + agent_cells(lambda r: f"**{r['ms_per_file']:.2f}**")
                + [f"**{result['kinds'][k]['bare']['ms_per_file']:.2f}**" for k in kinds])
    rows.append(["fsync time, both threads (calls per file)"]
                + agent_cells(lambda r: f"{r['fsync_ms_per_file']:.2f} ({r['fsync_per_file']:.0f})")
                + ["-" for _ in kinds])
    rows.append(["inputs per commit group (mean)"]
                + agent_cells(lambda r: f"{r.get('mean_group', 0):.1f}") + ["-" for _ in kinds])
    rows.append(["files/s"] + agent_cells(lambda r: f"{r['files_per_s']:.1f}")
                + [f"{result['kinds'][k]['bare']['files_per_s']:.1f}" for k in kinds])
    rows.append(["agent overhead, ms per file"]
                + agent_cells(lambda r: f"{r['overhead_ms_per_file']:.2f}") + ["-" for _ in kinds])
    rows.append(["overhead ÷ bare inference"]
                + agent_cells(lambda r: f"{r['overhead_vs_bare_pct']:.0f}%") + ["-" for _ in kinds])
    rows.append(["overhead ÷ invoke alone"]
                + agent_cells(lambda r: f"{r['overhead_vs_invoke_pct']:.0f}%")
                + ["-" for _ in kinds])
    text = table(head, rows, ["l"] + ["r"] * (len(head) - 1))
    first = result["kinds"][kinds[0]]
    notes = [f"{result['files']} files per inbox ({result['source']}); model {result['model']}; "
             f"runtime {first['bare']['runtime']}, [runtime] threads = {result['threads']} "
             "(0: the runtime's default)",
             "bare: decode_file + Classifier.classify per file in a loop (no claim, hash, "
             "report, archive or fsync); agent: edge-agent's backlog run (`watch --once`) in "
             "this process; overhead = agent ms/file - bare ms/file - occlusion heat-map "
             f"ms/file ([report] heatmap = {result.get('heatmap', 'model')!r} in the agent; "
             "bare draws the model's own map, which costs next to nothing)",
             *(["main: the main loop's thread, whose stages add up to the total; claimer: the "
                "thread claiming the next group of files meanwhile; committer: the thread "
                "writing reports, journal, archive and index meanwhile (busy time per file, "
                "idle the rest)"] if threaded else []),
             *([f"disk: every fsync followed by a {result['fsync_delay_ms']:g} ms sleep, "
                "emulating slow storage such as an SD card (the fsync itself is real)"]
               if result.get("fsync_delay_ms") else []),
             "disk: inbox and outbox on the scratch folder's filesystem (every fsync real); "
             "tmpfs: on /dev/shm, where fsync costs nothing (CPU-bound part only)",
             "wait for stability: backlog files are already settled (older than [watch] "
             "settle_seconds); a file dropped while the agent runs waits settle_seconds "
             "(default 3 s, 0.5 s after its close event) before it is taken: latency, not "
             "throughput"]
    return text + "\n\n" + "\n".join(f"- {n}" for n in notes)
