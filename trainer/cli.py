"""``python -m trainer``: train, evaluate, summary, pack, unpack, travel, throughput, audit-leakage,
audit-shortcuts, diagnose.

Heavy imports (Keras, TensorFlow, matplotlib) happen inside each command, so ``--help``
answers at once. A user mistake (missing data, wrong option, missing weights) prints one
line and exits with the error's code, no traceback; Ctrl-C during training exits 130 and
says how to resume.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from edge.durable import write_bytes_atomic
from edge.errors import EX_INTERRUPTED
from edge.views import TEST_TIMES
from trainer.errors import OptionError, TrainerError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trainer.recipes import AUGMENTATIONS, RECIPE_HELP  # noqa: E402 - Keras-free: fast --help
from trainer.registry import ARCHITECTURE_INFO  # noqa: E402
from trainer.reweight import REWEIGHT_METHODS  # noqa: E402

ARCH_NAMES = tuple(ARCHITECTURE_INFO)
DEFAULT_RUNS_DIR = "runs"
MAX_IMAGE_SIZE = 1024  # 224 is the paper's; 1024 x 1024 x 3 float32 is 12 MB a picture


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    for noisy in ("absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn TrainerError into 'error: ...' + its exit code; Ctrl-C into exit 130."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TrainerError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EX_INTERRUPTED)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """NeuroEdge trainer: DSConv-CBAM and baselines on any Keras 3 backend.

    The backend is Keras' own choice: KERAS_BACKEND=tensorflow (default) or jax.
    """
    _setup_logging(-1 if quiet else verbose)
    ctx.obj = {"quiet": quiet}


MODEL_OPTION_KEYS = ("padding", "bn_momentum", "backbone_weights", "no_batch_norm",
                     "mlp_hidden", "width", "dropout", "image_size")


def _model_options(arch: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Builder options from the command-line flags that were given (None = not given)."""
    options: dict[str, Any] = {}
    for key in ("padding", "bn_momentum", "backbone_weights", "width", "dropout"):
        if opts.get(key) is not None:
            options[key] = opts[key]
    if opts.get("no_batch_norm"):
        options["batch_norm"] = False
    if opts.get("mlp_hidden") is not None:
        try:
            options["hidden_units"] = tuple(int(u) for u in opts["mlp_hidden"].split(","))
        except ValueError:
            raise OptionError(f"--mlp-hidden takes comma-separated integers like 256,128, "
                              f"got {opts['mlp_hidden']!r}") from None
    from trainer.models import ARCHITECTURES, _check_options

    _check_options(arch, ARCHITECTURES[arch], options)
    return options


def _spec(image_size: int | None) -> Any:
    from edge.preprocess import DEFAULT_SPEC, PreprocessSpec

    if image_size is None:
        return DEFAULT_SPEC
    if not 32 <= image_size <= MAX_IMAGE_SIZE:
        raise OptionError(f"--image-size must be between 32 and {MAX_IMAGE_SIZE} pixels "
                          f"(224 is the paper's), got {image_size}")
    return PreprocessSpec(height=image_size, width=image_size)


def _model_option_flags(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--padding", type=click.Choice(["same", "valid"]),
                     help="dsconv_*: convolution padding (default same; see README)."),
        click.option("--bn-momentum", type=float,
                     help="BatchNormalization momentum of dsconv_cbam_bn/_gap/_res, resnet18 "
                          "(default 0.9)."),
        click.option("--backbone-weights", metavar="PATH|none",
                     help="mobilenetv2: the Keras no-top ImageNet weights file, or 'none' to "
                          "train from scratch (default: ~/.keras/models/<file>)."),
        click.option("--no-batch-norm", is_flag=True, default=None,
                     help="dsconv_cbam_gap: the paper's blocks without BatchNormalization."),
        click.option("--mlp-hidden", metavar="N[,N...]",
                     help="mlp: hidden layer widths (default 128)."),
        click.option("--width", type=int,
                     help="resnet18 / dsconv_cbam_res: filters of the first stage / the stem "
                          "(default 64 / 32); smaller for quick CPU runs."),
        click.option("--dropout", type=float,
                     help="resnet18 / dsconv_cbam_res: dropout before the classifier "
                          "(default 0.0 / 0.2)."),
        click.option("--image-size", type=int,
                     help="Square input size in pixels (default 224, the paper's)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _external_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--no-external", is_flag=True,
        help="Skip the external check (by default ../shared/data/br35h-tumour when present).")(
        function)
    return click.option(
        "--external", multiple=True, type=click.Path(), metavar="DIR",
        help="External check folder: DIR/<label>/ or DIR/tumour/ (any tumour class is right). "
             "Repeatable; default ../shared/data/br35h-tumour when present.")(function)


