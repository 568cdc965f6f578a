"""``edge-agent check``: everything the agent needs, verified before a clinic relies on it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from .config import AgentConfig
from .durable import create_temp
from .errors import EdgeError


def run_checks(config: AgentConfig, echo: Callable[[str], None]) -> list[str]:
    """Print one line per check; return the failures (empty: all good)."""
    failures: list[str] = []

    def ok(what: str, detail: str) -> None:
        echo(f"ok      {what}: {detail}")

    def fail(what: str, detail: str) -> None:
        echo(f"FAILED  {what}: {detail}")
        failures.append(f"{what}: {detail}")

    def warn(what: str, detail: str) -> None:  # needs a person's attention; not a failure
        echo(f"WARNING {what}: {detail}")

    ok("config", config.source or "built-in defaults (no --config given)")
    classifier = None
    try:
        from .classifier import Classifier, resolve_model_path
        from .manifest import load_verified

        path = resolve_model_path(config.paths.model)
        manifest, model_path = load_verified(path)
        ok("model", f"{manifest.name} {manifest.version} ({manifest.architecture}, "
           f"{manifest.quantization}), sha256 {manifest.model_sha256[:12]}... matches "
           f"{model_path}")
        classifier = Classifier(config, model_path.parent)
        classifier.self_test()
        ok("runtime", f"{classifier.runtime_name} loads and runs the model")
        _check_speed(classifier, ok, warn)
    except EdgeError as exc:
        fail("model" if classifier is None else "runtime", str(exc))
    _check_codecs(ok)
    _check_network(config, ok, fail)
    if config.paths.inbox:
        try:
            from .watch import resolve_folders

            inbox, outbox = resolve_folders(config)
            ok("inbox", f"{inbox} is readable and writable")
            _check_outbox(outbox, inbox, ok, fail)
            _check_space(outbox, config.watch.min_free_mb, config.watch.warn_days, ok, warn)
            _check_last_offload(outbox, ok, warn)
            _check_stall(outbox, warn)
            if config.pacs.send_to:
                _check_sr_queue(outbox, str(config.pacs.peer), ok, warn)
        except EdgeError as exc:
            fail("folders", str(exc))
    else:
        echo("skip    folders: no inbox given (--inbox or [paths] inbox)")
    return failures


# An input that takes longer than this (model, trust checks and heat-map together) makes a
# burst of slices wait minutes: worth a warning, never a failure.
SLOW_INPUT_S = 2.0


def test_picture(size: int = 256) -> Any:
    """A grey ellipse on black, the rough shape of an axial slice: something to time the
    model and the heat-map on (the answer is not looked at)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    inside = (x / 0.75) ** 2 + (y / 0.9) ** 2 < 1
    shade = 90 + 60 * np.cos(6 * x) * np.sin(5 * y)
    return Image.fromarray(np.where(inside, shade, 0).astype(np.uint8), mode="L")


def _check_speed(classifier: Any, ok: Callable[[str, str], None],
                 warn: Callable[[str, str], None]) -> None:
    """Time one input through the whole classification, heat-map included, as configured
    (after a warm-up without a heat-map: on a slow box the occlusion map is what takes the
    time), so the person installing the box sees its throughput."""
    from .decoded import DecodedImage

    decoded = DecodedImage("png", test_picture())
    classifier.classify(decoded, heatmap="none")
    start = time.perf_counter()
    prediction = classifier.classify(decoded)
    seconds = time.perf_counter() - start
    parts = ", ".join(f"{name} {prediction.timings_ms[name]:,.0f} ms"
                      for name in ("inference", "trust", "heatmap")
                      if name in prediction.timings_ms)
    detail = (f"one input takes {seconds:.2f} s ({parts}; [report] heatmap = "
              f"\"{classifier.heatmap}\"): about {60 / max(seconds, 1e-3):,.0f} inputs a minute, "
              "before decoding and report writing")
    if seconds > SLOW_INPUT_S and classifier.heatmap == "occlusion":
        warn("speed", f"{detail}. The occlusion heat-map runs the model 49 more times per "
             "input; where that is too slow for the clinic's bursts, set [report] heatmap = "
             "\"none\" (or \"model\", faster but less faithful: docs/trust.md)")
    elif seconds > SLOW_INPUT_S:
        warn("speed", f"{detail}; a burst of slices will wait in the inbox")
    else:
        ok("speed", detail)


