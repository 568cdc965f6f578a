"""Why int8 is barely faster than float32 here, measured three ways, and what helps.

1. ``op_profile``: where the time goes inside one model. TFLite runs every op of a graph,
   so a model cut after op k (outputs rewired to op k's output) runs ops 0..k; the time of
   a layer is the difference between two cuts. Cuts are made at layer boundaries, each
   timed in several interleaved rounds (median per round, minimum over rounds).
2. ``kernel_table``: the paper model's heavy layers built alone, float32 and int8, timed
   in the same interpreter: milliseconds and multiply-accumulates per second, i.e. how
   fast this CPU's XNNPACK kernels are for each shape, independent of the model.
3. ``variants``: conversion settings and mathematically identical rewrites of the paper
   model, each converted and timed (int8, 1 thread) in the same run.

Nothing here changes trainer/: the rewrite is applied to the layer class only inside this
process, while the variant is exported.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import ratio, table

log = logging.getLogger(__name__)


# --- 1. per-layer profile ------------------------------------------------------------

def _group_key(tensor_name: str) -> str:
    """'net_1/cbam2_1/channel_attention_1/Max' -> 'cbam2/channel_attention'."""
    parts = [re.sub(r"_\d+$", "", p) for p in tensor_name.split(";")[0].split("/")]
    if len(parts) < 2:  # the graph's output tensor (e.g. an int8 SOFTMAX after the head)
        return "output (" + tensor_name.split(";")[0] + ")"
    key = parts[1]
    if key.startswith("cbam") and len(parts) > 2:
        key += "/" + parts[2]
    for prefix, stage in (("relu", "sepconv"), ("bn", "sepconv")):
        if re.fullmatch(prefix + r"\d+", key):
            key = stage + key[len(prefix):]
    return key


def _interpreter(content: bytes, threads: int = 1, **options: Any) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads, **options)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    if np.issubdtype(detail["dtype"], np.integer):
        info = np.iinfo(detail["dtype"])
        value = rng.integers(info.min, info.max, detail["shape"], endpoint=True)
    else:
        value = rng.random(detail["shape"])
    interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
    return interpreter


def time_invoke(content: bytes, runs: int, warmup: int = 3, threads: int = 1,
                **options: Any) -> float:
    """Median milliseconds of ``invoke`` alone (no input quantization) over ``runs``."""
    interpreter = _interpreter(content, threads, **options)
    for _ in range(warmup):
        interpreter.invoke()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        samples.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(samples))


def op_profile(path: Path, runs: int = 30, rounds: int = 3) -> dict[str, Any]:
    """Milliseconds per layer group of a ``.tflite`` model, 1 thread, ai-edge-litert."""
    from tensorflow.lite.tools import flatbuffer_utils

    from converters.flatbuffer import op_type

    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    groups: list[dict[str, Any]] = []
    for index, op in enumerate(graph.operators):
        tensor = graph.tensors[op.outputs[0]]
        key = _group_key(tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name)
        kind = op_type(model, op)
        if groups and groups[-1]["layer"] == key:
            groups[-1]["last_op"] = index
            groups[-1]["ops"].append(kind)
        else:
            groups.append({"layer": key, "first_op": index, "last_op": index, "ops": [kind]})
    cuts = []
    for group in groups:
        cut = copy.deepcopy(model)
        sub = cut.subgraphs[0]
        sub.operators = sub.operators[: group["last_op"] + 1]
        sub.outputs = list(sub.operators[-1].outputs)
        cuts.append(bytes(flatbuffer_utils.convert_object_to_bytearray(cut)))
    best = [float("inf")] * len(cuts)
    for _ in range(rounds):
        for i, content in enumerate(cuts):
            best[i] = min(best[i], time_invoke(content, runs))
    previous = 0.0
    for group, cumulative in zip(groups, best, strict=True):
        group["cumulative_ms"] = cumulative
        group["ms"] = cumulative - previous
        previous = cumulative
    return {"path": str(path), "groups": groups, "total_ms": best[-1],
            "outside_xnnpack": ops_outside_delegate(Path(path))}


def ops_outside_delegate(path: Path) -> list[str]:
    """Ops the XNNPACK delegate left to TFLite's own kernels (they split the graph)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()  # private, but the only view of the delegated plan
    delegate_in = {t for o in ops if o["op_name"] == "DELEGATE" for t in o["inputs"]}
    delegate_out = {t for o in ops if o["op_name"] == "DELEGATE" for t in o["outputs"]}
    outside = [o for o in ops if o["op_name"] != "DELEGATE"
               and set(o["outputs"]) & delegate_in and not set(o["outputs"]) & delegate_out]
    # an op after the last partition (e.g. the int8 SOFTMAX producing the graph's output)
    graph_out = {d["index"] for d in interpreter.get_output_details()}
    seen = {o["index"] for o in outside}
    outside += [o for o in ops if o["op_name"] != "DELEGATE" and o["index"] not in seen
                and set(o["outputs"]) & graph_out and not set(o["outputs"]) & delegate_out]
    return [f"{o['op_name']} (op {o['index']})" for o in outside]


