"""Model soups: one network whose weights are the mean of several fine-tunes of one ancestor.

    python docs/results/issue12/model_soup.py --out runs/cpu/soups --name soup-A RUN RUN [RUN ...]

Each RUN is a trainer run folder fine-tuned (``--init-from``), directly or through another
fine-tune, from one trained ancestor, so the networks lie in one basin and their weights can
be averaged (Wortsman et al. 2022, "Model soups"). Writes two run folders that
``python -m trainer evaluate`` and ``python -m converters.tflite`` take like any other:

- ``OUT/NAME-uniform``: the mean of every weight of every RUN, BatchNormalization moving
  statistics included;
- ``OUT/NAME-greedy``: the paper's greedy soup: the RUNs in order of validation accuracy
  (ties: lower validation cross-entropy), starting from the first and adding each next one
  when the soup's validation accuracy does not fall.

With ``--task-vector 1.5,2,3`` and two runs, CONTROL and TUNED (the same fine-tune of the
ancestor without and with one change, e.g. the ``lesion-any`` lesions), it writes instead
``OUT/NAME-tv<alpha>`` = CONTROL + alpha x (TUNED - CONTROL) for each alpha (task arithmetic,
Ilharco et al. 2023: alpha 1 is TUNED, above 1 goes further along what the change taught).

Validation is the runs' shared 10 % split of Training (``data_split.json``), unaugmented; a
soup whose validation accuracy falls below its worst ingredient's gets its BatchNormalization
statistics recomputed on ``--recalibrate`` unaugmented training batches (``trainer.bn``),
kept only if that raises its validation accuracy. Nothing reads the external check: which
soup to ship is the shipping rule's choice (docs/results.md, "Averaging weights: model
soups"). Each folder's ``run.json`` records the ingredients (run, model sha256, validation
accuracy and cross-entropy) and the greedy trace.
Takes about 2 minutes for six ``dsconv_cbam_res`` runs on a 2-core CPU (cached pictures).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def _fail(message: str) -> None:
    sys.exit(f"model_soup.py: {message}")


def _record(run: Path) -> dict:
    try:
        return json.loads((run / "run.json").read_text())
    except (OSError, ValueError) as exc:
        _fail(f"{run} is not a readable trainer run folder ({exc})")
        raise  # unreachable


def _check_compatible(runs: list[Path], records: list[dict]) -> None:
    """Same architecture, options, labels, preprocessing and validation split for all."""
    first = records[0]
    split = (runs[0] / "data_split.json").read_bytes()
    for run, rec in zip(runs[1:], records[1:], strict=True):
        for key in ("architecture", "model_options", "labels", "preprocess"):
            if rec.get(key) != first.get(key):
                _fail(f"{run} has another {key} than {runs[0]}: only fine-tunes of one "
                      "ancestor can be averaged")
        if (run / "data_split.json").read_bytes() != split:
            _fail(f"{run} was trained on another train/validation split than {runs[0]}")


def _ancestor(run: Path, record: dict) -> str:
    """The first run of the --init-from chain (the run itself when it was not fine-tuned)."""
    seen = {str(run.resolve())}
    while record.get("init_from"):
        parent = Path(record["init_from"]["run"])
        if str(parent.resolve()) in seen or not (parent / "run.json").is_file():
            return str(parent.resolve())
        seen.add(str(parent.resolve()))
        run, record = parent, _record(parent)
    return str(run.resolve())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for the soup runs")
    parser.add_argument("--name", required=True, help="the soups' name prefix")
    parser.add_argument("--task-vector", metavar="ALPHAS",
                        help="comma-separated alphas: CONTROL + alpha x (TUNED - CONTROL)")
    parser.add_argument("--recalibrate", type=int, default=50,
                        help="training batches for a BatchNormalization recalibration")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        _fail("name at least two runs to average")
    alphas: list[float] = []
    if args.task_vector:
        if len(args.runs) != 2:
            _fail("--task-vector takes exactly two runs: CONTROL TUNED")
        try:
            alphas = [float(a) for a in args.task_vector.split(",")]
        except ValueError:
            _fail(f"--task-vector {args.task_vector!r}: give numbers separated by commas")
    records = [_record(run) for run in args.runs]
    _check_compatible(args.runs, records)
    ancestors = {_ancestor(run, rec) for run, rec in zip(args.runs, records, strict=True)}
    if len(ancestors) != 1:
        _fail(f"the runs come from {len(ancestors)} different ancestors "
              f"({', '.join(sorted(ancestors))}): average fine-tunes of one trained network")
    for suffix in [f"tv{a:g}" for a in alphas] or ["uniform", "greedy"]:
        if (args.out / f"{args.name}-{suffix}").exists():
            _fail(f"{args.out / f'{args.name}-{suffix}'} exists; choose another --name")

    import keras

    import trainer.layers  # noqa: F401 - registers the custom layers for loading
    from edge.manifest import sha256_file
    from edge.preprocess import scale
    from edge.preprocess_spec import PreprocessSpec
    from trainer.batches import EvaluationBatches
    from trainer.bn import recalibrate_batchnorm
    from trainer.data import load_split
    from trainer.runs import environment
    from trainer.xla import avoid_cpu_xla

    first = records[0]
    spec = PreprocessSpec.from_dict(first["preprocess"])
    labels = first["labels"]
    split = json.loads((args.runs[0] / "data_split.json").read_text())
    data = load_split(first["data_dir"], "Training", spec, classes=labels)
    index = {path: i for i, path in enumerate(data.paths)}
    try:
        val = np.array([index[p] for p in split["validation"]])
        train = np.array([index[p] for p in split["train"]])
    except KeyError as exc:
        _fail(f"{exc} of the runs' split is not in {first['data_dir']}/Training")
    xv, yv = data.images[val], data.labels[val]

    def scores(model: keras.Model) -> tuple[float, float]:
        probs = np.asarray(model.predict(EvaluationBatches(xv, None, len(labels), 64, spec=spec),
                                         verbose=0), dtype=np.float64)
        right = np.clip(probs[np.arange(len(yv)), yv], 1e-12, 1)
        return float((probs.argmax(1) == yv).mean()), float(-np.log(right).mean())

    def average(weights: list[list[np.ndarray]]) -> list[np.ndarray]:
        return [np.mean([w[i] for w in weights], axis=0) for i in range(len(weights[0]))]

    models = {run: avoid_cpu_xla(keras.saving.load_model(run / "model.keras", compile=False))
              for run in args.runs}
    weights = {run: model.get_weights() for run, model in models.items()}
    alone = {run: scores(model) for run, model in models.items()}
    ingredients = [{"run": str(run.resolve()), "model_sha256": sha256_file(run / "model.keras"),
                    "val_accuracy": alone[run][0], "val_crossentropy": alone[run][1]}
                   for run in args.runs]
    print("| ingredient | validation accuracy | validation cross-entropy |\n|---|---:|---:|")
    for run in args.runs:
        print(f"| {run.name} | {100 * alone[run][0]:.2f} % | {alone[run][1]:.4f} |")
    worst = min(acc for acc, _ in alone.values())
    shell = models[args.runs[0]]
    rng = np.random.default_rng(0)

    def recalibrated() -> tuple[float, float]:
        picks = rng.permutation(train)[: 64 * args.recalibrate]
        batches = (scale(data.images[picks[i:i + 64]], spec) for i in range(0, len(picks), 64))
        recalibrate_batchnorm(shell, batches)
        return scores(shell)

    def write(suffix: str, members: list[Path], result: tuple[float, float], trace: list,
              recal: bool) -> None:
        out = args.out / f"{args.name}-{suffix}"
        out.mkdir(parents=True)
        shutil.copy(args.runs[0] / "data_split.json", out / "data_split.json")
        shell.save(out / "model.keras")
        keep = {k: first[k] for k in ("format", "architecture", "architecture_summary",
                                      "model_options", "labels", "preprocess", "data_dir",
                                      "val_fraction", "seed") if k in first}
        record = {**keep, "status": "finished",
                  "recipe": f"task-vector-{suffix}" if alphas else f"soup-{suffix}",
                  "best_val_accuracy": result[0], "epochs": 0,
                  "soup": {"kind": suffix, "ancestor": next(iter(ancestors)),
                           "members": [i for i in ingredients
                                       if Path(i["run"]) in {m.resolve() for m in members}],
                           "ingredients_tried": ingredients, "trace": trace,
                           "val_accuracy": result[0], "val_crossentropy": result[1],
                           "batchnorm_recalibrated_batches": args.recalibrate if recal else 0,
                           "command": " ".join(sys.argv)},
                  "environment": environment()}
        (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        what = suffix if alphas else f"{suffix} soup of {len(members)}"
        print(f"{what}: validation {100 * result[0]:.2f} % "
              f"(cross-entropy {result[1]:.4f}){' after recalibration' if recal else ''} -> {out}")

    def measure(new_weights: list[np.ndarray]) -> tuple[float, float, bool]:
        shell.set_weights(new_weights)
        acc, ce = scores(shell)
        if acc < worst:
            print(f"  validation {100 * acc:.2f} % < worst ingredient {100 * worst:.2f} %: "
                  "recomputing BatchNormalization statistics")
            recal_acc, recal_ce = recalibrated()
            if recal_acc > acc:
                return recal_acc, recal_ce, True
            print(f"  after recalibration {100 * recal_acc:.2f} %: kept the averaged statistics")
            shell.set_weights(new_weights)
        return acc, ce, False

    def soup(members: list[Path]) -> tuple[float, float, bool]:
        return measure(average([weights[m] for m in members]))

    if alphas:
        control, tuned = (weights[run] for run in args.runs)
        for alpha in alphas:
            acc, ce, recal = measure([c + np.float32(alpha) * (t - c)
                                      for c, t in zip(control, tuned, strict=True)])
            write(f"tv{alpha:g}", list(args.runs), (acc, ce),
                  [{"control": args.runs[0].name, "tuned": args.runs[1].name, "alpha": alpha}],
                  recal)
        return

    acc, ce, recal = soup(list(args.runs))
    write("uniform", list(args.runs), (acc, ce), [], recal)

    order = sorted(args.runs, key=lambda r: (-alone[r][0], alone[r][1]))
    chosen, best, trace = [order[0]], alone[order[0]][0], []
    for run in order[1:]:
        acc, ce, _ = soup(chosen + [run])
        kept = acc >= best
        trace.append({"add": run.name, "val_accuracy": acc, "val_crossentropy": ce, "kept": kept})
        print(f"  greedy: + {run.name}: validation {100 * acc:.2f} % "
              f"({'kept' if kept else 'left out'})")
        if kept:
            chosen.append(run)
            best = acc
    acc, ce, recal = soup(chosen)
    write("greedy", chosen, (acc, ce), trace, recal)


if __name__ == "__main__":
    main()