def _check_outbox(outbox: Path, inbox: Path, ok: Callable[[str, str], None],
                  fail: Callable[[str, str], None]) -> None:
    if outbox.exists() and not outbox.is_dir():
        fail("outbox", f"{outbox} is a file, not a folder: set [paths] outbox (or --outbox) to "
             "the folder the agent writes its reports to")
        return
    existing = outbox if outbox.exists() else outbox.parent
    if not existing.is_dir():
        fail("outbox", f"{outbox}: its folder {existing} does not exist (the agent creates the "
             "outbox itself, never its parents: is a disk not mounted?)")
        return
    try:
        fd, tmp = create_temp(existing)  # a probe, removed at once
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        fail("outbox", f"cannot write in {existing} ({exc.strerror}); fix its permissions")
        return
    where = "exists" if outbox.exists() else f"will be created (in {existing})"
    ok("outbox", f"{outbox} {where} and is writable")
    try:
        same = os.stat(str(inbox)).st_dev == os.stat(str(existing)).st_dev
    except OSError:
        same = True
    if not same:
        ok("filesystems", "inbox and outbox are on different filesystems: inputs are copied "
           "durably, then removed from the inbox (slower than a rename, equally safe)")


def _check_space(outbox: Path, min_free_mb: float, warn_days: float,
                 ok: Callable[[str, str], None], warn: Callable[[str, str], None]) -> None:
    """Free space on the outbox's disk: below [watch] min_free_mb the agent takes no new
    input (a warning: it keeps running, and takes them once space is freed); within
    [watch] warn_days of it at the last week's rate (the agent's samples), a warning too."""
    from .diskspace import HISTORY_FILE, MB, DiskForecast, free_bytes

    existing = outbox if outbox.exists() else outbox.parent
    free = free_bytes(existing)
    if free is None:
        warn("disk space", f"cannot read the free space of {existing}")
        return
    if free < min_free_mb * MB:
        warn("disk space", f"only {free // MB} MB free for the outbox, below [watch] "
             f"min_free_mb = {min_free_mb:g}: the agent takes no new input until space is "
             "freed")
        return
    forecast = DiskForecast(outbox / ".state" / HISTORY_FILE, min_free_mb * MB, warn_days)
    forecast.observe(free, save=False)
    if forecast.warning():
        warn("disk space", f"filling: {forecast.describe()}; move old days elsewhere with "
             "`edge-agent offload`")
    else:
        ok("disk space", f"{forecast.describe()} ([watch] min_free_mb = {min_free_mb:g})")


def _check_last_offload(outbox: Path, ok: Callable[[str, str], None],
                        warn: Callable[[str, str], None]) -> None:
    """How the last ``edge-agent offload`` ended (a scheduled one, above all): a failure is
    a warning with what the front page says of it; none yet says nothing."""
    from .offload import last_offload, last_offload_alerts, offload_running

    record = last_offload(outbox)
    if record is None:
        return
    alerts = last_offload_alerts(outbox)
    if alerts:
        warn("offload", alerts[0])
    elif offload_running(outbox, record):
        ok("offload", f"an offload is running (since {record.get('time')}, process "
           f"{record.get('pid')}): {record.get('command')}")
    else:
        left = record.get("days_left")
        ok("offload", f"the last offload ({record.get('time')}) moved "
           f"{record.get('days_moved')} day(s)" + (
               f" and left {left} for the next run (its --max-minutes)" if left else "")
           + f": {record.get('command')}")


