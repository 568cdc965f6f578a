"""The parameters of preprocessing, as the model manifest records them.

Standard library only, like ``edge.manifest`` which embeds it: a manifest can be read and
checked on a machine without NumPy or Pillow (a build server, an installer). The functions
that apply these parameters to pixels are in ``edge.preprocess``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class PreprocessSpec:
    """How to turn an 8-bit picture into a float tensor for the model.

    ``resize="stretch"`` resizes to ``size`` without keeping the aspect ratio (what the
    paper and Keras' ``image_dataset_from_directory`` do). Grayscale pictures are
    replicated into three channels; colour pictures are kept as RGB. The result is
    ``pixel * scale + offset``: with the defaults, [0, 1].
    """

    height: int = 224
    width: int = 224
    resize: str = "stretch"
    interpolation: str = "bilinear"
    color: str = "rgb"
    grayscale_to_rgb: str = "replicate"
    scale: float = 1.0 / 255.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        for key in ("height", "width"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"preprocess {key} must be a whole number, got {value!r}")
        for key in ("scale", "offset"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                    math.isfinite(value)):
                raise ValueError(f"preprocess {key} must be a finite number, got {value!r}")
        for key in ("resize", "interpolation", "color", "grayscale_to_rgb"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"preprocess {key} must be a name, got {getattr(self, key)!r}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"preprocess size must be positive, got {self.height}x{self.width}")
        if self.resize != "stretch":
            raise ValueError(f"unknown resize mode {self.resize!r}; supported: 'stretch'")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; "
                f"supported: {', '.join(sorted(INTERPOLATIONS))}"
            )
        if self.color != "rgb" or self.grayscale_to_rgb != "replicate":
            raise ValueError("only color='rgb' with grayscale_to_rgb='replicate' is supported")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        if not isinstance(data, dict):
            raise ValueError(f"preprocess must be an object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocess keys: {', '.join(sorted(unknown))}")
        return cls(**data)


DEFAULT_SPEC = PreprocessSpec()
