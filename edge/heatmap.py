"""Where the answer came from, drawn over the picture the model saw.

By default (``[report] heatmap = "occlusion"``) the map is measured, not read off the model:
the picture is shown to the model again with one cell of a 7 x 7 grid blacked out at a
time, and each cell gets how much the answer's margin over the runner-up fell
(``occlusion_map``; Zeiler and Fergus, 2014). It costs 49 more runs of the model and needs no
gradients and nothing from the model but its answer, and a cell lights up only if the
answer needed what lies there. Black is what an MR scanner records where there is no
signal, so a blacked-out cell is a region with nothing in it, not a foreign patch.

``[report] heatmap = "model"`` shows a map that is an output of the model itself
(``manifest.trust.heatmap``), at no extra cost. For the shipped residual model that map is
not where the answer comes from: its peaks sit on the picture's margin for most glioma
answers, while blacking out that margin changes nothing and blacking out the cell the
occlusion map picks moves the margin three to eight times as much
(docs/trust.md#the-heat-map).

With ``model``, a model whose classifier reads the global average of its last feature map
gets the class activation map (``class_activation``, Zhou et al. 2016): at each position, the
feature map weighted by the classifier's weights of the answered class, whose mean over
positions is that class's logit (less its bias), shown as its difference from the same
map averaged over the training images. A CBAM model without such a head shows
its last block's spatial attention, the weight it gave each position of its last feature
map (``spatial_attention``, values 0..1); a ``feature_map`` output alone is shown by its
mean activation per position. The
map is stretched to its own range, resized to the model's input (bilinear), coloured and
blended over the thumbnail; the report keeps where it peaks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from . import png

# A perceptually ordered dark-blue -> red -> yellow ramp (stops of matplotlib's "inferno",
# which the device does not have), interpolated linearly.
_STOPS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                   [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def spatial_map(output: np.ndarray, kind: str,
                activation: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The model's (H, W, C) output as one (H, W) map scaled to 0..1 (all zeros if flat).

    ``class_activation`` needs ``activation``: the classifier's (C,) weights of the answered
    class and that class's (H, W) mean map over the training images. The map is the weighted
    sum over channels at each position, less that mean: what is particular to this picture,
    not what every picture shares (such as the borders the convolutions padded)."""
    value = np.asarray(output, dtype=np.float64)
    if value.ndim != 3:
        raise ValueError(f"a heat-map output must be (H, W, C), got shape {value.shape}")
    if kind == "class_activation":
        weights, baseline = activation if activation is not None else (None, None)
        if np.shape(weights) != (value.shape[2],) or np.shape(baseline) != value.shape[:2]:
            raise ValueError(f"a class activation map needs {value.shape[2]} class weights and "
                             f"a {value.shape[0]} x {value.shape[1]} mean map")
        heat = value @ np.asarray(weights, dtype=np.float64) - baseline
    elif kind == "spatial_attention":
        heat = value[..., 0]
    else:
        heat = np.maximum(value, 0).mean(axis=2)
    low, high = float(heat.min()), float(heat.max())
    if not np.isfinite(low) or not np.isfinite(high) or high - low < 1e-12:
        return np.zeros(heat.shape)
    return (heat - low) / (high - low)


OCCLUSION_GRID = 7  # cells per side; 32 x 32 pixels each at 224 x 224


def answer_margin(probabilities: np.ndarray, outputs: dict[str, np.ndarray],
                  index: int) -> float:
    """How strongly the model prefers class ``index``: its logit less the best other logit,
    or, for a model without a logits output, the log-odds of its probability."""
    logits = outputs.get("logits")
    if logits is not None:
        values = np.asarray(logits, dtype=np.float64).reshape(-1)
        return float(values[index] - np.max(np.delete(values, index)))
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), 1 / 512, 1 - 1 / 512)
    return float(np.log(p[index]) - np.log1p(-p[index]))


