"""``edge-agent``: the command line of the device agent.

Exit codes (sysexits.h, so systemd and scripts can tell them apart):

====  ====================================================================================
0     success (``classify``: every file was classified)
1     an unexpected internal error (a bug: please report it with the log)
2     wrong usage (unknown option, missing argument, a FILE that does not exist; ``offload``:
      a wrong --before or --to)
65    ``classify``: at least one file was refused (its entry says why); ``fsck``: the outbox
      has problems it could not repair; ``offload``: a day to move has archived inputs but
      no index file (``fsck`` first)
66    the inbox, or the folder meant to hold the outbox, does not exist (yet): a share or
      disk may not be mounted, so a service manager should restart the agent; ``offload``:
      the folder --to names does not exist
69    no TFLite runtime can be imported, or it cannot run the model
73    an output cannot be written; ``offload``: --to has too little space, or a file there
      differs from the one it would receive
75    another agent holds the outbox, or (``watch --once``) some inputs could not be finished
      yet and stay journaled for the next run, or wait in the inbox for disk space
      (``[watch] min_free_mb``) or while inputs taken wait for a retry (a failure that
      persists), or could not be read in the inbox; ``fsck``:
      interrupted inputs wait in the journal for the agent's next start
78    configuration error: config file, model/manifest (incl. sha256 mismatch), folders.
      ``check`` exits 78 for any failed check. The systemd unit uses
      ``RestartPreventExitStatus=78``: restarting cannot fix a configuration.
130   interrupted (Ctrl-C; ``watch`` stops at the first one once the files it has taken are
      finished, a second one stops it at once: what it had taken stays journaled)
====  ====================================================================================
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from . import __version__
from .config import AgentConfig, load_config
from .errors import (
    EX_CONFIG,
    EX_DATAERR,
    EX_INTERRUPTED,
    EX_TEMPFAIL,
    EdgeError,
    StorageError,
)

log = logging.getLogger("edge")


class _Failure(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an ``EdgeError`` into a one-line message and its exit code; no traceback."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EdgeError as exc:
            raise _Failure(str(exc), exc.exit_code) from None
    return wrapper


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # Under systemd the journal adds its own timestamps.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else (
        "%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # pydicom's log records and warnings quote element values (a birth date, a name): drop
    # them. A filter, not a level: importing pydicom (lazily, later) resets its level.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    logging.getLogger("pydicom").addFilter(_drop)
    for noisy in ("PIL", "watchdog", "pynetdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(False)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


def _drop(record: logging.LogRecord) -> bool:
    return False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="edge-agent")
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
# A plain path: load_config reads it and says what is wrong (exit 78, as for any other
# configuration error), where click's own checks would exit 2 for a folder or a file
# that cannot be read.
@click.option("--config", "config_path", type=click.Path(readable=False), envvar="NEUROEDGE_CONFIG",
              help="TOML configuration file (see edge/config.example.toml); flags override it. "
                   "Also read from $NEUROEDGE_CONFIG.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, config_path: str | None) -> None:
    """NeuroEdge device agent: classify brain MR images dropped into an inbox folder.

    NOT FOR CLINICAL USE.
    """
    try:
        config = load_config(config_path)
    except EdgeError as exc:
        raise _Failure(str(exc), exc.exit_code) from None
    if verbose:
        config = config.override("logging", level="debug")
    _setup_logging(config.logging.level)
    ctx.obj = config


@cli.command()
@click.argument("inbox", required=False, type=click.Path(file_okay=False))
@click.option("--outbox", type=click.Path(file_okay=False),
              help="Where reports, archive and quarantine go [default: 'outbox' beside INBOX].")
@click.option("--model", type=click.Path(), help="Model folder (model.tflite + model.json).")
@click.option("--once", is_flag=True, help="Process what is in the inbox now, then exit.")
@click.option("--poll", is_flag=True, default=None,
              help="Poll the folder instead of using OS events (network shares).")
@click.option("--dicom-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Also receive DICOM (C-ECHO, C-STORE) on PORT, e.g. 11112; 0: no receiver "
                   "[default: [network] dicom_port].")
@click.pass_obj
@_user_errors
def watch(config: AgentConfig, inbox: str | None, outbox: str | None, model: str | None,
          once: bool, poll: bool | None, dicom_port: int | None) -> None:
    """Process INBOX's backlog, then watch it for new files until stopped."""
    from .classifier import Classifier
    from .watch import Agent, resolve_folders

    if once and dicom_port:
        raise click.UsageError("--dicom-port receives until stopped; it cannot be used with "
                               "--once")
    config = config.override("paths", inbox=inbox, outbox=outbox, model=model)
    config = config.override("watch", poll=poll)
    config = config.override("network", dicom_port=dicom_port)
    try:
        resolve_folders(config)  # cheap checks first: a wrong folder is said before the model
        agent = Agent(config, Classifier(config), once=once)
    except OSError as exc:  # a disk or share failing: passing, not a configuration error
        raise StorageError.starting(exc) from None
    agent.install_signal_handlers()
    counts = agent.run()
    if counts.get("unfinished"):
        left = counts.get("left_while_failing")
        raise _Failure(f"{counts['unfinished']} input(s) could not be finished (see the log); "
                       "they are kept in the outbox's .state folder and are retried on the next "
                       "run" + (f"; {left} more were left in the inbox, untouched: no new "
                                "input is taken while that many wait for a retry. Fix what the "
                                "log says (a disk or folder the outbox cannot write) and run "
                                "again" if left else ""), EX_TEMPFAIL)
    if counts.get("waiting_for_space"):
        raise _Failure(f"{counts['waiting_for_space']} input(s) were left in the inbox, untouched: "
                       f"{agent.space.describe()}; free space (or lower [watch] min_free_mb) "
                       "and run again", EX_TEMPFAIL)
    if counts.get("still_written"):
        raise _Failure(f"{counts['still_written']} file(s) were still being written when --once "
                       "stopped waiting for them (the log says how to find them); they are "
                       "still in the inbox, untouched: run again once they are complete",
                       EX_TEMPFAIL)
    if counts.get("not_taken"):
        raise _Failure(f"{counts['not_taken']} file(s) in the inbox could not be taken (the log "
                       "says why and how to find them); they are still there, untouched",
                       EX_TEMPFAIL)
    if counts.get("unreachable"):
        raise _Failure(f"{counts['unreachable']} place(s) in the inbox could not be read (the "
                       "log says why and how to find them); their files are still there",
                       EX_TEMPFAIL)


