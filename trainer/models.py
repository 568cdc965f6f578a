"""The architectures, by name: the paper's DSConv-CBAM, its named variants, baselines, and two
larger from-scratch networks (ResNet-18 and a scaled residual DSConv-CBAM).

``build_model("dsconv_cbam")`` is the published model exactly. Every change to it is a
separate name with its reason in ``ARCHITECTURE_INFO`` (shown by ``python -m trainer
summary`` and recorded in every run's ``run.json``), never a silent edit.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from trainer.errors import ArchitectureError, WeightsNotFoundError
from trainer.layers import CBAM
from trainer.logits import LOGITS_LAYER, OUTPUT_LAYER
from trainer.registry import _BN_REASON, ARCHITECTURE_INFO, ArchitectureInfo  # noqa: F401

INPUT_SHAPE = (224, 224, 3)
NUM_CLASSES = 4
PADDINGS = ("same", "valid")
MOBILENETV2_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
MOBILENETV2_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
    + MOBILENETV2_WEIGHTS_FILE
)


def classifier_output(x: Any, num_classes: int) -> Any:
    """Dense(classes) named ``logits`` -> softmax named ``predictions``.

    The same mathematics as Dense(activation="softmax"), but the logits are a tensor of
    their own, so training can compute the loss from them (``trainer.logits``): from
    probabilities, Keras' JAX backend clips them to [1e-7, 1 - 1e-7] and a saturated
    softmax then gets no gradient at all (``trainer.logits``; docs/results.md, the collapsed
    augmented run).
    """
    logits = keras.layers.Dense(num_classes, name=LOGITS_LAYER)(x)
    return keras.layers.Activation("softmax", name=OUTPUT_LAYER)(logits)


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
    outputs = classifier_output(x, num_classes)
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
    outputs = classifier_output(x, num_classes)
    return keras.Model(inputs, outputs, name="mlp")


def _check_width(width: int, bn_momentum: float) -> None:
    if int(width) < 1:
        raise ArchitectureError(f"width must be a positive number of filters, got {width!r}")
    if not 0.0 < bn_momentum < 1.0:
        raise ArchitectureError(f"bn_momentum must be between 0 and 1, got {bn_momentum!r}")


def _conv_bn(x: Any, filters: int, kernel: int, stride: int, momentum: float, name: str,
             relu: bool = True) -> Any:
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _shortcut(x: Any, filters: int, stride: int, momentum: float, name: str) -> Any:
    """Identity, or a strided 1x1 convolution + BN where the shape changes."""
    if stride == 1 and int(x.shape[-1]) == filters:
        return x
    return _conv_bn(x, filters, 1, stride, momentum, f"{name}_shortcut", relu=False)


def resnet18(
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
    *,
    width: int = 64,
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
) -> keras.Model:
    """ResNet-18 (basic blocks, [2, 2, 2, 2]) from scratch; ``width`` = first stage's filters.

    11.2 M parameters at width 64. Softmax head on global average pooling, like every
    model here, so the device code is the same.
    """
    _check_width(width, bn_momentum)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _conv_bn(inputs, width, 7, 2, bn_momentum, "stem")
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, multiple in enumerate((1, 2, 4, 8), start=1):
        filters = width * multiple
        for block in (1, 2):
            stride = 2 if stage > 1 and block == 1 else 1
            name = f"stage{stage}_block{block}"
            shortcut = _shortcut(x, filters, stride, bn_momentum, name)
            y = _conv_bn(x, filters, 3, stride, bn_momentum, f"{name}_a")
            y = _conv_bn(y, filters, 3, 1, bn_momentum, f"{name}_b", relu=False)
            x = keras.layers.Add(name=f"{name}_add")([y, shortcut])
            x = keras.layers.ReLU(name=f"{name}_out")(x)
    return keras.Model(inputs, _gap_head(x, dropout, num_classes), name="resnet18")


def dsconv_cbam_res(
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
    *,
    width: int = 32,
    blocks: tuple[int, ...] = (2, 2, 3, 2),
    bn_momentum: float = 0.9,
    dropout: float = 0.2,
) -> keras.Model:
    """The scaled DSConv-CBAM: residual separable-convolution blocks with CBAM in each.

    Stem 3x3/2 (``width`` filters), then one stage per entry of ``blocks`` at 2, 4, 8, 16 x
    ``width`` filters, each halving the resolution with a strided separable convolution in
    its first block. A block: SeparableConv -> BN -> ReLU -> SeparableConv -> BN -> ReLU ->
    CBAM, added to the shortcut, then ReLU. About 1.7 M parameters at width 32.
    """
    _check_width(width, bn_momentum)
    blocks = tuple(int(b) for b in blocks)
    if not blocks or min(blocks) < 1:
        raise ArchitectureError(f"blocks must be positive block counts per stage, got {blocks!r}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _conv_bn(inputs, width, 3, 2, bn_momentum, "stem")
    for stage, count in enumerate(blocks, start=1):
        filters = width * 2 ** stage
        for block in range(1, count + 1):
            stride = 2 if block == 1 else 1
            name = f"stage{stage}_block{block}"
            shortcut = _shortcut(x, filters, stride, bn_momentum, name)
            y = keras.layers.SeparableConv2D(filters, 3, strides=stride, padding="same",
                                             use_bias=False, name=f"{name}_sep_a")(x)
            y = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn_a")(y)
            y = keras.layers.ReLU(name=f"{name}_relu_a")(y)
            y = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False,
                                             name=f"{name}_sep_b")(y)
            y = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn_b")(y)
            # CBAM on non-negative features, as in the paper (ReLU -> pool -> CBAM): on the
            # signed BN output the int8 model lost agreement (docs/results.md)
            y = keras.layers.ReLU(name=f"{name}_relu_b")(y)
            y = CBAM(ratio=16, kernel_size=5, name=f"{name}_cbam")(y)
            x = keras.layers.Add(name=f"{name}_add")([y, shortcut])
            x = keras.layers.ReLU(name=f"{name}_out")(x)
    return keras.Model(inputs, _gap_head(x, dropout, num_classes), name="dsconv_cbam_res")


def _gap_head(x: Any, dropout: float, num_classes: int) -> Any:
    """Global average pooling, optional dropout, then the logits/softmax classifier."""
    import keras

    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="dropout")(x)
    return classifier_output(x, num_classes)


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
    outputs = classifier_output(x, num_classes)
    return keras.Model(inputs, outputs, name="mobilenetv2")


ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "dsconv_cbam": dsconv_cbam,
    "dsconv_cbam_bn": dsconv_cbam_bn,
    "dsconv_cbam_gap": dsconv_cbam_gap,
    "mlp": mlp,
    "mobilenetv2": mobilenetv2,
    "resnet18": resnet18,
    "dsconv_cbam_res": dsconv_cbam_res,
}

NO_IMAGENET_DEVIATION = (
    "no ImageNet weights: the backbone was trained from scratch (--backbone-weights none), "
    "not the paper's frozen ImageNet MobileNetV2"
)


def architecture_names() -> list[str]:
    return list(ARCHITECTURES)


def check_option_values(options: dict) -> None:
    """Ranges of the numeric builder options, checked before any data is read (Keras would
    refuse some only when the layer is built, and with its own words)."""
    dropout = options.get("dropout")
    if dropout is not None and not 0.0 <= float(dropout) < 1.0:
        raise ArchitectureError(f"--dropout must be in [0, 1) (the share of features dropped "
                                f"in training), got {dropout}")
    momentum = options.get("bn_momentum")
    if momentum is not None and not 0.0 < float(momentum) < 1.0:
        raise ArchitectureError(f"--bn-momentum must be between 0 and 1, got {momentum}")
    width = options.get("width")
    if width is not None and int(width) < 1:
        raise ArchitectureError(f"--width must be a positive number of filters, got {width}")
    hidden = options.get("hidden_units")
    if hidden is not None and (not len(hidden) or any(int(u) < 1 for u in hidden)):
        raise ArchitectureError(f"--mlp-hidden takes positive layer widths like 256,128, "
                                f"got {','.join(map(str, hidden))}")


def _check_options(arch: str, builder: Callable[..., keras.Model], options: dict) -> None:
    accepted = [p.name for p in inspect.signature(builder).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise ArchitectureError(
            f"architecture {arch!r} does not take option(s) {', '.join(unknown)}; it takes {takes}"
        )
    check_option_values(options)


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
