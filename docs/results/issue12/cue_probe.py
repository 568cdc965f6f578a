"""Which picture property turns a tumour answer into "notumor"? A counterfactual probe.

    python docs/results/issue12/cue_probe.py ../shared/data/brain-tumor-mri [MODEL_DIR ...]
    python docs/results/issue12/cue_probe.py --dedup docs/leakage/dedup_test.txt DATA [MODEL ...]
    python docs/results/issue12/cue_probe.py --rows third DATA [MODEL ...]

``--dedup LIST``: only the Testing pictures the leakage audit found no twin of in Training
(most of the others are near-copies of training pictures, which a model knows by heart).
``--rows TEXT``: only the changes whose name contains one of TEXT's comma-separated parts.

The shortcut audit (docs/shortcuts.md) found that Br35H's tumour pictures differ from the
data set's tumour pictures in storage and look: they are brighter (95th percentile 0.98
against 0.65-0.73), more tightly framed (the head fills 94 % of the frame), rarely square
(median aspect 0.85) and smaller, re-encoded JPEGs (median width 283, quality 75). This
probe changes one such property at a time on the official **Testing** tumour pictures
(glioma, meningioma, pituitary: never Br35H, which stays a check) and counts how many the
model then calls "notumor", through the agent's own path (``edge.classifier.Classifier``,
default configuration; the answer is the top class, review flags aside).

A property whose change sends many tumours to "notumor" is one the model reads as "no
tumour": that is what a training recipe has to take away. The last column is the control:
the same change on the Testing ``notumor`` pictures, and how many stay "notumor". The two
background changes ask the heat-map's question (docs/trust.md): does a glioma answer
survive when what lies outside the head is made the same for every class? The reference
changes give each picture something of another picture: a Testing ``notumor`` picture's
grey-level histogram or Fourier amplitude (its look), or, as their control, the amplitude of
a tumour picture of another class. The synthetic-lesion change draws what the ``lesion``
recipe trains with (``trainer.lesions``) into every picture: on the ``notumor`` pictures
its last column is the share of drawn lesions the model does not see.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from edge.classifier import Classifier
from edge.config import AgentConfig
from edge.inputs import DecodedImage, decode_file

TUMOURS = ("glioma", "meningioma", "pituitary")


def _grey(picture: Image.Image) -> Image.Image:
    return picture.convert("L")


def head_box(picture: Image.Image, level: int = 25) -> tuple[int, int, int, int]:
    """The bounding box of pixels brighter than ``level`` (the head), as (left, top, right,
    bottom); the whole picture when nothing is."""
    grey = np.asarray(_grey(picture))
    rows = np.flatnonzero((grey > level).any(axis=1))
    cols = np.flatnonzero((grey > level).any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0, 0, picture.width, picture.height
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def brighter(picture: Image.Image) -> Image.Image:
    """Stretch the grey levels so that the 95th percentile lands at 0.98 (Br35H's median)."""
    grey = np.asarray(_grey(picture), dtype=np.float32) / 255
    p95 = max(float(np.percentile(grey, 95)), 1e-3)
    out = np.clip(grey * (0.98 / p95), 0, 1)
    return Image.fromarray((out * 255 + 0.5).astype(np.uint8))


def tight(picture: Image.Image) -> Image.Image:
    """Crop to the head's bounding box, 3 % margin: the head fills the frame."""
    left, top, right, bottom = head_box(picture)
    mx, my = round(0.03 * (right - left)), round(0.03 * (bottom - top))
    return picture.crop((max(0, left - mx), max(0, top - my),
                         min(picture.width, right + mx), min(picture.height, bottom + my)))


def narrow(picture: Image.Image) -> Image.Image:
    """Width 0.85 of the height (Br35H's median aspect); the model stretches it back."""
    return picture.resize((max(8, round(picture.height * 0.85)), picture.height),
                          Image.BILINEAR)


def small_jpeg(picture: Image.Image) -> Image.Image:
    """Longest side 283 px, re-encoded as JPEG quality 75 (Br35H's medians)."""
    factor = 283 / max(picture.size)
    small = picture.resize((max(8, round(picture.width * factor)),
                            max(8, round(picture.height * factor))), Image.BILINEAR)
    buffer = io.BytesIO()
    small.convert("RGB").save(buffer, format="JPEG", quality=75)
    buffer.seek(0)
    with Image.open(buffer) as reencoded:
        return reencoded.convert("RGB")


def inverted(picture: Image.Image) -> Image.Image:
    """Grey levels inverted inside the head (the background stays black): a crude turn of a
    T1-weighted contrast into a T2-like one, where fluid is bright."""
    from trainer.augment import head_mask

    grey = np.asarray(_grey(picture), dtype=np.float32) / 255
    out = np.where(head_mask(grey), 1.0 - grey, grey)
    return Image.fromarray((out * 255 + 0.5).astype(np.uint8))


def framed(picture: Image.Image) -> Image.Image:
    """A thin white rectangle around the picture, 2 % in from its edge, as many Br35H
    pictures have (a viewer's frame kept in the export)."""
    from PIL import ImageDraw

    out = _grey(picture).copy()
    w, h = out.size
    inset, width = round(0.02 * max(w, h)), max(1, round(0.006 * max(w, h)))
    ImageDraw.Draw(out).rectangle((inset, inset, w - 1 - inset, h - 1 - inset), outline=255,
                                  width=width)
    return out


def marked(picture: Image.Image) -> Image.Image:
    """A small white letter in the top-left corner, as a viewer's orientation mark."""
    from PIL import ImageDraw, ImageFont

    out = _grey(picture).copy()
    w, h = out.size
    size = max(8, round(0.06 * max(w, h)))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        font = ImageFont.load_default()
    ImageDraw.Draw(out).text((round(0.03 * w), round(0.02 * h)), "V", fill=255, font=font)
    return out


def _background(picture: Image.Image, fill) -> Image.Image:
    """The picture with its background (``trainer.augment.background_mask``: large dark
    areas) replaced by ``fill(grey, mask)``."""
    from trainer.augment import background_mask

    grey = np.asarray(_grey(picture), dtype=np.float32) / 255
    mask = background_mask(grey)
    out = grey.copy()
    out[mask] = fill(grey, mask)
    return Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))


