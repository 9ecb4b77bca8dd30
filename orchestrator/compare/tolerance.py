"""Tolerances: how far apart two values of a metric may be and still agree.

Declared once here. The spec reader builds a `Tolerance` from YAML (with file and line in its
errors); everything that reads a recorded `compare` section (comparison, rerun) goes through
`parse_tolerance`, which accepts both the recorded form (`{"kind": "abs", "value": 1e-9}`) and
the spec's short forms (`exact`, `ignore`, `{abs: 1e-9}`, `{rel: 0.01}`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from orchestrator.compare.artifacts.policy import ArtifactPolicies, parse_policies
from orchestrator.errors import UsageError

TOLERANCE_KINDS = ("exact", "abs", "rel", "ignore")
ARTIFACT_MODES = ("bitwise", "ignore")


@dataclass(frozen=True)
class Tolerance:
    kind: str = "exact"             # one of TOLERANCE_KINDS
    value: float = 0.0

    @property
    def text(self) -> str:
        if self.kind in ("exact", "ignore"):
            return self.kind
        return f"{self.kind} {self.value!r}"

    def allows(self, a: float, b: float) -> bool:
        """True when two finite, unequal numbers are close enough under this tolerance."""
        if self.kind == "abs":
            return abs(a - b) <= self.value
        if self.kind == "rel":
            return abs(a - b) <= self.value * max(abs(a), abs(b))
        return False


@dataclass(frozen=True)
class Tolerances:
    default: Tolerance = Tolerance()
    metrics: dict[str, Tolerance] = field(default_factory=dict)
    artifacts: ArtifactPolicies = ArtifactPolicies()
    test_examples: int | None = None    # the test-set size behind accuracy-like metrics

    def for_metric(self, name: str) -> Tolerance:
        return self.metrics.get(name, self.default)


def parse_tolerances(compare: dict[str, Any] | None) -> Tolerances:
    """Read a record's `compare` section."""
    compare = compare or {}
    if not isinstance(compare, dict):
        raise UsageError(f"tolerances must be a mapping, not {type(compare).__name__}")
    metrics_section = compare.get("metrics") or {}
    if not isinstance(metrics_section, dict):
        raise UsageError("compare.metrics must be a mapping of metric name to tolerance")
    default = Tolerance()
    metrics: dict[str, Tolerance] = {}
    for name, raw in metrics_section.items():
        tolerance = parse_tolerance(name, raw)
        if name == "default":
            default = tolerance
        else:
            metrics[name] = tolerance
    try:
        artifacts = parse_policies(compare.get("artifacts"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    examples = compare.get("test_examples")
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int)
                                 or examples < 1):
        raise UsageError(f"compare.test_examples is {examples!r}; it must be a whole number >= 1")
    return Tolerances(default=default, metrics=metrics, artifacts=artifacts,
                      test_examples=examples)


def parse_tolerance(name: str, raw: Any) -> Tolerance:
    """One metric's tolerance, in the recorded form or the spec's short form."""
    if isinstance(raw, str):
        kind, value = raw, 0.0
    elif isinstance(raw, dict) and "kind" in raw:
        kind, value = raw["kind"], raw.get("value", 0.0)
    elif isinstance(raw, dict) and len(raw) == 1:
        (kind, value), = raw.items()
    else:
        raise UsageError(
            f"the tolerance of metric {name!r} is {raw!r}; write exact, ignore, "
            "{abs: NUMBER} or {rel: NUMBER}")
    if kind not in TOLERANCE_KINDS:
        raise UsageError(
            f"the tolerance of metric {name!r} has kind {kind!r}; use one of "
            f"{', '.join(TOLERANCE_KINDS)}")
    try:
        value = float(value if value is not None else 0.0)
    except (TypeError, ValueError):
        raise UsageError(f"the tolerance of metric {name!r} is not a number: {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(
            f"the tolerance of metric {name!r} is {value!r}; it must be a finite number >= 0")
    return Tolerance(kind=kind, value=value)
