"""BatchNormalization recalibration: replace moving statistics by exact training averages.

With Keras' default momentum 0.99 the moving variance of a fast-changing network lagged
the real one by orders of magnitude, and test-time predictions collapsed to one class.
Momentum 0.9 (our default) fixes it during training; this pass fixes any trained model
afterwards: it resets each trainable BatchNormalization layer's moving mean/variance and
averages the batch statistics of ``batches`` forward passes (no weight changes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import keras
import numpy as np

log = logging.getLogger(__name__)


def batchnorm_layers(model: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """Every trainable BatchNormalization layer, nested models included."""
    found = []
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return found


def recalibrate_batchnorm(model: keras.Model, batches: Iterable[np.ndarray]) -> int:
    """Recompute moving statistics as the average over ``batches``; returns batches used."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, dtype="float32"))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, dtype="float32"))
    used = 0
    try:
        for x in batches:
            used += 1
            for layer in layers:  # moving = (k-1)/k * moving + 1/k * batch: a running mean
                layer.momentum = (used - 1) / used
            model(x, training=True)
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
    log.info("recalibrated %d BatchNormalization layer(s) on %d batch(es)", len(layers), used)
    return used
