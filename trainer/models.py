"""The architectures, by name: the paper's DSConv-CBAM, its named variants, and baselines.

``build_model("dsconv_cbam")`` is the published model exactly. Every change to it is a
separate name with its reason in ``ARCHITECTURE_INFO`` (shown by ``python -m trainer
summary`` and recorded in every run's ``run.json``), never a silent edit.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from trainer.errors import ArchitectureError, WeightsNotFoundError
from trainer.layers import CBAM

INPUT_SHAPE = (224, 224, 3)
NUM_CLASSES = 4
PADDINGS = ("same", "valid")
MOBILENETV2_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
MOBILENETV2_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
    + MOBILENETV2_WEIGHTS_FILE
)


@dataclass(frozen=True)
class ArchitectureInfo:
    """What a registered architecture is, and how and why it departs from the paper."""

    summary: str
    deviations: tuple[str, ...] = ()


def _dsconv_cbam_net(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    name: str,
    padding: str,
    batch_norm: bool,
    bn_momentum: float,
    head: str,
) -> keras.Model:
    """Three (separable conv -> 2x2 max-pool -> CBAM) stages, then the classifier head."""
    if padding not in PADDINGS:
        raise ArchitectureError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    if not 0.0 < bn_momentum < 1.0:
        raise ArchitectureError(f"bn_momentum must be between 0 and 1, got {bn_momentum!r}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for stage, filters in enumerate((32, 64, 128), start=1):
        if batch_norm:
            x = keras.layers.SeparableConv2D(
                filters, 3, padding=padding, use_bias=False, name=f"sepconv{stage}"
            )(x)
            x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"bn{stage}")(x)
            x = keras.layers.ReLU(name=f"relu{stage}")(x)
        else:
            x = keras.layers.SeparableConv2D(
                filters, 3, padding=padding, activation="relu", name=f"sepconv{stage}"
            )(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{stage}")(x)
        x = CBAM(ratio=16, kernel_size=5, name=f"cbam{stage}")(x)
    if head == "flatten":
        x = keras.layers.Flatten(name="flatten")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(128, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def dsconv_cbam(
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
    *,
    padding: str = "same",
) -> keras.Model:
    """The published DSConv-CBAM, layer for layer (12,860,230 parameters with 'same')."""
    return _dsconv_cbam_net(input_shape, num_classes, name="dsconv_cbam", padding=padding,
                            batch_norm=False, bn_momentum=0.9, head="flatten")


def dsconv_cbam_bn(
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
    *,
    padding: str = "same",
    bn_momentum: float = 0.9,
) -> keras.Model:
    """DSConv-CBAM with SeparableConv2D(no bias) -> BatchNormalization -> ReLU blocks."""
    return _dsconv_cbam_net(input_shape, num_classes, name="dsconv_cbam_bn", padding=padding,
                            batch_norm=True, bn_momentum=bn_momentum, head="flatten")


def dsconv_cbam_gap(
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
    *,
    padding: str = "same",
    bn_momentum: float = 0.9,
    batch_norm: bool = True,
) -> keras.Model:
    """The BN variant with GlobalAveragePooling2D instead of Flatten: the compact model.

    ``batch_norm=False`` gives the paper's blocks with only Flatten replaced (31,558
    parameters), for comparison.
    """
    return _dsconv_cbam_net(input_shape, num_classes, name="dsconv_cbam_gap", padding=padding,
                            batch_norm=bool(batch_norm), bn_momentum=bn_momentum, head="gap")


def mlp(
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
    *,
    hidden_units: tuple[int, ...] = (128,),
) -> keras.Model:
    """The MLP baseline: raw pixels -> Flatten -> Dense(128, ReLU) -> Dense(classes).

    The paper's figure of its MLP did not survive. This is DSConv-CBAM's own classifier head
    applied to the pixels, so the comparison measures exactly what the convolution and
    attention stages add.
    """
    hidden_units = tuple(int(u) for u in hidden_units)
    if not hidden_units or min(hidden_units) < 1:
        raise ArchitectureError(f"hidden_units must be positive integers, got {hidden_units!r}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(hidden_units, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"dense{i}")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="mlp")


def default_backbone_weights_path() -> Path:
    """Where Keras itself would cache the file: $KERAS_HOME/models (default ~/.keras)."""
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return keras_home / "models" / MOBILENETV2_WEIGHTS_FILE


def resolve_backbone_weights(backbone_weights: str | os.PathLike | None) -> Path | None:
    """The ImageNet weights file to load, or None for ``"none"`` (train from scratch).

    ``None`` means "the default location"; a missing file is a WeightsNotFoundError whose
    message names the exact file and where to put it (nothing is downloaded at run time).
    """
    if isinstance(backbone_weights, str) and backbone_weights.strip().lower() == "none":
        return None
    path = (Path(backbone_weights).expanduser() if backbone_weights is not None
            else default_backbone_weights_path())
    if path.is_file():
        return path
    where = f"{path} does not exist" if backbone_weights is not None else (
        f"no file was given and none was found at {path}")
    raise WeightsNotFoundError(
        f"MobileNetV2 needs the ImageNet backbone weights, but {where}.\n"
        f"Get the standard Keras file {MOBILENETV2_WEIGHTS_FILE} on a machine with internet "
        f"({MOBILENETV2_WEIGHTS_URL}), copy it to {default_backbone_weights_path()} or pass "
        f"its path with --backbone-weights PATH.\n"
        f"Or pass --backbone-weights none to train the whole network from scratch (the run is "
        f"then labelled 'no ImageNet weights')."
    )


def mobilenetv2(
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
    *,
    backbone_weights: str | os.PathLike | None = None,
    freeze_backbone: bool | None = None,
) -> keras.Model:
    """MobileNetV2 (no top) -> GlobalAveragePooling -> Dense(128, ReLU) -> Dense(classes).

    Inputs arrive in [0, 1] like every other model here; a Rescaling layer maps them to the
    [-1, 1] MobileNetV2 was trained on, so the device preprocessing stays the same. With
    ImageNet weights the backbone is frozen (the paper's transfer learning); with
    ``backbone_weights="none"`` it is trained (a frozen random backbone would learn nothing).
    """
    weights_path = resolve_backbone_weights(backbone_weights)
    if freeze_backbone is None:
        freeze_backbone = weights_path is not None
    backbone = keras.applications.MobileNetV2(
        input_shape=tuple(input_shape), include_top=False, weights=None
    )
    if weights_path is not None:
        try:
            backbone.load_weights(str(weights_path))
        except Exception as exc:  # noqa: BLE001 - any reader error means a wrong file
            raise WeightsNotFoundError(
                f"could not load MobileNetV2 weights from {weights_path}: {exc}\n"
                f"Expected the Keras file {MOBILENETV2_WEIGHTS_FILE} ({MOBILENETV2_WEIGHTS_URL})."
            ) from exc
    backbone.trainable = not freeze_backbone
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(inputs)
    # A frozen backbone keeps its BatchNormalization in inference mode.
    x = backbone(x, training=False) if freeze_backbone else backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(128, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="mobilenetv2")


ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "dsconv_cbam": dsconv_cbam,
    "dsconv_cbam_bn": dsconv_cbam_bn,
    "dsconv_cbam_gap": dsconv_cbam_gap,
    "mlp": mlp,
    "mobilenetv2": mobilenetv2,
}

_BN_REASON = (
    "SeparableConv2D without bias -> BatchNormalization(momentum 0.9) -> ReLU instead of "
    "SeparableConv2D with ReLU: the paper model as written can collapse to a constant "
    "output in its first Adam steps (always on small runs; see 'Why dsconv_cbam collapses'), "
    "and with BN it scored higher on the full data set (docs/results.md); momentum 0.9, "
    "not Keras' 0.99, so the moving statistics used at test time keep up with training"
)
ARCHITECTURE_INFO: dict[str, ArchitectureInfo] = {
    "dsconv_cbam": ArchitectureInfo(
        "The published DSConv-CBAM, exactly: 3 x (SeparableConv2D 3x3 ReLU -> MaxPool 2x2 -> "
        "CBAM r=16 k=5) -> Flatten -> Dense(128) -> Dense(4 softmax). Padding 'same'."),
    "dsconv_cbam_bn": ArchitectureInfo(
        "DSConv-CBAM with batch normalization in each separable-convolution block.",
        (_BN_REASON,)),
    "dsconv_cbam_gap": ArchitectureInfo(
        "dsconv_cbam_bn with GlobalAveragePooling2D instead of Flatten: the compact "
        "candidate for small devices.",
        (_BN_REASON,
         "GlobalAveragePooling2D instead of Flatten: the Flatten -> Dense(128) layer holds "
         "99.9% of the paper model's 12.9 M parameters; averaging first cuts the model to "
         "about 32 k parameters")),
    "mlp": ArchitectureInfo(
        "The paper's MLP baseline (its structure was not published): Flatten -> Dense(128, "
        "ReLU) -> Dense(4 softmax) on the raw [0, 1] pixels.",
        ("structure chosen here, the paper's figure of it did not survive: DSConv-CBAM's own "
         "classifier head on raw pixels, so the comparison isolates the conv/attention "
         "stages",)),
    "mobilenetv2": ArchitectureInfo(
        "The paper's transfer-learning baseline: MobileNetV2 (frozen, ImageNet) -> "
        "GlobalAveragePooling -> Dense(128, ReLU) -> Dense(4 softmax).",
        ("inputs in [0, 1] are rescaled to [-1, 1] inside the model (MobileNetV2's range), so "
         "every model shares one preprocessing",)),
}
NO_IMAGENET_DEVIATION = (
    "no ImageNet weights: the backbone was trained from scratch (--backbone-weights none), "
    "not the paper's frozen ImageNet MobileNetV2"
)


def architecture_names() -> list[str]:
    return list(ARCHITECTURES)


def _check_options(arch: str, builder: Callable[..., keras.Model], options: dict) -> None:
    accepted = [p.name for p in inspect.signature(builder).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise ArchitectureError(
            f"architecture {arch!r} does not take option(s) {', '.join(unknown)}; it takes {takes}"
        )


def build_model(
    arch: str,
    *,
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
    **options: Any,
) -> keras.Model:
    """Build a registered architecture by name (see ``ARCHITECTURES``)."""
    if arch not in ARCHITECTURES:
        raise ArchitectureError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    if num_classes < 2:
        raise ArchitectureError(f"num_classes must be at least 2, got {num_classes}")
    builder = ARCHITECTURES[arch]
    _check_options(arch, builder, options)
    return builder(tuple(int(d) for d in input_shape), int(num_classes), **options)


def deviations(arch: str, options: dict | None = None) -> list[str]:
    """The documented departures from the paper for this architecture and these options."""
    found = list(ARCHITECTURE_INFO[arch].deviations)
    options = options or {}
    if arch == "dsconv_cbam_gap" and options.get("batch_norm", True) is False:
        found.remove(_BN_REASON)
    if options.get("padding", "same") != "same":
        found.append(f"padding {options['padding']!r} instead of this project's 'same' reading")
    if arch == "mobilenetv2" and is_no_imagenet(arch, options):
        found.append(NO_IMAGENET_DEVIATION)
    return found


def is_no_imagenet(arch: str, options: dict | None) -> bool:
    """True for a MobileNetV2 trained without ImageNet weights (labelled in every artifact)."""
    value = (options or {}).get("backbone_weights")
    return arch == "mobilenetv2" and isinstance(value, str) and value.strip().lower() == "none"
