"""Whether Keras compiles with XLA: off for TensorFlow on a CPU-only machine.

Its own module because the trainer, the CPU kernels (``trainer.cpu_kernels``, which apply
exactly where XLA is off), the throughput probe and the diagnosis all ask it.
"""

from __future__ import annotations

from typing import Any


def jit_compile_setting() -> bool | str:
    """XLA off for TensorFlow on a CPU-only machine, else Keras' own "auto".

    Measured on the 2-core CPU box: XLA made the first step 3x slower to compile (59 s vs
    19 s for a 32x32 DSConv-CBAM) and every later step slower too (0.73 vs 0.17 s).
    JAX always compiles; GPUs profit from XLA.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return "auto"
    try:
        has_gpu = any(str(d).lower().startswith("gpu") for d in keras.distribution.list_devices())
    except Exception:  # noqa: BLE001 - unknown device list: let Keras decide
        return "auto"
    return "auto" if has_gpu else False


def avoid_cpu_xla(model: Any) -> Any:
    """Turn XLA off on a model that will only predict, where ``jit_compile_setting`` says so."""
    if jit_compile_setting() is False:
        model.jit_compile = False
    return model
