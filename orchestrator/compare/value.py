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
from orchestrator.records import RunSummary

REPORT_SCHEMA = "reprun.report/2"
# Reports of version 1 named a run by `run_id`/`spec_name` and flagged the baseline on it.
OLD_REPORT_SCHEMAS = ("reprun.report/1",)


class Verdict(StrEnum):
    """Verdicts, from best to worst; `combined_verdict` keeps the worst."""
    IDENTICAL = "identical"
    EQUIVALENT = "equivalent"
    FLAKY = "flaky"                  # of N runs, some pairs agree and others do not
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
    # Results that reproduce only some of the time do not reproduce: exit 1, as `differs`.
    Verdict.FLAKY: ExitCode.DIFFERS,
    Verdict.DIFFERS: ExitCode.DIFFERS,
    Verdict.INCOMPLETE: ExitCode.JOB_FAILED,
}

IDENTICAL, EQUIVALENT, FLAKY, DIFFERS, INCOMPLETE = Verdict
VERDICTS = tuple(Verdict)

# Metric statuses.
M_IDENTICAL = "identical"
M_WITHIN = "within"
M_BEYOND = "beyond"
M_IGNORED = "ignored"
MISSING_A = "missing-a"
MISSING_B = "missing-b"
M_DIFFERS = "differs"                    # a text, boolean or null value that is not the same
METRIC_STATUSES = (M_IDENTICAL, M_WITHIN, M_BEYOND, M_DIFFERS, M_IGNORED, MISSING_A, MISSING_B)

# Kinds of metric value. Numbers and curves are compared under the metric's tolerance; text,
# booleans and null exactly (a tolerance has no meaning for them).
NUMBER, TEXT, BOOLEAN, NULL, CURVE, MIXED = "number", "text", "boolean", "null", "curve", "mixed"
METRIC_KINDS = (NUMBER, TEXT, BOOLEAN, NULL, CURVE, MIXED)
MetricValue = float | str | bool | tuple[float, ...] | None


def metric_kind(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, str):
        return TEXT
    if isinstance(value, (list, tuple)):
        return CURVE
    return NUMBER

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


def same_value(x: Any, y: Any) -> bool:
    """Equality of metric values where NaN equals NaN, a curve is compared item by item, and
    a boolean is never the number 1 or 0."""
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(map(same_value, x, y))
    if isinstance(x, bool) or isinstance(y, bool) or isinstance(x, str) or isinstance(y, str):
        return type(x) is type(y) and x == y
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return same_float(float(x), float(y))
    return x is None and y is None


