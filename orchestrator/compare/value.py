"""The Comparison value: verdict, sections, rows and causes, and its JSON codec.

One frozen value computed once by `orchestrator.compare.comparison`; every report format is a
thin renderer over it, and a JSON report read back with `Comparison.from_dict` renders exactly
as the original did.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator.compare.artifacts.findings import PartFigures
from orchestrator.errors import ExitCode, UsageError

REPORT_SCHEMA = "reprun.report/1"


class Verdict(StrEnum):
    """Verdicts, from best to worst; `combined_verdict` keeps the worst."""
    IDENTICAL = "identical"
    EQUIVALENT = "equivalent"
    DIFFERS = "differs"
    INCOMPLETE = "incomplete"

    @property
    def exit_code(self) -> int:
        """The one map from a verdict to the exit code of the command that reached it."""
        return int(_VERDICT_EXIT[self])

    @property
    def rank(self) -> int:
        return list(Verdict).index(self)


_VERDICT_EXIT = {
    Verdict.IDENTICAL: ExitCode.OK,
    Verdict.EQUIVALENT: ExitCode.OK,
    Verdict.DIFFERS: ExitCode.DIFFERS,
    Verdict.INCOMPLETE: ExitCode.JOB_FAILED,
}

IDENTICAL, EQUIVALENT, DIFFERS, INCOMPLETE = Verdict
VERDICTS = tuple(Verdict)

# Metric statuses.
M_IDENTICAL = "identical"
M_WITHIN = "within"
M_BEYOND = "beyond"
M_IGNORED = "ignored"
MISSING_A = "missing-a"
MISSING_B = "missing-b"
METRIC_STATUSES = (M_IDENTICAL, M_WITHIN, M_BEYOND, M_IGNORED, MISSING_A, MISSING_B)

# Artifact statuses.
A_IDENTICAL = "identical"
A_DIFFERS = "differs"
A_EQUIVALENT = "equivalent"       # the bytes differ, the contents agree within the policy
A_IGNORED = "ignored"
ARTIFACT_STATUSES = (A_IDENTICAL, A_EQUIVALENT, A_DIFFERS, A_IGNORED, MISSING_A, MISSING_B)

# Environment changes.
ADDED = "added"
REMOVED = "removed"
CHANGED = "changed"
CHANGES = (ADDED, REMOVED, CHANGED)

# Cause kinds, in the order they are ranked.
CAUSE_RUN = "run"                        # a run did not succeed
CAUSE_INPUT = "input"                    # a pinned input differs
CAUSE_ENVIRONMENT = "environment"        # a fact of the environment manifest differs
CAUSE_NONDETERMINISM = "nondeterminism"  # same inputs and environment, different results
CAUSE_KINDS = (CAUSE_RUN, CAUSE_INPUT, CAUSE_ENVIRONMENT, CAUSE_NONDETERMINISM)

# Marks a fact one run does not have, as distinct from a fact whose value is null.
ABSENT = object()


def display_text(value: Any) -> str | None:
    """Display text for a fact; None only when the fact is absent."""
    if value is ABSENT:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)



@dataclass(frozen=True)
class RunSummary:
    run_id: str
    spec_name: str
    status: str
    started_at: str
    image_id: str
    baseline: bool = False
    reason: str | None = None        # outputs.reason, e.g. "timeout", when it did not succeed


@dataclass(frozen=True)
class InputRow:
    field: str                       # "seed", "image.id", "params.C", ...
    a: str | None                    # display text; None when absent from that run
    b: str | None
    same: bool


@dataclass(frozen=True)
class EnvironmentRow:
    section: str                     # "os-package", "python-distribution", "blas", "cpu", ...
    name: str
    a: str | None                    # None when absent from that run
    b: str | None
    change: str                      # added | removed | changed


def same_float(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is y
    return x == y or (math.isnan(x) and math.isnan(y))


@dataclass(frozen=True, eq=False)
class MetricRow:
    name: str
    a: float | None                  # None when the run did not report the metric
    b: float | None
    delta: float | None              # b - a; 0.0 when identical; None when one side is missing
    tolerance: str                   # "exact", "abs 1e-09", "rel 0.01", "ignore"
    status: str                      # one of METRIC_STATUSES

    # NaN never equals itself; a report read back from JSON must still equal the original.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricRow):
            return NotImplemented
        return (self.name, self.tolerance, self.status) == (
            other.name, other.tolerance, other.status) and all(
            same_float(x, y) for x, y in
            ((self.a, other.a), (self.b, other.b), (self.delta, other.delta)))

    def __hash__(self) -> int:
        return hash((self.name, self.tolerance, self.status))


@dataclass(frozen=True)
class ArtifactRow:
    name: str
    a_sha256: str | None
    b_sha256: str | None
    a_size: int | None
    b_size: int | None
    status: str                      # one of ARTIFACT_STATUSES
    # What the contents say, when the bytes differ (compare/artifacts/): the comparator's kind,
    # the policy applied, one sentence, per-array figures and a bounded readable excerpt.
    kind: str | None = None
    policy: str = "bitwise"
    detail: str | None = None
    fallback: str | None = None      # why the contents were compared bitwise instead
    parts: tuple[PartFigures, ...] = ()
    excerpt: tuple[str, ...] = ()
    figures: dict[str, Any] | None = None


@dataclass(frozen=True)
class Cause:
    kind: str                        # one of CAUSE_KINDS
    summary: str                     # one sentence, the user's words
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sections:
    inputs: tuple[InputRow, ...] = ()
    environment: tuple[EnvironmentRow, ...] = ()
    metrics: tuple[MetricRow, ...] = ()
    artifacts: tuple[ArtifactRow, ...] = ()


@dataclass(frozen=True)
class Comparison:
    created_at: str
    a: RunSummary
    b: RunSummary
    sections: Sections
    verdict: Verdict
    summary: str                     # one line that says what the tables say
    causes: tuple[Cause, ...] = ()   # ranked, most likely first
    notes: tuple[str, ...] = ()
    # Free-form sections other features add (e.g. variations): rendered as key/value tables.
    extra: dict[str, Any] = field(default_factory=dict)
    schema: str = REPORT_SCHEMA

    @property
    def inputs_that_differ(self) -> tuple[InputRow, ...]:
        return tuple(row for row in self.sections.inputs if not row.same)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite floats become the strings "NaN", "Infinity", "-Infinity"."""
        return _encode_non_finite(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Comparison":
        if data.get("schema") != REPORT_SCHEMA:
            raise UsageError(
                f"this is not a {REPORT_SCHEMA} report (its schema is {data.get('schema')!r})")
        sections = data.get("sections", {})
        return cls(
            schema=data["schema"],
            created_at=data["created_at"],
            a=RunSummary(**data["a"]),
            b=RunSummary(**data["b"]),
            sections=Sections(
                inputs=tuple(InputRow(**row) for row in sections.get("inputs", ())),
                environment=tuple(
                    EnvironmentRow(**row) for row in sections.get("environment", ())),
                metrics=tuple(
                    MetricRow(**{**row, **{k: _decode_float(row.get(k))
                                           for k in ("a", "b", "delta")}})
                    for row in sections.get("metrics", ())),
                artifacts=tuple(_artifact_row(row) for row in sections.get("artifacts", ())),
            ),
            verdict=Verdict(data["verdict"]),
            summary=data.get("summary", ""),
            causes=tuple(
                Cause(kind=c["kind"], summary=c["summary"], details=tuple(c.get("details", ())))
                for c in data.get("causes", ())),
            notes=tuple(data.get("notes", ())),
            extra=dict(data.get("extra") or {}),
        )


_NON_FINITE_TEXT = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _encode_float(x: float) -> float | str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _decode_float(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, str):
        return _NON_FINITE_TEXT[x]
    return float(x)


def _encode_non_finite(value: Any) -> Any:
    if isinstance(value, float):
        return _encode_float(value)
    if isinstance(value, dict):
        return {k: _encode_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_non_finite(v) for v in value]
    return value



def _artifact_row(row: dict[str, Any]) -> ArtifactRow:
    parts = tuple(PartFigures(**{**part, **{k: _decode_float(part.get(k))
                                            for k in ("max_abs", "max_rel")}})
                  for part in row.get("parts", ()))
    return ArtifactRow(**{**row, "parts": parts, "excerpt": tuple(row.get("excerpt", ()))})
