"""The paper's figures: confusion matrix (Figure 7) and training curves (Figure 6).

matplotlib is imported inside each function, with the Agg backend, so importing the trainer
stays fast and nothing needs a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.durable import atomic_file


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path | str) -> Path:
    """Write the figure atomically (``edge.durable``): a reader never sees half a PNG."""
    path = Path(path)
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", bbox_inches="tight", pad_inches=0.15)
    return path


def plot_confusion_matrix(cm: np.ndarray, labels: Sequence[str], path: Path | str,
                          title: str = "Confusion matrix") -> Path:
    """Counts in each cell with the row-normalised share (recall) below them."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise ValueError(f"the confusion matrix must be {len(labels)}x{len(labels)} for "
                         f"{len(labels)} labels, got shape {cm.shape}")
    plt = _pyplot()
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.2, 5.4), dpi=120)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(len(labels)), labels=list(labels), rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{100 * share[i, j]:.1f}%", ha="center", va="center",
                    color=colour, fontsize=9)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_history(history: dict[str, Sequence[float]], path: Path | str,
                 title: str = "Training history") -> Path:
    """Loss and accuracy per epoch, training and validation, side by side; with
    ``val_lesion_missed`` (the lesion recipes), the share of drawn validation lesions found
    beside the accuracy."""
    known = [key for key in ("loss", "val_loss", "accuracy", "val_accuracy") if history.get(key)]
    if not known:
        raise ValueError("the history holds no 'loss', 'val_loss', 'accuracy' or "
                         f"'val_accuracy' values (keys: {', '.join(history) or 'none'})")
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for ax, key, name in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        for prefix, style, label in (("", "-o", "training"), ("val_", "-s", "validation")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=label, markersize=3)
        missed = history.get("val_lesion_missed") if key == "accuracy" else None
        if missed:
            ax.plot(range(1, len(missed) + 1), [1.0 - m for m in missed], "--^",
                    markersize=3, label="drawn lesions found (validation)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    acc_ax.set_ylim(0.0, 1.0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_reliability(bins: Sequence[dict], path: Path | str, title: str = "Reliability",
                     ece: float | None = None) -> Path:
    """Accuracy against confidence per bin (``edge.trust.reliability``), the diagonal, and
    how many answers each bin holds: where the bars fall below the line, the model claims
    more than it delivers."""
    plt = _pyplot()
    fig, (ax, count_ax) = plt.subplots(2, 1, figsize=(5, 6), dpi=120, sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    used = [b for b in bins if b["n"]]
    width = (bins[0]["high"] - bins[0]["low"]) if bins else 0.1
    ax.bar([b["low"] for b in used], [b["accuracy"] for b in used], width=width, align="edge",
           color="#4a6fa5", edgecolor="white", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], "o", color="black",
            markersize=3, label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title + (f" (ECE {100 * ece:.1f}%)" if ece is not None else ""), fontsize=10)
    count_ax.bar([b["low"] for b in used], [b["n"] for b in used], width=width, align="edge",
                 color="#999999")
    count_ax.set_yscale("log")
    count_ax.set_xlabel("confidence")
    count_ax.set_ylabel("answers")
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
