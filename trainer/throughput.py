"""Training throughput: images per second of real optimiser steps, on whatever Keras backend.

Steps run on fixed random batches already in memory, so the figure is the model's and the
backend's (forward, backward, Adam update), not the data pipeline's. The first steps
compile (JAX, XLA) or trace (TensorFlow) and are timed apart as "warm-up".
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def measure(arch: str, *, batch_size: int = 64, steps: int = 20, warmup: int = 3,
            image_size: int = 224, seed: int = 0, **options: Any) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup``; returns a JSON-ready record."""
    import keras

    from trainer.batches import one_hot
    from trainer.models import build_model
    from trainer.train import LOSS, jit_compile_setting

    keras.utils.set_random_seed(seed)
    model = build_model(arch, input_shape=(image_size, image_size, 3), **options)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, beta_1=0.9, beta_2=0.99), loss=LOSS,
                  metrics=["accuracy"], jit_compile=jit_compile_setting())
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
    y = one_hot(rng.integers(0, 4, batch_size), 4)
    started = time.perf_counter()
    for _ in range(warmup):
        model.train_on_batch(x, y)
    warm = time.perf_counter() - started
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = model.train_on_batch(x, y)  # returns host values: the step has finished
        times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    record = {"arch": arch, "backend": keras.backend.backend(), "batch_size": batch_size,
              "steps": steps, "warmup_seconds": round(warm, 2),
              "median_step_seconds": round(step, 4),
              "images_per_second": round(batch_size / step, 1),
              "devices": [str(d) for d in keras.distribution.list_devices()],
              "final_loss": float(np.asarray(loss).ravel()[0])}
    log.info("%s on %s: %.1f images/s (median step %.3f s, warm-up %.1f s)", arch,
             record["backend"], record["images_per_second"], step, warm)
    return record