# --- 2. kernels alone ------------------------------------------------------------------

KERNELS = (
    # name, input shape, layer factory, multiply-accumulates
    ("pointwise 3->32 @224x224 (sepconv1)", (224, 224, 3), "conv", (32, 1), 224 * 224 * 3 * 32),
    ("pointwise 32->64 @112x112 (sepconv2)", (112, 112, 32), "conv", (64, 1),
     112 * 112 * 32 * 64),
    ("pointwise 64->128 @56x56 (sepconv3)", (56, 56, 64), "conv", (128, 1), 56 * 56 * 64 * 128),
    ("depthwise 3x3 x32 @112x112 (sepconv2)", (112, 112, 32), "depthwise", (3,),
     112 * 112 * 32 * 9),
    ("spatial attention 5x5 2->1 @112x112 (cbam1)", (112, 112, 2), "conv", (1, 5),
     112 * 112 * 2 * 25),
    ("dense 100352->128 (Flatten->Dense)", (100352,), "dense", (128,), 100352 * 128),
)


def _kernel_model(shape: tuple[int, ...], kind: str, args: tuple[int, ...]) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=shape)
    if kind == "conv":
        filters, size = args
        outputs = keras.layers.Conv2D(filters, size, padding="same", activation="relu")(inputs)
    elif kind == "depthwise":
        outputs = keras.layers.DepthwiseConv2D(args[0], padding="same")(inputs)
    else:
        outputs = keras.layers.Dense(args[0], activation="relu")(inputs)
    return keras.Model(inputs, outputs)


def kernel_table(runs: int = 40, quick: bool = False) -> list[dict[str, Any]]:
    from benchmarks.models import convert_saved_model
    from converters import export

    rows = []
    kernels = KERNELS[:3] + KERNELS[4:] if quick else KERNELS
    with tempfile.TemporaryDirectory(prefix="neuroedge-kernels-") as tmp:
        for i, (name, shape, kind, args, macs) in enumerate(kernels):
            model = _kernel_model(shape, kind, args)
            saved = export.export_saved_model(model, Path(tmp) / f"k{i}")
            calibration = np.random.default_rng(0).random((8, *shape), dtype=np.float32)
            row: dict[str, Any] = {"kernel": name, "macs": macs}
            for fmt in ("float32", "int8"):
                content = convert_saved_model(saved, fmt, calibration)
                ms = time_invoke(content, runs)
                row[f"{fmt}_ms"] = ms
                row[f"{fmt}_gmacs"] = macs / ms / 1e6
            row["int8_speedup"] = ratio(row["float32_ms"], row["int8_ms"])
            rows.append(row)
    return rows


# --- 3. variants -----------------------------------------------------------------------

@contextlib.contextmanager
def pack_free_channel_attention() -> Iterator[None]:
    """ChannelAttention with CONCATENATION instead of PACK for its two descriptors.

    Mathematically identical (same weights, same sums); the converted graph has no PACK,
    which XNNPACK does not take, so the graph is not split into four delegate partitions.
    Applied only inside this process while a variant is exported: trainer/ is unchanged.
    """
    from keras import ops

    from trainer.layers import ChannelAttention

    original = ChannelAttention.call

    def call(self: Any, inputs: Any) -> Any:
        avg = ops.mean(inputs, axis=(1, 2))
        peak = ops.max(inputs, axis=(1, 2))
        descriptors = ops.concatenate([avg[:, None, :], peak[:, None, :]], axis=1)
        weights = ops.sigmoid(ops.sum(self.expand(self.hidden(descriptors)), axis=1))
        return inputs * weights[:, None, None, :]

    ChannelAttention.call = call
    try:
        yield
    finally:
        ChannelAttention.call = original


