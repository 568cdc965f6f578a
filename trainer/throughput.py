"""Training throughput: images per second of real optimiser steps, on whatever Keras backend.

Steps run on fixed random batches already in memory, so the figure is the model's and the
backend's (forward, backward, Adam update), not the data pipeline's. The first steps
compile (JAX, XLA) or trace (TensorFlow) and are timed apart as "warm-up".

``compare`` times several variants of the same model in ONE process, one step of each in
turn, so that a machine shared with other work slows all of them alike and their ratio
stays meaningful (docs/performance-training.md). Variants:

- ``stock``: Keras' own kernels, what ``python -m trainer train`` uses by default;
- ``cpu-kernels``: the equivalent kernels of ``trainer.cpu_kernels`` (``train
  --cpu-kernels``; TensorFlow without a GPU only, elsewhere the same as ``stock``);
- ``pool-kernel`` / ``conv-kernel``: only one of the two replacement kernels, to
  measure each alone;
- ``mixed-bf16``: Keras' ``mixed_bfloat16`` policy with Keras' kernels: a change of
  arithmetic, measured for the record, never used by the trainer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

VARIANTS = ("stock", "cpu-kernels", "pool-kernel", "conv-kernel", "mixed-bf16")
_ONLY = {"pool-kernel": ("max_pool",), "conv-kernel": ("separable_conv",)}


def _compiled_model(arch: str, image_size: int, seed: int, policy: str,
                    options: dict[str, Any]) -> Any:
    import keras

    from trainer.losses import CROSSENTROPY
    from trainer.models import build_model
    from trainer.xla import jit_compile_setting

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(seed)
        model = build_model(arch, input_shape=(image_size, image_size, 3), **options)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, beta_1=0.9, beta_2=0.99), loss=CROSSENTROPY,
                  metrics=["accuracy"], jit_compile=jit_compile_setting())
    return model


def _batch(batch_size: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from trainer.batches import one_hot

    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
    return x, one_hot(rng.integers(0, 4, batch_size), 4)


def _timed_step(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    loss = model.train_on_batch(x, y)  # returns host values: the step has finished
    return time.perf_counter() - wall, time.process_time() - cpu, loss


def _record(arch: str, variant: str, batch_size: int, warm: float, walls: list[float],
            cpus: list[float], loss: Any, kernels: bool) -> dict[str, Any]:
    import keras

    step = float(np.median(walls))
    return {"arch": arch, "variant": variant, "backend": keras.backend.backend(),
            "batch_size": batch_size, "steps": len(walls), "cpu_kernels": kernels,
            "warmup_seconds": round(warm, 2), "median_step_seconds": round(step, 6),
            "best_step_seconds": round(min(walls), 6),
            "cpu_seconds_per_step": round(float(np.median(cpus)), 4),
            "images_per_second": round(batch_size / step, 1),
            "best_images_per_second": round(batch_size / min(walls), 1),
            "devices": [str(d) for d in keras.distribution.list_devices()],
            "final_loss": float(np.asarray(loss).ravel()[0])}


def compare(arch: str, variants: tuple[str, ...] = ("stock", "cpu-kernels"), *,
            batch_size: int = 64, steps: int = 20, warmup: int = 3, image_size: int = 224,
            seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """Time ``variants`` of ``arch`` interleaved (one step of each in turn); one record each,
    with ``speedup`` = the first variant's median step time / this one's."""
    from trainer.cpu_kernels import cpu_kernels

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or len(set(variants)) != len(variants):
        raise ValueError(f"variants must be distinct names from {', '.join(VARIANTS)}, "
                         f"got {', '.join(variants) or 'none'}")
    x, y = _batch(batch_size, image_size, seed)
    models, kernels = {}, {}
    warm: dict[str, float] = {}
    for variant in variants:
        policy = "mixed_bfloat16" if variant == "mixed-bf16" else "float32"
        model = _compiled_model(arch, image_size, seed, policy, options)
        started = time.perf_counter()
        # Keras traces the step function on the first call: the kernels must be in place
        # then; later calls reuse the traced graph.
        wanted = variant in ("cpu-kernels", *_ONLY)
        with cpu_kernels(wanted, **({"only": _ONLY[variant]} if variant in _ONLY else {})
                         ) as active:
            for _ in range(max(1, warmup)):
                model.train_on_batch(x, y)
        warm[variant], models[variant], kernels[variant] = (
            time.perf_counter() - started, model, active)
    walls: dict[str, list[float]] = {v: [] for v in variants}
    cpus: dict[str, list[float]] = {v: [] for v in variants}
    losses: dict[str, Any] = {}
    for _ in range(steps):
        for variant in variants:
            wall, cpu, losses[variant] = _timed_step(models[variant], x, y)
            walls[variant].append(wall)
            cpus[variant].append(cpu)
    records = [_record(arch, v, batch_size, warm[v], walls[v], cpus[v], losses[v], kernels[v])
               for v in variants]
    for record in records:
        record["speedup"] = round(records[0]["median_step_seconds"]
                                  / record["median_step_seconds"], 3)
        log.info("%s %s on %s: %.1f images/s (median step %.3f s, x%.2f)", arch,
                 record["variant"], record["backend"], record["images_per_second"],
                 record["median_step_seconds"], record["speedup"])
    return records


def measure(arch: str, *, batch_size: int = 64, steps: int = 20, warmup: int = 3,
            image_size: int = 224, seed: int = 0, cpu_kernels: bool = False,
            **options: Any) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` as ``train`` runs them (with
    ``cpu_kernels``: as ``train --cpu-kernels``); returns a JSON-ready record."""
    from trainer.cpu_kernels import cpu_kernels as kernels

    variant = "cpu-kernels" if cpu_kernels else "stock"
    model = _compiled_model(arch, image_size, seed, "float32", options)
    x, y = _batch(batch_size, image_size, seed)
    started = time.perf_counter()
    with kernels(cpu_kernels) as active:
        loss = None
        for _ in range(warmup):
            loss = model.train_on_batch(x, y)
        warm = time.perf_counter() - started
        walls, cpus = [], []
        for _ in range(steps):
            wall, cpu, loss = _timed_step(model, x, y)
            walls.append(wall)
            cpus.append(cpu)
    record = _record(arch, variant, batch_size, warm, walls, cpus, loss, active)
    log.info("%s on %s: %.1f images/s (median step %.3f s, warm-up %.1f s)", arch,
             record["backend"], record["images_per_second"], record["median_step_seconds"],
             warm)
    return record


