"""Training-time augmentation, off in the paper's recipe.

Pure numpy and Pillow on the batches the data stream builds, drawn from a generator seeded by
(seed, epoch, batch), so an augmented run is as reproducible, and as resumable, as a plain
one, and it runs the same under every Keras backend (no TensorFlow or JAX ops involved).

Two policies:

- ``light`` (``--augment light``, the old ``--augment``): left-right flip, a shift of up to
  8 % of the side, brightness/contrast jitter of up to 10 %, on the scaled [0, 1] image.
- ``strong`` (``--recipe strong``): what another scanner, another hospital or another
  export pipeline changes. On the 8-bit picture: one affine warp (rotation +-15 degrees,
  scale +-15 %, shift +-16 % of the side, left-right flip), sometimes a lower acquisition
  resolution (down- and up-sampled), a JPEG re-encoding at quality 30-90 and a blur; then
  on the float image a gamma in [1/1.6, 1.6], contrast +-25 %, brightness +-0.1 and
  sometimes Gaussian noise.
- ``background`` (``--recipe background``): ``strong``, and in most pictures the large dark
  area around the head (the background) refilled with another grey level, noise and a
  gentle ramp, before the intensity changes. The shipped ``strong`` model took most of its
  glioma evidence from that area (docs/shortcuts.md): the data set's collections differ
  in how dark and how noisy it is, tumours do not.
- ``contrast`` (``--recipe contrast``): ``background``, and in half the pictures the grey
  levels inside the head remapped by a random curve (sometimes an inversion, otherwise a
  random piecewise-linear curve, not necessarily monotonic). The data set's tumour classes
  are mostly T1-weighted contrast-enhanced slices and its ``notumor`` class mostly other
  sequences; the ``strong`` model reads the sequence: inverting the grey levels inside the
  head sends 46 % of the Testing tumours to "notumor" (docs/results/issue12/cue_probe.py).
  With the contrast remapped at random the sequence no longer tells the class, and the
  network has to use what a tumour looks like in shape and texture (the idea of random
  intensity remapping in contrast-agnostic MRI work such as SynthSeg and GIN). Tried once
  (docs/results.md): worse on every test set, Br35H included; kept for reproduction.
- ``fourier`` (``--recipe fourier``): ``strong``, and in half the pictures the low
  frequencies of the Fourier amplitude moved towards those of another picture of the batch
  (any class), the phase kept (amplitude mix: Fourier domain adaptation, Yang and Soatto
  2020; Xu et al. 2021). Phase carries the shapes, low-frequency amplitude much of a
  collection's look (shading, contrast, background grain). Given another picture's
  low-frequency amplitude, 50-68 % of the Testing tumour pictures become "notumor" for the
  shipped model (docs/shortcuts.md): its tumour answers do not survive a change of look,
  which is how a new hospital's tumours can be missed. Mixed at random across classes, the
  look says nothing about the class, and a tumour answer has to survive it.
- ``lesion`` (``--recipe lesion``): ``strong``, after a synthetic lesion has been drawn into
  30 % of the no-tumour pictures, which are then labelled "a tumour, class unknown"
  (``trainer.lesions``): the only way here to put tumours into the part of the data set
  that looks like Br35H, which holds none of the data set's gliomas.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

MAX_SHIFT = 0.08
MAX_JITTER = 0.10

# The strong policy (probabilities per picture, ranges of the uniform draws).
ROTATION_DEG = 15.0
SCALE = 0.15
SHIFT = 0.16
GAMMA = 1.6
CONTRAST = 0.25
BRIGHTNESS = 0.10
P_LOW_RESOLUTION, LOW_RESOLUTION = 0.25, (0.35, 0.85)
P_JPEG, JPEG_QUALITY = 0.3, (30, 90)
P_BLUR, BLUR_RADIUS = 0.2, (0.3, 1.2)
P_NOISE, NOISE_SIGMA = 0.2, (0.005, 0.03)
# The background policy: what counts as background (darker than this, in a dark area at least
# BACKGROUND_AREA pixels across), and what it is refilled with.
P_BACKGROUND = 0.7
BACKGROUND_BELOW = 0.05
BACKGROUND_AREA = 9
BACKGROUND_LEVEL = (0.0, 0.15)
BACKGROUND_NOISE = (0.0, 0.06)
BACKGROUND_RAMP = (0.0, 0.08)
# The contrast policy: how often the head's grey levels are remapped, how often the curve is
# an inversion (with its ends jittered), how many knots a random curve has, and the range
# its ends must span at least (so that the remapped head keeps some contrast).
P_CONTRAST = 0.5
HEAD_ABOVE = 0.06
P_INVERT = 0.3
CONTRAST_KNOTS = (3, 7)  # drawn from [3, 7): 3 to 6 knots
CONTRAST_LOW, CONTRAST_HIGH = (0.0, 0.2), (0.7, 1.0)
# The fourier policy: how often a picture takes on another's low-frequency amplitude, the
# half-width of the central band changed (a share of each side of the centred spectrum),
# and how far towards the other picture's amplitude.
P_FOURIER = 0.5
FOURIER_BAND = (0.02, 0.12)
FOURIER_SHARE = (0.5, 1.0)


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate with zero fill (the background of a skull-stripped slice is black)."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    src_y, dst_y = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h),
                                                                       slice(0, h + dy))
    src_x, dst_x = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w),
                                                                       slice(0, w + dx))
    out[dst_y, dst_x] = image[src_y, src_x]
    return out


def augment_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The light policy: flipped, shifted, intensity-jittered copies of float images in [0, 1]."""
    out = np.empty_like(images)
    h, w = images.shape[1:3]
    for i, image in enumerate(images):
        if rng.random() < 0.5:
            image = image[:, ::-1]
        dy = int(rng.integers(-int(MAX_SHIFT * h), int(MAX_SHIFT * h) + 1))
        dx = int(rng.integers(-int(MAX_SHIFT * w), int(MAX_SHIFT * w) + 1))
        image = _shift(image, dy, dx)
        contrast = 1.0 + rng.uniform(-MAX_JITTER, MAX_JITTER)
        brightness = rng.uniform(-MAX_JITTER, MAX_JITTER)
        out[i] = np.clip(image * contrast + brightness, 0.0, 1.0)
    return out


