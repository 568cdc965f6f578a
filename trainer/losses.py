"""The training loss: categorical cross-entropy, and its set-valued form for "one of these".

A target row is normally one-hot: the picture's class. The ``lesion-any`` augmentation
(``trainer.lesions``) also makes rows that name a *set* of classes, each 1: a no-tumour
slice with a drawn lesion is "one of the tumour classes, which one unknown". The right
likelihood for such a label is the probability of the set, so the loss is

    -log sum_{c in S} p_c

(the partial-label, or "superset", likelihood). For a one-hot row it is the ordinary
cross-entropy. It asks for "not no-tumour" and nothing more: a confident glioma answer on a
drawn lesion costs nothing. The ``lesion`` augmentation's target, 1/3 on each tumour class
under the ordinary cross-entropy, asks for more: an answer spread evenly over the three,
and charges a confident single-class answer almost as much as a "no tumour" one (with p =
0.9, 0.03, 0.04, 0.03: 2.4 nats, against 3.0 for a 0.85 "no tumour"), so it teaches the
network to hedge, and learning the lesion barely pays.

Label smoothing ``e`` is a mixture with the uniform target, as in Keras:

    (1 - e) * (-log sum_{c in S} p_c) + e * mean_c(-log p_c)

which for a one-hot row is exactly ``keras.losses.CategoricalCrossentropy(label_smoothing=e)``
(tested). Backend-neutral: ``keras.ops`` only.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# The loss names run.json records ("loss" and "loss_settings.name").
CROSSENTROPY = "categorical_crossentropy"
SET_CROSSENTROPY = "set_crossentropy"


@keras.saving.register_keras_serializable(package="neuroedge")
class SetCrossentropy(keras.losses.Loss):
    """``y_true``: rows of 0/1, the classes each picture may be (one-hot: an ordinary label);
    ``y_pred``: logits (``from_logits``) or probabilities."""

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0,
                 name: str = SET_CROSSENTROPY, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.from_logits = bool(from_logits)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, y_pred.dtype)
        if self.from_logits:
            log_p = ops.log_softmax(y_pred, axis=-1)
        else:
            p = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
            log_p = ops.log(ops.clip(p, keras.config.epsilon(), 1.0))
        # log of the set's probability: logsumexp over the set's members only (the others
        # pushed to a very large negative number, not -inf: no NaN in the gradient)
        member = y_true > 0.5
        in_set = ops.where(member, log_p, ops.full_like(log_p, -1e9))
        loss = -ops.logsumexp(in_set, axis=-1)
        if self.label_smoothing:
            loss = ((1.0 - self.label_smoothing) * loss
                    - self.label_smoothing * ops.mean(log_p, axis=-1))
        return loss

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(from_logits=self.from_logits, label_smoothing=self.label_smoothing)
        return config


def loss_name(augment: str) -> str:
    """The loss a run with this augmentation policy trains with."""
    from trainer.augment import LESION_POLICIES

    return SET_CROSSENTROPY if LESION_POLICIES.get(augment) == "any" else CROSSENTROPY


def training_loss(augment: str, label_smoothing: float, from_logits: bool) -> keras.losses.Loss:
    """The Keras loss for a run with this augmentation policy."""
    if loss_name(augment) == SET_CROSSENTROPY:
        return SetCrossentropy(from_logits=from_logits, label_smoothing=label_smoothing)
    return keras.losses.CategoricalCrossentropy(from_logits=from_logits,
                                                label_smoothing=label_smoothing)
