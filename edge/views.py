"""Test-time views: one answer from a picture and transformed copies of it.

A model's manifest may name a ``test_time`` procedure (format 3). ``mirror-mean`` averages
the probabilities for the model input and for its left-right mirror image: a brain slice
and its mirror show the same disease, the models are trained with left-right flips, and
the mean of the two answers is steadier than either (docs/results.md, "A picture and its
mirror image"). It costs one more inference per picture. ``none`` is one view, as before.

The device, the converter's gate and the trainer's evaluation all call ``with_views``, so a
model is measured the way the agent runs it. NumPy only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .manifest import TEST_TIMES

NONE, MIRROR_MEAN = TEST_TIMES
DESCRIPTIONS = {NONE: "the picture as it is",
                MIRROR_MEAN: "the mean of the answers for the picture and its left-right mirror "
                             "image"}

Predict = Callable[[np.ndarray], np.ndarray]


def _known(test_time: str) -> None:
    if test_time not in TEST_TIMES:
        raise ValueError(f"unknown test-time procedure {test_time!r}; "
                         f"choose one of {', '.join(TEST_TIMES)}")


def views(pictures: np.ndarray, test_time: str) -> list[np.ndarray]:
    """The views of one picture (H, W, C) or a batch (N, H, W, C), in order: as given first."""
    _known(test_time)
    if test_time == MIRROR_MEAN:
        return [pictures, np.ascontiguousarray(pictures[..., ::-1, :])]
    return [pictures]


def with_views(predict: Predict, test_time: str) -> Predict:
    """``predict`` (pictures -> probabilities) averaged over ``test_time``'s views."""
    _known(test_time)  # an unknown name fails here, not at the first call
    if test_time == NONE:
        return predict

    def predict_views(pictures: np.ndarray) -> np.ndarray:
        answers = [np.asarray(predict(v), dtype=np.float64) for v in views(pictures, test_time)]
        return np.mean(answers, axis=0)

    return predict_views