_RESUMABLE = {"resume", "epochs", "data", "verbose", "cache_dir", "no_cache", "distribute",
              "time_limit"}


@main.command()
@click.option("--arch", type=click.Choice(ARCH_NAMES), help="Architecture to train.")
@click.option("--data", "data", type=click.Path(file_okay=False),
              help="Data folder with Training/<class>/ (and Testing/<class>/).")
@click.option("--resume", type=click.Path(file_okay=False), metavar="RUN",
              help="Continue the stopped run in folder RUN with its recorded settings.")
@click.option("--runs-dir", default=DEFAULT_RUNS_DIR, show_default=True,
              help="Where run folders are created.")
@click.option("--name", help="Run folder name (default <arch>-<date>-<time>).")
@click.option("--recipe", type=click.Choice(list(RECIPE_HELP)), default="paper",
              show_default=True,
              help="Training defaults: " + "; ".join(f"{k}: {v}" for k, v in RECIPE_HELP.items())
              + ". Every option below overrides its recipe's value.")
@click.option("--epochs", type=int,
              help="Epochs  [default: the recipe's (paper 35, strong 40); with --resume: the "
                   "run's].")
@click.option("--batch-size", type=int, help="[default: the recipe's, 64]")
@click.option("--learning-rate", "--lr", type=float,
              help="Peak learning rate  [default: the recipe's, 1e-3]")
@click.option("--beta-1", type=float, help="[default: 0.9]")
@click.option("--beta-2", type=float, help="[default: paper 0.99, strong 0.999]")
@click.option("--optimizer", type=click.Choice(["adam", "adamw"]),
              help="[default: paper adam, strong adamw]")
@click.option("--weight-decay", type=float,
              help="AdamW's decoupled weight decay  [default: strong 0.02]")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]),
              help="Learning rate after the warm-up  [default: paper constant, strong cosine]")
@click.option("--warmup-epochs", type=float,
              help="Linear learning-rate warm-up from 1% of the peak  [default: paper 0, "
                   "strong 3]")
@click.option("--label-smoothing", type=float, help="[default: paper 0, strong 0.1]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=int,
              help="Use a seeded, stratified subset of at most N training images.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Stratified share of Training held out for model selection.")
@click.option("--augment", type=click.Choice(list(AUGMENTATIONS)), is_flag=False,
              flag_value="light", metavar="[" + "|".join(AUGMENTATIONS) + "]",
              help="Augmentation; a bare --augment is 'light' (flip, shift, intensity jitter); "
                   "'strong': geometry, intensity, resolution, JPEG; 'background': strong and "
                   "the background refilled; 'contrast': background and the head's grey "
                   "levels remapped; 'fourier': strong and another picture's low-frequency "
                   "Fourier amplitude; 'lesion': strong and synthetic lesions in no-tumour "
                   "pictures; 'lesion-any': the same, labelled 'any tumour class' (set-valued "
                   "cross-entropy)  [default: the recipe's]")
@click.option("--no-augment", is_flag=True, help="Same as --augment none.")
@click.option("--reweight", type=click.Choice(list(REWEIGHT_METHODS)), default="none",
              show_default=True,
              help="Draw each training picture with weight 1 / P(its no-tumour-or-tumour "
                   "answer | a cue), so that the cue says nothing about that answer: "
                   "'shortcuts': the picture properties of the shortcut audit; 'planes': the "
                   "slice plane, axial or not; 'shortcuts+planes': both in one model "
                   "(docs/training.md).")
