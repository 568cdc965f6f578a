"""``python -m converters.score MODEL_DIR``: score a converted model as the device runs it.

For a model whose float source is not at hand (the shipped ``edge/models``, a model from
another machine): the test split, the deduplicated subset and the external checks,
through ``edge.runtime.TFLiteClassifier`` (the device's code) and the same metric and
external-check code as the converter's gate report::

    python -m converters.score edge/models --data ../shared/data/brain-tumor-mri

``--record`` writes the external results into the model's manifest (``metrics.external``),
validated and atomically; the model file itself is never touched.

Exit codes: 0 scored; 64 bad options; 65 bad data or external folder; 69 no runtime can
load the model; 73 the ``--json`` file cannot be written; 78 missing or invalid manifest, or a
model file that does not match it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from converters.errors import EX_CANTCREAT, EX_USAGE
from edge.durable import write_bytes_atomic

log = logging.getLogger("converters.score")


def score_model(model_dir: Path, data: Path | None, *, dedup_list: Path | None = None,
                auto_dedup: bool = True, external: tuple[Path, ...] = (),
                default_external: bool = True, eval_limit: int | None = None,
                seed: int = 0) -> dict[str, Any]:
    """Official, deduplicated and external scores of a converted model (percent)."""
    from converters import datasets, external_check
    from converters.evaluate import predict_batched
    from edge.manifest import load_verified
    from edge.runtime import TFLiteClassifier
    from edge.views import with_views
    from trainer.metrics import compute_metrics

    manifest, model_path = load_verified(model_dir)
    labels = tuple(manifest.labels)
    spec = manifest.preprocess
    sets = external_check.load_sets(external, default_external, labels, spec)
    classifier = TFLiteClassifier(model_path, manifest)
    predict = with_views(classifier.predict, manifest.test_time)  # as the agent runs it
    result: dict[str, Any] = {"model": str(model_path), "name": manifest.name,
                              "version": manifest.version,
                              "architecture": manifest.architecture,
                              "quantization": manifest.quantization,
                              "test_time": manifest.test_time,
                              "runtime": f"{classifier.runtime.name} {classifier.runtime.version}"}
    if data is not None:
        eval_set = datasets.evaluation_set(data, "Testing", labels, spec, eval_limit, seed)
        probs = predict_batched(predict, eval_set.images, spec, manifest.quantization)
        official = compute_metrics(eval_set.labels, probs, list(labels))
        result["official"] = {"set": eval_set.name, "n": len(eval_set.labels),
                              "accuracy_pct": round(100 * official["accuracy"], 3),
                              "per_class_recall_pct": {
                                  k: round(100 * v["recall"], 3)
                                  for k, v in official["per_class"].items()}}
        dedup_path = datasets.find_dedup_list(dedup_list, auto_dedup, "Testing", None, data)
        idx = (datasets.dedup_indices(eval_set, dedup_path, dedup_list is not None)
               if dedup_path is not None else None)
        if idx is not None:
            dd = compute_metrics(eval_set.labels[idx], probs[idx], list(labels))
            result["deduplicated"] = {"n": int(len(idx)), "list": str(dedup_path),
                                      "accuracy_pct": round(100 * dd["accuracy"], 3)}
        del probs
    result["external"] = external_check.score(sets, labels, spec,
                                              {"quantized": predict})
    return result


def text(result: dict[str, Any]) -> str:
    from converters.external_check import table_lines

    test_time = result.get("test_time", "none")
    lines = [f"{result['name']} {result['version']} ({result['architecture']}, "
             f"{result['quantization']}{'' if test_time == 'none' else ', ' + test_time}) on "
             f"{result['runtime']}: {result['model']}"]
    if "official" in result:
        off = result["official"]
        lines.append(f"  official test split ({off['set']}): {off['accuracy_pct']:.2f}% "
                     f"of {off['n']}")
        if "deduplicated" in result:
            dd = result["deduplicated"]
            lines.append(f"  deduplicated subset: {dd['accuracy_pct']:.2f}% of {dd['n']}")
    lines += table_lines(result["external"], result["quantization"])
    return "\n".join(lines)


def record(model_dir: Path, result: dict[str, Any]) -> Path:
    """Write the external results into the manifest (``metrics.external``)."""
    import dataclasses

    from converters.external_check import manifest_entries
    from edge.manifest import MANIFEST_NAME, load_verified, write_manifest

    manifest, _ = load_verified(model_dir)
    metrics = dict(manifest.metrics)
    metrics["external"] = manifest_entries(result["external"])
    path = Path(model_dir) / MANIFEST_NAME if Path(model_dir).is_dir() else Path(model_dir)
    return write_manifest(dataclasses.replace(manifest, metrics=metrics), path)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path),
              help="Data set folder whose Testing/ split to score (default: external checks only).")
@click.option("--dedup-list", type=click.Path(path_type=Path),
              help="Deduplicated test list (default: looked up as the converter does).")
@click.option("--no-dedup", is_flag=True, help="Do not look for the deduplicated test list.")
@click.option("--external", multiple=True, type=click.Path(path_type=Path), metavar="DIR",
              help="External check folder (DIR/<label>/ or DIR/tumour/); repeatable; default "
                   "../shared/data/br35h-tumour when present.")
@click.option("--no-external", is_flag=True, help="Skip the external check.")
@click.option("--eval-limit", type=int, help="Score a stratified subset of N test images.")
@click.option("--json", "json_out", type=click.Path(path_type=Path),
              help="Also write the numbers to this JSON file.")
@click.option("--record", "write_record", is_flag=True,
              help="Write the external results into MODEL_DIR's model.json (metrics.external).")
def main(model_dir: Path, data: Path | None, dedup_list: Path | None, no_dedup: bool,
         external: tuple[Path, ...], no_external: bool, eval_limit: int | None,
         json_out: Path | None, write_record: bool) -> None:
    """Score a converted model (model.tflite + model.json) through the device's runtime."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from converters.errors import ConverterError
    from edge.errors import EdgeError

    if external and no_external:
        click.echo("error: --external and --no-external contradict each other; give one",
                   err=True)
        sys.exit(EX_USAGE)
    if eval_limit is not None and eval_limit < 1:
        click.echo(f"error: --eval-limit must be at least 1, got {eval_limit}", err=True)
        sys.exit(EX_USAGE)
    if json_out is not None:  # before the scoring, not after it
        from edge.durable import unwritable_reason

        reason = unwritable_reason(json_out, folder=False)
        if reason is not None:
            click.echo(f"error: cannot write --json {json_out}: {reason}; give a file path "
                       f"that can be written", err=True)
            sys.exit(EX_CANTCREAT)
    try:
        result = score_model(model_dir, data, dedup_list=dedup_list, auto_dedup=not no_dedup,
                             external=external, default_external=not no_external,
                             eval_limit=eval_limit)
        if write_record:
            if not result["external"]:
                raise ConverterError("--record: no external check was made, nothing to record")
            written = record(model_dir, result)
    except EdgeError as exc:  # ConverterError and TrainerError derive from it
        click.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 1) or 1)
    click.echo(text(result))
    if write_record:
        click.echo(f"recorded metrics.external in {written}")
    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(json_out, (json.dumps(result, indent=2) + "\n").encode("utf-8"))
        except OSError as exc:
            click.echo(f"error: cannot write --json {json_out}: {exc.strerror or exc}", err=True)
            sys.exit(EX_CANTCREAT)


if __name__ == "__main__":
    main()
