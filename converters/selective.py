"""int8 with chosen op types left in float32: ``python -m converters.tflite --int8 --keep-float``.

On a CPU without an int8 dot product (x86 without VNNI, ARMv8.0 such as the Raspberry Pi 4's
Cortex-A72) XNNPACK's int8 convolutions are slower than its float32 ones, while the big
Dense layer, which is memory-bound, still gains from int8 weights (docs/performance.md,
section 2). Keeping the convolutions in float and the rest in int8 is then the fastest model
that still has the device's int8 input and output.

The route is TensorFlow's selective quantization, the one its ``QuantizationDebugger`` uses
(``denylisted_ops`` / ``denylisted_nodes``): the converter only calibrates, then
``mlir_quantize`` quantizes every op except the denylisted ones, which get a DEQUANTIZE
before and a QUANTIZE after. Unlike the debugger, the input and output types the converter
was configured with (int8) are passed on, so the model's I/O stays int8.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable
from typing import Any

from converters import flatbuffer
from converters.errors import ConversionFailedError, UsageError
from converters.flatbuffer import builtin_op_names, op_type

#: Ops that only move values between int8 and float: keeping them "in float" means nothing.
NOT_KEEPABLE = frozenset({"QUANTIZE", "DEQUANTIZE"})
#: Shown in error messages: the op types of the project's models worth keeping in float.
EXAMPLES = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def parse_op_list(value: str) -> tuple[str, ...]:
    """``"conv_2d, DEPTHWISE_CONV_2D"`` -> ``("CONV_2D", "DEPTHWISE_CONV_2D")`` (no TensorFlow).

    Order is kept and repeats are dropped; an empty list is returned as ``()`` for the
    caller to refuse (so the message can name the option).
    """
    names = (part.strip().upper() for part in value.split(","))
    return tuple(dict.fromkeys(name for name in names if name))


def check_op_names(ops: Iterable[str], option: str = "--keep-float") -> None:
    """Refuse names that are not TFLite builtin ops, with the nearest valid name."""
    ops = tuple(ops)
    if not ops:
        raise UsageError(f"{option} needs at least one TFLite op name, e.g. {option} "
                         f"{','.join(EXAMPLES[:2])}")
    valid = set(builtin_op_names().values()) - NOT_KEEPABLE
    for name in ops:
        if name in valid:
            continue
        close = difflib.get_close_matches(name, sorted(valid), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(
            f"{option}: {name} is not a TFLite builtin op that can be kept in float{hint}; give "
            f"comma-separated op names as report.json lists them under conversion.ops, e.g. "
            f"{','.join(EXAMPLES)}")


def quantize_keeping_float(converter: Any, ops: Iterable[str] = (),
                           nodes: Iterable[str] = ()) -> bytes:
    """Run an int8-configured ``TFLiteConverter``, leaving ``ops`` (op types) and ``nodes``
    (output tensor names) in float32.

    The converter must already carry ``Optimize.DEFAULT`` and a representative dataset
    (``converters.export.make_converter(saved, "int8", feed)``). Raises what TensorFlow
    raises; ``converters.export.convert`` turns that into a ``ConversionFailedError``.
    """
    from tensorflow.lite.python.convert import mlir_quantize

    # Calibrate only (as QuantizationDebugger does), then quantize with the denylist and
    # the converter's own I/O types and per-channel settings.
    converter._experimental_calibrate_only = True
    try:
        calibrated = converter.convert()
    finally:
        converter._experimental_calibrate_only = False
    return bytes(mlir_quantize(
        calibrated,
        disable_per_channel=converter._experimental_disable_per_channel,
        input_data_type=converter.inference_input_type,
        output_data_type=converter.inference_output_type,
        disable_per_channel_for_dense_layers=(
            converter._experimental_disable_per_channel_quantization_for_dense_layers),
        denylisted_ops=list(ops) or None,
        denylisted_nodes=list(nodes) or None))


def float_op_types(tflite_model: bytes) -> dict[str, int]:
    """Op types that compute in float32 (their first input is float32), with their counts.

    QUANTIZE / DEQUANTIZE are left out: they are the seams, not the work. For a fully int8
    model the result is empty.
    """
    float32 = flatbuffer.schema().TensorType.FLOAT32
    model = flatbuffer.read(tflite_model)
    found: Counter[str] = Counter()
    for graph in model.subgraphs:
        for op in graph.operators:
            name = op_type(model, op)
            inputs = [i for i in op.inputs if i >= 0]
            if (name not in NOT_KEEPABLE and inputs
                    and graph.tensors[inputs[0]].type == float32):
                found[name] += 1
    return dict(sorted(found.items()))


def check_kept_float(tflite_model: bytes, ops: Iterable[str], all_ops: dict[str, int],
                     option: str = "--keep-float") -> dict[str, int]:
    """Every requested op type must exist in the model and run in float; returns the float ops.

    A name the model does not contain would leave a plain int8 model whose manifest claims
    otherwise; it is refused as a usage error naming the model's own op types.
    """
    floats = float_op_types(tflite_model)
    missing = [name for name in ops if name not in floats]
    if missing:
        absent = [name for name in missing if name not in all_ops]
        if absent:
            present = ",".join(n for n in all_ops if n not in NOT_KEEPABLE)
            raise UsageError(f"{option}: this model has no {', '.join(absent)} op; its ops are "
                             f"{present}")
        raise ConversionFailedError(
            f"TensorFlow quantized {', '.join(missing)} to int8 despite {option}; keep other "
            "ops in float, or convert without the option")
    return floats
