"""``python -m converters.rule MODEL_DIR ...``: the shipping rule of docs/results.md, as code.

Which converted model ships as the agent's default is decided by a rule written before
the models it judges were trained (docs/results.md, "The shipping rule"):

1. **Candidates**: int8 models that passed the converter's gate at its default bounds
   (accuracy drop at most 1 point, top-1 agreement with the float model at least 98 %),
   loaded and ran in ai-edge-litert and, required, in tflite-runtime 2.14, and score at least
   97.5 % on the whole official test split (int8).
2. **Choice**: the candidate that finds the most Br35H tumours
   (``../shared/data/br35h-tumour``, int8 tumour sensitivity); ties: the higher
   deduplicated accuracy, then the higher official one.
3. **No candidate**: the shipped model stays.

Everything it reads is in each model's manifest (``model.json``), written by
``python -m converters.tflite`` and ``python -m converters.score --record``, and each model
file is checked against its sha256 first, so what is judged is what would ship. The
shipped model (``edge/models``) is a candidate like the others unless ``--no-shipped``.
Issue 12's targets (official >= 98.5 %, deduplicated >= 96 %, Br35H >= 90 %, agreement >= 99 %)
are judged apart, on the pick: the rule does not look at them.

Nothing is copied or shipped: the command says which model the rule picks and why every
other one is out or behind. Exit codes: 0 judged (a pick, or none); 64 bad options.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from converters.errors import EX_CANTCREAT, EX_USAGE
from converters.gate import Thresholds

__all__ = ["EXTERNAL_NAME", "MIN_OFFICIAL", "TARGETS", "Judged", "judge", "pick", "main"]

MIN_OFFICIAL = 97.5
# the converter's gate at its default bounds, which the rule names
MAX_DROP = Thresholds().max_drop_pp
MIN_AGREEMENT = Thresholds().min_agreement_pct
EXTERNAL_NAME = "br35h-tumour"
TFLITE_RUNTIME = "2.14"
# Issue 12's targets for the shipped default, judged on the pick, not used to pick it.
TARGETS = (("official", 98.5), ("deduplicated", 96.0), ("br35h", 90.0), ("agreement", 99.0))


@dataclass
class Judged:
    """One model under the rule: its figures (int8, percent) and why it is out, if it is."""

    folder: Path
    name: str = "?"
    version: str = "?"
    official: float | None = None
    deduplicated: float | None = None
    br35h: float | None = None
    found: str = ""
    agreement: float | None = None
    n: int | None = None
    external_n: int | None = None  # the Br35H pictures its sensitivity was measured on
    out: list[str] = field(default_factory=list)
    shipped: bool = False

    @property
    def key(self) -> tuple[float, float, float]:
        return (self.br35h or 0.0, self.deduplicated or 0.0, self.official or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "name": self.name, "version": self.version,
                "shipped": self.shipped, "official_pct": self.official,
                "deduplicated_pct": self.deduplicated, "br35h_sensitivity_pct": self.br35h,
                "br35h_found": self.found, "top1_agreement_pct": self.agreement,
                "test_images": self.n, "br35h_images": self.external_n,
                "candidate": not self.out, "out": self.out}


def _runtime(manifest: Any, name: str) -> dict[str, Any] | None:
    return next((r for r in manifest.verified_runtimes if r.get("name") == name), None)


def judge(folder: Path, shipped: bool = False) -> Judged:
    """Read and check one model folder against rule 1 (each reason it fails is kept)."""
    from edge.errors import EdgeError
    from edge.manifest import load_verified

    judged = Judged(Path(folder), shipped=shipped)
    try:
        manifest, _ = load_verified(folder)
    except EdgeError as exc:  # no manifest, invalid, or a model file that does not match
        judged.out.append(str(exc))
        return judged
    metrics = manifest.metrics
    judged.name, judged.version = manifest.name, manifest.version
    judged.official = metrics.get("quantized_accuracy_pct")
    judged.deduplicated = (metrics.get("dedup") or {}).get("quantized_accuracy_pct")
    judged.agreement = metrics.get("top1_agreement_pct")
    judged.n = metrics.get("n")
    external = next((e for e in metrics.get("external") or []
                     if e.get("name") == EXTERNAL_NAME), None)
    if external is not None and external.get("quantized_tumour_sensitivity_pct") is not None:
        judged.br35h = float(external["quantized_tumour_sensitivity_pct"])
        images = int(external.get("tumour_images") or 0)
        judged.found = f"{round(judged.br35h * images / 100)} of {images}" if images else ""
        judged.external_n = images

    out = judged.out
    if manifest.quantization != "int8":
        out.append(f"quantization {manifest.quantization}, not int8")
    if metrics.get("eval_set") != "Testing":
        out.append(f"measured on {metrics.get('eval_set')!r}, not the official Testing split")
    drop = metrics.get("accuracy_drop_pp")
    if drop is None or drop > MAX_DROP + 1e-9:
        out.append(f"int8 costs {drop} points against its float model (at most {MAX_DROP:g})")
    if judged.agreement is None or judged.agreement < MIN_AGREEMENT - 1e-9:
        out.append(f"top-1 agreement with its float model {judged.agreement} % "
                   f"(at least {MIN_AGREEMENT:g} %)")
    if _runtime(manifest, "ai-edge-litert") is None:
        out.append("not verified in ai-edge-litert")
    tflite_runtime = _runtime(manifest, "tflite-runtime")
    if "tflite-runtime" not in (manifest.thresholds.get("required_runtimes") or []) or (
            tflite_runtime is None):
        out.append("tflite-runtime was not required at conversion (convert with "
                   "--require-runtime tflite-runtime)")
    elif not str(tflite_runtime.get("version", "")).startswith(TFLITE_RUNTIME):
        out.append(f"verified in tflite-runtime {tflite_runtime.get('version')}, the rule "
                   f"names {TFLITE_RUNTIME} (the Jetson Nano's and older Pis')")
    if judged.official is None or judged.official < MIN_OFFICIAL - 1e-9:
        out.append(f"official accuracy {judged.official} % (at least {MIN_OFFICIAL:g} %)")
    if judged.br35h is None:
        out.append(f"no {EXTERNAL_NAME} tumour sensitivity in its manifest (python -m "
                   f"converters.score {folder} --data DATA --record)")
    return judged


def pick(models: list[Judged]) -> Judged | None:
    """Rule 2 over the candidates; None if there is none (rule 3: the shipped model stays).
    Candidates measured on fewer test images than the most any model here was measured on
    (the shipped one, or one out for another reason) are out: a subset's accuracy is not
    the official split's. So are those whose Br35H figure counts other pictures than the
    others' (an older or newer copy of the folder): the rule ranks by it."""
    full = max((m.n or 0 for m in models), default=0)
    pictures = {m.external_n for m in models if m.external_n}
    for model in models:
        if not model.out and (model.n or 0) < full:
            model.out.append(f"measured on {model.n} test images, the others on {full} "
                             "(converted with --eval-limit?)")
    if len(pictures) > 1:  # which count is right is not for the rule to say: all are out
        for model in models:
            if not model.out and model.external_n:
                others = sorted(pictures - {model.external_n})
                model.out.append(
                    f"its {EXTERNAL_NAME} figure counts {model.external_n} pictures, another "
                    f"model's {', '.join(map(str, others))}: score them all on the same "
                    f"folder (python -m converters.score MODEL --data DATA --record)")
    candidates = [m for m in models if not m.out]
    if not candidates:
        return None
    return max(candidates, key=lambda m: m.key)  # the first of equals: the shipped model


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def text(models: list[Judged], chosen: Judged | None) -> str:
    ranked = sorted(models, key=lambda m: (bool(m.out), tuple(-v for v in m.key)))
    labels = [f"{m.name} {m.version}" + (" (shipped)" if m.shipped else "") for m in ranked]
    width = max(len(label) for label in ["model", *labels])
    lines = [f"{'model':<{width}} {'official':>9} {'dedup':>9} {'Br35H':>18} {'agreement':>10}"
             "  under the rule"]
    for label, model in zip(labels, ranked, strict=True):
        br35h = "-" if model.br35h is None else f"{model.br35h:.2f} % ({model.found})"
        verdict = ("the pick" if model is chosen else
                   "out: " + "; ".join(model.out) if model.out else "candidate, behind the pick")
        lines.append(f"{label:<{width}} {_pct(model.official):>9} {_pct(model.deduplicated):>9} "
                     f"{br35h:>18} {_pct(model.agreement):>10}  {verdict}")
    if chosen is None:
        lines.append("No candidate: the shipped model stays (rule 3).")
        return "\n".join(lines)
    lines.append(f"The rule's pick: {chosen.name} {chosen.version} ({chosen.folder})"
                 + (", the shipped model: nothing changes." if chosen.shipped else "."))
    figures = {"official": chosen.official, "deduplicated": chosen.deduplicated,
               "br35h": chosen.br35h, "agreement": chosen.agreement}
    met = [f"{what} {_pct(figures[what])} {'>=' if (figures[what] or 0) >= bar else '<'} "
           f"{bar:g} %" for what, bar in TARGETS]
    lines.append("Issue 12's targets, on the pick: " + "; ".join(met))
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.argument("model_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--shipped", type=click.Path(path_type=Path),
              help="The shipped model folder, judged with the others (default: edge/models).")
