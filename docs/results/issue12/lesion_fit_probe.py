"""Has a lesion-trained network learned its own lesions? The training task, measured.

    python docs/results/issue12/lesion_fit_probe.py RUN [RUN ...] [--pictures 640] [--seed 123]
    python docs/results/issue12/lesion_fit_probe.py --by-kind RUN [RUN ...] [--pictures 400]
    python docs/results/issue12/lesion_fit_probe.py --cam RUN [RUN ...]
    ... --best-so-far RUN: a run still training, its best epoch so far (checkpoints/best.keras)

For each run folder (its ``model.keras``), takes up to N no-tumour pictures of the run's own
training split (``data_split.json``; the trainer's cache), builds training batches from them
exactly as the ``lesion`` policy does (``trainer.batches.TrainingBatches``: lesions painted
into about 30 % of them, then the strong policy's warps and intensity changes), and prints
how many of the painted pictures the float model still answers "notumor", beside the
unpainted ones. A model that has learned its training task answers few painted pictures
"notumor". ``cue_probe.py --rows lesion`` asks the same of held-out Testing pictures through
the shipped int8 model; this one asks it of the pictures the network was trained on, so a
high figure here means the network did not fit the task (not that it failed to generalize).
Uses no Br35H picture. About a minute per run on 2 CPU cores.

``--by-kind``: instead, every kind of lesion drawn into each picture in turn at the same
place and shape (``synthetic_lesion(kind=...)``, no strong policy after it), and the share
answered "notumor" per kind and per lesion radius (under 16 px, 16-25 px, over 25 px at
224 x 224: the recipe draws 9-34 px), to see which lesions the network did not learn.

``--cam``: is the lesion in the features and lost in the average? The head is global
average pooling then one Dense layer, so the logits are the mean over the 7 x 7 feature
cells of per-cell logits (the class activation map). For the same training batches, each
picture's "tumour, not notumor" margin (best tumour logit less the ``notumor`` logit) is
read three ways: the mean over cells (the model's own answer), the largest cell and the mean
of the 4 largest; printed: how well each separates painted from unpainted pictures (ROC
AUC), and the share of painted pictures each finds when its threshold lets through exactly
as many unpainted pictures as the model itself does. If the largest cell finds far more,
the features see the lesions and the average dilutes them (a pooling question); if not,
the features do not hold them (a training or capacity question).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--pictures", type=int, default=640)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--by-kind", action="store_true")
    parser.add_argument("--cam", action="store_true")
    parser.add_argument("--best-so-far", action="store_true")
    args = parser.parse_args()
    weights = "checkpoints/best.keras" if args.best_so_far else "model.keras"
    for run in args.runs:
        if not (run / weights).is_file() or not (run / "run.json").is_file():
            sys.exit(f"{run}: no {weights} or run.json (a run folder of the trainer; "
                     "--best-so-far for one still training)")

    import keras

    import trainer.layers  # noqa: F401 - registers the custom layers for loading
    from edge.preprocess import PreprocessSpec
    from trainer.batches import TrainingBatches
    from trainer.data import load_split
    from trainer.lesions import lesion_class
    from trainer.logits import is_logits_view, with_softmax

    if args.cam:
        print("| run | read | AUC painted vs unpainted | painted found at the model's "
              "unpainted rate |")
        print("|---|---|---:|---:|")
    elif args.by_kind:
        print("| run | lesion kind | answered notumor | radius < 16 px | 16-25 px | > 25 px |")
        print("|---|---|---:|---:|---:|---:|")
    else:
        print("| run | painted pictures answered notumor | unpainted answered notumor | "
              "mean P(notumor), painted |")
        print("|---|---:|---:|---:|")
    for run in args.runs:
        record = json.loads((run / "run.json").read_text())
        train_files = set(json.loads((run / "data_split.json").read_text())["train"])
        spec = PreprocessSpec.from_dict(record["preprocess"])
        data = load_split(record["data_dir"], "Training", spec, classes=record["labels"])
        negative = lesion_class("lesion", data.class_names)
        pairs = enumerate(zip(data.paths, data.labels, strict=True))
        picks = np.array([i for i, (path, label) in pairs
                          if label == negative and path in train_files])[:args.pictures]
        model = keras.saving.load_model(run / weights, compile=False)
        if is_logits_view(model):  # a checkpoint: the softmax model, as the trainer keeps
            model = with_softmax(model)
        name = run.name
        if args.best_so_far:
            state = json.loads((run / "checkpoints" / "state.json").read_text())
            name += f" (best so far: epoch {state['best_epoch']} of {state['epochs_done']})"
        if args.by_kind:
            _by_kind(name, model, data.images[picks], spec, negative, args.seed)
            continue
        batches = TrainingBatches(data.images[picks], data.labels[picks], len(data.class_names),
                                  64, seed=args.seed, spec=spec, augment="lesion",
                                  negative_class=negative)
        if args.cam:
            _cam(name, model, batches, negative)
            continue
        painted_nt = painted = clean_nt = clean = 0
        p_painted = []
        for step in range(len(batches)):
            x, y = batches.batch(0, step)
            p = keras.ops.convert_to_numpy(model(x, training=False))
            is_painted = y[:, negative] == 0
            says_none = p.argmax(axis=1) == negative
            painted_nt += int(says_none[is_painted].sum())
            painted += int(is_painted.sum())
            clean_nt += int(says_none[~is_painted].sum())
            clean += int((~is_painted).sum())
            p_painted.append(p[is_painted, negative])
        print(f"| {name} | {painted_nt} of {painted} ({painted_nt / max(painted, 1):.1%}) | "
              f"{clean_nt} of {clean} ({clean_nt / max(clean, 1):.1%}) | "
              f"{float(np.concatenate(p_painted).mean()):.2f} |")


def _cam(name: str, model, batches, negative: int) -> None:
    """Per-cell margins under the GAP head: the mean (the model), the largest cell, top 4."""
    import keras

    from trainer.logits import LOGITS_LAYER
    from trainer.metrics import roc_auc

    dense = model.get_layer(LOGITS_LAYER)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in dense.weights)
    features = keras.Model(model.inputs[0], model.get_layer("gap").input)
    tumour = [c for c in range(kernel.shape[1]) if c != negative]
    reads = {"mean of cells (the model)": [], "largest cell": [], "mean of 4 largest": []}
    painted = []
    for step in range(len(batches)):
        x, y = batches.batch(0, step)
        cells = keras.ops.convert_to_numpy(features(x, training=False)) @ kernel + bias
        margin = (cells[..., tumour].max(axis=-1) - cells[..., negative]).reshape(len(x), -1)
        mean_logits = cells.reshape(len(x), -1, kernel.shape[1]).mean(axis=1)
        reads["mean of cells (the model)"].append(
            mean_logits[:, tumour].max(axis=1) - mean_logits[:, negative])
        ordered = np.sort(margin, axis=1)
        reads["largest cell"].append(ordered[:, -1])
        reads["mean of 4 largest"].append(ordered[:, -4:].mean(axis=1))
        painted.append(y[:, negative] == 0)
    painted = np.concatenate(painted)
    model_rate = float((np.concatenate(reads["mean of cells (the model)"])[~painted] > 0).mean())
    for read, scores in reads.items():
        scores = np.concatenate(scores)
        threshold = np.quantile(scores[~painted], 1 - model_rate) if model_rate else \
            scores[~painted].max()
        found = float((scores[painted] > threshold).mean())
        print(f"| {name} | {read} | {roc_auc(scores, painted):.3f} | "
              f"{found:.1%} of {int(painted.sum())} (unpainted let through: "
              f"{model_rate:.1%}) |")


def _by_kind(name: str, model, images: np.ndarray, spec, negative: int, seed: int) -> None:
    """Each kind drawn into each picture at the same place and shape; answers by kind and
    radius."""
    import keras

    from edge.preprocess import scale
    from trainer.lesions import KINDS, lesion_in_picture

    drawn, kinds, radii = [], [], []
    for i, image in enumerate(images):
        for kind in KINDS:  # the same generator state: the same place and shape each time
            result = lesion_in_picture(image, np.random.default_rng([seed, i]), kind=kind)
            if result is None:
                continue
            drawn.append(result[0])
            kinds.append(kind)
            radii.append(result[1].radius * 224 / min(image.shape[:2]))
    x = np.stack(drawn)
    says_none = np.concatenate([
        keras.ops.convert_to_numpy(model(scale(x[j:j + 64], spec), training=False))
        for j in range(0, len(x), 64)]).argmax(axis=1) == negative
    kinds, radii = np.array(kinds), np.array(radii)
    for kind in KINDS:
        of_kind = kinds == kind
        cells = [f"{says_none[of_kind].mean():.1%} of {of_kind.sum()}"]
        for low, high in ((0, 16), (16, 25), (25, 1e9)):
            cell = of_kind & (radii >= low) & (radii < high)
            cells.append(f"{says_none[cell].mean():.0%} of {cell.sum()}" if cell.any() else "-")
        print(f"| {name} | {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
