"""Synthetic lesions painted into no-tumour slices (the ``lesion`` augmentation policy).

Why: in this data set every glioma is a figshare picture (square, stored at 256 x 256) and
90 % of the no-tumour pictures come from the web-collected sources Br35H's pictures come
from (docs/shortcuts.md). The part of the data that looks like Br35H holds no glioma at all,
so a network learns "looks like that source" as "no tumour", and calls Br35H's tumours "no
tumour". Re-weighting cannot fill an empty class-by-source cell, and the data set has no
lesion masks to cut real tumours out with. A procedurally drawn lesion can go where no real
one was: into a no-tumour slice of exactly those sources. Synthetic tumours drawn from
simple shape and intensity rules have trained detectors nearly as well as real annotated
ones in CT (Hu et al., "Label-free liver tumor segmentation", CVPR 2023); this is that idea
for a classifier, with the label saying only what is known.

The label: a painted slice is "a tumour, class unknown": its target is spread evenly over
the tumour classes (for glioma / meningioma / notumor / pituitary: 1/3, 1/3, 0, 1/3). The
loss then pushes "notumor" down without teaching the network that a drawn blob is any
particular tumour.

What is drawn (on the float grey picture, before the strong policy's warps, re-encoding and
intensity changes, so those act on the lesion as on the anatomy around it):

- a place inside the head, away from its edge (the scalp and skull): ``brain_mask`` eroded
  by ``EDGE_MARGIN`` of the side;
- sometimes mass effect: the tissue around the centre pushed outwards (a radial warp);
- an irregular shape: an ellipse of radius ``RADIUS`` of the side, axis ratio ``ASPECT``,
  its outline perturbed by low harmonics;
- one of four appearances, each relative to the slice's own grey levels (so a T1 slice and a
  T2 slice get lesions of their own contrast): ``ring`` (a bright enhancing rim round a
  darker core: a glioblastoma or metastasis on T1 with contrast), ``solid`` (a bright,
  evenly enhancing mass: a meningioma), ``diffuse`` (a bright area with soft edges: a
  tumour with oedema on T2 or FLAIR), ``dark`` (a darker mass, sometimes with a thin rim: a
  tumour on T1 without contrast);
- sometimes a halo of oedema around it, brighter or darker;
- a grainy texture and a soft edge, so the lesion is not flatter or sharper than the
  anatomy.

Pure numpy and scipy: backend-neutral, seeded by the batch's generator like every other
policy (``trainer.batches``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

P_LESION = 0.3  # share of the no-tumour pictures of a batch that get a lesion
EDGE_MARGIN = 0.08  # the lesion's centre at least this share of the side inside the head
RADIUS = (0.04, 0.15)  # of the picture's side (224 px: 9 to 34 px)
ASPECT = (0.6, 1.0)
HARMONICS = 4  # outline perturbation: cos(k theta) for k = 2 .. 1 + HARMONICS
HARMONIC_AMPLITUDE = 0.25  # the k-th harmonic's amplitude drawn from [0, this / k]
P_MASS_EFFECT, MASS_EFFECT = 0.6, (0.1, 0.4)
KINDS = ("ring", "solid", "diffuse", "dark")
KIND_P = (0.35, 0.25, 0.25, 0.15)
P_OEDEMA, OEDEMA_WIDTH = 0.5, (0.3, 1.0)  # halo width, in radii
TEXTURE = (0.05, 0.25)  # grain amplitude, a share of the slice's median grey level
EDGE_SOFTNESS = (0.5, 2.5)  # Gaussian sigma of the edge, in pixels


def lesion_class(augment: str, labels: Sequence[str]) -> int | None:
    """The index of "no tumour" that a lesion policy paints into, None for other policies;
    an OptionError when a lesion policy meets labels without that class."""
    from trainer.augment import LESION_POLICIES
    from trainer.errors import OptionError
    from trainer.reweight import NEGATIVE_CLASS

    if augment not in LESION_POLICIES:
        return None
    if NEGATIVE_CLASS not in labels:
        raise OptionError(f"--augment {augment} draws synthetic lesions into the "
                          f"'{NEGATIVE_CLASS}' pictures, and this data set has no such class "
                          f"(classes: {', '.join(labels)}); choose another recipe")
    return list(labels).index(NEGATIVE_CLASS)


@dataclass(frozen=True)
class Lesion:
    """What was drawn: for tests, contact sheets and the run record."""

    kind: str
    centre: tuple[int, int]  # (row, column)
    radius: float  # pixels
    mask: np.ndarray  # bool (H, W): where the lesion (not its halo) lies


def brain_mask(grey: np.ndarray) -> np.ndarray:
    """Where a float grey picture (H, W) in [0, 1] shows the head, robust to a grey, noisy
    background (where ``trainer.augment.head_mask``, a fixed dark threshold, takes the
    background for head): the smoothed picture above half its Otsu threshold, the largest
    connected part, holes filled."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(grey.astype(np.float32), 2.0)
    counts, edges = np.histogram(smooth, bins=64, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * centres)
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - total * mean) ** 2 / (weight * (total - weight))
    if np.all(np.isnan(between[:-1])):  # one grey level: nothing to tell apart
        return np.zeros(grey.shape, dtype=bool)
    threshold = float(centres[int(np.nanargmax(between[:-1]))])
    labels, count = ndimage.label(smooth > threshold / 2)
    if count == 0:
        return np.zeros(grey.shape, dtype=bool)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def _levels(grey: np.ndarray, head: np.ndarray) -> tuple[float, float, float]:
    """The head's grey levels: a dark one (5th percentile), the median, a bright one (99th)."""
    values = grey[head]
    low, mid, high = np.percentile(values, [5, 50, 99])
    return float(low), float(mid), float(max(high, mid + 0.05))


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Zero-mean, unit-scale smooth noise (Gaussian-filtered white noise)."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / np.float32(max(float(field.std()), 1e-6))