@click.option("--no-shipped", is_flag=True, help="Judge only the folders given.")
@click.option("--json", "json_out", type=click.Path(path_type=Path),
              help="Also write every model's figures and verdict to this JSON file.")
def main(model_dirs: tuple[Path, ...], shipped: Path | None, no_shipped: bool,
         json_out: Path | None) -> None:
    """Apply the shipping rule of docs/results.md to converted models (MODEL_DIR: a folder
    with model.tflite and model.json) and the shipped one; say which it picks and why."""
    from edge.manifest import default_model_dir

    if shipped is not None and no_shipped:
        click.echo("error: --shipped and --no-shipped contradict each other; give one",
                   err=True)
        sys.exit(EX_USAGE)
    folders = list(model_dirs)
    if not no_shipped:
        shipped = shipped or default_model_dir()
        if shipped is None:
            click.echo("error: no shipped model found (edge/models); give --shipped DIR or "
                       "--no-shipped", err=True)
            sys.exit(EX_USAGE)
    missing = [str(f) for f in folders + ([shipped] if shipped else []) if not f.is_dir()]
    if missing:
        click.echo(f"error: not a folder: {', '.join(missing)}; give model folders (each with "
                   "model.tflite and model.json)", err=True)
        sys.exit(EX_USAGE)
    if not folders:
        click.echo("error: no model to judge: give one or more MODEL_DIR", err=True)
        sys.exit(EX_USAGE)
    models = [judge(shipped, shipped=True)] if shipped is not None else []
    seen = {shipped.resolve()} if shipped is not None else set()
    for folder in folders:
        if folder.resolve() not in seen:  # the shipped model given again is judged once
            seen.add(folder.resolve())
            models.append(judge(folder))
    chosen = pick(models)
    click.echo(text(models, chosen))
    if json_out is not None:
        from edge.durable import write_bytes_atomic

        record = {"rule": "docs/results.md#the-shipping-rule", "pick": None if chosen is None
                  else str(chosen.folder), "models": [m.to_dict() for m in models]}
        try:
            write_bytes_atomic(json_out, (json.dumps(record, indent=2) + "\n").encode())
        except OSError as exc:
            click.echo(f"error: cannot write --json {json_out}: {exc.strerror or exc}",
                       err=True)
            sys.exit(EX_CANTCREAT)


if __name__ == "__main__":
    main()
