"""Time ``.tflite`` models in one interpreter package, in a process of its own.

Run as ``python probe.py SPEC.json`` by ``benchmarks.latency`` with ``NEUROEDGE_RUNTIME``
naming the runtime, once with this environment's Python (ai-edge-litert) and once with
another environment's (tflite-runtime needs numpy<2 and cannot share a process with
TensorFlow 2.21). A copy of the ``edge`` package sits beside the script, so the device's
own loading and quantization code (``edge.runtime.TFLiteClassifier``) is what is timed.
Standard library + numpy + edge only; runs on Python 3.8. Prints one JSON object.

What one sample is: ``TFLiteClassifier.predict`` on one preprocessed image, i.e. input
quantization, ``invoke`` and output dequantization, as the agent calls it.
"""

from __future__ import annotations

import json
import platform
import sys
import time


def time_model(path: str, threads: int, runs: int, warmup: int) -> dict:
    import numpy as np

    from edge.runtime import TFLiteClassifier

    t0 = time.perf_counter()
    classifier = TFLiteClassifier(path, None, num_threads=threads)
    load_ms = (time.perf_counter() - t0) * 1000
    shape = tuple(int(d) for d in classifier.input_spec.shape[1:])
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(warmup):
        classifier.predict(image)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        classifier.predict(image)
        samples.append((time.perf_counter() - start) * 1000)
    return {"samples_ms": samples, "load_ms": load_ms,
            "delegate_nodes": classifier.delegate_nodes,
            "runtime": classifier.runtime.name, "version": classifier.runtime.version}


def main(argv: list) -> int:
    with open(argv[1], encoding="utf-8") as handle:
        spec = json.load(handle)
    results = []
    for job in spec["jobs"]:
        entry = {"key": job["key"], "threads": job["threads"]}
        try:
            entry.update(time_model(job["path"], job["threads"], spec["runs"], spec["warmup"]))
        except Exception as exc:  # noqa: BLE001 - reported to the parent as text
            text = str(exc).strip().splitlines()
            entry["error"] = f"{type(exc).__name__}: {text[0] if text else ''}"
        results.append(entry)
    import numpy as np

    print(json.dumps({"python": platform.python_version(), "numpy": np.__version__,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