def _mass_effect(grey: np.ndarray, head: np.ndarray, centre: tuple[int, int], radius: float,
                 strength: float) -> np.ndarray:
    """Tissue pushed away from ``centre``: each pixel of the head samples the picture nearer
    the centre, by up to ``strength`` of its distance at the lesion and fading over a few
    radii. The background does not move."""
    from scipy import ndimage

    h, w = grey.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    rho = np.sqrt(dy * dy + dx * dx)
    pull = strength * np.exp(-(rho / (2.0 * radius)) ** 2)
    coords = np.stack([centre[0] + dy * (1.0 - pull), centre[1] + dx * (1.0 - pull)])
    warped = ndimage.map_coordinates(grey, coords, order=1, mode="nearest").astype(np.float32)
    # where a pixel would move by less than a twentieth of a pixel it keeps its value: far
    # from the lesion nothing changes, not even by interpolation
    return np.where(head & (pull * rho > 0.05), warped, grey)


def synthetic_lesion(grey: np.ndarray, rng: np.random.Generator,
                     head: np.ndarray | None = None,
                     kind: str | None = None) -> tuple[np.ndarray, Lesion] | None:
    """``grey`` (float (H, W) in [0, 1]) with one synthetic lesion drawn inside the head: a new
    array and what was drawn; None when the head is too small to hold one (the picture is
    then left alone, and keeps its label). ``kind``: one of ``KINDS`` (default: drawn with
    probabilities ``KIND_P``)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    from scipy import ndimage

    h, w = grey.shape
    side = min(h, w)
    if head is None:
        head = brain_mask(grey)
    margin = max(1, round(EDGE_MARGIN * side))
    inner = ndimage.binary_erosion(head, iterations=margin)
    places = np.flatnonzero(inner)
    if len(places) < side:  # not even a line's worth of room: a sliver of head, or none
        return None
    cy, cx = divmod(int(places[rng.integers(len(places))]), w)
    radius = float(rng.uniform(*RADIUS)) * side
    low, mid, high = _levels(grey, head)

    out = grey.astype(np.float32, copy=True)
    if rng.random() < P_MASS_EFFECT:
        out = _mass_effect(out, head, (cy, cx), radius, float(rng.uniform(*MASS_EFFECT)))

    # the outline: r(theta) of an ellipse, perturbed by low harmonics
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    aspect = rng.uniform(*ASPECT)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / aspect
    theta = np.arctan2(v, u)
    outline = np.ones_like(theta)
    for k in range(2, 2 + HARMONICS):
        outline += np.float32(rng.uniform(0, HARMONIC_AMPLITUDE / k)) * np.cos(
            k * theta + np.float32(rng.uniform(0, 2 * math.pi)))
    d = np.sqrt(u * u + v * v) / (radius * outline)  # < 1 inside the lesion

    drawn_kind = str(rng.choice(KINDS, p=KIND_P))  # drawn either way: the same generator
    kind = kind or drawn_kind  # state leads to the same place and shape for every kind
    grain = np.float32(rng.uniform(*TEXTURE) * mid) * _smooth_noise((h, w), rng, 1.5)
    # enhancing tissue: towards the slice's brightest, and well above its median even where
    # nothing in the slice is much brighter than brain
    bright = min(1.0, max(mid + rng.uniform(0.6, 1.05) * (high - mid),
                          mid * rng.uniform(1.4, 2.0)))
    if kind == "ring":
        rim = rng.uniform(0.25, 0.55)  # rim thickness, in radii
        # the core: necrosis or fluid, darker than brain on T1, brighter on T2
        core = rng.uniform(0.3, 0.8) * mid if rng.random() < 0.7 else rng.uniform(mid, high)
        level = np.where(d > 1.0 - rim, bright, core)
    elif kind == "solid":
        level = np.full_like(d, bright)
    elif kind == "diffuse":
        level = np.full_like(d, min(1.0, max(mid + rng.uniform(0.5, 1.0) * (high - mid),
                                             mid * rng.uniform(1.3, 1.8))))
    else:  # dark
        level = np.full_like(d, rng.uniform(0.35, 0.75) * mid)
        if rng.random() < 0.5:  # a thin enhancing rim
            level = np.where(d > 0.8, mid + rng.uniform(0.4, 0.9) * (high - mid), level)
    level = level + grain

    softness = float(rng.uniform(*EDGE_SOFTNESS))
    if kind == "diffuse":
        softness *= 2.0
    inside = ndimage.gaussian_filter((d < 1.0).astype(np.float32), softness)
    inside *= ndimage.gaussian_filter(head.astype(np.float32), 1.0)  # never onto the background

    if rng.random() < P_OEDEMA:
        width = rng.uniform(*OEDEMA_WIDTH)
        halo = np.clip((1.0 + width - d) / width, 0.0, 1.0) * (d >= 1.0)
        halo = ndimage.gaussian_filter(halo.astype(np.float32), 2.0) * head
        towards = rng.uniform(0.6, 0.9) * high if rng.random() < 0.6 else low
        shift = np.float32(rng.uniform(0.2, 0.5)) * (towards - out)
        out = out + halo * shift
    out = out * (1.0 - inside) + level.astype(np.float32) * inside
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32), Lesion(kind, (cy, cx), radius, inside > 0.5)


def paint_lesions(images: np.ndarray, targets: np.ndarray, negative: int,
                  rng: np.random.Generator, p: float = P_LESION,
                  target: str = "uniform") -> tuple[np.ndarray, np.ndarray]:
    """A batch (uint8 (N, H, W, 3), one-hot float targets (N, C)) with a lesion drawn into
    about ``p`` of its ``negative`` (no-tumour) pictures, whose targets become "a tumour,
    class unknown": ``target`` "uniform", evenly spread over the other classes (for the
    ordinary cross-entropy), or "any", 1 on each of them (the set of classes it may be, for
    ``trainer.losses.SetCrossentropy``). New arrays; the inputs are left alone (they are the
    training cache). The same pictures are painted the same way for either target."""
    if target not in ("uniform", "any"):
        raise ValueError(f"target must be 'uniform' or 'any', got {target!r}")
    images = np.array(images, copy=True)
    targets = np.array(targets, dtype=np.float32, copy=True)
    classes = targets.shape[1]
    if classes < 2:
        raise ValueError("a lesion needs at least one tumour class besides 'no tumour'")
    tumour = np.full(classes, 1.0 if target == "any" else 1.0 / (classes - 1),
                     dtype=np.float32)
    tumour[negative] = 0.0
    for i in np.flatnonzero(targets[:, negative] == 1.0):
        if rng.random() >= p:
            continue
        drawn = lesion_in_picture(images[i], rng)
        if drawn is None:
            continue
        images[i] = drawn[0]
        targets[i] = tumour
    return images, targets


def lesion_in_picture(image: np.ndarray, rng: np.random.Generator,
                      kind: str | None = None) -> tuple[np.ndarray, Lesion] | None:
    """``synthetic_lesion`` for a uint8 (H, W, 3) picture: the lesion is drawn on its grey
    levels and the same change added to every channel (a grey picture stays grey, a colour
    one keeps its tint); a new uint8 picture and what was drawn, None when there is no room."""
    picture = image.astype(np.float32) * np.float32(1 / 255)
    grey = picture.mean(axis=2)
    drawn = synthetic_lesion(grey, rng, kind=kind)
    if drawn is None:
        return None
    painted, lesion = drawn
    change = (painted - grey)[..., None]
    return np.clip((picture + change) * 255 + 0.5, 0, 255).astype(np.uint8), lesion