def same_float(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is y
    return x == y or (math.isnan(x) and math.isnan(y))


@dataclass(frozen=True, eq=False)
class MetricRow:
    name: str
    a: MetricValue                   # None also when the run did not report it (see status)
    b: MetricValue
    delta: float | None              # b - a (for a curve: its largest); None when not numbers
    tolerance: str                   # "exact", "abs 1e-09", "rel 0.01", "ignore"
    status: str                      # one of METRIC_STATUSES
    kind: str = NUMBER               # one of METRIC_KINDS; "mixed" when the two kinds differ

    # NaN never equals itself; a report read back from JSON must still equal the original.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricRow):
            return NotImplemented
        return (self.name, self.tolerance, self.status, self.kind) == (
            other.name, other.tolerance, other.status, other.kind) and all(
            same_value(x, y) for x, y in
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


@dataclass(frozen=True, eq=False)
class SeriesRow:
    """Two runs' values of one series (a per-step stream, or a list metric), step by step."""
    name: str
    source: str                      # "steps" (the outputs.steps stream) or "metric"
    a_steps: tuple[int, ...]
    a: tuple[float, ...]
    b_steps: tuple[int, ...]
    b: tuple[float, ...]
    tolerance: str
    status: str                      # identical | within | beyond | ignored | missing-a/-b
    agree_until: int | None = None   # the last step before `first_differ`
    first_differ: int | None = None  # the first step beyond tolerance, or only in one run
    a_at: float | None = None        # the values at `first_differ`
    b_at: float | None = None
    largest_step: int | None = None  # where |b - a| is largest, from `first_differ` on
    largest_delta: float | None = None
    summary: str = ""                # "identical up to step 14; first differ at step 15: ..."

    _FLOATS = ("a_at", "b_at", "largest_delta")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeriesRow):
            return NotImplemented
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return all(same_float(mine[k], theirs[k]) if k in self._FLOATS
                   else (len(mine[k]) == len(theirs[k]) and all(
                       map(same_float, mine[k], theirs[k]))) if k in ("a", "b")
                   else mine[k] == theirs[k] for k in mine)

    def __hash__(self) -> int:
        return hash((self.name, self.source, self.status))

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "SeriesRow":
        values = {**row, **{k: _decode_float(row.get(k)) for k in cls._FLOATS}}
        for key in ("a", "b"):
            values[key] = tuple(_decode_float(v) for v in row.get(key, ()))
        for key in ("a_steps", "b_steps"):
            values[key] = tuple(int(v) for v in row.get(key, ()))
        return cls(**values)


@dataclass(frozen=True)
class Sections:
    inputs: tuple[InputRow, ...] = ()
    environment: tuple[EnvironmentRow, ...] = ()
    metrics: tuple[MetricRow, ...] = ()
    artifacts: tuple[ArtifactRow, ...] = ()
    series: tuple[SeriesRow, ...] = ()


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
    baseline: str | None = None      # the id of the run the other is judged against
    schema: str = REPORT_SCHEMA

    @property
    def inputs_that_differ(self) -> tuple[InputRow, ...]:
        return tuple(row for row in self.sections.inputs if not row.same)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite floats become the strings "NaN", "Infinity", "-Infinity"."""
        return _encode_non_finite(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Comparison":
        if data.get("schema") in OLD_REPORT_SCHEMAS:
            data = _upgraded(data)
        if data.get("schema") != REPORT_SCHEMA:
            raise UsageError(
                f"this is not a {REPORT_SCHEMA} report (its schema is {data.get('schema')!r})")
        sections = data.get("sections", {})
        return cls(
            created_at=data["created_at"],
            a=RunSummary(**data["a"]),
            b=RunSummary(**data["b"]),
            baseline=data.get("baseline"),
            sections=Sections(
                inputs=tuple(InputRow(**row) for row in sections.get("inputs", ())),
                environment=tuple(
                    EnvironmentRow(**row) for row in sections.get("environment", ())),
                metrics=tuple(_metric_row(row) for row in sections.get("metrics", ())),
                artifacts=tuple(_artifact_row(row) for row in sections.get("artifacts", ())),
                series=tuple(SeriesRow.from_dict(row) for row in sections.get("series", ())),
            ),
            verdict=Verdict(data["verdict"]),
            summary=data.get("summary", ""),
            causes=tuple(
                Cause(kind=c["kind"], summary=c["summary"], details=tuple(c.get("details", ())))
                for c in data.get("causes", ())),
            notes=tuple(data.get("notes", ())),
            extra=dict(data.get("extra") or {}),
        )


def _metric_row(row: dict[str, Any]) -> MetricRow:
    kind = row.get("kind", NUMBER)

    def value(raw: Any) -> MetricValue:
        if isinstance(raw, list):
            return tuple(_decode_float(v) for v in raw)
        if raw is None or isinstance(raw, bool):
            return raw
        # Non-finite numbers are written as "NaN"/"Infinity": in a row of numbers a string is
        # one of those; in any other row it is the text the job wrote.
        if isinstance(raw, str) and kind != NUMBER:
            return raw
        return _decode_float(raw)

    return MetricRow(name=row["name"], a=value(row.get("a")), b=value(row.get("b")),
                     delta=_decode_float(row.get("delta")), tolerance=row["tolerance"],
                     status=row["status"], kind=kind)


def _upgraded(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 report in today's shape, so that old reports still render."""
    def run(old: dict[str, Any]) -> dict[str, Any]:
        return {"id": old["run_id"], "spec": old["spec_name"], "status": old["status"],
                "started_at": old["started_at"], "image_id": old.get("image_id"),
                "reason": old.get("reason")}
    marked = [side["run_id"] for side in (data["a"], data["b"]) if side.get("baseline")]
    return {**data, "schema": REPORT_SCHEMA, "a": run(data["a"]), "b": run(data["b"]),
            "baseline": marked[0] if marked else None}


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