def background_black(picture: Image.Image) -> Image.Image:
    """The background set to pure black: what differs between the classes' backgrounds
    (the glioma pictures' is darker and smoother: docs/trust.md, the heat-map) is gone."""
    return _background(picture, lambda grey, mask: 0.0)


def background_refilled(picture: Image.Image) -> Image.Image:
    """The background refilled as the ``background`` recipe does in training (a grey level,
    a ramp, noise: ``trainer.augment.refill_background``), with a generator seeded by the
    picture's size so that every run draws the same fill."""
    from trainer.augment import refill_background

    grey = np.asarray(_grey(picture), dtype=np.float32) / 255
    rng = np.random.default_rng(picture.width * 100_003 + picture.height)
    out = refill_background(grey.copy(), rng)
    return Image.fromarray((out * 255 + 0.5).astype(np.uint8))


def match_grey_levels(picture: Image.Image, reference: Image.Image) -> Image.Image:
    """The head's grey levels (``trainer.augment.head_mask``) sent through the monotonic
    curve that gives them the reference head's histogram (quantile mapping): what is
    brighter stays brighter, so a bright mass stays the brightest thing in the head, but
    the levels' distribution becomes the reference's. The background is kept."""
    from trainer.augment import head_mask

    grey = np.asarray(_grey(picture), dtype=np.float32) / 255
    ref = np.asarray(_grey(reference), dtype=np.float32) / 255
    head, ref_head = head_mask(grey), head_mask(ref)
    if not head.any() or not ref_head.any():
        return picture
    levels = np.linspace(0.0, 1.0, 257)
    source_q = np.quantile(grey[head], levels)
    target_q = np.quantile(ref[ref_head], levels)
    # strictly increasing knots for np.interp (flat stretches of equal levels)
    source_q = source_q + np.arange(257) * 1e-7
    out = grey.copy()
    out[head] = np.interp(grey[head], source_q, target_q)
    return Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))


