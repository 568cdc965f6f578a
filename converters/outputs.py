"""Extra outputs for a converted model: its own intermediate tensors, exposed by name.

The agent's trust checks (``edge.trust``) need more than the probabilities: the logits (for
the temperature), pooled feature descriptors of every stage (for the "unlike the training
data" score) and a spatial map (for the heat-map). All of them already exist inside a
converted classifier; this module marks them as additional outputs of the flatbuffer,
renamed ``neuroedge/<key>``, and touches nothing else: the same operators, weights and
quantization, the original output first. So the probabilities are bit-identical to those of
the model that passed the accuracy gate (checked by ``converters.trust``), and a model
whose Keras source is gone (the shipped one) gets the outputs too.

Which tensors, found by the graph's structure rather than by layer names (so any
architecture the trainer registers gets them):

- ``logits``: the input of the final SOFTMAX (absent when the model outputs logits);
- ``features``: the input of the fully-connected layer that produces the logits;
- ``stage1``, ``stage2``, ...: CBAM's channel-attention descriptors, PACK(MEAN, REDUCE_MAX)
  of each stage's feature map, ``[1, 2, C]``; models without CBAM get every spatial MEAN
  (global average pooling) instead;
- ``feature_map``: the last feature map, ``[1, H, W, C]``, when the classifier reads it
  through a global average pool (MEAN -> FULLY_CONNECTED): with the classifier's weights
  (``classifier_weights``) it gives the class activation map, the heat-map of such models;
- ``heatmap``: the last CBAM spatial-attention map, the LOGISTIC whose output is
  ``[1, H, W, 1]``.

A Keras model built with several named outputs (a dict) and converted gets the same names
from ``name_signature_outputs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from converters import flatbuffer
from converters.errors import ConversionFailedError
from converters.flatbuffer import op_type
from edge.manifest import TensorSpec

PREFIX = "neuroedge/"
PRIMARY = "probabilities"


@dataclass(frozen=True)
class Exposed:
    """One named extra output: its key, tensor name in the flatbuffer, and spec."""

    key: str
    tensor: str
    spec: TensorSpec
    heatmap_kind: str | None = None


def _logits_and_classifier(model: Any, graph: Any, producers: dict[int, Any]) -> tuple[int, Any]:
    """The logits tensor (the input of the final SOFTMAX, else the output itself) and the
    FULLY_CONNECTED operator that produces it (None if another kind does). A classifier
    kept in float (``--keep-float FULLY_CONNECTED``) reaches the logits through a QUANTIZE:
    it is still the classifier."""
    primary = int(graph.outputs[0])
    head = producers.get(primary)
    logits = int(head.inputs[0]) if head is not None and op_type(model, head) == "SOFTMAX" \
        else primary
    fc = _through(model, producers, producers.get(logits), "QUANTIZE")
    return logits, fc if fc is not None and op_type(model, fc) == "FULLY_CONNECTED" else None


def _through(model: Any, producers: dict[int, Any], op: Any, kind: str) -> Any:
    """``op``, or, if it is a ``kind`` (QUANTIZE, DEQUANTIZE: a float island's edge), the
    operator that produces its input."""
    if op is not None and op_type(model, op) == kind:
        return producers.get(int(op.inputs[0]))
    return op


def _int8_side(model: Any, producers: dict[int, Any], index: int) -> int:
    """The tensor ``index``, or the int8 tensor a DEQUANTIZE made it from."""
    op = producers.get(index)
    if op is not None and op_type(model, op) == "DEQUANTIZE":
        return int(op.inputs[0])
    return index


def find_trust_tensors(tflite_model: bytes) -> dict[str, int]:
    """Tensor indices (subgraph 0) worth exposing, by key; see the module doc."""
    model = flatbuffer.read(tflite_model)
    graph = model.subgraphs[0]
    producers = flatbuffer.producers(graph)
    ops = [(op_type(model, op), op) for op in graph.operators]
    found: dict[str, int] = {}
    logits, fc = _logits_and_classifier(model, graph, producers)
    if logits != int(graph.outputs[0]):
        found["logits"] = logits
    if fc is not None:
        found["features"] = _int8_side(model, producers, int(fc.inputs[0]))
        pool = producers.get(found["features"])
        if pool is not None and op_type(model, pool) == "MEAN" and len(
                graph.tensors[int(pool.inputs[0])].shape) == 4:
            found["feature_map"] = int(pool.inputs[0])
    stages = []
    for name, op in ops:
        if name != "PACK" or len(op.inputs) != 2:
            continue
        kinds = [op_type(model, producers[int(i)]) if int(i) in producers else ""
                 for i in op.inputs]
        if kinds == ["MEAN", "REDUCE_MAX"]:
            stages.append(int(op.outputs[0]))
    if not stages:  # no CBAM: global average pools ([1, C] outputs of MEAN)
        stages = [int(op.outputs[0]) for name, op in ops if name == "MEAN"
                  and len(graph.tensors[int(op.outputs[0])].shape) == 2]
    # a network whose only global pool feeds the classifier (ResNet-18) has that tensor as
    # "features" already: one tensor, one name
    stages = [index for index in stages if index not in found.values()]
    for k, index in enumerate(stages, start=1):
        found[f"stage{k}"] = index
    maps = [int(op.outputs[0]) for name, op in ops if name == "LOGISTIC"
            and len(graph.tensors[int(op.outputs[0])].shape) == 4
            and int(graph.tensors[int(op.outputs[0])].shape[-1]) == 1]
    if maps:
        found["heatmap"] = maps[-1]
    return found


def classifier_weights(tflite_model: bytes) -> np.ndarray | None:
    """The final fully-connected layer's weights as floats, ``(C, K)``: features by classes
    (dequantized per output channel when the layer is int8), or None when the logits do not
    come from one (or its weights are not constant)."""
    model = flatbuffer.read(tflite_model)
    graph = model.subgraphs[0]
    _, fc = _logits_and_classifier(model, graph, flatbuffer.producers(graph))
    if fc is None:
        return None
    tensor = graph.tensors[int(fc.inputs[1])]
    data = model.buffers[tensor.buffer].data
    if data is None or not len(data):
        return None
    dtypes = {0: np.float32, 1: np.float16, 9: np.int8}  # schema.TensorType FLOAT32/16, INT8
    if tensor.type not in dtypes:
        return None
    weights = np.frombuffer(bytes(bytearray(data)), dtype=dtypes[tensor.type]).astype(
        np.float64).reshape(tuple(int(d) for d in tensor.shape))  # (K, C)
    quant = tensor.quantization
    if tensor.type == 9:
        if quant is None or quant.scale is None or not len(quant.scale):
            return None
        scale = np.asarray(quant.scale, dtype=np.float64).reshape(-1, 1)
        zero = np.asarray(quant.zeroPoint if quant.zeroPoint is not None else [0],
                          dtype=np.float64).reshape(-1, 1)
        weights = (weights - zero) * scale
    return weights.T


def expose(tflite_model: bytes, tensors: dict[str, int]) -> bytes:
    """The model with ``tensors`` appended as outputs named ``neuroedge/<key>``.

    The original output stays first and keeps its name; the signature gets the new outputs
    under their keys. Nothing else changes.
    """
    schema = flatbuffer.schema()
    model = flatbuffer.read(tflite_model)
    graph = model.subgraphs[0]
    outputs = [int(i) for i in graph.outputs]
    for key, index in tensors.items():
        if not 0 <= index < len(graph.tensors):
            raise ConversionFailedError(f"tensor {index} for {key!r} is not in the model")
        if index in outputs:
            raise ConversionFailedError(f"tensor {index} for {key!r} is already an output")
        graph.tensors[index].name = (PREFIX + key).encode()
        outputs.append(index)
        for signature in model.signatureDefs or []:
            entry = schema.TensorMapT()
            entry.name = key.encode()
            entry.tensorIndex = index
            signature.outputs.append(entry)
    graph.outputs = np.asarray(outputs, dtype=np.int32)
    return flatbuffer.write(model)


def name_signature_outputs(tflite_model: bytes, primary: str = PRIMARY) -> bytes:
    """A converted multi-output Keras model: outputs renamed ``neuroedge/<signature key>``,
    ``primary`` moved first (TensorFlow orders them as it likes) and keeping its name."""
    model = flatbuffer.read(tflite_model)
    graph = model.subgraphs[0]
    if not model.signatureDefs:
        raise ConversionFailedError("the converted model has no signature to name outputs by")
    by_key = {entry.name.decode(): int(entry.tensorIndex)
              for entry in model.signatureDefs[0].outputs}
    if primary not in by_key:
        raise ConversionFailedError(f"the model has no output named {primary!r}; it has "
                                    f"{', '.join(sorted(by_key))}")
    order = [by_key[primary]] + [i for k, i in sorted(by_key.items()) if k != primary]
    for key, index in by_key.items():
        if key != primary:
            graph.tensors[index].name = (PREFIX + key).encode()
    graph.outputs = np.asarray(order, dtype=np.int32)
    return flatbuffer.write(model)


def exposed_outputs(tflite_model: bytes) -> list[Exposed]:
    """The ``neuroedge/<key>`` outputs of a model, with their specs, in output order."""
    model = flatbuffer.read(tflite_model)
    graph = model.subgraphs[0]
    producers = flatbuffer.producers(graph)
    found = []
    for index in graph.outputs[1:]:
        tensor = graph.tensors[int(index)]
        name = tensor.name.decode()
        if not name.startswith(PREFIX):
            raise ConversionFailedError(f"output {name!r} is not a named trust output")
        spec = flatbuffer.tensor_spec(tensor)
        op = producers.get(int(index))
        kind = None
        if name == PREFIX + "heatmap":
            kind = ("spatial_attention" if op is not None and op_type(model, op) == "LOGISTIC"
                    else "feature_map")
        elif name == PREFIX + "feature_map":
            kind = "class_activation"
        found.append(Exposed(name[len(PREFIX):], name, spec, kind))
    return found