@click.option("--planes", "planes_file", type=click.Path(dir_okay=False),
              help="Plane table for --reweight planes|shortcuts+planes (default "
                   "docs/planes/training_planes.csv; made by python -m trainer planes).")
@click.option("--init-from", type=click.Path(file_okay=False), metavar="RUN",
              help="Start from the model of the finished run RUN instead of random weights "
                   "(fine-tuning with this run's recipe); RUN must have the same architecture "
                   "and the same training/validation files (same --seed, --val-fraction).")
@click.option("--patience", type=int,
              help="Early stopping: stop after N epochs without a val_accuracy gain.")
@click.option("--recalibrate-bn", type=int, default=0, show_default=True, metavar="N",
              help="Before each validation, recompute BatchNormalization statistics on N batches.")
@click.option("--distribute", is_flag=True,
              help="All local GPUs: DataParallel (JAX) or MirroredStrategy (TensorFlow).")
@click.option("--time-limit", type=float, metavar="SECONDS",
              help="Stop after the last epoch that ends within SECONDS; --resume continues.")
@_model_option_flags
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Decoded-image cache (default ~/.cache/neuroedge).")
@click.option("--no-cache", is_flag=True, help="Decode images without the on-disk cache.")
@click.option("--cpu-kernels", is_flag=True,
              help="TensorFlow on CPU: equivalent max-pool-gradient and separable-conv kernels "
                   "(same mathematics; see docs/performance-training.md).")
@click.pass_context
@_user_errors
def train(ctx: click.Context, **opts: Any) -> None:
    """Train a model; writes runs/<name>/ (model.keras, run.json, history, checkpoints)."""
    from trainer.train import TrainConfig
    from trainer.train import resume as resume_run
    from trainer.train import train as train_run

    # A progress bar on a terminal; one line per epoch in a log file or a pipe.
    verbose = 0 if ctx.obj["quiet"] else (1 if sys.stdout.isatty() else 2)
    progress = not ctx.obj["quiet"]
    if opts["time_limit"] is not None and not 0 < opts["time_limit"] < math.inf:
        raise OptionError(f"--time-limit must be a positive number of seconds (and finite), "
                          f"got {opts['time_limit']}")  # before Keras loads
    if opts["resume"]:
        given = {name for name in opts
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
        extra = sorted(given - _RESUMABLE)
        if extra:
            raise OptionError(
                "--resume continues a run with its recorded settings; only --epochs, --data, "
                "--distribute, --time-limit and cache options may be given, not "
                + ", ".join("--" + e.replace("_", "-") for e in extra))
        resume_run(opts["resume"], epochs=opts["epochs"], data_dir=opts["data"],
                   verbose=verbose, progress=progress, time_limit=opts["time_limit"])
        return
    if not opts["arch"] or not opts["data"]:
        raise OptionError("train needs --arch NAME and --data DIR (or --resume RUN); "
                          "see python -m trainer train --help")
    from trainer.data import class_names
    from trainer.recipes import Recipe, resolve

    if opts["no_augment"]:
        if opts["augment"] not in (None, "none"):
            raise OptionError("--augment and --no-augment contradict each other; give one")
        opts["augment"] = "none"
    if opts["planes_file"] and not Path(opts["planes_file"]).is_file():  # --resume reads the
        # weights from its run folder, so only a new run needs the table
        raise OptionError(f"--planes {opts['planes_file']} does not exist; make it with: "
                          "python -m trainer planes DATA_DIR")
    recipe = resolve(opts["recipe"], {f: opts[f] for f in Recipe.__dataclass_fields__})
    class_names(opts["data"])  # a wrong folder fails here, before Keras loads
    config = TrainConfig(
        arch=opts["arch"], data_dir=opts["data"], runs_dir=opts["runs_dir"], name=opts["name"],
        model_options=_model_options(opts["arch"], opts), recipe=opts["recipe"], **recipe,
        seed=opts["seed"], limit=opts["limit"],
        val_fraction=opts["val_fraction"], patience=opts["patience"],
        distribute=opts["distribute"], recalibrate_bn=opts["recalibrate_bn"],
        cache_dir=opts["cache_dir"], use_cache=not opts["no_cache"],
        spec=_spec(opts["image_size"]), cpu_kernels=opts["cpu_kernels"],
        reweight=opts["reweight"],
        planes_file=str(Path(opts["planes_file"]).resolve()) if opts["planes_file"] else None,
        init_from=str(Path(opts["init_from"]).resolve()) if opts["init_from"] else None)
    config.validate()  # before Keras loads
    command = shlex.join(["python", "-m", "trainer", *sys.argv[1:]])
    train_run(config, verbose=verbose, progress=progress, command=command,
              time_limit=opts["time_limit"])


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--data", type=click.Path(file_okay=False),
              help="Data folder with Testing/<class>/ (default: the run's data folder).")
