"""``python -m trainer evaluate RUN``: the paper's metrics on the test split, twice.

The official Testing split shares near-identical images with Training (see the data set's
README), so its score is inflated. Whenever a deduplicated test list exists (written by
``audit-leakage``), the score on it is reported beside the official one, always.

Where the list is looked for, first hit wins:

1. ``--dedup-list FILE``;
2. ``<runs dir of RUN>/leakage-audit/<data folder name>/dedup_test.txt``;
3. ``./runs/leakage-audit/<data folder name>/dedup_test.txt`` (audit-leakage's default);
4. the reviewed list committed with the project, ``docs/leakage/dedup_test.txt``.

Beside both, every external folder (``trainer.external``: pictures from sources never seen
in training, by default ``../shared/data/br35h-tumour``) is scored: accuracy per folder and
tumour sensitivity.

A list found by lookup is used only if its ``audit.json`` (or the audit's ``summary.json``)
names the same data folder; for the committed list, a folder of the same name (it describes
the data set, wherever it is).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.durable import unwritable_reason
from edge.preprocess import PreprocessSpec
from edge.views import NONE, TEST_TIMES, views
from trainer.data import load_split
from trainer.errors import DataError, OptionError, OutputError, RunError
from trainer.runs import RunFolder, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

# The paper's own test accuracies (its abstract), shown beside ours in table.md. Its other
# Table 3 figures are not reproduced here, so those cells read n/a.
PAPER_ROWS = {
    "dsconv_cbam": ("DSConv-CBAM", {"accuracy": 97.41}),
    "dsconv_cbam_bn": ("DSConv-CBAM", {"accuracy": 97.41}),
    "dsconv_cbam_gap": ("DSConv-CBAM", {"accuracy": 97.41}),
    "mobilenetv2": ("MobileNetV2 (ImageNet)", {"accuracy": 96.72}),
}
AUDIT_DIRNAME = "leakage-audit"
DEDUP_FILE = "dedup_test.txt"
AUDIT_RECORD = "audit.json"
COMMITTED_DEDUP_LIST = Path(__file__).resolve().parents[1] / "docs" / "leakage" / DEDUP_FILE


def default_audit_dir(runs_dir: Path, data_dir: str | os.PathLike) -> Path:
    """Where audit-leakage writes by default: runs/leakage-audit/<data folder name>."""
    return Path(runs_dir) / AUDIT_DIRNAME / Path(data_dir).expanduser().resolve().name


def write_audit_record(out_dir: Path, data_dir: str | os.PathLike, summary: Any) -> None:
    """Note which data folder an audit describes, so evaluate never pairs it with another."""
    record = {"data_dir": str(Path(data_dir).expanduser().resolve()),
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if isinstance(summary, dict):
        record["summary"] = json.loads(json.dumps(summary, default=str))
    write_json_atomic(Path(out_dir) / AUDIT_RECORD, record)


def _audited_folder(audit_dir: Path) -> str | None:
    """The data folder an audit describes: audit.json (ours) or the audit's summary.json."""
    for name in (AUDIT_RECORD, "summary.json"):
        try:
            recorded = json.loads((audit_dir / name).read_text(encoding="utf-8")).get("data_dir")
        except (OSError, ValueError, AttributeError):
            continue
        if recorded:
            return str(recorded)
    return None


def find_dedup_list(run: RunFolder, data_dir: Path) -> Path | None:
    """The default deduplicated test list for ``data_dir``, or None (see module doc)."""
    candidates = [default_audit_dir(run.path.parent, data_dir) / DEDUP_FILE,
                  default_audit_dir(Path("runs"), data_dir) / DEDUP_FILE]
    for candidate in dict.fromkeys(c.resolve() for c in candidates):
        if not candidate.is_file():
            continue
        recorded = _audited_folder(candidate.parent)
        if recorded and Path(recorded).resolve() != data_dir.resolve():
            log.warning("ignoring %s: it audits %s, not %s", candidate, recorded, data_dir)
            continue
        return candidate
    committed = COMMITTED_DEDUP_LIST
    recorded = _audited_folder(committed.parent) if committed.is_file() else None
    if recorded and Path(recorded).name == Path(data_dir).expanduser().resolve().name:
        return committed
    return None


