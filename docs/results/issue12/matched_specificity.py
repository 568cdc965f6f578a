"""A better network, or the same one at another threshold? Br35H tumours at matched specificity.

    python docs/results/issue12/matched_specificity.py RUN [RUN ...]

A model can find more Br35H tumours by saying "tumour" more often: the task vector of
docs/results.md found 79 of 89 by calling 20 of the 405 official no-tumour slices a tumour.
To compare networks rather than operating points, this reads each RUN's float evaluation
(``RUN/evaluation-original/predictions.csv`` and ``predictions_external.csv``, written by
``python -m trainer evaluate RUN --out RUN/evaluation-original``) and ranks the pictures by
their no-tumour probability alone:

- **AUC**: the chance that a Br35H tumour picture gets a lower no-tumour probability than an
  official Testing no-tumour slice (most of which are Br35H-kind pictures too, so this is
  "tumour or not" within one look, the question a clinic asks);
- **found at k false alarms**: the Br35H tumours whose no-tumour probability is below the
  (k+1)-th lowest of the 405 official no-tumour slices', i.e. the threshold that calls
  exactly k of them a tumour, for k = 1, 3, 10;
- **as shipped**: the argmax answer (tumours found, no-tumour slices called a tumour).

The thresholds are read off the official no-tumour slices, never chosen on Br35H, and
nothing here is used to pick a model (the shipping rule does that); it only says whether a
gain on Br35H came with a better ranking or with more false alarms. Takes a second.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

NEGATIVE = "notumor"
FALSE_ALARMS = (1, 3, 10)


def _read(run: Path) -> tuple[np.ndarray, np.ndarray, int, int]:
    folder = run / "evaluation-original"
    with open(folder / "predictions.csv", newline="") as f:
        official = [r for r in csv.DictReader(f) if r["true"] == NEGATIVE]
    with open(folder / "predictions_external.csv", newline="") as f:
        tumours = [r for r in csv.DictReader(f) if r["folder"] == "tumour"]
    if not official or not tumours:
        sys.exit(f"{folder}: no official no-tumour slices or no external 'tumour' pictures")
    neg = np.array([float(r[f"p_{NEGATIVE}"]) for r in official])
    pos = np.array([float(r[f"p_{NEGATIVE}"]) for r in tumours])
    alarms = sum(r["predicted"] != NEGATIVE for r in official)
    found = sum(r["predicted"] != NEGATIVE for r in tumours)
    return neg, pos, alarms, found


def auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(tumour picture ranks below a no-tumour slice on p(notumor)); ties count half."""
    below = (pos[:, None] < neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(below / (len(pos) * len(neg)))


def found_at(neg: np.ndarray, pos: np.ndarray, k: int) -> int:
    threshold = np.sort(neg)[k]  # calls exactly the k lowest no-tumour slices a tumour
    return int((pos < threshold).sum())


def main(runs: list[str]) -> None:
    if not runs:
        sys.exit(__doc__)
    head = " | ".join(f"found at {k} false alarm{'s' if k > 1 else ''}" for k in FALSE_ALARMS)
    print(f"| run | AUC | {head} | as shipped: found / false alarms |")
    print("|---|---:|" + "---:|" * len(FALSE_ALARMS) + "---:|")
    for run in runs:
        neg, pos, alarms, found = _read(Path(run))
        cells = " | ".join(str(found_at(neg, pos, k)) for k in FALSE_ALARMS)
        print(f"| {Path(run).name} | {auc(neg, pos):.4f} | {cells} | "
              f"{found} of {len(pos)} / {alarms} of {len(neg)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