@click.option("--dedup-list", type=click.Path(dir_okay=False),
              help="Deduplicated test list from audit-leakage (default: looked up, see README).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output folder (default RUN/evaluation).")
@click.option("--limit", type=int, help="Evaluate a seeded, stratified subset of N test images.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False))
@click.option("--no-cache", is_flag=True)
@_external_options
@click.option("--test-time", type=click.Choice(TEST_TIMES), default="none", show_default=True,
              help="'mirror-mean': every answer is the mean over the picture and its "
                   "left-right mirror image, as an agent runs a model converted with "
                   "--test-time mirror-mean (default --out: RUN/evaluation-mirror-mean).")
@click.pass_context
@_user_errors
def evaluate(ctx: click.Context, run: str, data: str | None, dedup_list: str | None,
             out: str | None, limit: int | None, batch_size: int, cache_dir: str | None,
             no_cache: bool, external: tuple[str, ...], no_external: bool,
             test_time: str) -> None:
    """Score RUN's model on the Testing split: official and deduplicated, side by side, and
    on external folders (default ../shared/data/br35h-tumour when present)."""
    from trainer.evaluate import evaluate_run

    if external and no_external:
        raise OptionError("--external and --no-external contradict each other; give one")
    if batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise OptionError(f"--limit must be at least 1 test image, got {limit}")
    result = evaluate_run(run, data, dedup_list=dedup_list, out_dir=out, limit=limit,
                          batch_size=batch_size, cache_dir=cache_dir, use_cache=not no_cache,
                          progress=not ctx.obj["quiet"], external=external,
                          default_external=not no_external, test_time=test_time)
    click.echo(result["table_markdown"])
    click.echo(f"written to {result['out_dir']}")


@main.command()
@click.option("--arch", type=click.Choice(ARCH_NAMES), required=True)
@_model_option_flags
@_user_errors
def summary(arch: str, **opts: Any) -> None:
    """Print the layer table and parameter count of an architecture."""
    from trainer.summary import architecture_summary

    options = _model_options(arch, opts)
    as_trained = None
    if arch == "mobilenetv2" and opts["backbone_weights"] is None:
        # The paper's frozen layout; the layer table does not need the ImageNet file.
        as_trained, options = options, {"backbone_weights": "none", "freeze_backbone": True}
    click.echo(architecture_summary(arch, _spec(opts["image_size"]).shape, options, as_trained))


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Data folder with Training/<class>/ and Testing/<class>/.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New, empty folder for the pack.")
@click.option("--quality", type=int, default=85, show_default=True,
              help="WebP quality (lossy; 85 is ~8 KB an image at 224x224).")
@click.option("--split", "splits", multiple=True, type=click.Choice(["Training", "Testing"]),
              help="Splits to pack (repeatable; default both).")
@click.option("--image-size", type=int, help="Square size in pixels (default 224).")
@_user_errors
def pack(data_dir: str, out: str, quality: int, splits: tuple[str, ...],
         image_size: int | None) -> None:
    """Pre-resize a data set into a compact WebP pack (to ship it to a GPU machine)."""
    from trainer.pack import pack as make_pack

    record = make_pack(data_dir, out, quality=quality, splits=splits or ("Training", "Testing"),
                       spec=_spec(image_size))
    click.echo(f"{record['images']} images, {record['bytes'] / 1e6:.1f} MB -> {out}")


@main.command()
@click.argument("pack_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the decoded data set (gray PNGs, original names).")
@_user_errors
def unpack(pack_dir: str, out: str) -> None:
    """Decode a pack into an ordinary data folder that train and evaluate read."""
    from trainer.pack import unpack as open_pack

    count = open_pack(pack_dir, out)
    click.echo(f"{count} images -> {out}")


@main.command()
@click.option("--arch", type=click.Choice(ARCH_NAMES), required=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--steps", type=int, default=20, show_default=True, help="Timed steps.")
@click.option("--warmup", type=int, default=3, show_default=True,
              help="Untimed first steps (compilation).")
@click.option("--cpu-kernels", is_flag=True,
              help="TensorFlow on CPU: the trainer's --cpu-kernels instead of Keras' own.")
@click.option("--compare", metavar="V1,V2,...",
              help="Time these variants in one process, a step of each in turn, and print "
                   "their ratios to V1: stock, cpu-kernels, pool-kernel, conv-kernel, mixed-bf16.")
@click.option("--per-layer", is_flag=True,
              help="TensorFlow: time each layer's forward and backward pass alone instead.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Also write the record(s) to this JSON file.")
@_model_option_flags
@_user_errors
def throughput(arch: str, batch_size: int, steps: int, warmup: int, cpu_kernels: bool,
               compare: str | None, per_layer: bool, json_out: str | None,
               **opts: Any) -> None:
    """Training images per second of ARCH on this backend and device (random batches)."""
    import json

    from trainer.throughput import VARIANTS, measure, profile_layers
    from trainer.throughput import compare as compare_variants

    if steps < 1 or warmup < 0 or batch_size < 1:
        raise OptionError("--steps and --batch-size must be at least 1, --warmup at least 0")
    size = opts["image_size"] or 224
    if not 1 <= size <= MAX_IMAGE_SIZE:
        raise OptionError(f"--image-size must be between 1 and {MAX_IMAGE_SIZE} pixels, "
                          f"got {size}")
    options = _model_options(arch, opts)
    if per_layer:
        if compare is not None:
            raise OptionError("--per-layer and --compare are separate measurements; give one")
        import keras

        if keras.backend.backend() != "tensorflow":
            raise OptionError("--per-layer needs the TensorFlow backend "
                              "(KERAS_BACKEND=tensorflow)")
        result: Any = profile_layers(arch, batch_size=batch_size, image_size=size,
                                     cpu_kernels=cpu_kernels, **options)
        click.echo(f"{arch}, batch {batch_size}, each layer alone (best of 3), "
                   f"{'--cpu-kernels' if cpu_kernels else 'stock kernels'}")
        click.echo("| layer | input | forward ms | forward+backward ms | share |")
        click.echo("|---|---|---:|---:|---:|")
        for r in result:
            click.echo(f"| {r['layer']} | {'x'.join(map(str, r['input_shape'][1:]))} | "
                       f"{r['forward_ms']} | {r['forward_backward_ms']} | "
                       f"{100 * r['share']:.0f}% |")
        click.echo(f"| total | | {sum(r['forward_ms'] for r in result):.0f} | "
                   f"{sum(r['forward_backward_ms'] for r in result):.0f} | |")
    elif compare is None:
        record = measure(arch, batch_size=batch_size, steps=steps, warmup=warmup,
                         image_size=size, cpu_kernels=cpu_kernels, **options)
        click.echo(f"{arch} on {record['backend']} ({', '.join(record['devices'])}): "
                   f"{record['images_per_second']} images/s, batch {batch_size}, median step "
                   f"{record['median_step_seconds']} s over {steps} steps "
                   f"(warm-up {record['warmup_seconds']} s)")
        result = record
    else:
        variants = tuple(v.strip() for v in compare.split(",") if v.strip())
        if (cpu_kernels or not variants or len(set(variants)) != len(variants)
                or any(v not in VARIANTS for v in variants)):
            raise OptionError(f"--compare takes distinct names from {', '.join(VARIANTS)} "
                              f"separated by commas (and no --cpu-kernels), got {compare!r}")
        result = compare_variants(arch, variants, batch_size=batch_size, steps=steps,
                                  warmup=warmup, image_size=size, **options)
        click.echo(f"{arch} on {result[0]['backend']}, batch {batch_size}, {steps} interleaved "
                   f"steps each")
        click.echo("| variant | images/s (median) | images/s (best) | CPU s/step | "
                   f"x {variants[0]} |")
        click.echo("|---|---:|---:|---:|---:|")
        for r in result:
            click.echo(f"| {r['variant']} | {r['images_per_second']} | "
                       f"{r['best_images_per_second']} | {r['cpu_seconds_per_step']} | "
                       f"{r['speedup']:.2f} |")
    if json_out:
        write_bytes_atomic(Path(json_out), (json.dumps(result, indent=1) + "\n").encode())


@main.command()
@click.option("--carry", multiple=True, metavar="PATH",
              help="An ignored path the call carries (repeatable), e.g. .gpu and .whl.")
@click.option("--repo", type=click.Path(file_okay=False), default=".", show_default=True,
              help="The checkout the device tool sends.")
@click.option("--limit-mib", type=float, default=64, show_default=True,
              help="What one call may carry.")
@click.option("--margin-mib", type=float, default=1, show_default=True,
              help="Kept free below the limit (how the tool counts is not known to the byte).")
@_user_errors
def travel(carry: tuple[str, ...], repo: str, limit_mib: float, margin_mib: float) -> None:
    """Measure what a GPU-machine call would carry; fail if over the limit.

    Counts the working tree (tracked files and untracked ones git does not ignore, a
    shared/ folder) and each --carry path, every file rounded up to 4 KiB blocks. Exit 0:
    it fits; 1: the tool would refuse the call (the largest files are named).
    """
    from trainer.travel import check, measure, table

    if limit_mib <= 0 or not 0 <= margin_mib < limit_mib:
        raise OptionError(f"--limit-mib must be above 0 and --margin-mib from 0 to below it, "
                          f"got {limit_mib:g} and {margin_mib:g}")
    limit, margin = int(limit_mib * 2**20), int(margin_mib * 2**20)
    parts = measure(repo, carry)
    click.echo(table(parts, limit))
    for warning in check(parts, limit, margin):
        click.echo(f"warning: {warning}", err=True)


@main.command("audit-leakage")
@click.argument("data_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False),
              help="Output folder (default runs/leakage-audit/<data folder name>).")
@click.option("--threshold", type=float, help="Similarity above which a test image is a leak.")
@_user_errors
def audit_leakage(data_dir: str, out: str | None, threshold: float | None) -> None:
    """Find test images that (nearly) duplicate training images; write a deduplicated list."""
    from trainer.evaluate import default_audit_dir, write_audit_record

    try:
        from trainer.audit import audit_leakage as run_audit
    except ImportError as exc:
        raise TrainerError(f"the leakage audit module is not installed ({exc})") from None
    out_dir = Path(out) if out else default_audit_dir(Path(DEFAULT_RUNS_DIR), data_dir)
    kwargs = {} if threshold is None else {"threshold": threshold}
    result = run_audit(data_dir, out_dir, **kwargs)
    write_audit_record(out_dir, data_dir, result)
    click.echo(f"leakage audit written to {out_dir}")
    for key, value in (result or {}).items():
        if isinstance(value, (int, float, str)):
            click.echo(f"  {key}: {value}")


@main.command("planes")
@click.argument("data_dir", type=click.Path(file_okay=False))
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False),
              help="Hand labels, 'path,plane' (default docs/planes/hand_labels.csv).")
