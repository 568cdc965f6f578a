"""The architecture registry without Keras: names, what each is, how it departs from the paper.

The CLI's ``--arch`` choices come from here (``--help`` must not wait for Keras); the
builders are in ``trainer.models``, which holds exactly one builder per name listed here
(a test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchitectureInfo:
    """What a registered architecture is, and how and why it departs from the paper.

    ``paper_family``: the paper's DSConv-CBAM with its 12.9 M-parameter Flatten head (the
    GPU campaign returns the best of these whole: 51 MB each).
    """

    summary: str
    deviations: tuple[str, ...] = ()
    paper_family: bool = False


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
        "CBAM r=16 k=5) -> Flatten -> Dense(128) -> Dense(4 softmax). Padding 'same'.",
        paper_family=True),
    "dsconv_cbam_bn": ArchitectureInfo(
        "DSConv-CBAM with batch normalization in each separable-convolution block.",
        (_BN_REASON,), paper_family=True),
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
    "resnet18": ArchitectureInfo(
        "ResNet-18 from scratch (He et al. 2016): 7x7/2 stem -> 3x3/2 max-pool -> 4 stages x 2 "
        "basic residual blocks (64, 128, 256, 512 filters at --width 64) -> "
        "GlobalAveragePooling -> Dense(4 softmax). No ImageNet weights.",
        ("not in the paper: a deeper from-scratch residual network, measured (issue 12) to "
         "absorb augmentation and generalize to other sources better than the paper's model",
         "BatchNormalization momentum 0.9 (Keras' default is 0.99; see dsconv_cbam_bn)")),
    "dsconv_cbam_res": ArchitectureInfo(
        "The paper's idea scaled up: 3x3/2 stem -> 4 stages (64, 128, 256, 512 filters at "
        "--width 32; 2, 2, 3, 2 blocks) of residual blocks (SeparableConv2D -> BN -> ReLU -> "
        "SeparableConv2D -> BN -> ReLU -> CBAM r=16 k=5, plus the shortcut) -> "
        "GlobalAveragePooling -> Dropout -> Dense(4 softmax).",
        (_BN_REASON,
         "scaled DSConv-CBAM: more and wider separable blocks with residual connections and "
         "CBAM in every block, strided convolutions instead of max-pooling, and a "
         "GlobalAveragePooling head instead of Flatten -> Dense(128): the paper's 3-block "
         "model with its Flatten head did not absorb augmentation (issue 12)")),
}

