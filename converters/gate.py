"""The accuracy gate: the converted model ships only if it still agrees with the float one.

Two numbers decide, both measured on the evaluation set through the device's runtime:
the accuracy drop (float minus converted, in percentage points) must not exceed
``max_drop_pp`` and the top-1 agreement with the float model must reach
``min_agreement_pct``. Agreement matters on its own: two models can have the same accuracy
while disagreeing on dozens of patients' scans. A model the edge runtime cannot load with its
default delegates fails too, whatever its accuracy, as does any runtime named as required.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from converters.runtimes import RuntimeCheck


@dataclass(frozen=True)
class Thresholds:
    max_drop_pp: float = 1.0
    min_agreement_pct: float = 98.0

    def to_dict(self) -> dict[str, float]:
        return {"max_drop_pp": self.max_drop_pp, "min_agreement_pct": self.min_agreement_pct}


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "checks": self.checks}


def apply_gate(comparison: dict[str, Any] | None, edge_check: RuntimeCheck,
               other_checks: list[RuntimeCheck], required: tuple[str, ...],
               thresholds: Thresholds, mode: str, eval_name: str) -> GateResult:
    """Decide; every failed check becomes one sentence saying what was measured and allowed."""
    result = GateResult(passed=True)

    def check(name: str, passed: bool, value: Any, limit: Any, reason: str) -> None:
        result.checks.append({"check": name, "passed": passed, "value": value, "limit": limit})
        if not passed:
            result.passed = False
            result.reasons.append(reason)

    check("edge runtime loads and runs the model", edge_check.ok,
          f"{edge_check.name} {edge_check.version}".strip(), "loads with default delegates",
          f"the edge runtime {edge_check.name} {edge_check.version} could not load and run the "
          f"model with its default delegates (XNNPACK): {edge_check.error}. The device would "
          "refuse this model; see the suggestions below.")
    if comparison is not None:
        drop, agreement = comparison["accuracy_drop_pp"], comparison["top1_agreement_pct"]
        check("accuracy drop (pp)", drop <= thresholds.max_drop_pp, drop, thresholds.max_drop_pp,
              f"accuracy on {eval_name} dropped {drop:.2f} points "
              f"({comparison['float_accuracy_pct']:.2f}% float -> "
              f"{comparison['quantized_accuracy_pct']:.2f}% {mode}), more than --max-drop "
              f"{thresholds.max_drop_pp:g}")
        check("top-1 agreement (%)", agreement >= thresholds.min_agreement_pct, agreement,
              thresholds.min_agreement_pct,
              f"the {mode} model gives the float model's answer on only {agreement:.2f}% of "
              f"{comparison['n']} images of {eval_name} ({comparison['disagreements']} differ), "
              f"below --min-agreement {thresholds.min_agreement_pct:g}%")
    by_name = {c.name: c for c in [edge_check, *other_checks]}
    for name in required:
        found = by_name.get(name)
        ok = found is not None and found.ok
        why = ("it was not checked: pass --check-runtime "
               f"{name}=/path/to/python" if found is None else found.error)
        check(f"required runtime {name}", ok, "verified" if ok else "not verified", "verified",
              f"the model is not verified on the required runtime {name}: {why}")
    return result