@click.option("--model", type=click.Path(),
              help="Model folder whose 'features' output is used (default: the shipped one).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Plane table to write (default docs/planes/training_planes.csv).")
@_user_errors
def planes(data_dir: str, labels_file: str | None, model: str | None, out: str | None) -> None:
    """Label every training picture axial or not, from hand labels of a sample (for
    --reweight planes)."""
    from trainer.planes import (
        DEFAULT_HAND_LABELS,
        DEFAULT_PLANES,
        label_planes,
        model_features,
        read_hand_labels,
        write_planes,
    )

    hand = read_hand_labels(labels_file or DEFAULT_HAND_LABELS)
    paths, features = model_features(model or "", data_dir, progress=True)
    table, info = label_planes(paths, features, hand)
    target = Path(out) if out else DEFAULT_PLANES
    write_planes(target, table)
    from trainer.data import scan_split

    listed, labels, names = scan_split(data_dir, "Training")
    index = {p: i for i, p in enumerate(table.paths)}
    axial = table.axial[[index[p] for p in listed]]
    click.echo(f"{info['hand_labels']} hand labels; leave-one-out accuracy of 'axial or not' "
               f"from the model's features: {100 * info['leave_one_out_accuracy']:.1f}%")
    for c, name in enumerate(names):
        members = labels == c
        click.echo(f"  {name:12} {int(members.sum()):5} pictures, "
                   f"{100 * axial[members].mean():.0f}% axial")
    click.echo(f"wrote {target}")