def profile_layers(arch: str, *, batch_size: int = 16, repeats: int = 3, image_size: int = 224,
                   seed: int = 0, cpu_kernels: bool = False,
                   **options: Any) -> list[dict[str, Any]]:
    """Forward and forward+backward time of each layer alone (TensorFlow backend), fastest
    of ``repeats``: where a training step's time goes, layer by layer. The optimizer update
    is not included."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError("the per-layer profile needs the TensorFlow backend "
                         "(KERAS_BACKEND=tensorflow)")
    import tensorflow as tf

    from trainer.cpu_kernels import cpu_kernels as kernels
    from trainer.models import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(arch, input_shape=(image_size, image_size, 3), **options)
    rng = np.random.default_rng(seed)
    rows = []
    with kernels(cpu_kernels):
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            shape = (batch_size, *tuple(layer.input.shape[1:]))
            x = tf.constant(rng.random(shape, dtype=np.float32))

            def forward(inputs: Any, layer: Any = layer) -> Any:
                return layer(inputs, training=True)

            def backward(inputs: Any, layer: Any = layer) -> Any:
                with tf.GradientTape() as tape:
                    tape.watch(inputs)
                    outputs = layer(inputs, training=True)
                return tape.gradient(outputs, [inputs, *layer.trainable_weights],
                                     output_gradients=tf.ones_like(outputs))

            timings = []
            for function in (tf.function(forward), tf.function(backward)):
                function(x)  # trace
                best = float("inf")
                for _ in range(repeats):
                    started = time.perf_counter()
                    for value in tf.nest.flatten(function(x)):
                        np.asarray(value)
                    best = min(best, time.perf_counter() - started)
                timings.append(best)
            rows.append({"layer": layer.name, "type": type(layer).__name__,
                         "input_shape": list(shape), "forward_ms": round(1000 * timings[0], 1),
                         "forward_backward_ms": round(1000 * timings[1], 1)})
    total = sum(r["forward_backward_ms"] for r in rows) or 1.0
    for r in rows:
        r["share"] = round(r["forward_backward_ms"] / total, 3)
    return rows