def swap_amplitude(picture: Image.Image, reference: Image.Image, band: float = 1.0,
                   share: float = 1.0) -> Image.Image:
    """The picture's Fourier amplitude moved towards the reference's, its phase kept (the
    style transfer of Fourier domain adaptation, Yang and Soatto 2020, and of amplitude mix,
    Xu et al. 2021): phase carries the shapes, amplitude much of the look (contrast,
    texture, grain). ``band``: the share of the spectrum, around its centre, whose
    amplitude is changed (1: all of it); ``share``: how far towards the reference."""
    grey = np.asarray(_grey(picture), dtype=np.float32) / 255
    ref = np.asarray(_grey(reference).resize(picture.size, Image.BILINEAR),
                     dtype=np.float32) / 255
    f, g = np.fft.fftshift(np.fft.fft2(grey)), np.fft.fftshift(np.fft.fft2(ref))
    amplitude, phase = np.abs(f), np.angle(f)
    h, w = grey.shape
    bh, bw = max(1, round(h * band / 2)), max(1, round(w * band / 2))
    cy, cx = h // 2, w // 2
    window = (slice(max(0, cy - bh), cy + bh), slice(max(0, cx - bw), cx + bw))
    amplitude[window] = (1 - share) * amplitude[window] + share * np.abs(g)[window]
    out = np.real(np.fft.ifft2(np.fft.ifftshift(amplitude * np.exp(1j * phase))))
    return Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))


def _third_black(picture: Image.Image, top: bool) -> Image.Image:
    grey = np.array(_grey(picture))
    third = grey.shape[0] // 3
    if top:
        grey[:third] = 0
    else:
        grey[grey.shape[0] - third:] = 0
    return Image.fromarray(grey)


def lower_third_black(picture: Image.Image) -> Image.Image:
    """The bottom third of the picture black: in sagittal and coronal slices the skull base,
    the sella and the neck, where the occlusion probe's strongest square lay for many glioma
    answers (docs/results/issue12/lesion_localisation_probe.py). Its control: the top third."""
    return _third_black(picture, top=False)


def upper_third_black(picture: Image.Image) -> Image.Image:
    return _third_black(picture, top=True)


def with_lesion(picture: Image.Image, seed: int, kind: str | None = None) -> Image.Image:
    """A synthetic lesion drawn into the grey picture at its own size, as the ``lesion``
    recipe draws them in training (``trainer.lesions.synthetic_lesion``; ``kind`` forces
    one of its kinds at the same place and shape); unchanged when the head has no room."""
    from trainer.lesions import synthetic_lesion

    grey = np.asarray(_grey(picture), dtype=np.float32) / 255
    drawn = synthetic_lesion(grey, np.random.default_rng(seed), kind=kind)
    if drawn is None:
        return picture
    return Image.fromarray((drawn[0] * 255 + 0.5).astype(np.uint8))


def every(picture: Image.Image) -> Image.Image:
    return small_jpeg(narrow(tight(brighter(picture))))


CHANGES = {
    "none": lambda p: p,
    "brighter (p95 -> 0.98)": brighter,
    "tight frame (head fills it)": tight,
    "narrow (aspect 0.85)": narrow,
    "small JPEG (283 px, q75)": small_jpeg,
    "all four": every,
    "inverted inside the head": inverted,
    "white frame line": framed,
    "corner letter": marked,
    "background black": background_black,
    "background refilled (as in training)": background_refilled,
    "lower third black (skull base, neck)": lower_third_black,
    "upper third black (the control)": upper_third_black,
}


