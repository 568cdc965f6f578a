"""CBAM attention (Woo et al., 2018) as small, registered Keras layers.

Registered under the ``neuroedge`` package, so a saved ``.keras`` file that contains them
loads with plain ``keras.saving.load_model`` once ``trainer.layers`` is imported (the
trainer and converters import it for you).

Written with ``keras.ops`` only: the same layers run on the TensorFlow and JAX backends.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

_PACKAGE = "neuroedge"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ChannelAttention(keras.layers.Layer):
    """Reweights channels: sigmoid(MLP(avg-pool) + MLP(max-pool)), one shared MLP C->C/r->C.

    Both pooled descriptors go through the MLP in ONE call (stacked on a new axis, then
    summed). That is mathematically the same as two calls, but the converted int8 model
    then has one fully-connected layer with one quantization range per weight; two calls
    produced an extreme rescale factor that TFLite's XNNPACK delegate refused to prepare.
    """

    def __init__(self, ratio: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(ratio) < 1:
            raise ValueError(f"ChannelAttention ratio must be >= 1, got {ratio!r}")
        self.ratio = int(ratio)

    def build(self, input_shape: tuple) -> None:
        channels = int(input_shape[-1])
        hidden = max(1, channels // self.ratio)
        self.hidden = keras.layers.Dense(hidden, activation="relu", name="mlp_hidden")
        self.expand = keras.layers.Dense(channels, name="mlp_out")
        self.hidden.build((None, 2, channels))
        self.expand.build((None, 2, hidden))

    def call(self, inputs: Any) -> Any:
        avg = ops.mean(inputs, axis=(1, 2))
        peak = ops.max(inputs, axis=(1, 2))
        descriptors = ops.stack([avg, peak], axis=1)  # (N, 2, C): one MLP call for both
        weights = ops.sigmoid(ops.sum(self.expand(self.hidden(descriptors)), axis=1))
        return inputs * weights[:, None, None, :]

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "ratio": self.ratio}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SpatialAttention(keras.layers.Layer):
    """Reweights positions: sigmoid(Conv k x k([mean over channels, max over channels]))."""

    def __init__(self, kernel_size: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(kernel_size) < 1:
            raise ValueError(f"SpatialAttention kernel_size must be >= 1, got {kernel_size!r}")
        self.kernel_size = int(kernel_size)
        self.conv = keras.layers.Conv2D(
            1, self.kernel_size, padding="same", activation="sigmoid", name="conv"
        )

    def build(self, input_shape: tuple) -> None:
        self.conv.build((*tuple(input_shape[:-1]), 2))

    def call(self, inputs: Any) -> Any:
        descriptors = ops.concatenate(
            [ops.mean(inputs, axis=-1, keepdims=True), ops.max(inputs, axis=-1, keepdims=True)],
            axis=-1,
        )
        return inputs * self.conv(descriptors)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CBAM(keras.layers.Layer):
    """Convolutional Block Attention Module: channel attention, then spatial attention."""

    def __init__(self, ratio: int = 16, kernel_size: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channel = ChannelAttention(ratio, name="channel_attention")
        self.spatial = SpatialAttention(kernel_size, name="spatial_attention")

    @property
    def ratio(self) -> int:
        return self.channel.ratio

    @property
    def kernel_size(self) -> int:
        return self.spatial.kernel_size

    def build(self, input_shape: tuple) -> None:
        for part in (self.channel, self.spatial):
            if not part.built:
                part.build(input_shape)

    def call(self, inputs: Any) -> Any:
        return self.spatial(self.channel(inputs))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "ratio": self.ratio, "kernel_size": self.kernel_size}
