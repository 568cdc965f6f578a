"""Keras model -> TFLite flatbuffer, in one of four modes, with a fixed batch of one.

The device classifies one image at a time. Exporting with a fixed ``(1, H, W, 3)`` input
signature keeps the graph free of the shape-handling ops a dynamic batch dimension adds
(measured on the paper model: see docs/conversion.md), and gives XNNPACK static
shapes to plan with.

The route is the one Keras' own LiteRT exporter takes: ``keras.export.ExportArchive`` with
the fixed signature -> SavedModel in a scratch folder -> ``TFLiteConverter.from_saved_model``.
``from_concrete_functions`` with the model as trackable object fails on Keras 3 models
(``READ_VARIABLE ... variable != nullptr`` during calibration), and without it TensorFlow
takes a deprecated path.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import ConversionFailedError

log = logging.getLogger(__name__)

MODES = ("int8", "float16", "dynamic", "float32")
MODE_HELP = {
    "int8": "full-integer: int8 weights, activations, input and output (the device model)",
    "float16": "float16 weights, float32 compute and I/O (half the size, no calibration)",
    "dynamic": "dynamic-range: int8 weights, float activations and I/O",
    "float32": "no quantization: the float model as TFLite (reference)",
}


def export_saved_model(model: Any, folder: Path, batch: int | None = 1) -> Path:
    """Write ``model`` as a SavedModel whose one endpoint takes a batch of exactly one.

    ``batch=None`` exports a dynamic batch dimension (only to measure what it costs).
    """
    import tensorflow as tf
    from keras.export import ExportArchive

    shape = [batch, *(int(d) for d in model.inputs[0].shape[1:])]
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", functools.partial(model.__call__, training=False),
                         input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    with quiet_native_stderr():
        archive.write_out(str(folder), verbose=False)
    return folder


def make_converter(saved_model: Path, mode: str,
                   representative: Callable[[], Iterator[list[np.ndarray]]] | None = None) -> Any:
    """A ``TFLiteConverter`` configured for ``mode`` (int8 needs ``representative``)."""
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if mode == "int8":
        if representative is None:
            raise ValueError("int8 conversion needs a representative dataset")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter


def representative_dataset(images: np.ndarray, progress_stream: Any = None,
                           desc: str = "calibrating") -> Callable[[], Iterator[list[np.ndarray]]]:
    """The converter's calibration feed: one float32 image of batch 1 at a time."""
    def feed() -> Iterator[list[np.ndarray]]:
        from tqdm import tqdm

        for image in tqdm(images, desc=desc, unit="img", file=progress_stream, disable=None,
                          leave=False):
            yield [np.asarray(image, dtype=np.float32)[None]]
    return feed


def convert(saved_model: Path, mode: str, calibration: np.ndarray | None = None,
            keep_float_ops: tuple[str, ...] = (), keep_float_nodes: tuple[str, ...] = ()) -> bytes:
    """Run TensorFlow's converter; its own failures become a ``ConversionFailedError``.

    ``calibration`` (float32 images, already preprocessed) is required for int8.
    ``keep_float_ops`` (TFLite op types) and ``keep_float_nodes`` (output tensor names) stay
    in float32 in an int8 model (``converters.selective``); int8 I/O is kept.
    """
    if (keep_float_ops or keep_float_nodes) and mode != "int8":
        raise ValueError("keeping ops in float applies to int8 conversion only")
    with quiet_native_stderr() as captured:
        representative = (representative_dataset(calibration, captured.terminal)
                          if calibration is not None else None)
        converter = make_converter(saved_model, mode, representative)
        try:
            if keep_float_ops or keep_float_nodes:
                from converters.selective import quantize_keeping_float

                return quantize_keeping_float(converter, keep_float_ops, keep_float_nodes)
            return bytes(converter.convert())
        except Exception as exc:  # noqa: BLE001 - TF raises ConverterError, RuntimeError, ...
            failure = exc
    detail = str(failure).strip().splitlines()
    native = [line for line in captured.text().splitlines() if "error" in line.lower()]
    hint = (" An op cannot be quantized to int8: try --dynamic or --float16, or an "
            "architecture variant without that op." if mode == "int8" else "")
    raise ConversionFailedError(
        f"TensorFlow could not convert the model to {mode} TFLite: "
        f"{(detail or native or [type(failure).__name__])[0]}.{hint}")


class _Captured:
    def __init__(self) -> None:
        self.path: str | None = None
        self.terminal: Any = None  # the real stderr, for progress bars

    def text(self) -> str:
        if self.path is None or not os.path.exists(self.path):
            return ""
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            return handle.read()


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[_Captured]:
    """Collect what TensorFlow's C++ code prints to fd 2 during conversion.

    The converter prints dozens of lines that mean nothing to a user; they are kept for
    an error message instead. Python warnings raised meanwhile are filtered the same way.
    """
    captured = _Captured()
    fd_err = 2  # native code writes to the process's fd 2, whatever sys.stderr is
    sys.stderr.flush()
    saved = os.dup(fd_err)
    captured.terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    handle, captured.path = tempfile.mkstemp(prefix="neuroedge-tflite-", suffix=".log")
    try:
        os.dup2(handle, fd_err)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield captured
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd_err)
        os.close(saved)
        captured.terminal.close()
        os.close(handle)
        text = captured.text()
        os.unlink(captured.path)
        captured.path = None
        captured.text = lambda: text  # type: ignore[method-assign]