def _affine(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate, scale, shift and maybe mirror about the centre, bilinear, black fill."""
    w, h = picture.size
    angle = math.radians(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    scale = rng.uniform(1 - SCALE, 1 + SCALE)
    tx, ty = rng.uniform(-SHIFT, SHIFT) * w, rng.uniform(-SHIFT, SHIFT) * h
    flip = -1.0 if rng.random() < 0.5 else 1.0
    # Output pixel (x, y) samples the input at the inverse map: Pillow wants that inverse.
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    cx, cy = w / 2, h / 2
    a, b = flip * cos, sin
    d, e = -flip * sin, cos
    ox, oy = cx + tx, cy + ty
    c = cx - a * ox - b * oy
    f = cy - d * ox - e * oy
    return picture.transform((w, h), Image.AFFINE, (a, b, c, d, e, f),
                             resample=Image.BILINEAR, fillcolor=0)


def _acquisition(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Sometimes a lower resolution, a JPEG re-encoding, a blur: another export pipeline."""
    w, h = picture.size
    if rng.random() < P_LOW_RESOLUTION:
        factor = rng.uniform(*LOW_RESOLUTION)
        small = picture.resize((max(8, round(w * factor)), max(8, round(h * factor))),
                               Image.BILINEAR)
        picture = small.resize((w, h), Image.BILINEAR)
    if rng.random() < P_JPEG:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=int(rng.integers(*JPEG_QUALITY)))
        buffer.seek(0)
        with Image.open(buffer) as reencoded:
            picture = reencoded.convert(picture.mode)
    if rng.random() < P_BLUR:
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(*BLUR_RADIUS)))
    return picture


def background_mask(x: np.ndarray) -> np.ndarray:
    """Where a float picture (H, W) or (H, W, 3) in [0, 1] is background: darker than
    ``BACKGROUND_BELOW`` and inside a dark area at least ``BACKGROUND_AREA`` pixels across (a
    minimum filter of the dark mask's complement), so that thin dark structures inside the
    head stay."""
    from scipy import ndimage

    grey = x if x.ndim == 2 else x.mean(axis=2)
    dark = grey < BACKGROUND_BELOW
    # a pixel is kept when no bright pixel lies within the window: dark all around it
    # (scipy's maximum filter, 20x faster than Pillow's MaxFilter and equal to it, edges
    # included: tests/trainer/test_trainer_recipes.py)
    area = ~ndimage.maximum_filter(~dark, size=BACKGROUND_AREA, mode="nearest")
    # grow the kept core back by the same window, within the dark mask
    grown = ndimage.maximum_filter(area, size=BACKGROUND_AREA, mode="nearest")
    return grown & dark


