"""Run a converted model in another Python environment and print what it classified.

Started by ``converters.runtimes`` with a foreign interpreter (for example a numpy<2 venv
holding ``tflite-runtime``) as ``python runtime_probe.py MODEL_DIR INPUTS.npy``, with
``NEUROEDGE_RUNTIME`` naming the runtime and ``PYTHONPATH`` pointing at a copy of the
``edge`` package: the device's own loading code is what gets tested. Prints one JSON
object on stdout. Standard library + numpy + edge only; runs on Python 3.8.
"""

from __future__ import annotations

import json
import platform
import sys
import time


def main(argv: list) -> int:
    model_dir, inputs_path = argv[1], argv[2]
    try:
        import numpy as np

        from edge.manifest import load_verified
        from edge.runtime import TFLiteClassifier

        manifest, model_path = load_verified(model_dir)
        images = np.load(inputs_path)
        classifier = TFLiteClassifier(model_path, manifest, num_threads=1)
        classifier.predict(images[0])  # warm-up: first invoke plans memory
        start = time.perf_counter()
        probs = classifier.predict(images)
        elapsed = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent as text
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(json.dumps({"error": f"{type(exc).__name__}: {message}",
                          "python": platform.python_version()}))
        return 1
    print(json.dumps({
        "runtime": classifier.runtime.name,
        "version": classifier.runtime.version,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "ms_per_image": 1000.0 * elapsed / max(1, len(images)),
        "delegate_nodes": getattr(classifier, "delegate_nodes", None),
        "probs": np.asarray(probs, dtype=float).tolist(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