@cli.command()
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False))
@click.option("--model", type=click.Path(), help="Model folder (model.tflite + model.json).")
@click.pass_obj
@_user_errors
def classify(config: AgentConfig, files: tuple[str, ...], model: str | None) -> None:
    """Classify FILES and print the results as a JSON list (nothing is moved or written)."""
    from .classifier import Classifier
    from .durable import display_name, json_bytes
    from .prepare import Prepared, Refusal, classify_file, fingerprint
    from .report import now_iso

    config = config.override("paths", model=model)
    classifier = Classifier(config)
    results, refused = [], 0
    for name in files:  # read exactly as the agent reads an input (edge.prepare)
        path = Path(name)
        t0 = time.perf_counter()
        found = Prepared()
        try:
            found = fingerprint(path, config, t0)
            if found.refusal is None:
                classify_file(path, found, classifier, config, file_name=display_name(path.name),
                              token="", received_at=now_iso(), t0=t0)
        except OSError as exc:
            found.refusal = Refusal(exc.__class__.__name__,
                                    f"cannot read the file: {exc.strerror}")
        if found.refusal is not None or found.report is None:
            refused += 1
            refusal = found.refusal or Refusal("InternalError", "no report was made")
            results.append({"file": display_name(name), "status": "refused",
                            "sha256": found.sha256, "reason_code": refusal.code,
                            "reason": refusal.reason})
            continue
        report = dict(found.report)
        report.pop("intake")
        results.append({"file": display_name(name), "status": "classified", **report})
    # strict JSON (no NaN): a refusal above is the only way a strange value gets out
    click.echo(json_bytes(results).decode("utf-8"), nl=False)
    if refused:
        sys.exit(EX_DATAERR)


@cli.command()
@click.option("--inbox", type=click.Path(file_okay=False), help="Inbox folder to check.")
@click.option("--outbox", type=click.Path(file_okay=False), help="Outbox folder to check.")
@click.option("--model", type=click.Path(), help="Model folder (model.tflite + model.json).")
@click.pass_obj
def check(config: AgentConfig, inbox: str | None, outbox: str | None,
          model: str | None) -> None:
    """Validate config, model (sha256), runtime and folders; exit 0, or 78 with the reason."""
    from .checks import run_checks

    try:
        config = config.override("paths", inbox=inbox, outbox=outbox, model=model)
    except EdgeError as exc:
        raise _Failure(str(exc), EX_CONFIG) from None
    failures = run_checks(config, click.echo)
    if failures:
        raise _Failure(f"check failed: {failures[0]}", EX_CONFIG)
    click.echo("all checks passed")


