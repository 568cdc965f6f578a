"""Faster TensorFlow-on-CPU kernels for training, with the model's mathematics unchanged.

Two of the paper model's operations have slow TensorFlow CPU implementations (measured in
docs/performance-training.md):

- the gradient of the 2x2 max-pool (``MaxPoolGrad``), the most expensive single op of a
  training step. :func:`max_pool` keeps TensorFlow's forward op and computes the same
  gradient from four masks: the whole upstream gradient goes to the FIRST maximum of each
  window in scan order, as ``MaxPoolGrad`` does, so the result is bit-identical;
- a separable convolution over few input channels (the first layer sees RGB):
  depthwise 3x3 then pointwise 1x1 equals one ordinary 3x3 convolution whose kernel is
  ``depthwise[..., c] * pointwise[c, :]``, which oneDNN runs far better than TensorFlow's
  depthwise kernel over 3 channels. Deeper layers keep the depthwise op and run the
  pointwise step as a matrix product. Same sums, another order: results differ by float
  rounding only (about 1e-6 relative).

Nothing is stored in the model: the layers stay Keras' ``MaxPooling2D`` and
``SeparableConv2D`` with their weights, names and serialization, and a model trained with
these kernels loads and predicts anywhere. :func:`cpu_kernels` swaps the Keras TensorFlow
backend's two functions only while training runs, and only for TensorFlow without a GPU.

Opt-in (``python -m trainer train --cpu-kernels``): they replace private Keras backend
functions, and at the paper's batch of 64 their measured gain is small (see the doc).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

#: separable convolutions over at most this many (input x multiplier) channels are composed
COMPOSE_MAX_CHANNELS = 4


def wanted() -> bool:
    """True where these kernels apply: the TensorFlow backend without a GPU (no XLA)."""
    import keras

    from trainer.xla import jit_compile_setting

    return keras.backend.backend() == "tensorflow" and jit_compile_setting() is False


def _first_max_grad(x: Any, y: Any, dy: Any) -> Any:
    """MaxPoolGrad for 2x2/stride 2: dy goes to the first maximum of each window."""
    import tensorflow as tf

    _, h, w, c = x.shape
    windows = tf.reshape(x, (-1, h // 2, 2, w // 2, 2, c))
    equal = tf.equal(windows, y[:, :, None, :, None, :])
    taken = None
    parts = []
    for row in (0, 1):
        for col in (0, 1):
            hit = equal[:, :, row, :, col]
            first = hit if taken is None else tf.logical_and(hit, tf.logical_not(taken))
            taken = hit if taken is None else tf.logical_or(taken, hit)
            parts.append(tf.where(first, dy, tf.zeros_like(dy)))
    rows = [tf.stack(parts[0:2], axis=3), tf.stack(parts[2:4], axis=3)]
    return tf.reshape(tf.stack(rows, axis=2), tf.shape(x))


def _pool2x2(x: Any) -> Any:
    import tensorflow as tf

    @tf.custom_gradient
    def pool(inputs: Any) -> Any:
        outputs = tf.nn.max_pool2d(inputs, 2, 2, "VALID")
        return outputs, lambda dy: _first_max_grad(inputs, outputs, dy)

    return pool(x)


def _pair(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _channels_last(data_format: Any) -> bool:
    import keras

    return (data_format or keras.config.image_data_format()).lower() == "channels_last"


def max_pool(inputs: Any, pool_size: Any, strides: Any = None, padding: str = "valid",
             data_format: Any = None, *, _stock: Any = None) -> Any:
    """Keras' ``max_pool`` signature; 2x2/stride-2 'valid' pools on even sizes take the
    mask gradient, everything else the stock function."""
    strides = pool_size if strides is None else strides
    shape = tuple(inputs.shape)
    if (_pair(pool_size) == (2, 2) and _pair(strides) == (2, 2) and padding.lower() == "valid"
            and _channels_last(data_format) and len(shape) == 4
            and None not in shape[1:] and shape[1] % 2 == 0 and shape[2] % 2 == 0):
        return _pool2x2(inputs)
    return _stock(inputs, pool_size, strides, padding, data_format)


def separable_conv(inputs: Any, depthwise_kernel: Any, pointwise_kernel: Any, strides: Any = 1,
                   padding: str = "valid", data_format: Any = None, dilation_rate: Any = 1,
                   *, _stock: Any = None) -> Any:
    """Keras' ``separable_conv`` signature: composed for few channels, else depthwise then
    a matrix product; strided, dilated or channels-first calls take the stock function."""
    import tensorflow as tf

    if not (_pair(strides) == (1, 1) and _pair(dilation_rate) == (1, 1)
            and len(inputs.shape) == 4 and _channels_last(data_format)):
        return _stock(inputs, depthwise_kernel, pointwise_kernel, strides, padding,
                      data_format, dilation_rate)
    depthwise = tf.convert_to_tensor(depthwise_kernel)
    pointwise = tf.convert_to_tensor(pointwise_kernel)
    kh, kw, channels, multiplier = depthwise.shape
    filters = pointwise.shape[-1]
    if channels * multiplier <= COMPOSE_MAX_CHANNELS:
        kernel = tf.reduce_sum(
            tf.reshape(depthwise, (kh, kw, channels, multiplier, 1))
            * tf.reshape(pointwise, (1, 1, channels, multiplier, filters)), axis=3)
        return tf.nn.conv2d(inputs, kernel, 1, padding.upper())
    mid = tf.nn.depthwise_conv2d(inputs, depthwise, [1, 1, 1, 1], padding.upper())
    size = tf.shape(mid)
    flat = tf.matmul(tf.reshape(mid, (-1, channels * multiplier)),
                     tf.reshape(pointwise, (channels * multiplier, filters)))
    return tf.reshape(flat, tf.concat([size[:3], [filters]], 0))


KERNELS = ("max_pool", "separable_conv")


@contextlib.contextmanager
def cpu_kernels(enabled: bool = True, only: tuple[str, ...] = KERNELS) -> Iterator[bool]:
    """Use the kernels above inside the block (yields whether they are active); ``only``
    picks some of them (to measure each alone).

    Keras looks its backend functions up at trace time, so the block must enclose the
    first training step (``fit``), where the step function is traced.
    """
    if not enabled or not wanted():
        if enabled:
            log.info("CPU kernels not used: they apply to TensorFlow without a GPU only")
        yield False
        return
    import functools

    from keras.src import backend as keras_backend  # the active backend's ops

    nn = keras_backend.nn
    replacements = {"max_pool": max_pool, "separable_conv": separable_conv}
    stock = {name: getattr(nn, name) for name in KERNELS}
    for name in only:
        setattr(nn, name, functools.partial(replacements[name], _stock=stock[name]))
    log.debug("TensorFlow CPU training kernels on: %s", ", ".join(only))
    try:
        yield True
    finally:
        for name, function in stock.items():
            setattr(nn, name, function)
