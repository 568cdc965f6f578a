"""Time a ``.keras`` model with TensorFlow in a process of its own (threads are per process).

``python -m benchmarks.keras_probe MODEL.keras THREADS RUNS WARMUP`` prints one JSON object.
TensorFlow's thread pools are fixed when it starts, so each thread count needs a fresh
process. One sample is one call of the model, compiled with ``tf.function``, on a batch of
one image, including the copy of the result back to numpy.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    path, threads, runs, warmup = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    import trainer.layers  # noqa: F401 - registers the CBAM layers for loading

    model = keras.saving.load_model(path, compile=False)
    shape = (1, *(int(d) for d in model.inputs[0].shape[1:]))
    image = tf.constant(np.random.default_rng(0).random(shape, dtype=np.float32))
    call = tf.function(lambda x: model(x, training=False))
    for _ in range(warmup):
        call(image).numpy()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call(image).numpy()
        samples.append((time.perf_counter() - start) * 1000)
    print(json.dumps({"samples_ms": samples, "runtime": "keras",
                      "version": f"keras {keras.__version__}, tensorflow {tf.__version__}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
