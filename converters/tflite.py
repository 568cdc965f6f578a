"""``python -m converters.tflite``: a trained Keras model -> a gated TFLite model + manifest.

    python -m converters.tflite --int8 --model runs/paper --data ../shared/data/brain-tumor-mri \\
        --out models/paper-int8
    python -m converters.tflite --int8 --keep-float CONV_2D,DEPTHWISE_CONV_2D ...

Exit codes: 0 the model passed and was written; 3 the gate refused it (only a report was
written); 64 bad options; 65 bad data; 66 missing model; 69 a required runtime is missing;
70 TensorFlow could not convert; 73 the output folder cannot be used.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from converters.errors import EX_USAGE, EXIT_REJECTED
from converters.export import MODE_HELP
from converters.selective import parse_op_list
from edge.views import TEST_TIMES

log = logging.getLogger("converters.tflite")


def _quiet_tensorflow() -> None:
    """Before TensorFlow is imported: no C++ info logs, and Keras on the TF backend."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    backend = os.environ.get("KERAS_BACKEND")
    if backend and backend != "tensorflow":
        log.info("KERAS_BACKEND=%s ignored: TFLite conversion runs on the TensorFlow backend",
                 backend)
    os.environ["KERAS_BACKEND"] = "tensorflow"


def _mode_option(mode: str) -> click.Option:
    return click.option(f"--{mode}", f"mode_{mode}", is_flag=True,
                        help=MODE_HELP[mode] + (" [default]" if mode == "int8" else "."))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_mode_option("int8")
@_mode_option("float16")
@_mode_option("dynamic")
@_mode_option("float32")
@click.option("--keep-float", "keep_float_text", metavar="OPS",
              help="int8 only: keep these TFLite op types in float32, comma-separated (e.g. "
                   "CONV_2D,DEPTHWISE_CONV_2D); everything else and the input/output stay int8. "
                   "Faster only on CPUs without an int8 dot product: measure first.")
@click.option("--model", "model", required=True, type=click.Path(path_type=Path),
              help="Trainer run folder (runs/<name>/ with model.keras and run.json), or a .keras "
                   "file (then --labels is required).")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Data set folder with Training/<class>/ (calibration) and Testing/<class>/ "
                   "(evaluation).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output folder: model.tflite + model.json + report.json when the model passes, "
                   "only rejected/report.json + rejected/quant_debug.md when it does not.")
@click.option("--labels", help="Class names in output order, comma-separated (bare .keras only).")
@click.option("--arch", help="Architecture name for the manifest (bare .keras; default: the "
                             "Keras model's name).")
@click.option("--name", help="Model name in the manifest (default: the run folder's name).")
@click.option("--model-version", help="Model version in the manifest (default: creation time "
                                      "YYYYMMDD-HHMMSS, UTC).")
@click.option("--calibration-size", type=int, default=300, show_default=True,
              help="Training images for int8 calibration (stratified, seeded).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the calibration draw and of the --eval-limit subset.")
@click.option("--eval-data", type=click.Path(path_type=Path),
              help="Data set folder to evaluate on (default: --data).")
@click.option("--eval-split", type=click.Choice(["Testing", "Training"]), default="Testing",
              show_default=True, help="Split of the evaluation data set.")
@click.option("--eval-limit", type=int,
              help="Evaluate on a stratified subset of this many images (quick runs).")
@click.option("--dedup-list", type=click.Path(path_type=Path),
              help="Leakage audit's deduplicated test list (default: docs/leakage/dedup_test.txt "
                   "when it exists); also reported on that subset.")
@click.option("--no-dedup", is_flag=True, help="Do not look for the deduplicated test list.")
@click.option("--external", "external", multiple=True, type=click.Path(path_type=Path),
              metavar="DIR",
              help="External check folder (DIR/<label>/ or DIR/tumour/: any tumour class is "
                   "right), reported beside the test scores and recorded in the manifest, not "
                   "gated. Repeatable; default ../shared/data/br35h-tumour when present.")
@click.option("--no-external", is_flag=True, help="Skip the external check.")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Largest accepted accuracy drop, in percentage points.")
@click.option("--min-agreement", type=float, default=98.0, show_default=True,
              help="Smallest accepted top-1 agreement with the float model, in percent.")