def _check_stall(outbox: Path, warn: Callable[[str, str], None]) -> None:
    """A stall the agent recorded (``edge.liveness``): there while one of its side threads
    is stalled, and from a restart for one until the next start has replayed the journal.
    Nothing is said when there is none."""
    from .liveness import STALL_RECORD, read_stall

    path = outbox / ".state" / STALL_RECORD
    try:
        stall = read_stall(outbox / ".state")
    except ValueError:
        warn("stalled thread", f"{path} is damaged: the agent's next start removes it and "
             "counts the inputs it finds in the journal as having stopped it, as after a crash")
        return
    except OSError as exc:
        warn("stalled thread", f"{path} could not be read ({exc.strerror or exc}); if this goes "
             "on, check the disk (dmesg)")
        return
    if stall is None:
        return
    warn("stalled thread", f"the agent's {stall.names()} stalled (process {stall.pid}, "
         f"{stall.time}): {'; '.join(stall.why)}. systemd restarts the agent, and its next "
         "start does not count the inputs it had taken as having stopped it. If this comes "
         "back, look at what the thread waits on: the outbox's disk (committer, study "
         "tracker), an offload's --to folder (study tracker), the PACS (SR sender)")


def _check_codecs(ok: Callable[[str, str], None]) -> None:
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

    from .dicom_compat import decoder_problem

    names = {JPEGBaseline8Bit: "JPEG", JPEGLSLossless: "JPEG-LS", JPEG2000Lossless: "JPEG 2000",
             RLELossless: "RLE"}
    usable = [label for uid, label in names.items() if not decoder_problem(uid)]
    missing = [label for uid, label in names.items() if decoder_problem(uid)]
    detail = f"compressed DICOM decodable: {', '.join(usable) or 'none'}"
    if missing:
        detail += (f"; not decodable: {', '.join(missing)} (such files are quarantined; "
                   "`pip install 'neuroedge[dicom-codecs]'` adds them)")
    ok("dicom codecs", detail)


def _check_network(config: AgentConfig, ok: Callable[[str, str], None],
                   fail: Callable[[str, str], None]) -> None:
    """The DICOM network (issue 15): pynetdicom present when the receiver or the PACS is
    configured. The port itself is not tried: the running service holds it."""
    net, pacs = config.network, config.pacs
    if not net.dicom_port and not pacs.send_to:
        ok("dicom network", "no receiver ([network] dicom_port = 0), no PACS ([pacs] send_to)")
        return
    try:
        import pynetdicom
    except ImportError:
        fail("dicom network", "pynetdicom is not installed: pip install 'neuroedge[edge]'")
        return
    parts = []
    if net.dicom_port:
        callers = ", ".join(net.allowed_calling_aets) or "any caller"
        parts.append(f"receiver {net.ae_title} on port {net.dicom_port} ({callers})")
    if pacs.send_to:
        parts.append(f"SRs ({pacs.sr_type}) to {pacs.peer}")
    ok("dicom network", f"pynetdicom {pynetdicom.__version__}: {'; '.join(parts)}")


def _check_sr_queue(outbox: Path, peer: str, ok: Callable[[str, str], None],
                    warn: Callable[[str, str], None]) -> None:
    """The SRs waiting for the PACS (read only: the running agent owns the queue), and those
    the PACS refuses until something is changed there."""
    from .network.sendqueue import read_queue_state

    state = read_queue_state(outbox)
    if state.unreadable:
        warn("sr queue", f"{state.unreadable} SR record(s) in {outbox / '.state' / 'outgoing'} "
             "could not be read just now (a disk error): not counted below; the agent tries "
             "them again. If this goes on, check the disk (dmesg)")
    if state.damaged:
        warn("sr queue", f"{state.damaged} SR(s) in {outbox / '.state' / 'outgoing' / 'damaged'}"
             " could not be read and will not be sent (the agent logged why); judging their "
             "studies again queues new ones")
    if not state.waiting and not state.refused:
        ok("sr queue", f"no SR waiting for {peer}")
        return
    if state.waiting:
        error = state.waiting_error
        ok("sr queue", f"{state.waiting} SR(s) waiting for {peer}, oldest queued {state.oldest}"
           + (f" (last error: {error})" if error else ""))
    if state.refused:
        warn("sr queue", f"{state.refused} SR(s) refused by {peer} until something is changed "
             f"there: {state.refused_error}. They stay queued and are tried again every "
             "[pacs] retry_max")