def refill_background(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x`` (float, in [0, 1]) with its background replaced by a random grey level, Gaussian
    noise and a linear ramp in a random direction (in place; returned)."""
    mask = background_mask(x)
    if not mask.any():
        return x
    h, w = mask.shape
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:1:complex(0, h), 0:1:complex(0, w)].astype(np.float32)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) * np.float32(rng.uniform(*BACKGROUND_RAMP))
    fill = ramp + np.float32(rng.uniform(*BACKGROUND_LEVEL))
    fill += rng.standard_normal((h, w), dtype=np.float32) * np.float32(
        rng.uniform(*BACKGROUND_NOISE))
    np.clip(fill, 0.0, 1.0, out=fill)
    if x.ndim == 3:
        x[mask] = fill[mask][:, None]
    else:
        x[mask] = fill[mask]
    return x


def contrast_curve(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random grey-level curve on [0, 1] as knots (x, y) for ``np.interp``: an inversion
    (``P_INVERT``) or a piecewise-linear curve through 3-6 random levels, stretched so that
    its lowest and highest levels lie in ``CONTRAST_LOW`` and ``CONTRAST_HIGH``."""
    if rng.random() < P_INVERT:
        xs = np.array([0.0, 1.0], dtype=np.float32)
        ys = np.array([1.0, 0.0], dtype=np.float32)
    else:
        knots = int(rng.integers(*CONTRAST_KNOTS))
        xs = np.linspace(0.0, 1.0, knots, dtype=np.float32)
        ys = rng.uniform(0.0, 1.0, knots).astype(np.float32)
    low, high = rng.uniform(*CONTRAST_LOW), rng.uniform(*CONTRAST_HIGH)
    span = float(ys.max() - ys.min())
    if span < 1e-6:  # a flat draw: make it a ramp
        ys = xs.copy()
        span = 1.0
    ys = (ys - ys.min()) / np.float32(span) * np.float32(high - low) + np.float32(low)
    return xs, ys.astype(np.float32)


def head_mask(x: np.ndarray) -> np.ndarray:
    """Where a float picture (H, W) or (H, W, 3) in [0, 1] shows the head: everything but the
    dark areas (mean over 5 x 5 pixels below ``HEAD_ABOVE``) that touch the picture's edge.
    Dark structures inside the head (fluid, a necrotic core) belong to it, and so do noise
    specks outside it that a pixel threshold would cut out of the background."""
    from scipy import ndimage

    grey = x if x.ndim == 2 else x.mean(axis=2)
    dark = ndimage.uniform_filter(grey, size=5, mode="nearest") < HEAD_ABOVE
    labels, _ = ndimage.label(dark)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return ~np.isin(labels, edge[edge > 0])


def remap_contrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x`` (float, in [0, 1]) with the grey levels of the head (``head_mask``) sent through
    ``contrast_curve`` (in place; returned). The background keeps its levels: the head stays
    a head on its frame."""
    head = head_mask(x)
    xs, ys = contrast_curve(rng)
    x[head] = np.interp(x[head], xs, ys).astype(np.float32)
    return x


def _low_band(h: int, w: int, band: float) -> tuple[np.ndarray, slice]:
    """Rows and columns of an (h, w) picture's real FFT (``scipy.fft.rfft2`` layout, not
    shifted) within ``band`` of each side of the zero frequency."""
    bh, bw = max(1, round(h * band)), max(1, round(w * band))
    rows = np.r_[0:min(bh + 1, h), max(bh + 1, h - bh):h]
    return rows, slice(0, min(bw + 1, w // 2 + 1))


def mix_amplitude(x: np.ndarray, reference: np.ndarray, band: float,
                  share: float) -> np.ndarray:
    """``x`` (float (H, W) or (H, W, 3) in [0, 1]) with the amplitude of its spectrum's low
    frequencies (within ``band`` of each side of zero) moved ``share`` of the way to
    ``reference``'s (grey (H, W)), its phase kept; clipped to [0, 1]. A new array."""
    from scipy import fft

    h, w = x.shape[:2]
    rows, cols = _low_band(h, w, band)
    target = np.abs(fft.rfft2(reference)[rows, cols])
    spectrum = fft.rfft2(x, axes=(0, 1))
    part = spectrum[rows, cols]
    amplitude = np.abs(part)
    if x.ndim == 3:
        target = target[..., None]
    mixed = (1.0 - share) * amplitude + share * target
    spectrum[rows, cols] = mixed * np.exp(1j * np.angle(part))
    out = fft.irfft2(spectrum, s=(h, w), axes=(0, 1))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def strong_picture(pixels: np.ndarray, rng: np.random.Generator,
                   out: np.ndarray | None = None, background: bool = False,
                   contrast: bool = False, reference: np.ndarray | None = None) -> np.ndarray:
    """One uint8 (H, W, 3) picture -> augmented float32 (H, W, 3) in [0, 1] (into ``out``);
    ``background``: the background policy (the strong one, and the background refilled);
    ``contrast``: and the head's grey levels remapped (the contrast policy); ``reference``
    (uint8 (H, W, 3), another picture): the fourier policy, which sometimes gives this
    picture the reference's low-frequency amplitude."""
    grey = bool(np.array_equal(pixels[..., 0], pixels[..., 1])
                and np.array_equal(pixels[..., 1], pixels[..., 2]))
    picture = Image.fromarray(np.ascontiguousarray(pixels[..., 0]) if grey else pixels)
    picture = _acquisition(_affine(picture, rng), rng)
    x = np.asarray(picture, dtype=np.float32) * np.float32(1 / 255)
    if reference is not None and rng.random() < P_FOURIER:
        ref = reference.mean(axis=2, dtype=np.float32) * np.float32(1 / 255)
        x = mix_amplitude(x, ref, rng.uniform(*FOURIER_BAND), rng.uniform(*FOURIER_SHARE))
    if background or contrast:
        x = np.array(x)  # writable
    if contrast and rng.random() < P_CONTRAST:
        # the same remapping for a grey picture's three channels: it stays grey
        remap_contrast(x, rng)
    if background and rng.random() < P_BACKGROUND:
        refill_background(x, rng)
    gamma = math.exp(rng.uniform(-math.log(GAMMA), math.log(GAMMA)))
    np.power(x, np.float32(gamma), out=x)
    contrast = np.float32(1.0 + rng.uniform(-CONTRAST, CONTRAST))
    mean = np.float32(x.mean())
    x -= mean
    x *= contrast
    x += mean + np.float32(rng.uniform(-BRIGHTNESS, BRIGHTNESS))
    if rng.random() < P_NOISE:
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        noise *= np.float32(rng.uniform(*NOISE_SIGMA))
        x += noise
    np.clip(x, 0.0, 1.0, out=x)
    if out is None:
        out = np.empty(pixels.shape, dtype=np.float32)
    out[...] = x[..., None] if grey else x
    return out


