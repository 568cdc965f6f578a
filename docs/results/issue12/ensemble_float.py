"""Would two differently trained models, averaged, do better? Measured on saved predictions.

    python docs/results/issue12/ensemble_float.py RUN RUN [RUN ...]

Each RUN is a trainer run folder evaluated with ``python -m trainer evaluate RUN --out
RUN/evaluation-original`` (its ``predictions.csv``: the official Testing split with the
deduplicated flag, and ``predictions_external.csv``: the external check). Nothing runs a
model: every figure comes from the float probabilities those evaluations wrote, so this
takes a second. For each run alone and each pair, prints official and deduplicated
accuracy, the external tumour pictures not called ``notumor``, and the Testing
``notumor`` pictures called a tumour (false alarms), for two ways of averaging:

- ``mean``: the mean of the probabilities (``ensemble_probe.py`` does this with int8
  models through the device's runtime);
- ``logit mean``: the softmax of the mean of the logits (log-probabilities differ from
  the logits by a constant per picture, so they give the same answer). It is the pair
  built as one network: both backbones' last feature maps side by side, one global average
  pool and one Dense layer holding half of each member's weights.

Nothing is fitted, so the external check stays a check; choosing a pair by these figures
would not be (docs/results.md says how they were used).
"""

from __future__ import annotations

import csv
import itertools
import sys
from pathlib import Path

import numpy as np

NEGATIVE = "notumor"


def _read(run: Path) -> dict:
    folder = run / "evaluation-original"
    with open(folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(folder / "predictions_external.csv", newline="") as f:
        external = [r for r in csv.DictReader(f) if r["folder"] == "tumour"]
    labels = [k[2:] for k in rows[0] if k.startswith("p_")]
    return {
        "labels": labels,
        "paths": [r["path"] for r in rows],
        "test": np.array([[float(r[f"p_{c}"]) for c in labels] for r in rows]),
        "truth": np.array([labels.index(r["true"]) for r in rows]),
        "dedup": np.array([r["in_dedup"] == "1" for r in rows]),
        "external_paths": [r["path"] for r in external],
        "external": np.array([[float(r[f"p_{c}"]) for c in labels] for r in external]),
    }


def _row(name: str, test: np.ndarray, external: np.ndarray, first: dict) -> str:
    negative = first["labels"].index(NEGATIVE)
    truth, dedup = first["truth"], first["dedup"]
    answer = test.argmax(axis=1)
    found = int((external.argmax(axis=1) != negative).sum())
    alarms = int(((truth == negative) & (answer != negative)).sum())
    negatives = int((truth == negative).sum())
    return (f"| {name} | {100 * (answer == truth).mean():.2f} | "
            f"{100 * (answer[dedup] == truth[dedup]).mean():.2f} | {found} of {len(external)} "
            f"({100 * found / len(external):.2f} %) | {alarms} of {negatives} |")


def main(runs: list[Path]) -> None:
    read = {run.name: _read(run) for run in runs}
    first = next(iter(read.values()))
    for name, r in read.items():
        if (r["labels"], r["paths"], r["external_paths"]) != (
                first["labels"], first["paths"], first["external_paths"]):
            sys.exit(f"{name}'s evaluation has other labels or pictures than {runs[0].name}'s: "
                     "evaluate both with the same data and external check")
    print("| model | official | deduplicated | external tumours found | Testing notumor "
          "called a tumour |")
    print("|---|---:|---:|---:|---:|")
    for name, r in read.items():
        print(_row(name, r["test"], r["external"], first))
    for a, b in itertools.combinations(read, 2):
        ra, rb = read[a], read[b]
        print(_row(f"mean of {a} + {b}", (ra["test"] + rb["test"]) / 2,
                   (ra["external"] + rb["external"]) / 2, first))
        with np.errstate(divide="ignore"):
            print(_row(f"logit mean of {a} + {b}", np.log(ra["test"]) + np.log(rb["test"]),
                       np.log(ra["external"]) + np.log(rb["external"]), first))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main([Path(a) for a in sys.argv[1:]])
