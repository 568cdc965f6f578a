"""Named training recipes: the paper's, and a robust one for pictures from other sources.

A recipe is a set of defaults; every option given on the command line overrides its
recipe's value, and run.json records both the recipe and the values used.

- ``paper``: the paper's Table 3 setting, exactly: 35 epochs, batch 64, Adam (1e-3, beta
  0.9 / 0.99, epsilon 1e-7) at a constant learning rate, categorical cross-entropy, no
  augmentation.
- ``strong``: what made a from-scratch ResNet-18 generalize in issue 12's measurements:
  geometry (rotation +-15 degrees, scale +-15 %, shift +-16 %, flip), intensity (gamma,
  contrast, brightness, blur, noise) and acquisition changes (lower resolution, JPEG
  re-encoding) (``trainer.augment.strong_batch``); AdamW (weight decay 0.02); 3 warm-up epochs,
  then cosine decay; label smoothing 0.1; 40 epochs.
- ``background``: ``strong``, with the background around the head refilled in 70 % of the
  pictures (``trainer.augment.refill_background``): made when the ``strong`` model's class
  activation map seemed to read its glioma answers off that background; a counterfactual
  test later showed the answers do not depend on it (docs/shortcuts.md).
- ``contrast``: ``background``, with the grey levels inside the head remapped by a random
  curve in half the pictures (``trainer.augment.remap_contrast``): the shipped ``strong``
  model is sensitive to the MR contrast (docs/shortcuts.md). One CPU run did worse than
  ``strong`` on every test set (docs/results.md); kept to reproduce that, not to ship.
- ``fourier``: ``strong``, with the low-frequency Fourier amplitude of half the pictures
  moved towards another picture's (``trainer.augment.mix_amplitude``): the shipped model
  calls most tumours "notumor" once they take on another picture's look (docs/shortcuts.md).
- ``lesion``: ``strong``, with a synthetic lesion drawn into 30 % of the no-tumour pictures,
  labelled "a tumour, class unknown" (``trainer.lesions``): tumours where the data set has
  none, in the no-tumour sources' pictures that Br35H's resemble (docs/shortcuts.md).
- ``lesion-any``: ``lesion``, with the painted pictures' label the *set* of tumour classes
  ("one of them") under the set-valued cross-entropy (``trainer.losses``), instead of 1/3
  on each: the network is asked for "not no-tumour" and nothing more. The ``lesion`` models
  had not learned their own lesions (docs/results.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from trainer.errors import OptionError

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
AUGMENTATIONS = ("none", "light", "strong", "background", "contrast", "fourier", "lesion",
                 "lesion-any")
# The cosine schedule ends at this share of the peak learning rate, not at 0: a run
# extended with --resume --epochs N still learns.
COSINE_FLOOR = 0.01


@dataclass(frozen=True)
class Recipe:
    """Training defaults (the TrainConfig fields a recipe sets)."""

    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    beta_1: float
    beta_2: float
    weight_decay: float
    schedule: str
    warmup_epochs: float
    label_smoothing: float
    augment: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    "paper": Recipe(epochs=35, batch_size=64, optimizer="adam", learning_rate=1e-3, beta_1=0.9,
                    beta_2=0.99, weight_decay=0.0, schedule="constant", warmup_epochs=0.0,
                    label_smoothing=0.0, augment="none"),
    "strong": Recipe(epochs=40, batch_size=64, optimizer="adamw", learning_rate=1e-3,
                     beta_1=0.9, beta_2=0.999, weight_decay=0.02, schedule="cosine",
                     warmup_epochs=3.0, label_smoothing=0.1, augment="strong"),
    "background": Recipe(epochs=40, batch_size=64, optimizer="adamw", learning_rate=1e-3,
                         beta_1=0.9, beta_2=0.999, weight_decay=0.02, schedule="cosine",
                         warmup_epochs=3.0, label_smoothing=0.1, augment="background"),
    "contrast": Recipe(epochs=40, batch_size=64, optimizer="adamw", learning_rate=1e-3,
                       beta_1=0.9, beta_2=0.999, weight_decay=0.02, schedule="cosine",
                       warmup_epochs=3.0, label_smoothing=0.1, augment="contrast"),
    "fourier": Recipe(epochs=40, batch_size=64, optimizer="adamw", learning_rate=1e-3,
                      beta_1=0.9, beta_2=0.999, weight_decay=0.02, schedule="cosine",
                      warmup_epochs=3.0, label_smoothing=0.1, augment="fourier"),
    "lesion": Recipe(epochs=40, batch_size=64, optimizer="adamw", learning_rate=1e-3,
                     beta_1=0.9, beta_2=0.999, weight_decay=0.02, schedule="cosine",
                     warmup_epochs=3.0, label_smoothing=0.1, augment="lesion"),
    "lesion-any": Recipe(epochs=40, batch_size=64, optimizer="adamw", learning_rate=1e-3,
                         beta_1=0.9, beta_2=0.999, weight_decay=0.02, schedule="cosine",
                         warmup_epochs=3.0, label_smoothing=0.1, augment="lesion-any"),
}
RECIPE_HELP = {
    "paper": "the paper's Table 3: Adam 1e-3 (0.9/0.99), constant rate, 35 epochs, "
             "no augmentation",
    "strong": "geometry, intensity, resolution and JPEG augmentation; AdamW (wd 0.02); "
              "3 warm-up epochs + cosine decay; label smoothing 0.1; 40 epochs",
    "background": "strong, and the background around the head refilled (grey level, noise, "
                  "ramp) in 70% of the pictures",
    "contrast": "background, and the grey levels inside the head remapped by a random curve "
                "(an inversion or a random piecewise-linear one) in 50% of the pictures "
                "(did worse than strong on every test set: kept to reproduce that, not to "
                "ship)",
    "fourier": "strong, and in 50% of the pictures the low-frequency Fourier amplitude moved "
               "towards another picture's (its look; the phase, its shapes, kept)",
    "lesion": "strong, and a synthetic lesion drawn into 30% of the no-tumour pictures, "
              "then labelled 'a tumour, class unknown' (evenly over the tumour classes)",
    "lesion-any": "lesion, the painted pictures labelled 'one of the tumour classes' under "
                  "the set-valued cross-entropy instead of 1/3 on each",
}


def resolve(recipe: str, given: dict[str, Any]) -> dict[str, Any]:
    """The recipe's values with every option in ``given`` (not None) put over them.

    A run shorter than the recipe's warm-up (and no --warmup-epochs given) gets the warm-up
    scaled to the recipe's share of the run (3 of 40 epochs for ``strong``).
    """
    if recipe not in RECIPES:
        raise OptionError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    base = RECIPES[recipe]
    values = base.to_dict()
    unknown = sorted(set(given) - set(values))
    if unknown:
        raise OptionError(f"not a recipe setting: {', '.join(unknown)}")
    values.update({k: v for k, v in given.items() if v is not None})
    if given.get("warmup_epochs") is None and values["warmup_epochs"] >= values["epochs"]:
        # a short run (--epochs 1 for a rehearsal): the recipe's warm-up keeps its share
        values["warmup_epochs"] = values["epochs"] * base.warmup_epochs / base.epochs
    return values


def deviations(recipe: str, values: dict[str, Any]) -> list[str]:
    """How the settings used differ from the paper's recipe (for run.json's deviations)."""
    paper = RECIPES["paper"].to_dict()
    changed = [f"{key} {values[key]!r} (paper: {paper[key]!r})" for key in paper
               if key in values and values[key] != paper[key]]
    if not changed:
        return []
    return [f"training recipe {recipe!r}, not the paper's: " + ", ".join(changed)]


def validate(values: dict[str, Any]) -> None:
    """Ranges of the recipe settings (TrainConfig.validate checks the rest)."""
    checks = [
        (values["optimizer"] in OPTIMIZERS,
         f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {values['optimizer']!r}"),
        (values["schedule"] in SCHEDULES,
         f"--schedule must be one of {', '.join(SCHEDULES)}, got {values['schedule']!r}"),
        (values["augment"] in AUGMENTATIONS,
         f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {values['augment']!r}"),
        (0 <= values["weight_decay"] < float("inf"),
         f"--weight-decay must be a finite number, 0 or more, got {values['weight_decay']}"),
        (values["optimizer"] == "adamw" or values["weight_decay"] == 0,
         "--weight-decay needs --optimizer adamw (Adam's L2 is not decoupled weight decay)"),
        (values["warmup_epochs"] >= 0 and values["warmup_epochs"] < values["epochs"],
         f"--warmup-epochs must be at least 0 and less than --epochs ({values['epochs']}), "
         f"got {values['warmup_epochs']}"),
        (0 <= values["label_smoothing"] < 1,
         f"--label-smoothing must be in [0, 1), got {values['label_smoothing']}"),
    ]
    for ok, message in checks:
        if not ok:
            raise OptionError(message)