def occlusion_map(pixels: np.ndarray, margin: Callable[[np.ndarray], float],
                  grid: int = OCCLUSION_GRID) -> tuple[np.ndarray, float]:
    """The (grid, grid) occlusion map of the (H, W, 3) uint8 model input ``pixels``, scaled to
    0..1, and the largest fall of the margin (in ``margin``'s units).

    ``margin(pixels)`` runs the model and returns the answer's margin. Each cell is set to
    black in turn; its value is how much the margin fell. A cell whose removal strengthened
    the answer counts as 0, and a map where no cell weakened it is all zeros (flat)."""
    pixels = np.array(pixels, dtype=np.uint8, copy=True)
    height, width = pixels.shape[:2]
    base = margin(pixels)
    fall = np.zeros((grid, grid))
    for r in range(grid):
        top, bottom = r * height // grid, (r + 1) * height // grid
        for c in range(grid):
            left, right = c * width // grid, (c + 1) * width // grid
            kept = pixels[top:bottom, left:right].copy()
            pixels[top:bottom, left:right] = 0
            fall[r, c] = base - margin(pixels)
            pixels[top:bottom, left:right] = kept
    largest = float(fall.max())
    if not np.isfinite(largest) or largest <= 1e-9:  # nothing weakened it (or a broken run)
        return np.zeros((grid, grid)), 0.0
    return np.clip(fall, 0.0, None) / largest, largest


def resize_map(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    image = Image.fromarray(np.asarray(heat, dtype=np.float32))
    return np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float64)


def peak(heat: np.ndarray) -> dict[str, float]:
    """Where the map is highest, as fractions of the picture's width (x) and height (y),
    measured to the centre of the map's cell."""
    rows, cols = heat.shape
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return {"x": round((c + 0.5) / cols, 4), "y": round((r + 0.5) / rows, 4)}


def _ramp() -> np.ndarray:
    position = np.linspace(0.0, 1.0, 256) * (len(_STOPS) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(_STOPS) - 1)
    t = (position - low)[:, None]
    return np.rint(_STOPS[low] * (1 - t) + _STOPS[high] * t).astype(np.uint8)


_LUT = _ramp()  # 256 colours, so a whole picture is coloured by one table look-up


def overlay(picture: np.ndarray, heat: np.ndarray, strength: float = 0.55) -> np.ndarray:
    """The map blended over the (H, W, 3) uint8 picture (or an (H, W) grey one): colour
    grows with the square of the map, so the anatomy stays readable where the model looked
    least. Each output pixel is one look-up in a table of every (map level, pixel value)
    blend, made once per strength: the agent does this for every input."""
    picture = np.asarray(picture, dtype=np.uint8)
    height, width = picture.shape[:2]
    level = np.rint(np.clip(resize_map(heat, height, width), 0.0, 1.0) * 255).astype(np.uint8)
    table = _BLENDS[strength]  # (256 levels x 256 pixel values, 3 channels), flat
    index = level.astype(np.intp) * 256
    if picture.ndim == 2:
        return table.take(index + picture, axis=0)
    if bool((picture[..., 0] == picture[..., 1]).all()
            and (picture[..., 0] == picture[..., 2]).all()):
        return table.take(index + picture[..., 0], axis=0)  # grey as RGB: every MR scan
    # (flat indices: much faster than indexing with two or three arrays)
    return table.ravel().take((index[..., None] + picture) * 3 + _CHANNELS)


_CHANNELS = np.arange(3, dtype=np.intp)


def scale_colours(steps: int = 11, grey: int = 128) -> list[str]:
    """The colours ``overlay`` paints a ``grey`` pixel at ``steps`` levels from the map's
    lowest to its highest, as CSS hex colours: the pages' colour scale, drawn by the code
    that draws the map, so that it cannot drift from it. Over mid-grey tissue, not as the
    bare ramp: the colour is laid on more thinly the lower the level, so the low end of
    the scale is the picture itself, as it is on the map."""
    levels = np.linspace(0.0, 1.0, steps)[None, :]
    painted = overlay(np.full((1, steps), grey, dtype=np.uint8), levels)[0]
    return ["#" + "".join(f"{int(v):02x}" for v in colour) for colour in painted]


def _blend_table(strength: float) -> np.ndarray:
    """``(picture * (256 - alpha) + colour * alpha) >> 8`` for every level and pixel value,
    with ``alpha`` (0..256) growing with the square of the level."""
    alpha = np.rint(256 * strength * np.linspace(0.0, 1.0, 256) ** 2).astype(np.uint16)
    values = np.arange(256, dtype=np.uint16)
    blended = (values[None, :, None] * (256 - alpha)[:, None, None]
               + _LUT[:, None, :].astype(np.uint16) * alpha[:, None, None]) >> 8
    return blended.astype(np.uint8).reshape(256 * 256, 3)


class _BlendTables(dict):
    def __missing__(self, strength: float) -> np.ndarray:
        table = _blend_table(strength)
        self[strength] = table
        return table


_BLENDS = _BlendTables()


def png_bytes(pixels: np.ndarray) -> bytes:
    """The drawn heat-map as PNG bytes: the file beside the report and the page's picture."""
    return png.encode(np.asarray(pixels, dtype=np.uint8))
