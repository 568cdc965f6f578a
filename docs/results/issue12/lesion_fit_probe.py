"""Has a lesion-trained network learned its own lesions? The training task, measured.

    python docs/results/issue12/lesion_fit_probe.py RUN [RUN ...] [--pictures 640] [--seed 123]

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
    args = parser.parse_args()
    for run in args.runs:
        if not (run / "model.keras").is_file() or not (run / "run.json").is_file():
            sys.exit(f"{run}: not a finished run folder (no model.keras or run.json)")

    import keras

    import trainer.layers  # noqa: F401 - registers the custom layers for loading
    from edge.preprocess import PreprocessSpec
    from trainer.batches import TrainingBatches
    from trainer.data import load_split
    from trainer.lesions import lesion_class

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
        batches = TrainingBatches(data.images[picks], data.labels[picks], len(data.class_names),
                                  64, seed=args.seed, spec=spec, augment="lesion",
                                  negative_class=negative)
        model = keras.saving.load_model(run / "model.keras", compile=False)
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
        print(f"| {run.name} | {painted_nt} of {painted} ({painted_nt / max(painted, 1):.1%}) | "
              f"{clean_nt} of {clean} ({clean_nt / max(clean, 1):.1%}) | "
              f"{float(np.concatenate(p_painted).mean()):.2f} |")


if __name__ == "__main__":
    main()
