"""Train on logits, ship probabilities: the two views of one network.

Every architecture ends in Dense(classes) named ``logits`` -> softmax named ``predictions``
(``trainer.models.classifier_output``). Training fits the *logits view* (the same layers
and weights, output before the softmax) with a from-logits cross-entropy; validation,
``model.keras`` and the device use the softmax model.

Why: Keras computes cross-entropy from probabilities by clipping them to [1e-7, 1 - 1e-7].
Its TensorFlow backend quietly recovers the logits of a softmax layer, its JAX backend does
not, so on JAX a network whose softmax saturates in its first steps gets exactly zero
gradient and never moves again (docs/results.md: the augmented BN run, loss 12.007 =
16.118 x its error rate for 35 epochs). From logits the gradient is (p - y), never zero.
"""

from __future__ import annotations

from typing import Any

LOGITS_LAYER = "logits"
OUTPUT_LAYER = "predictions"
VIEW_SUFFIX = "_logits"


def logits_view(model: Any) -> Any | None:
    """The network up to its logits, sharing layers and weights; None for a model built
    before the head was split (it then trains on probabilities, as it always did)."""
    import keras

    try:
        layer = model.get_layer(LOGITS_LAYER)
    except ValueError:
        return None
    return keras.Model(model.inputs, layer.output, name=model.name + VIEW_SUFFIX)


def is_logits_view(model: Any) -> bool:
    """True for a checkpoint saved from the logits view (its output layer is ``logits``)."""
    return model.name.endswith(VIEW_SUFFIX) and bool(model.layers) and (
        model.layers[-1].name == LOGITS_LAYER)


def with_softmax(view: Any) -> Any:
    """The softmax model of a logits view: what is validated, saved and shipped."""
    import keras

    outputs = keras.layers.Activation("softmax", name=OUTPUT_LAYER)(view.outputs[0])
    name = view.name[:-len(VIEW_SUFFIX)] if view.name.endswith(VIEW_SUFFIX) else view.name
    return keras.Model(view.inputs, outputs, name=name)
