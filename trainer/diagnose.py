"""``python -m trainer diagnose``: what happens inside a model in its first training steps.

Written to find out why the paper's DSConv-CBAM collapses to a constant output in epoch 1
(README: "Why dsconv_cbam collapses"), and kept because the same numbers tell whether any
new architecture or optimizer setting is about to do the same. After each training step it
measures, on a fixed probe batch:

- dead ReLU channels after each separable convolution (never positive on any probe image);
- the features entering the classifier: their per-image L1 sum (how much a uniform weight
  shift moves every Dense unit) and the dead Dense(128) units;
- how much the classifier still depends on the image: the spread of Dense(128)
  pre-activations across images divided by their mean magnitude;
- the Adam update of the classifier kernel: its size relative to the kernel, and how
  coherent its signs are within each unit (1.0 = every weight of a unit moved the same way);
- the predictions: how many distinct classes, and the mean top probability;
- for BatchNormalization models, the batch variance each BN layer normalizes by in training
  next to the moving variance it will use at test time;
- the logits: their mean spread (largest minus smallest) and the share of probe images whose
  softmax is saturated (every other class below 1e-7 of the top one): from probabilities,
  Keras' JAX backend clips such an image's loss and it gets no gradient at all.

``--augment`` draws the training batches like the trainer does; ``--loss logits`` trains the
logits view with a from-logits loss (what the trainer does), ``--loss probabilities`` the
softmax model with Keras' probability loss (what it did before; the collapse below).

BatchNormalization models are probed in training mode (batch statistics), as the optimizer
sees them.

Backend-neutral (``train_on_batch`` + numpy on weights); a few minutes on a CPU.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.durable import write_bytes_atomic
from edge.preprocess import DEFAULT_SPEC, PreprocessSpec, scale
from trainer.data import load_split, stratified_indices
from trainer.lesions import lesion_class

log = logging.getLogger(__name__)


def _relu_outputs(model: Any) -> list[Any]:
    """The post-ReLU tensor of each convolution block, in order."""
    import keras

    found = []
    for layer in model.layers:
        is_conv_relu = (isinstance(layer, keras.layers.SeparableConv2D)
                        and layer.get_config().get("activation") == "relu")
        if is_conv_relu or isinstance(layer, keras.layers.ReLU):
            found.append(layer)
    return found


def _classifier_input(model: Any) -> tuple[Any, Any]:
    """(layer feeding the first Dense, that Dense)."""
    import keras

    previous = None
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            return previous, layer
        previous = layer
    raise ValueError(f"{model.name} has no Dense layer")


def _coherence(delta: np.ndarray) -> float:
    """Per Dense unit, |sum of update signs| / number of weights that moved; averaged."""
    signs = np.sign(delta)
    moved = np.abs(signs).sum(axis=0)
    return float(np.mean(np.abs(signs.sum(axis=0))[moved > 0] / moved[moved > 0]))


def _conv_biases(model: Any) -> list[float]:
    """Mean bias of each separable convolution (0.0 for the bias-free BN blocks)."""
    import keras

    return [float(np.mean(layer.get_weights()[2])) if layer.use_bias else 0.0
            for layer in model.layers if isinstance(layer, keras.layers.SeparableConv2D)]


def _probe(probe_model: Any, x: np.ndarray, batch_norm: bool) -> list[np.ndarray]:
    """Probe outputs as training sees them: BatchNormalization on batch statistics.

    (In inference mode a BN model's first steps would show the lagging moving averages,
    not what the optimizer works on.) The moving statistics are restored afterwards.
    """
    import keras

    if not batch_norm:
        return probe_model.predict(x, verbose=0, batch_size=len(x))
    saved = [keras.ops.convert_to_numpy(v) for v in probe_model.non_trainable_variables]
    outputs = [keras.ops.convert_to_numpy(o) for o in probe_model(x, training=True)]
    for variable, value in zip(probe_model.non_trainable_variables, saved, strict=True):
        variable.assign(value)
    return outputs


SATURATED = 1e-7  # Keras' epsilon: the clip of its probability cross-entropy


def _logit_stats(logits: np.ndarray | None) -> dict[str, Any]:
    if logits is None:
        return {"logit_spread": None, "saturated_share": None}
    z = np.asarray(logits, dtype=np.float64)
    rest = np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1) - 1.0  # other classes / top
    return {"logit_spread": float(np.mean(z.max(axis=1) - z.min(axis=1))),
            "saturated_share": float(np.mean(rest < SATURATED))}


def _measure(probe_model: Any, x: np.ndarray, y: np.ndarray, dense: Any,
             n_blocks: int, batch_norm: bool, has_logits: bool = False) -> dict[str, Any]:
    outputs = _probe(probe_model, x, batch_norm)
    logits = outputs.pop() if has_logits else None
    blocks, features, probs = outputs[:n_blocks], outputs[n_blocks], outputs[n_blocks + 1]
    bn_inputs = outputs[n_blocks + 2:]
    kernel, bias = dense.get_weights()
    pre = features.reshape(len(x), -1) @ kernel + bias  # Dense(128) pre-activation
    spread = float(np.mean(pre.std(axis=0)) / (np.mean(np.abs(pre.mean(axis=0))) + 1e-12))
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))
    return {
        "probe_loss": loss,
        "probe_accuracy": float(np.mean(probs.argmax(1) == y)),
        "dead_channels": [float(np.mean(np.all(b.reshape(-1, b.shape[-1]) <= 0, axis=0)))
                          for b in blocks],
        "mean_activation": [float(np.mean(b)) for b in blocks],
        # what BatchNormalization normalizes by in training, per layer (mean over channels)
        "bn_batch_variance": [float(np.mean(v.reshape(-1, v.shape[-1]).var(axis=0)))
                              for v in bn_inputs],
        "feature_l1": float(np.mean(np.abs(features.reshape(len(x), -1)).sum(axis=1))),
        "dead_dense_units": float(np.mean(np.all(pre <= 0, axis=0))),
        "dense_input_dependence": spread,
        "distinct_predictions": int(len(np.unique(probs.argmax(1)))),
        "mean_top_probability": float(probs.max(axis=1).mean()),
        **_logit_stats(logits),
    }


def diagnose(arch: str, data_dir: str, *, options: dict[str, Any] | None = None,
             spec: PreprocessSpec = DEFAULT_SPEC, limit: int = 256, steps: int = 12,
             batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0,
             probe_size: int = 32, out: str | None = None, augment: str = "none",
             loss: str = "logits") -> dict[str, Any]:
    """Train ``steps`` Adam steps (paper betas) on a --limit subset; print and return stats."""
    import keras

    from trainer.batches import TrainingBatches, one_hot
    from trainer.logits import logits_view
    from trainer.losses import training_loss
    from trainer.models import build_model
    from trainer.xla import avoid_cpu_xla, jit_compile_setting

    if loss not in ("logits", "probabilities"):
        raise ValueError(f"loss must be 'logits' or 'probabilities', got {loss!r}")

    data = load_split(data_dir, "Training", spec, limit=limit, seed=seed)
    probe_idx = stratified_indices(data.labels, probe_size, seed + 1)
    probe_x = scale(data.images[probe_idx], spec)
    probe_y = data.labels[probe_idx]
    keras.utils.set_random_seed(seed)
    model = build_model(arch, input_shape=spec.shape, num_classes=len(data.class_names),
                        **(options or {}))
    view = logits_view(model)
    fitted = view if (view is not None and loss == "logits") else model
    fitted.compile(optimizer=keras.optimizers.Adam(learning_rate, beta_1=0.9, beta_2=0.99),
                   loss=training_loss(augment, 0.0, from_logits=fitted is view),
                   metrics=["accuracy"], jit_compile=jit_compile_setting())
    relus = _relu_outputs(model)
    feeder, dense = _classifier_input(model)
    batch_norm = any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    bn_layers = [layer for layer in model.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
    probe_model = avoid_cpu_xla(keras.Model(
        model.inputs[0], [r.output for r in relus] + [feeder.output, model.output]
        + [layer.input for layer in bn_layers] + ([view.outputs[0]] if view is not None else [])))
    stream = TrainingBatches(data.images, data.labels, len(data.class_names), batch_size,
                             seed=seed, spec=spec, augment=augment,
                             negative_class=lesion_class(augment, data.class_names))
    rows = []
    kernel = dense.get_weights()[0]
    started = time.perf_counter()
    for step in range(steps + 1):
        row: dict[str, Any] = {"step": step}
        if step > 0:
            x, y = stream[step - 1]
            batch_loss, acc = fitted.train_on_batch(x, y)[:2]
            new_kernel = dense.get_weights()[0]
            delta = new_kernel - kernel
            row.update(
                batch_loss=float(batch_loss),
                dense_update_relative=float(np.linalg.norm(delta) / np.linalg.norm(kernel)),
                dense_update_sign_coherence=_coherence(delta),
            )
            kernel = new_kernel
        row.update(_measure(probe_model, probe_x, probe_y, dense, len(relus), batch_norm,
                            view is not None))
        row["conv_bias_mean"] = _conv_biases(model)
        # what it will divide by at test time: the moving average
        row["bn_moving_variance"] = [
            float(np.mean(keras.ops.convert_to_numpy(layer.moving_variance)))
            for layer in bn_layers]
        rows.append(row)
        _print_row(row, len(relus), header=step == 0)
    report = {"arch": arch, "options": options or {}, "limit": limit, "batch_size": batch_size,
              "learning_rate": learning_rate, "seed": seed, "probe_size": len(probe_y),
              "augment": augment, "loss": loss,
              "backend": keras.backend.backend(), "parameters": model.count_params(),
              "seconds": round(time.perf_counter() - started, 1), "steps": rows,
              "probe_labels": one_hot(probe_y, len(data.class_names)).sum(0).tolist()}
    if out:
        write_bytes_atomic(Path(out), json.dumps(report, indent=2).encode("utf-8"))
    return report


def _print_row(row: dict[str, Any], n_blocks: int, header: bool) -> None:
    if header:
        dead = " ".join(f"dead{i + 1}" for i in range(n_blocks))
        act = " ".join(f"act{i + 1}    " for i in range(n_blocks))
        print(f"step  loss    acc   {dead}  {act}featL1   deadFC  dependence  "
              f"classes  top_p  dFC/FC  coherence  batchloss  logitspread  saturated",
              flush=True)
    dead = " ".join(f"{d:5.2f}" for d in row["dead_channels"])
    act = " ".join(f"{a:8.1e}" for a in row["mean_activation"])
    update = (f"{row['dense_update_relative']:6.3f}  {row['dense_update_sign_coherence']:6.3f}"
              if "dense_update_relative" in row else "     -       -")
    batch = f"{row['batch_loss']:9.3f}" if "batch_loss" in row else "        -"
    spread = ("          -" if row["logit_spread"] is None else f"{row['logit_spread']:11.1f}")
    saturated = ("        -" if row["saturated_share"] is None
                 else f"{row['saturated_share']:9.2f}")
    print(f"{row['step']:4d}  {row['probe_loss']:6.3f}  {row['probe_accuracy']:4.2f}  "
          f"{dead}  {act}  "
          f"{row['feature_l1']:8.1f}  {row['dead_dense_units']:5.2f}  "
          f"{row['dense_input_dependence']:10.3f}  {row['distinct_predictions']:7d}  "
          f"{row['mean_top_probability']:5.2f}  {update}  {batch}  {spread}  {saturated}",
          flush=True)
