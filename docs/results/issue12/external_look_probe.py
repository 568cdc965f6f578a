"""Does giving the external tumour pictures a training collection's look make them found?

    python docs/results/issue12/external_look_probe.py ../shared/data/brain-tumor-mri [MODEL_DIR]

Each picture of ``../shared/data/br35h-tumour/tumour`` gets the low-frequency Fourier
amplitude (within 5 % of the side's length of zero frequency; ``cue_probe.swap_amplitude``)
of a Testing tumour picture, then of a Testing ``notumor`` picture (each drawn by a fixed
generator), and is classified through the agent's own path, no heat-map. Prints how many
are called "notumor" and how many answers changed either way. A measurement on the
external check, never a choice made with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cue_probe import TUMOURS, swap_amplitude  # noqa: E402

from edge.classifier import Classifier  # noqa: E402
from edge.config import AgentConfig  # noqa: E402
from edge.decoded import DecodedImage  # noqa: E402
from edge.inputs import decode_file  # noqa: E402


def main(data: Path, model: str | None) -> None:
    config = AgentConfig()
    classifier = Classifier(config if model is None else config.override("paths", model=model))

    def load(folder: Path) -> list:
        return [decode_file(p, config.dicom, config.limits).picture
                for p in sorted(folder.glob("*")) if p.is_file()]

    def answer(picture) -> str:
        return classifier.classify(DecodedImage("png", picture), heatmap="none").label

    from trainer.external import default_external_dirs

    found_dirs = default_external_dirs()
    if not found_dirs:
        sys.exit("no ../shared/data/br35h-tumour beside the checkout")
    external = load(found_dirs[0] / "tumour")
    pools = {"tumour": [p for c in TUMOURS for p in load(data / "Testing" / c)],
             "notumor": load(data / "Testing" / "notumor")}
    base = [answer(p) for p in external]
    missed = sum(a == "notumor" for a in base)
    print(f"{classifier.manifest.name} {classifier.manifest.version}: {len(external)} "
          f"external tumour pictures, {missed} called notumor unchanged")
    rng = np.random.default_rng(0)
    for name, pool in pools.items():
        draws = rng.integers(0, len(pool), len(external))
        changed = [answer(swap_amplitude(p, pool[d], band=0.1))
                   for p, d in zip(external, draws, strict=True)]
        found = sum(a == "notumor" and b != "notumor" for a, b in zip(base, changed, strict=True))
        lost = sum(a != "notumor" and b == "notumor" for a, b in zip(base, changed, strict=True))
        print(f"- with a Testing {name} picture's low-frequency amplitude: "
              f"{sum(b == 'notumor' for b in changed)} called notumor ({found} of the "
              f"{missed} missed now found, {lost} of the {len(external) - missed} found now "
              "missed)")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
