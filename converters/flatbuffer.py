"""A TFLite flatbuffer as Python objects: read, written, and the questions asked of it.

TensorFlow's own object API (``flatbuffer_utils``, ``schema_py_generated``) does the work;
this module is the converters' one place that touches it: the op type names, the operator
that produces each tensor, the model's operators and its input and output specs. TensorFlow
is imported only when a function is called (the device never imports this module).
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

from converters.errors import ConversionFailedError
from edge.manifest import TensorSpec


def schema() -> Any:
    """TensorFlow's generated TFLite schema module (op codes, tensor types, ``...T`` classes)."""
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def read(tflite_model: bytes) -> Any:
    """The model as a mutable object tree (``ModelT``)."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))


def write(model: Any) -> bytes:
    """An object tree back to flatbuffer bytes."""
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def producers(graph: Any) -> dict[int, Any]:
    """Tensor index -> the operator of ``graph`` that writes it."""
    return {int(t): op for op in graph.operators for t in op.outputs}


@functools.cache
def tensor_type_names() -> dict[int, str]:
    """TFLite tensor type code -> lower-case name (``int8``, ``float32``...)."""
    return {v: k.lower() for k, v in vars(schema().TensorType).items() if not k.startswith("_")}


@functools.cache
def builtin_op_names() -> dict[int, str]:
    """TFLite builtin operator code -> name (``CONV_2D``...), from TensorFlow's schema."""
    return {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}


def op_type(model: Any, op: Any) -> str:
    """The type name of ``op`` in a flatbuffer ``model`` object (``CUSTOM:<name>`` for custom
    ops). Old files keep the code in ``deprecatedBuiltinCode``, new ones in ``builtinCode``."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    name = builtin_op_names().get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        name = f"CUSTOM:{code.customCode.decode() if code.customCode else '?'}"
    return name


def ops_summary(tflite_model: bytes) -> dict[str, Any]:
    """Operator count, by type, and each type's highest version (what old runtimes choke on)."""
    model = read(tflite_model)
    counts: Counter[str] = Counter()
    versions: dict[str, int] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            name = op_type(model, op)
            code = model.operatorCodes[op.opcodeIndex]
            counts[name] += 1
            versions[name] = max(versions.get(name, 0), int(code.version))
    return {"count": sum(counts.values()), "by_type": dict(sorted(counts.items())),
            "max_versions": dict(sorted(versions.items()))}


def io_specs(tflite_model: bytes) -> tuple[TensorSpec, TensorSpec]:
    """Input and output tensor specs read from the flatbuffer itself (no interpreter needed)."""
    graph = read(tflite_model).subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ConversionFailedError(f"the converted model has {len(graph.inputs)} inputs and "
                                    f"{len(graph.outputs)} outputs; expected one of each")

    return (tensor_spec(graph.tensors[int(graph.inputs[0])]),
            tensor_spec(graph.tensors[int(graph.outputs[0])]))


def tensor_spec(tensor: Any) -> TensorSpec:
    """A tensor's shape, type and (first) quantization scale and zero point."""
    quant = tensor.quantization
    scale = float(quant.scale[0]) if quant is not None and quant.scale is not None and len(
        quant.scale) else 0.0
    zero = int(quant.zeroPoint[0]) if quant is not None and quant.zeroPoint is not None and len(
        quant.zeroPoint) else 0
    return TensorSpec(tuple(int(d) for d in tensor.shape), tensor_type_names()[tensor.type],
                      scale, zero)
