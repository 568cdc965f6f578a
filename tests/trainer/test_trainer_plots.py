"""The paper's figures are written as valid, readable PNGs, atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from trainer.plots import plot_confusion_matrix, plot_history  # noqa: E402

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]
CM = np.array([[280, 15, 2, 3], [12, 270, 14, 10], [0, 3, 400, 2], [1, 4, 0, 295]])


def _check_png(path: Path, min_size: tuple[int, int]) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert width >= min_size[0] and height >= min_size[1]
    assert width <= 3000 and height <= 3000
    assert pixels.std() > 10          # a drawing, not a blank canvas
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_confusion_matrix_png(tmp_path: Path) -> None:
    out = plot_confusion_matrix(CM, LABELS, tmp_path / "sub" / "cm.png", title="model X")
    assert out == tmp_path / "sub" / "cm.png"
    _check_png(out, (500, 450))


def test_confusion_matrix_with_an_empty_row(tmp_path: Path) -> None:
    cm = CM.copy()
    cm[2] = 0                        # a class absent from the test subset
    _check_png(plot_confusion_matrix(cm, LABELS, tmp_path / "cm.png"), (500, 450))


def test_history_png_and_partial_history(tmp_path: Path) -> None:
    history = {"loss": [1.3, 0.8, 0.5, 0.4], "val_loss": [1.2, 0.9, 0.7, 0.75],
               "accuracy": [0.45, 0.7, 0.82, 0.88], "val_accuracy": [0.5, 0.66, 0.78, 0.77],
               "learning_rate": [1e-3] * 4}
    _check_png(plot_history(history, tmp_path / "h.png"), (1000, 400))
    # a run without a validation split still plots its training curves
    _check_png(plot_history({"loss": [1.0, 0.5], "accuracy": [0.5, 0.8]},
                            tmp_path / "train_only.png"), (1000, 400))


def test_history_of_a_lesion_run_plots_the_drawn_lesions_found(tmp_path: Path,
                                                                monkeypatch) -> None:
    import trainer.plots as plots

    lines = {}
    save = plots._save

    def capture(fig, path):
        lines.update({line.get_label(): list(line.get_ydata())
                      for ax in fig.axes for line in ax.get_lines()})
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    history = {"loss": [1.3, 0.8], "val_loss": [1.2, 0.9], "accuracy": [0.45, 0.7],
               "val_accuracy": [0.5, 0.66], "val_lesion_missed": [float("nan"), 0.25]}
    _check_png(plot_history(history, tmp_path / "h.png"), (1000, 400))
    found = lines["drawn lesions found (validation)"]
    assert np.isnan(found[0]) and found[1] == 0.75


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="4x4 for 4 labels"):
        plot_confusion_matrix(CM[:3, :3], LABELS, tmp_path / "cm.png")
    with pytest.raises(ValueError, match="no 'loss'"):
        plot_history({"learning_rate": [0.1]}, tmp_path / "h.png")
    assert not list(tmp_path.iterdir())
