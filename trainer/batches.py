"""Batches for Keras from the uint8 cache, scaled per batch with the device's own function.

A ``keras.utils.PyDataset`` works on every Keras backend. The training stream is endless
and each batch is a pure function of (seed, epoch, batch index): shuffling and
augmentation do not depend on how far the backend prefetched or on whether the run was
resumed, which is what makes a resumed run end with the same weights as an unbroken one.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import keras
import numpy as np

from edge.preprocess import DEFAULT_SPEC, PreprocessSpec, scale
from trainer.augment import LESION_POLICIES, STRONG_POLICIES, augment_batch, strong_batch
from trainer.lesions import paint_lesions
from trainer.recipes import AUGMENTATIONS as AUGMENT_POLICIES


def augment_policy(value: bool | str | None) -> str:
    """'none', 'light' or 'strong'; True/False are what older run.json files say."""
    if value is True:
        return "light"
    if value in (False, None):
        return "none"
    if value not in AUGMENT_POLICIES:
        raise ValueError(f"augmentation must be one of {', '.join(AUGMENT_POLICIES)}, "
                         f"got {value!r}")
    return str(value)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


class TrainingBatches(keras.utils.PyDataset):
    """Endless shuffled batches; pass ``steps_per_epoch=len(self)`` and ``shuffle=False``."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        batch_size: int,
        *,
        seed: int,
        start_epoch: int = 0,
        spec: PreprocessSpec = DEFAULT_SPEC,
        augment: bool | str = False,
        weights: np.ndarray | None = None,
        negative_class: int | None = None,
        **kwargs: Any,
    ) -> None:
        """``negative_class``: the index of "no tumour", which the ``lesion`` policy paints
        synthetic lesions into (``trainer.lesions``); required by that policy only."""
        super().__init__(**kwargs)  # workers=N: batches built in N threads, in order
        if len(images) == 0:
            raise ValueError("no training images")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (len(images),) or not np.all(weights > 0):
                raise ValueError(f"weights must be {len(images)} positive numbers, one per image")
        self.weights = weights
        self.images, self.labels = images, np.asarray(labels)
        self.num_classes, self.batch_size = num_classes, int(batch_size)
        self.seed, self.start_epoch, self.spec = seed, start_epoch, spec
        self.augment = augment_policy(augment)
        if self.augment in LESION_POLICIES and not (
                negative_class is not None and 0 <= negative_class < num_classes):
            raise ValueError(f"the {self.augment!r} augmentation needs the index of the "
                             f"no-tumour class, got {negative_class!r}")
        self.negative_class = negative_class
        self.steps_per_epoch = math.ceil(len(images) / self.batch_size)
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # worker threads may build batches of two epochs

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def num_batches(self) -> None:
        return None  # endless: Keras keeps one iterator across epochs

    def order(self, epoch: int) -> np.ndarray:
        """The shuffled sample order of ``epoch`` (0-based), the same in every process.

        With ``weights``, an epoch is as many draws with replacement, each image drawn with
        probability proportional to its weight (a weight of 3: about three times an epoch).
        """
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                rng = np.random.default_rng([self.seed, epoch])
                n = len(self.images)
                if self.weights is None:
                    order = rng.permutation(n)
                else:
                    order = rng.choice(n, size=n, p=self.weights / self.weights.sum())
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = order
            return order

    def batch(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        picks = self.order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, epoch, step, 1])
        images, targets = self.images[picks], one_hot(self.labels[picks], self.num_classes)
        if self.augment in LESION_POLICIES:  # its own generator: the strong policy's draws
            # stay those of a run without lesions
            images, targets = paint_lesions(images, targets, int(self.negative_class),
                                            np.random.default_rng([self.seed, epoch, step, 2]),
                                            target=LESION_POLICIES[self.augment])
        if self.augment in STRONG_POLICIES:  # on the 8-bit picture: warps, re-encoding,
            # then scaled to [0, 1] (pixel / 255)
            x = strong_batch(images, rng, **STRONG_POLICIES[self.augment])
            if not np.isclose(self.spec.scale * 255.0, 1.0) or self.spec.offset:
                x = x * np.float32(255.0 * self.spec.scale) + np.float32(self.spec.offset)
        else:
            x = scale(images, self.spec)
            if self.augment == "light":
                x = augment_batch(x, rng)
        return x, targets

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        epoch = self.start_epoch + index // self.steps_per_epoch
        return self.batch(epoch, index % self.steps_per_epoch)


class EvaluationBatches(keras.utils.PyDataset):
    """Batches in folder order, no shuffling; labels optional (prediction only)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        num_classes: int,
        batch_size: int,
        *,
        spec: PreprocessSpec = DEFAULT_SPEC,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.images, self.labels = images, labels
        self.num_classes, self.batch_size, self.spec = num_classes, int(batch_size), spec

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> Any:
        picks = slice(index * self.batch_size, (index + 1) * self.batch_size)
        x = scale(self.images[picks], self.spec)
        if self.labels is None:
            return (x,)
        return x, one_hot(self.labels[picks], self.num_classes)