VARIANTS: tuple[dict[str, Any], ...] = (
    {"name": "int8, as converted today (per-channel weights)", "format": "int8"},
    {"name": "int8, big Dense per-tensor", "format": "int8",
     "attrs": {"_experimental_disable_per_channel_quantization_for_dense_layers": True}},
    {"name": "int8, all weights per-tensor", "format": "int8",
     "attrs": {"_experimental_disable_per_channel": True}},
    {"name": "int8, CBAM without PACK (identical maths)", "format": "int8", "packfree": True},
    {"name": "int8, spatial-attention convs kept float", "format": "int8",
     "deny_nodes": "spatial_attention_1/conv_1/convolution1"},
    {"name": "int8, all convolutions kept float (int8 Dense)", "format": "int8",
     "deny_ops": ["CONV_2D", "DEPTHWISE_CONV_2D"]},
    {"name": "float32, as converted today", "format": "float32"},
    {"name": "float32, CBAM without PACK (identical maths)", "format": "float32",
     "packfree": True},
)
QUICK_VARIANTS = (0, 4, 6)


def _selective(saved: Path, calibration: np.ndarray, deny_nodes: list[str] | None,
               deny_ops: list[str] | None) -> bytes:
    """int8 with some ops left in float: the converter's ``--keep-float`` (int8 I/O kept)."""
    from converters import export

    return export.convert(saved, "int8", calibration, keep_float_ops=tuple(deny_ops or ()),
                          keep_float_nodes=tuple(deny_nodes or ()))


def _output_names(content: bytes) -> list[str]:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    graph = model.subgraphs[0]
    return [graph.tensors[op.outputs[0]].name.decode() for op in graph.operators]


def variants(keras_model: Any, calibration: np.ndarray, runs: int,
             quick: bool = False) -> list[dict[str, Any]]:
    """Each variant converted from the same Keras model and timed in the same run."""
    from benchmarks.models import convert_saved_model
    from converters import export

    chosen = [v for i, v in enumerate(VARIANTS) if not quick or i in QUICK_VARIANTS]
    contents: dict[str, bytes] = {}
    rows = []
    plain_int8: bytes | None = None
    with tempfile.TemporaryDirectory(prefix="neuroedge-variants-") as tmp:
        saved_plain = export.export_saved_model(keras_model, Path(tmp) / "plain")
        with pack_free_channel_attention():
            saved_packfree = export.export_saved_model(keras_model, Path(tmp) / "packfree")
        for spec in chosen:
            name, fmt = spec["name"], spec["format"]
            saved = saved_packfree if spec.get("packfree") else saved_plain
            try:
                if "deny_nodes" in spec or "deny_ops" in spec:
                    if plain_int8 is None:
                        plain_int8 = convert_saved_model(saved_plain, "int8", calibration)
                    nodes = [n for n in _output_names(plain_int8)
                             if n.endswith(spec["deny_nodes"])] if "deny_nodes" in spec else None
                    content = _selective(saved, calibration, nodes, spec.get("deny_ops"))
                else:
                    content = convert_saved_model(saved, fmt, calibration, **spec.get("attrs", {}))
            except Exception as exc:  # noqa: BLE001 - a variant may not convert: say so
                rows.append({"variant": name, "error": str(exc)[:200]})
                continue
            if name.startswith("int8, as converted"):
                plain_int8 = content
            contents[name] = content
            path = Path(tmp) / f"v{len(contents)}.tflite"
            path.write_bytes(content)
            rows.append({"variant": name, "format": fmt, "bytes": len(content),
                         "outside_xnnpack": ops_outside_delegate(path)})
        for _round in range(3):  # interleaved rounds; the minimum of the medians is kept
            for row in rows:
                if "error" in row:
                    continue
                for threads in (1, 2):
                    ms = time_invoke(contents[row["variant"]], runs, threads=threads)
                    key = f"ms_{threads}_thread"
                    row[key] = min(row.get(key, float("inf")), ms)
        _compare_outputs(rows, contents, calibration[:4])
    base = next((r for r in rows if r["variant"].startswith("float32, as")), {})
    for row in rows:
        row["speedup_vs_float32"] = ratio(base.get("ms_1_thread"), row.get("ms_1_thread"))
    return rows


def _compare_outputs(rows: list[dict[str, Any]], contents: dict[str, bytes],
                     images: np.ndarray) -> None:
    """Largest output difference of each float32 variant from the plain float32 model.

    Only the float rewrites are compared: with random weights an int8 model's outputs
    barely move, so an int8 difference would prove nothing (accuracy is the converter
    gate's job, with a trained model and real images).
    """
    reference = "float32, as converted today"
    if reference not in contents:
        return
    outputs = {name: _run(contents[name], images) for name in contents
               if name.startswith("float32")}
    for row in rows:
        name = row["variant"]
        if name in outputs and name != reference:
            row["max_abs_diff_vs_plain"] = float(np.abs(outputs[name]
                                                        - outputs[reference]).max())