@main.command("audit-shortcuts")
@click.argument("data_dir", type=click.Path(file_okay=False))
@click.option("--external", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Also measure this folder's pictures (DIR/<folder>/*) and report what "
                   "property-only classifiers call them. Repeatable; default "
                   "../shared/data/br35h-tumour when present.")
@click.option("--no-external", is_flag=True, help="Skip the external folders.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output folder (default runs/shortcut-audit/<data folder name>).")
@click.option("--folds", type=int, default=5, show_default=True,
              help="Cross-validation folds.")
@click.option("--seed", type=int, default=0, show_default=True)
@_user_errors
def audit_shortcuts(data_dir: str, external: tuple[str, ...], no_external: bool,
                    out: str | None, folds: int, seed: int) -> None:
    """How well size, border, intensity and JPEG properties alone predict the class."""
    from trainer.external import default_external_dirs
    from trainer.shortcuts import audit_shortcuts as run_audit
    from trainer.shortcuts import default_out, write_audit

    if external and no_external:
        raise OptionError("--external and --no-external contradict each other; give one")
    if folds < 2:
        raise OptionError(f"--folds must be at least 2, got {folds}")
    if seed < 0:
        raise OptionError(f"--seed must be 0 or more, got {seed}")
    dirs = list(external) or ([] if no_external else [str(d) for d in default_external_dirs()])
    record, tables = run_audit(data_dir, dirs, folds=folds, seed=seed)
    out_dir = Path(out) if out else default_out(data_dir)
    write_audit(out_dir, record, tables)
    from trainer.shortcuts import report_markdown

    click.echo(report_markdown(record))
    click.echo(f"written to {out_dir}")