# The policies built on the strong one, as strong_batch's flags: the one place that knows
# which policy adds what (the batches and the worker count read it).
STRONG_POLICIES: dict[str, dict[str, bool]] = {
    "strong": {},
    "background": {"background": True},
    "contrast": {"background": True, "contrast": True},
    "fourier": {"fourier": True},
    "lesion": {},  # strong, after trainer.lesions has painted lesions into the batch
    "lesion-any": {},  # the same, the lesions labelled as a set (trainer.losses)
}
# The policies that change labels too: synthetic lesions in no-tumour pictures
# (trainer.lesions.paint_lesions, called by trainer.batches before the strong policy), and
# the target a painted picture gets: "uniform" (1/3 on each tumour class, the ordinary
# cross-entropy) or "any" (the set of tumour classes, trainer.losses.SetCrossentropy).
LESION_POLICIES: dict[str, str] = {"lesion": "uniform", "lesion-any": "any"}


def strong_batch(images: np.ndarray, rng: np.random.Generator,
                 background: bool = False, contrast: bool = False,
                 fourier: bool = False) -> np.ndarray:
    """The strong policy on uint8 pictures (N, H, W, 3), with ``background`` the background
    one, with both flags the contrast one, with ``fourier`` the fourier one (each picture's
    reference another picture of the batch): float32 in [0, 1]."""
    out = np.empty(images.shape, dtype=np.float32)
    partners = None
    if fourier and len(images) > 1:  # a cyclic shift of a permutation: never itself
        order = rng.permutation(len(images))
        partners = np.empty(len(images), dtype=np.int64)
        partners[order] = np.roll(order, 1)
    for i, image in enumerate(images):
        strong_picture(image, rng, out[i], background=background, contrast=contrast,
                       reference=None if partners is None else images[partners[i]])
    return out