def main(data: Path, models: list[str | None], only: set[str] | None = None,
         rows: list[str] | None = None) -> None:
    pictures: list[tuple[str, DecodedImage]] = []
    config = AgentConfig()
    for label in (*TUMOURS, "notumor"):
        for path in sorted((data / "Testing" / label).glob("*")):
            if only is not None and f"Testing/{label}/{path.name}" not in only:
                continue
            pictures.append((label, decode_file(path, config.dicom, config.limits)))
    n = {t: sum(1 for known, _ in pictures if known == t) for t in (*TUMOURS, "notumor")}
    # Grey levels of a no-tumour picture: each picture gets the head histogram of a
    # Testing notumor picture drawn by a fixed generator (a notumor picture another one's).
    references = [d.picture for label, d in pictures if label == "notumor"]
    draw = np.random.default_rng(0).integers(0, max(len(references), 1), len(pictures))
    own = {id(d.picture): i for i, (_, d) in enumerate(pictures)}

    def reference_for(picture: Image.Image) -> Image.Image:
        ref = references[draw[own[id(picture)]]]
        if ref is picture:
            ref = references[(draw[own[id(picture)]] + 1) % len(references)]
        return ref

    # The control for the amplitude change: a tumour picture of another class (for a
    # notumor picture, any tumour picture), drawn by the same generator.
    label_of = {id(d.picture): label for label, d in pictures}
    tumour_pictures = [(label, d.picture) for label, d in pictures if label in TUMOURS]

    def tumour_reference_for(picture: Image.Image) -> Image.Image:
        others = [p for label, p in tumour_pictures if label != label_of[id(picture)]]
        return others[draw[own[id(picture)]] % len(others)]

    changes = dict(CHANGES)
    if len(references) >= 2:
        changes["grey levels of a notumor picture (histogram matched)"] = (
            lambda p: match_grey_levels(p, reference_for(p)))
        changes["low-frequency amplitude of a notumor picture (Fourier, band 0.1)"] = (
            lambda p: swap_amplitude(p, reference_for(p), band=0.1))
        changes["half-way to a notumor picture's amplitude (Fourier, all of it)"] = (
            lambda p: swap_amplitude(p, reference_for(p), share=0.5))
    if len({label for label, _ in tumour_pictures}) >= 2:
        changes["low-frequency amplitude of another class's tumour picture (band 0.1)"] = (
            lambda p: swap_amplitude(p, tumour_reference_for(p), band=0.1))
    # A synthetic lesion (what the lesion recipe trains with), drawn with a generator
    # seeded by the picture's place in the list: on a notumor picture, "notumor still
    # notumor" is then the share of drawn lesions the model misses.
    changes["a synthetic lesion drawn in (trainer.lesions)"] = (
        lambda p: with_lesion(p, own[id(p)]))
    for kind in ("ring", "solid", "diffuse", "dark"):
        changes[f"a synthetic lesion drawn in, every one {kind}"] = (
            lambda p, kind=kind: with_lesion(p, own[id(p)], kind))
    if rows:
        changes = {name: change for name, change in changes.items()
                   if name == "none" or any(part in name for part in rows)}
    tumours = sum(n[t] for t in TUMOURS)
    print(f"{tumours} Testing tumour pictures ("
          + ", ".join(f"{n[t]} {t}" for t in TUMOURS) + f"), {n['notumor']} notumor\n")
    for model in models:
        cfg = config if model is None else config.override("paths", model=model)
        classifier = Classifier(cfg)
        print(f"### {classifier.manifest.name} {classifier.manifest.version}\n")
        print("| change | tumours called notumor | " + " | ".join(TUMOURS)
              + " | tumours still right | still right: " + " / ".join(TUMOURS)
              + " | notumor still notumor |")
        print("|---|---:|" + "---:|" * len(TUMOURS) + "---:|---:|---:|")
        for name, change in changes.items():
            notumor = {t: 0 for t in n}
            right = {t: 0 for t in n}
            for label, decoded in pictures:
                changed = DecodedImage(decoded.kind, change(decoded.picture))
                answer = classifier.classify(changed, heatmap="none").label
                notumor[label] += answer == "notumor"
                right[label] += answer == label
            print(f"| {name} | {sum(notumor[t] for t in TUMOURS) / tumours:.1%} | "
                  + " | ".join(f"{notumor[t] / n[t]:.1%}" for t in TUMOURS)
                  + f" | {sum(right[t] for t in TUMOURS) / tumours:.1%} | "
                  + " / ".join(f"{100 * right[t] / max(n[t], 1):.1f}" for t in TUMOURS)
                  + f" | {notumor['notumor'] / n['notumor']:.1%} |")
        print()


if __name__ == "__main__":
    args = sys.argv[1:]
    listed, rows = None, None
    while args[:1] in (["--dedup"], ["--rows"]) and len(args) >= 2:
        if args[0] == "--dedup":
            listed = {line.strip() for line in Path(args[1]).read_text().splitlines()
                      if line.strip() and not line.startswith("#")}
        else:
            rows = [part for part in args[1].split(",") if part]
        args = args[2:]
    if not args or args[0] in ("-h", "--help"):
        sys.exit(__doc__)
    if not (Path(args[0]) / "Testing").is_dir():
        sys.exit(f"{args[0]}: no Testing folder there; give the data set's folder "
                 "(../shared/data/brain-tumor-mri). Usage:\n" + __doc__)
    main(Path(args[0]), args[1:] or [None], listed, rows)