def _load_dedup(path: Path) -> set[str]:
    try:
        from trainer.audit import load_dedup_list
    except ImportError:  # the audit module is optional for reading a plain list
        load_dedup_list = None
    try:
        if load_dedup_list is not None:
            return set(load_dedup_list(path))
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read the deduplicated test list {path}: {exc}") from None
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _predictions_csv(paths: list[str], labels: list[str], y_true: np.ndarray,
                     probs: np.ndarray, in_dedup: np.ndarray | None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["path", "true", "predicted", *(f"p_{name}" for name in labels)]
    writer.writerow([*header, "in_dedup"] if in_dedup is not None else header)
    predicted = probs.argmax(axis=1)
    for i, path in enumerate(paths):
        row = [path, labels[y_true[i]], labels[predicted[i]], *(f"{p:.6f}" for p in probs[i])]
        writer.writerow([*row, int(in_dedup[i])] if in_dedup is not None else row)
    return buffer.getvalue()


def evaluate_run(
    run_path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    *,
    dedup_list: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    cache_dir: str | None = None,
    use_cache: bool = True,
    progress: bool = False,
    external: Sequence[str | os.PathLike] | None = None,
    default_external: bool = True,
    test_time: str = NONE,
) -> dict[str, Any]:
    """Predict the Testing split with RUN's model; write metrics.json, table.md, plots.

    ``external`` folders (default: ``trainer.external.default_external_dirs`` unless
    ``default_external`` is False) are scored too: metrics.json's ``external``.
    ``test_time`` (``edge.views``): every answer is the mean over the views, as an agent
    runs a model converted with ``--test-time``; written to RUN/evaluation-<test_time> by
    default.
    """
    if test_time not in TEST_TIMES:
        raise OptionError(f"--test-time must be one of {', '.join(TEST_TIMES)}, "
                          f"got {test_time!r}")
    if batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise OptionError(f"--limit must be at least 1 test image, got {limit}")
    run = RunFolder.open(run_path)
    record = run.read_record()
    if not run.model.is_file():
        raise RunError(_no_model(run, record.status, record.raw))
    out = (Path(out_dir).expanduser() if out_dir else run.evaluation if test_time == NONE
           else run.path / f"evaluation-{test_time}")
    reason = unwritable_reason(out, folder=True)
    if reason is not None:  # before the test split is decoded and predicted
        raise OutputError(f"cannot write the evaluation to {out}: {reason}; pass another --out")
    record.require("architecture", "labels", "preprocess", where=str(run.run_json))
    assert record.labels is not None and record.preprocess is not None
    labels, spec, architecture = list(record.labels), record.preprocess, str(record.architecture)
    if not (data_dir or record.data_dir):
        raise RunError(f"{run.run_json} names no data folder: pass --data")
    data_dir = Path(data_dir or str(record.data_dir)).expanduser()
    test = load_split(data_dir, "Testing", spec, limit=limit, seed=record.seed,
                      progress=progress, classes=labels, cache_dir=cache_dir,
                      use_cache=use_cache)
    dedup_path = Path(dedup_list).expanduser() if dedup_list else find_dedup_list(run, data_dir)
    if dedup_list and not dedup_path.is_file():
        raise DataError(f"deduplicated test list {dedup_path} does not exist; write it with "
                        f"python -m trainer audit-leakage {data_dir}")
    in_dedup = None
    if dedup_path is not None:
        keep = _load_dedup(dedup_path)
        in_dedup = np.array([p in keep for p in test.paths])
        if not in_dedup.any():
            raise DataError(f"the deduplicated test list {dedup_path} names none of the "
                            f"{len(test)} test images under {data_dir}: it belongs to another "
                            f"data folder. Rerun audit-leakage or pass the right --dedup-list.")
        log.info("deduplicated test list %s: %d of %d test images kept", dedup_path,
                 int(in_dedup.sum()), len(test))
    else:
        log.warning("no deduplicated test list found: only the official (leaky) test score is "
                    "reported. Run: python -m trainer audit-leakage %s", data_dir)
    from trainer.external import load_external, resolve_external_dirs

    external_sets = [load_external(d, labels, spec)
                     for d in resolve_external_dirs(external, default_external)]

    import keras

    import trainer.layers  # noqa: F401 - registers the custom layers for loading
    from trainer.metrics import compute_metrics, table3_markdown
    from trainer.xla import avoid_cpu_xla

    model = avoid_cpu_xla(keras.saving.load_model(run.model, compile=False))
    started = time.perf_counter()
    probs = _predict(model, test.images, len(labels), batch_size, spec, test_time,
                     verbose=1 if progress and sys.stdout.isatty() else 0)
    seconds = time.perf_counter() - started
    _require_finite(run, probs, f"{len(test)} test images")
    external_results = [_score_external(model, ext, labels, spec, batch_size, test_time)
                        for ext in external_sets]

    name = architecture + (" (no ImageNet weights)" if record.no_imagenet_weights else "")
    if test_time != NONE:
        name += f", {test_time}"
    official = compute_metrics(test.labels, probs, labels)
    deduplicated = (compute_metrics(test.labels[in_dedup], probs[in_dedup], labels)
                    if in_dedup is not None else None)
    official["calibration"] = _calibration(probs, test.labels)
    if deduplicated is not None:
        deduplicated["calibration"] = _calibration(probs[in_dedup], test.labels[in_dedup])
    rows = {f"{name}, official test split (n={len(test)})": official}
    if deduplicated is not None:
        rows[f"{name}, deduplicated test split (n={int(in_dedup.sum())})"] = deduplicated
    paper = dict([PAPER_ROWS[architecture]]) if architecture in PAPER_ROWS else None
    table = table3_markdown(rows, paper)
    table += ("\n\nExpected calibration error (15 bins, docs/trust.md): "
              f"{100 * official['calibration']['ece']:.2f}% on the official split"
              + (f", {100 * deduplicated['calibration']['ece']:.2f}% deduplicated"
                 if deduplicated is not None else "") + "; reliability.png shows it.")
    if deduplicated is None:
        table += ("\n\nDeduplicated score: not available (no leakage audit found; run "
                  f"`python -m trainer audit-leakage {data_dir}`).\n")
    table += "\n\n" + _scores_table(len(test), official, in_dedup, deduplicated,
                                     external_results)

    out.mkdir(parents=True, exist_ok=True)
    result = {
        "run": str(run.path.resolve()), "architecture": architecture,
        "no_imagenet_weights": record.no_imagenet_weights, "labels": labels,
        "data_dir": str(data_dir.resolve()), "limit": limit,
        "dedup_list": str(dedup_path.resolve()) if dedup_path else None,
        "test_time": test_time, "official": official, "deduplicated": deduplicated,
        "external": [{k: v for k, v in r.items() if k != "predictions"}
                     for r in external_results],
        "predict_seconds": round(seconds, 2),
        "backend": keras.backend.backend(),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out / "metrics.json", result)
    write_text_atomic(out / "table.md", table + ("\n" if not table.endswith("\n") else ""))
    write_text_atomic(out / "predictions.csv",
                      _predictions_csv(test.paths, labels, test.labels, probs, in_dedup))
    if external_results:
        write_text_atomic(out / "predictions_external.csv",
                          _external_csv(external_results, labels))
    _plots(run, out, name, labels, official, deduplicated)
    log.info("accuracy %.4f official%s -> %s", official["accuracy"],
             f", {deduplicated['accuracy']:.4f} deduplicated" if deduplicated else "", out)
    from trainer.external import summary_line

    for ext in external_results:
        log.info("%s", summary_line(ext["name"], ext["metrics"]))
    return {**result, "out_dir": str(out), "table_markdown": table}


def _no_model(run: RunFolder, status: str, record: dict[str, Any]) -> str:
    """Why RUN has no model.keras, and what to do: it depends on how the run ended."""
    if status == "diverged":
        return (f"{run.path} has no {run.model.name}: its training diverged in epoch "
                f"{record.get('diverged_at_epoch')} (NaN or infinite loss). Train a new run "
                f"with a lower --lr")
    if status in ("completed", "stopped_early"):
        if run.best_checkpoint.is_file():
            return (f"{run.path} finished training ({status}), but its {run.model.name} is "
                    f"gone (deleted or moved?). Write it again from {run.best_checkpoint} "
                    f"(the best epoch; nothing is retrained) with: python -m trainer train "
                    f"--resume {run.path}")
        return (f"{run.path} finished training ({status}), but its {run.model.name} and "
                f"{run.best_checkpoint} are both gone: there is no model left to evaluate; "
                f"train it again")
    return (f"{run.path} has no {run.model.name} yet (status {status}); finish it with "
            f"python -m trainer train --resume {run.path}")


def _require_finite(run: RunFolder, probs: np.ndarray, what: str) -> None:
    """A diverged model answers NaN: say so, not as a metrics traceback."""
    bad = int((~np.isfinite(probs)).any(axis=1).sum()) if probs.ndim == 2 else len(probs)
    if bad:
        raise RunError(f"{run.model} gives NaN or infinite probabilities for {bad} of {what}: "
                       f"its training diverged (see {run.path / 'history.json'}). Train a new "
                       f"run with a lower --lr; this model cannot be evaluated or converted")


def _calibration(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Expected calibration error (15 equal-width bins) and the bins, as the device computes
    them (``edge.trust``): how far the float model's confidence is from its accuracy."""
    from edge.trust import calibration_error, reliability

    return {"ece": calibration_error(probs, labels), "bins": reliability(probs, labels)}


def _predict(model: Any, images: np.ndarray, classes: int, batch_size: int,
             spec: PreprocessSpec, test_time: str, verbose: int = 0) -> np.ndarray:
    """The Keras model's probabilities for uint8 ``images``, averaged over the test-time
    views (``edge.views``, the device's code; one view for ``none``)."""
    from trainer.batches import EvaluationBatches

    return np.mean([np.asarray(model.predict(
        EvaluationBatches(view, None, classes, batch_size, spec=spec), verbose=verbose),
        dtype=np.float64) for view in views(images, test_time)], axis=0)


def _score_external(model: Any, ext: Any, labels: list[str], spec: PreprocessSpec,
                    batch_size: int, test_time: str = NONE) -> dict[str, Any]:
    """Predict one external folder with the Keras model and score it."""
    from trainer.external import external_metrics

    probs = _predict(model, ext.images, len(labels), batch_size, spec, test_time)
    if not np.isfinite(probs).all():
        raise RunError(f"the model gives NaN or infinite probabilities for pictures of the "
                       f"external folder {ext.root}: its training diverged. Train a new run "
                       f"with a lower --lr")
    return {"name": ext.name, "dir": str(ext.root.resolve()),
            "metrics": external_metrics(ext.targets, ext.folders, probs, labels),
            "predictions": (ext.paths, ext.folders, probs)}


def _scores_table(n_test: int, official: dict, in_dedup: np.ndarray | None,
                  deduplicated: dict | None, external: list[dict[str, Any]]) -> str:
    """Official, deduplicated and external accuracy side by side, and tumour sensitivity."""
    lines = ["| evaluation set | n | accuracy | tumour sensitivity |", "|---|---:|---:|---:|",
             f"| official test split | {n_test} | {100 * official['accuracy']:.2f}% | |"]
    if deduplicated is not None:
        lines.append(f"| deduplicated test split | {int(in_dedup.sum())} | "
                     f"{100 * deduplicated['accuracy']:.2f}% | |")
    for result in external:
        m = result["metrics"]
        sens = m["tumour_sensitivity"]
        folders = ", ".join(f"{f} {100 * r['accuracy']:.2f}%" for f, r in m["folders"].items())
        lines.append(f"| external {result['name']} ({folders}) | {m['n']} | "
                     f"{100 * m['accuracy']:.2f}% | "
                     f"{'' if sens is None else f'{100 * sens:.2f}%'} |")
    if not external:
        lines.append("\nExternal check: none (no --external folder given and "
                     "../shared/data/br35h-tumour not found).")
    return "\n".join(lines)


def _external_csv(results: list[dict[str, Any]], labels: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["external_set", "path", "folder", "predicted",
                     *(f"p_{name}" for name in labels)])
    for result in results:
        paths, folders, probs = result["predictions"]
        for path, folder, p in zip(paths, folders, probs, strict=True):
            writer.writerow([result["name"], path, folder, labels[int(p.argmax())],
                             *(f"{v:.6f}" for v in p)])
    return buffer.getvalue()


def _plots(run: RunFolder, out: Path, name: str, labels: list[str], official: dict,
           deduplicated: dict | None) -> None:
    """The paper's Figures 6 and 7 (confusion matrix, loss/accuracy curves) and the
    reliability diagram of the official split (issue 13)."""
    from trainer.plots import plot_confusion_matrix, plot_history, plot_reliability

    calibration = official.get("calibration")
    if calibration:
        plot_reliability(calibration["bins"], out / "reliability.png",
                         title=f"{name}: official test split", ece=calibration["ece"])

    plot_confusion_matrix(np.asarray(official["confusion_matrix"]), labels,
                          out / "confusion_matrix.png",
                          title=f"{name}: official test split")
    if deduplicated is not None:
        plot_confusion_matrix(np.asarray(deduplicated["confusion_matrix"]), labels,
                              out / "confusion_matrix_dedup.png",
                              title=f"{name}: deduplicated test split")
    history = run.read_history()
    curves = {k: history[k] for k in ("loss", "val_loss", "accuracy", "val_accuracy",
                                      "val_lesion_missed") if k in history}
    if curves.get("loss"):
        plot_history(curves, out / "history.png")
