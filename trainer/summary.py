"""``python -m trainer summary``: the layer table and parameter count of an architecture.

Our own plain-text table rather than ``model.summary()``: it prints the settings that
define each layer (filters, kernel, padding, activation, CBAM ratio and kernel), which is
what one checks against the paper, and it does not depend on the terminal's width.
"""

from __future__ import annotations

import math
from typing import Any


def _settings(layer: Any) -> str:
    import keras

    from trainer.layers import CBAM

    if isinstance(layer, CBAM):
        hidden = layer.channel.hidden.units
        return f"ratio {layer.ratio} (MLP {hidden}), spatial kernel {layer.kernel_size}"
    parts = []
    config = layer.get_config()
    if "filters" in config:
        parts.append(f"filters {config['filters']}")
    if "units" in config:
        parts.append(f"units {config['units']}")
    for key in ("kernel_size", "pool_size"):
        if key in config:
            parts.append(f"{key.split('_')[0]} {'x'.join(str(k) for k in config[key])}")
    if "padding" in config:
        parts.append(str(config["padding"]))
    if config.get("activation") not in (None, "linear"):
        parts.append(str(config["activation"]))
    if "use_bias" in config and not config["use_bias"]:
        parts.append("no bias")
    if isinstance(layer, keras.layers.BatchNormalization):
        parts.append(f"momentum {config['momentum']}")
    if isinstance(layer, keras.Model):
        parts.append("frozen" if not layer.trainable else "trainable")
    return ", ".join(parts)


def layer_table(model: Any) -> list[str]:
    rows = [("layer", "type", "output shape", "parameters", "settings")]
    for layer in model.layers:
        shape = getattr(layer, "output", None)
        shape = tuple(shape.shape) if shape is not None else ""
        rows.append((layer.name, type(layer).__name__, str(shape), f"{layer.count_params():,}",
                     _settings(layer)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]),
                                row[2].ljust(widths[2]), row[3].rjust(widths[3]), row[4]]))
        if n == 0:
            lines.append("-" * len(lines[0]))
    return lines


def architecture_summary(arch: str, input_shape: tuple[int, int, int],
                         options: dict[str, Any] | None = None,
                         as_trained: dict[str, Any] | None = None) -> str:
    """The layer table, exact parameter counts, and the documented deviations.

    ``as_trained``: the options a training run would use, when ``options`` differ only to
    avoid loading a weights file (MobileNetV2's layer table is the same without it).
    """
    from trainer.models import ARCHITECTURE_INFO, build_model, deviations

    options = options or {}
    model = build_model(arch, input_shape=input_shape, **options)
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    total = model.count_params()
    lines = [f"{arch}: {ARCHITECTURE_INFO[arch].summary}", "", *layer_table(model), "",
             f"input shape: {tuple(input_shape)}",
             f"parameters: {total:,} ({trainable:,} trainable, "
             f"{total - trainable:,} non-trainable)"]
    found = deviations(arch, options if as_trained is None else as_trained)
    lines.append("deviations from the paper: " + ("none" if not found else ""))
    lines += [f"  - {d}" for d in found]
    return "\n".join(lines)