@cli.command()
@click.argument("outbox", type=click.Path(file_okay=False, exists=True))
@click.option("--dry-run", is_flag=True, help="Only report; change nothing.")
@click.option("--deep", is_flag=True,
              help="Also hash every archived input and compare it with its index line.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@_user_errors
def fsck(outbox: str, dry_run: bool, deep: bool, as_json: bool) -> None:
    """Check that OUTBOX keeps the agent's promise, and repair what is safe.

    Every input archived with its report or quarantined with its reason, every JSON whole,
    nothing left in the journal. Exit 0: consistent; 65: problems remain; 75: the agent is
    running, or interrupted inputs wait in the journal for its next start.
    """
    from .durable import json_bytes
    from .errors import ConfigError
    from .fsck import check_outbox, print_result
    from .outbox import Outbox

    root = Path(outbox).resolve()
    box = Outbox(root)
    if not box.state.is_dir():
        raise ConfigError(f"{root} is not an outbox (it has no .state folder): give the folder "
                          "the agent writes its reports to")
    box.lock(read_only=dry_run)  # AgentBusyError (exit 75) while an agent runs: stop it
    try:
        result = check_outbox(root, repair=not dry_run, deep=deep)
    finally:
        box.unlock()
    if as_json:
        click.echo(json_bytes(result.to_dict()).decode("utf-8"), nl=False)
    else:
        print_result(result, click.echo)
    if result.of("problem"):
        sys.exit(EX_DATAERR)
    if result.of("pending"):
        sys.exit(EX_TEMPFAIL)


@cli.command()
# plain paths: edge.offload says in one line what is wrong with them (click's checks print
# a usage block)
@click.argument("outbox", type=click.Path())
@click.option("--before", metavar="YYYY-MM-DD",
              help="Move every day before this one (it must be before today).")
@click.option("--keep-days", type=int, metavar="N",
              help="Instead of --before: move every day more than N days old (for a "
                   "scheduled run).")
@click.option("--to", "dest", required=True, type=click.Path(),
              help="The folder to move them to, outside the outbox (a USB disk, a share).")
@click.option("--other-disk", is_flag=True,
              help="Refuse a --to on the outbox's own disk (a disk not mounted there).")
@click.option("--max-minutes", type=click.IntRange(min=1), metavar="M",
              help="Begin no new day after M minutes (the day in hand is finished; the rest "
                   "moves at the next run): bounds how long a scheduled run keeps the agent "
                   "stopped.")
@click.option("--stall-minutes", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, metavar="M",
              help="End the offload (exit 73) when no step is done for M minutes (a disk or "
                   "share that stopped answering); every step is safe to stop after.")
@click.option("--dry-run", is_flag=True, help="Only say what would move; change nothing.")
@_user_errors
def offload(outbox: str, before: str | None, keep_days: int | None, dest: str,
            other_disk: bool, max_minutes: int | None, stall_minutes: float,
            dry_run: bool) -> None:
    """Move OUTBOX's days before --before (index, archive, their reports and quarantined
    inputs) to another folder, copied and verified before anything is removed.

    The agent must be stopped. Exit 0: done; 2: a wrong --before, --keep-days or --to; 65:
    a day has archived inputs but no index file (run fsck first); 66: --to does not exist
    (or, with --other-disk, is on the outbox's disk); 73: --to cannot take them (space, a
    conflicting file), or no step was done for --stall-minutes; 75: the agent runs.
    """
    from .offload import offload as move_days

    if (before is None) == (keep_days is None):
        raise click.UsageError("give one of --before YYYY-MM-DD and --keep-days N")
    move_days(Path(outbox), before, dest, dry_run, click.echo, keep_days=keep_days,
              other_disk=other_disk, max_minutes=max_minutes, stall_minutes=stall_minutes)


@cli.command()
@click.argument("folder", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Where validation.json and validation.html are written (created).")
@click.option("--model", type=click.Path(), help="Model folder (model.tflite + model.json).")
@click.option("--target-accuracy", type=float, default=0.99, show_default=True,
              help="Accuracy the unflagged answers should reach; the recommended review "
                   "threshold is the lowest that reaches it.")
@click.pass_obj
@_user_errors
def validate(config: AgentConfig, folder: str, out: str, model: str | None,
             target_accuracy: float) -> None:
    """Site acceptance test: classify FOLDER's labelled images (one sub-folder per label)."""
    from .validate import run_validation  # issue 13: docs/trust.md

    if not 0.5 <= target_accuracy < 1.0:  # NaN too
        raise click.BadParameter(f"must be at least 0.5 and below 1, got {target_accuracy}",
                                 param_hint="--target-accuracy")
    config = config.override("paths", model=model)
    summary = run_validation(Path(folder), Path(out), config, target_accuracy, click.echo)
    rec = summary["recommended_review_threshold"]
    click.echo(f"{summary['n']} images: accuracy {summary['accuracy']:.1%}, flagged "
               f"{summary['flagged_share']:.1%}, recommended [review] threshold "
               f"{'none' if rec['value'] is None else format(rec['value'], '.2f')}")
    click.echo(f"wrote {Path(out) / 'validation.json'} and {Path(out) / 'validation.html'}")


@cli.command("sample-inbox")
@click.argument("folder", type=click.Path(file_okay=False))
@_user_errors
def sample_inbox(folder: str) -> None:
    """Fill FOLDER with sample inputs that show every path through the agent."""
    from .sample_inbox import write_sample_inbox

    for name, purpose in write_sample_inbox(Path(folder)):
        click.echo(f"{name:28s} {purpose}")
    from .manifest import default_model_dir

    model = "" if default_model_dir() is not None else " --model MODEL_DIR"
    click.echo(f"\nNow run: edge-agent watch {folder} --once{model}")


def main() -> None:
    # standalone_mode=False so that Ctrl-C is ours to report: click's own handling prints
    # "Aborted!" and exits 1, the code of a bug.
    try:
        code = cli.main(prog_name="edge-agent", standalone_mode=False)
    except click.Abort:
        click.echo("edge-agent: interrupted", err=True)
        sys.exit(EX_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