@main.command()
@click.option("--arch", type=click.Choice(ARCH_NAMES), default="dsconv_cbam", show_default=True)
@click.option("--data", type=click.Path(file_okay=False), required=True)
@click.option("--limit", type=int, default=256, show_default=True)
@click.option("--steps", type=int, default=12, show_default=True,
              help="Training steps to watch.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--learning-rate", "--lr", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the numbers as JSON.")
@click.option("--augment", type=click.Choice(list(AUGMENTATIONS)), default="none",
              show_default=True, help="Augment the training batches like train does.")
@click.option("--loss", type=click.Choice(["logits", "probabilities"]), default="logits",
              show_default=True,
              help="Train the logits view with a from-logits loss (the trainer's way), or the "
                   "softmax output with Keras' probability loss (the old way).")
@_model_option_flags
@_user_errors
def diagnose(arch: str, data: str, limit: int, steps: int, batch_size: int,
             learning_rate: float, seed: int, out: str | None, augment: str, loss: str,
             **opts: Any) -> None:
    """Watch activations, dead ReLUs and outputs over the first training steps."""
    from trainer.diagnose import diagnose as run_diagnose

    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise OptionError(f"--learning-rate must be a finite positive number, "
                          f"got {learning_rate}")
    for option, value, low in (("--seed", seed, 0), ("--steps", steps, 0),
                               ("--batch-size", batch_size, 1), ("--limit", limit, 1)):
        if value < low:
            raise OptionError(f"{option} must be at least {low}, got {value}")
    run_diagnose(arch, data, options=_model_options(arch, opts), spec=_spec(opts["image_size"]),
                 limit=limit, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                 seed=seed, out=out, augment=augment, loss=loss)


if __name__ == "__main__":
    main()
