"""Batches for Keras from the uint8 cache, scaled per batch with the device's own function.

A ``keras.utils.PyDataset`` works on every Keras backend. The training stream is endless
and each batch is a pure function of (seed, epoch, batch index): shuffling and
augmentation do not depend on how far the backend prefetched or on whether the run was
resumed, which is what makes a resumed run end with the same weights as an unbroken one.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from edge.preprocess import DEFAULT_SPEC, PreprocessSpec, scale
from trainer.augment import augment_batch


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
        augment: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(images) == 0:
            raise ValueError("no training images")
        self.images, self.labels = images, np.asarray(labels)
        self.num_classes, self.batch_size = num_classes, int(batch_size)
        self.seed, self.start_epoch, self.spec, self.augment = seed, start_epoch, spec, augment
        self.steps_per_epoch = math.ceil(len(images) / self.batch_size)
        self._order_epoch: int | None = None
        self._order = np.arange(len(images))

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def num_batches(self) -> None:
        return None  # endless: Keras keeps one iterator across epochs

    def order(self, epoch: int) -> np.ndarray:
        """The shuffled sample order of ``epoch`` (0-based), the same in every process."""
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))
            self._order_epoch = epoch
        return self._order

    def batch(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        picks = self.order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]
        x = scale(self.images[picks], self.spec)
        if self.augment:
            x = augment_batch(x, np.random.default_rng([self.seed, epoch, step, 1]))
        return x, one_hot(self.labels[picks], self.num_classes)

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
