"""Several GPUs with one flag, through the engine the backend already has.

JAX: Keras' own distribution API (``keras.distribution.DataParallel``). TensorFlow:
``tf.distribute.MirroredStrategy``. TensorFlow is imported only in that branch, so the
trainer never needs it under JAX. The batch size stays the global batch size: with 4 GPUs
and ``--batch-size 64`` each GPU sees 16 images per step, and the optimizer the same
updates as on one device.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from trainer.errors import OptionError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def distribution_scope(enabled: bool) -> Iterator[str]:
    """Build, compile and fit inside this context; yields a description for run.json."""
    if not enabled:
        yield "none"
        return
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        log.info("data parallel over %d device(s): %s", len(devices), ", ".join(devices))
        try:
            yield f"keras.distribution.DataParallel over {len(devices)} device(s)"
        finally:
            keras.distribution.set_distribution(None)
    elif backend == "tensorflow":
        import tensorflow as tf  # only here: the trainer itself is backend-neutral

        strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d replica(s)", strategy.num_replicas_in_sync)
        with strategy.scope():
            yield f"tf.distribute.MirroredStrategy over {strategy.num_replicas_in_sync} replica(s)"
    else:
        raise OptionError(
            f"--distribute supports the jax and tensorflow backends, not {backend!r}; "
            f"set KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow"
        )