def _run(content: bytes, images: np.ndarray) -> np.ndarray:
    interpreter = _interpreter(content)
    detail = interpreter.get_input_details()[0]
    out_detail = interpreter.get_output_details()[0]
    results = []
    for image in images:
        interpreter.set_tensor(detail["index"], image[None].astype(np.float32))
        interpreter.invoke()
        results.append(interpreter.get_tensor(out_detail["index"]).astype(np.float64))
    return np.concatenate(results)


def interpreter_options(path: Path, runs: int) -> list[dict[str, Any]]:
    """The same model under the interpreter's own switches (1 thread, 3 interleaved rounds)."""
    from ai_edge_litert.interpreter import OpResolverType

    content = Path(path).read_bytes()
    choices = [
        ("default (XNNPACK delegate)", {}),
        ("experimental_default_delegate_latest_features=True",
         {"experimental_default_delegate_latest_features": True}),
        ("experimental_disable_delegate_clustering=True",
         {"experimental_disable_delegate_clustering": True}),
        ("op resolver BUILTIN_WITHOUT_DEFAULT_DELEGATES (no XNNPACK)",
         {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}),
    ]
    rows = [{"option": name, "ms_1_thread": float("inf")} for name, _ in choices]
    with _quiet_fd2():
        for _round in range(3):
            for row, (_name, options) in zip(rows, choices, strict=True):
                row["ms_1_thread"] = min(row["ms_1_thread"],
                                         time_invoke(content, runs, **options))
    return rows


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """The delegate's deprecation notices go to fd 2; not news in a table run."""
    from converters.export import quiet_native_stderr

    with quiet_native_stderr():
        yield


# --- tables ----------------------------------------------------------------------------

def markdown(result: dict[str, Any]) -> str:
    parts = []
    for profile in result.get("profiles", []):
        rows = [[g["layer"], ", ".join(sorted(set(g["ops"]))), f"{g['ms']:.2f}",
                 f"{100 * g['ms'] / profile['total_ms']:.0f}%"] for g in profile["groups"]]
        parts.append(f"**{profile['label']}**: {profile['total_ms']:.2f} ms in all (1 thread, "
                     "invoke only); ops outside XNNPACK: "
                     + (", ".join(profile["outside_xnnpack"]) or "none") + "\n\n"
                     + table(["layer", "ops", "ms", "share"], rows, ["l", "l", "r", "r"]))
    if result.get("kernels"):
        rows = [[k["kernel"], f"{k['macs'] / 1e6:.1f}", f"{k['float32_ms']:.2f}",
                 f"{k['int8_ms']:.2f}", f"{k['float32_gmacs']:.1f}", f"{k['int8_gmacs']:.1f}",
                 f"{k['int8_speedup']:.2f}"] for k in result["kernels"]]
        parts.append("**The paper model's heavy layers alone** (ai-edge-litert, XNNPACK, 1 "
                     "thread, invoke only)\n\n" + table(
                         ["layer", "M MAC", "float32 ms", "int8 ms", "float32 GMAC/s",
                          "int8 GMAC/s", "int8 × faster"], rows,
                         ["l", "r", "r", "r", "r", "r", "r"]))
    if result.get("variants"):
        rows = []
        for v in result["variants"]:
            if "error" in v:
                rows.append([v["variant"], "fails: " + v["error"][:80], "-", "-", "-", "-", "-"])
                continue
            diff = v.get("max_abs_diff_vs_plain")
            rows.append([v["variant"], f"{v['bytes'] / 1e6:.2f}", f"{v['ms_1_thread']:.2f}",
                         f"{v['ms_2_thread']:.2f}", f"{v['speedup_vs_float32']:.2f}",
                         ", ".join(v["outside_xnnpack"]) or "none",
                         f"{diff:.2g}" if diff is not None else "-"])
        parts.append(f"**Levers on {result['variants_model']}** (invoke only, minimum of 3 "
                     "interleaved medians)\n\n" + table(
                         ["variant", "MB", "1 thr ms", "2 thr ms", "× vs float32 (1 thr)",
                          "ops outside XNNPACK", "max |Δ output| vs plain"],
                         rows, ["l", "r", "r", "r", "r", "l", "r"]))
    if result.get("interpreter_options"):
        rows = [[o["option"], f"{o['ms_1_thread']:.2f}"] for o in result["interpreter_options"]]
        parts.append(f"**Interpreter switches on {result['interpreter_model']}** (ai-edge-litert, "
                     "1 thread, invoke only, minimum of 3 interleaved medians)\n\n"
                     + table(["interpreter option", "ms"], rows, ["l", "r"]))
    return "\n\n".join(parts)