@click.option("--check-runtime", "check_runtimes", multiple=True, metavar="NAME=PYTHON",
              help="Also run the model in another Python environment, e.g. tflite-runtime="
                   "/opt/venv-tflrt/bin/python (default for tflite-runtime: "
                   "$NEUROEDGE_TFLITE_RUNTIME_PYTHON). Repeatable.")
@click.option("--require-runtime", "require_runtimes", multiple=True, metavar="NAME",
              help="Fail the gate unless the model verified on this runtime. Repeatable.")
@click.option("--probe-images", type=int, default=64, show_default=True,
              help="Fixed evaluation images classified in every runtime and compared.")
@click.option("--debug-samples", type=int, default=32, show_default=True,
              help="Evaluation images for the per-layer report of a refused int8 model.")
@click.option("--force", is_flag=True,
              help="Replace a model already in --out (only if the new one passes).")
@click.option("--no-trust", is_flag=True,
              help="Do not fit the trust checks (temperature, 'unlike the training data', "
                   "heat-map; docs/trust.md) of a model that passes.")
@click.option("--test-time", type=click.Choice(TEST_TIMES), default="none", show_default=True,
              help="How the agent runs the model, recorded in the manifest (format 3): "
                   "'mirror-mean' averages the answers for the picture and its left-right "
                   "mirror image (twice the inference time). The gate measures float and "
                   "converted model that way.")
@click.option("-v", "--verbose", is_flag=True, help="Log every step.")
def main(mode_int8: bool, mode_float16: bool, mode_dynamic: bool, mode_float32: bool,
         keep_float_text: str | None, model: Path, data: Path, out: Path, labels: str | None,
         arch: str | None,
         name: str | None, model_version: str | None, calibration_size: int, seed: int,
         eval_data: Path | None, eval_split: str, eval_limit: int | None,
         dedup_list: Path | None, no_dedup: bool, external: tuple[Path, ...], no_external: bool,
         max_drop: float, min_agreement: float,
         check_runtimes: tuple[str, ...], require_runtimes: tuple[str, ...], probe_images: int,
         debug_samples: int, force: bool, no_trust: bool, test_time: str,
         verbose: bool) -> None:
    """Convert a trained model to TFLite and refuse it unless it matches the float model."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing chatter, not news
    chosen = [m for m, on in (("int8", mode_int8), ("float16", mode_float16),
                              ("dynamic", mode_dynamic), ("float32", mode_float32)) if on]
    if len(chosen) > 1:
        click.echo(f"error: give one conversion mode, not {' and '.join('--' + m for m in chosen)}",
                   err=True)
        sys.exit(EX_USAGE)
    mode = chosen[0] if chosen else "int8"
    if external and no_external:
        click.echo("error: --external and --no-external contradict each other; give one",
                   err=True)
        sys.exit(EX_USAGE)
    keep_float = parse_op_list(keep_float_text) if keep_float_text is not None else None
    _quiet_tensorflow()
    from converters.gate import Thresholds
    from converters.pipeline import ConvertOptions, run_conversion
    from edge.errors import EdgeError

    options = ConvertOptions(
        model=model, data=data, out=out, mode=mode, keep_float=keep_float, labels=labels,
        arch=arch, name=name,
        model_version=model_version, calibration_size=calibration_size, seed=seed,
        eval_data=eval_data, eval_split=eval_split, eval_limit=eval_limit,
        dedup_list=dedup_list, auto_dedup=not no_dedup, external=external,
        default_external=not no_external,
        thresholds=Thresholds(max_drop, min_agreement), check_runtimes=check_runtimes,
        require_runtimes=require_runtimes, probe_images=probe_images,
        debug_samples=debug_samples, force=force, command=tuple(sys.argv), trust=not no_trust,
        test_time=test_time)
    try:
        outcome = run_conversion(options)
    except EdgeError as exc:  # ConverterError and TrainerError derive from it
        click.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))
    click.echo(outcome.summary)
    if not outcome.passed:
        sys.exit(EXIT_REJECTED)


if __name__ == "__main__":
    main()
