"""Comparison of two run records: verdict, differences, and the likely causes, computed once.

`compare_records` turns two `RunRecord`s into one frozen `Comparison`. Every report format
(terminal, Markdown, HTML, JSON, JUnit) is a thin renderer over that value and computes nothing;
a JSON report read back with `Comparison.from_dict` renders exactly as the original did.

The verdict is about results (metrics and artifacts). Differences in inputs and environment do not
change it; they are what the likely causes are made of.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from orchestrator.errors import ExitCode, UsageError
from orchestrator.records import SUCCEEDED, EnvironmentManifest, RunRecord

REPORT_SCHEMA = "reprun.report/1"

# Verdicts, from best to worst; `combined_verdict` keeps the worst.
IDENTICAL = "identical"
EQUIVALENT = "equivalent"
DIFFERS = "differs"
INCOMPLETE = "incomplete"
VERDICTS = (IDENTICAL, EQUIVALENT, DIFFERS, INCOMPLETE)

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
A_IGNORED = "ignored"
ARTIFACT_STATUSES = (A_IDENTICAL, A_DIFFERS, A_IGNORED, MISSING_A, MISSING_B)

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

TOLERANCE_KINDS = ("exact", "abs", "rel", "ignore")
ARTIFACT_MODES = ("bitwise", "ignore")

# The variables that pin BLAS/OpenMP thread pools; unpinned pools sum floats in varying order.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# Marks a fact one run does not have, as distinct from a fact whose value is null.
_ABSENT = object()

# Environment variables that differ between any two containers by construction.
VOLATILE_ENV_VARIABLES = frozenset({"HOSTNAME", "REPRUN_RUN_ID"})


# --------------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tolerance:
    kind: str = "exact"
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
    artifacts: str = "bitwise"

    def for_metric(self, name: str) -> Tolerance:
        return self.metrics.get(name, self.default)


def parse_tolerances(compare: dict[str, Any] | None) -> Tolerances:
    """Read a record's `compare` section.

    Each metric tolerance may be written as a record stores it (`{"kind": "abs", "value": 1e-9}`)
    or as a spec writes it (`"exact"`, `"ignore"`, `{"abs": 1e-9}`, `{"rel": 0.01}`).
    """
    compare = compare or {}
    if not isinstance(compare, dict):
        raise UsageError(f"tolerances must be a mapping, not {type(compare).__name__}")
    metrics_section = compare.get("metrics") or {}
    if not isinstance(metrics_section, dict):
        raise UsageError("compare.metrics must be a mapping of metric name to tolerance")
    default = Tolerance()
    metrics: dict[str, Tolerance] = {}
    for name, raw in metrics_section.items():
        tolerance = _parse_tolerance(name, raw)
        if name == "default":
            default = tolerance
        else:
            metrics[name] = tolerance
    artifacts = compare.get("artifacts", "bitwise") or "bitwise"
    if artifacts not in ARTIFACT_MODES:
        raise UsageError(
            f"compare.artifacts is {artifacts!r}; use one of {', '.join(ARTIFACT_MODES)}")
    return Tolerances(default=default, metrics=metrics, artifacts=artifacts)


def _parse_tolerance(name: str, raw: Any) -> Tolerance:
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


# --------------------------------------------------------------------------------------------
# The comparison value
# --------------------------------------------------------------------------------------------

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


def _same_float(x: float | None, y: float | None) -> bool:
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
            _same_float(x, y) for x, y in
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
    verdict: str                     # one of VERDICTS
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
                artifacts=tuple(ArtifactRow(**row) for row in sections.get("artifacts", ())),
            ),
            verdict=data["verdict"],
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


# --------------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------------

def compare_records(
    a: RunRecord,
    b: RunRecord,
    *,
    tolerances: dict[str, Any] | None = None,
    baseline_id: str | None = None,
    created_at: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Comparison:
    """Compare run `a` with run `b`.

    Tolerances are `a.compare` unless given (same shape). The baseline is the run whose id is
    `baseline_id`, or `a` when none is given.
    """
    if baseline_id is not None and baseline_id not in (a.id, b.id):
        raise UsageError(f"the baseline {baseline_id!r} is neither run {a.id} nor run {b.id}")
    notes: list[str] = []
    if tolerances is None:
        tolerances = a.compare
        if (b.compare or {}) != (a.compare or {}):
            notes.append(f"the two runs carry different tolerances; those of run {a.id} were used")
    parsed_tolerances = parse_tolerances(tolerances)

    inputs = compare_inputs(a, b)
    environment, env_notes = compare_environments(a.environment, b.environment, a.id, b.id)
    notes.extend(env_notes)
    metrics, metric_notes = compare_metrics(_metrics_of(a), _metrics_of(b), parsed_tolerances)
    notes.extend(metric_notes)
    artifacts = compare_artifacts(_artifacts_of(a), _artifacts_of(b), parsed_tolerances.artifacts)

    unsuccessful = [r for r in (a, b) if r.status != SUCCEEDED]
    verdict = INCOMPLETE if unsuccessful else results_verdict(metrics, artifacts)
    for record in unsuccessful:
        notes.append(f"run {record.id} did not succeed ({_failure_text(record)}); "
                     "its results cannot be trusted")
    if a.inputs.spec_name != b.inputs.spec_name:
        notes.append(f"the runs come from different specs: {a.inputs.spec_name} and "
                     f"{b.inputs.spec_name}")

    causes = likely_causes(a, b, verdict, inputs, environment, metrics, artifacts)
    if verdict in (IDENTICAL, EQUIVALENT) and causes:
        notes.append("the inputs or environment differ but the results agree; "
                     "the causes below are informational")

    baseline = baseline_id if baseline_id is not None else a.id
    return Comparison(
        created_at=created_at or _now(),
        a=_summary(a, baseline=a.id == baseline),
        b=_summary(b, baseline=b.id == baseline and a.id != baseline),
        sections=Sections(inputs=inputs, environment=environment, metrics=metrics,
                          artifacts=artifacts),
        verdict=verdict,
        summary=_summary_line(verdict, unsuccessful, inputs, environment, metrics, artifacts),
        causes=causes,
        notes=tuple(notes),
        extra=dict(extra or {}),
    )


def compare_many(
    records: Sequence[RunRecord], *, tolerances: dict[str, Any] | None = None,
) -> list[Comparison]:
    """Compare the first record (the baseline) with each of the others."""
    if len(records) < 2:
        raise UsageError(f"comparing needs at least two runs, got {len(records)}")
    baseline = records[0]
    return [compare_records(baseline, other, tolerances=tolerances, baseline_id=baseline.id)
            for other in records[1:]]


def combined_verdict(comparisons: Iterable[Comparison]) -> str:
    """The worst verdict of several comparisons."""
    verdicts = [c.verdict for c in comparisons]
    if not verdicts:
        raise UsageError("no comparisons to combine")
    return max(verdicts, key=VERDICTS.index)


def exit_code_for(comparison: Comparison | str) -> int:
    verdict = comparison if isinstance(comparison, str) else comparison.verdict
    return int({
        IDENTICAL: ExitCode.OK,
        EQUIVALENT: ExitCode.OK,
        DIFFERS: ExitCode.DIFFERS,
        INCOMPLETE: ExitCode.JOB_FAILED,
    }[verdict])


def results_verdict(metrics: Sequence[MetricRow], artifacts: Sequence[ArtifactRow]) -> str:
    metric_statuses = {row.status for row in metrics}
    artifact_statuses = {row.status for row in artifacts}
    if not artifact_statuses <= {A_IDENTICAL, A_IGNORED}:
        return DIFFERS
    if metric_statuses <= {M_IDENTICAL, M_IGNORED}:
        return IDENTICAL
    if metric_statuses <= {M_IDENTICAL, M_WITHIN, M_IGNORED}:
        return EQUIVALENT
    return DIFFERS


# --- inputs ---------------------------------------------------------------------------------

def compare_inputs(a: RunRecord, b: RunRecord) -> tuple[InputRow, ...]:
    ia, ib = a.inputs, b.inputs
    # A fact recorded as None (no repo digest for a built image) is absent, not the text "null".
    rows = [
        _input_row("image.id", ia.image.id, ib.image.id),
        _input_row("image.repo_digest", ia.image.repo_digest, ib.image.repo_digest),
        _input_row("dataset.sha256", ia.dataset.sha256, ib.dataset.sha256),
        _input_row("seed", ia.seed, ib.seed),
        _input_row("command", shlex.join(ia.command), shlex.join(ib.command)),
    ]
    for group in ("params", "env", "resources", "container"):
        left, right = getattr(ia, group) or {}, getattr(ib, group) or {}
        for key in sorted(set(left) | set(right), key=str):
            rows.append(_input_row(f"{group}.{key}", left.get(key, _ABSENT),
                                   right.get(key, _ABSENT)))
    return tuple(rows)


def _input_row(name: str, a: Any, b: Any) -> InputRow:
    ta, tb = _text(_ABSENT if a is None else a), _text(_ABSENT if b is None else b)
    return InputRow(field=name, a=ta, b=tb, same=ta == tb)


def _text(value: Any) -> str | None:
    """Display text for a fact; None only when the fact is absent."""
    if value is _ABSENT:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


# --- environment ----------------------------------------------------------------------------

# Section name, the manifest field it reads, and how to turn that field into {name: value}.
# Declared once here so that a fact source is one line, not one function.
def _flat(mapping: Any) -> dict[str, Any]:
    return dict(mapping) if isinstance(mapping, dict) else {}


def _cpu_facts(cpu: Any) -> dict[str, Any]:
    # Clock speed is read live and wanders; it is not a fact of the machine's arithmetic.
    return {k: v for k, v in _flat(cpu).items()
            if k != "flags" and "mhz" not in k.lower() and "freq" not in k.lower()}


def _cpu_flags(cpu: Any) -> dict[str, Any]:
    flags = _flat(cpu).get("flags") or []
    if isinstance(flags, str):
        flags = flags.split()
    return {flag: "present" for flag in flags}


def _blas_facts(libraries: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for lib in libraries or []:
        if not isinstance(lib, dict):
            continue
        label = f"{lib.get('internal_api', '?')} {lib.get('filepath', '?')}"
        for attr in ("version", "num_threads", "threading_layer", "architecture"):
            if attr in lib:
                facts[f"{label} {attr}"] = lib[attr]
    return facts


def _host_facts(host: Any) -> dict[str, Any]:
    # Timestamps and durations differ on every run and say nothing about the engine; nor does
    # which earlier run the image's facts were read in (the facts themselves are compared).
    return {k: v for k, v in _flat(host).items()
            if not (k.endswith("_at") or "time" in k or "duration" in k
                    or k == "image_facts_from_run")}


def _env_facts(env: Any) -> dict[str, Any]:
    return {k: v for k, v in _flat(env).items() if k not in VOLATILE_ENV_VARIABLES}


def _scalar(name: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {} if value is None else {name: value}


@dataclass(frozen=True)
class _EnvironmentSection:
    section: str
    manifest_field: str
    facts: Callable[[Any], dict[str, Any]]
    label: str                       # how a cause names one fact of this section
    material: bool = True            # False: differs between any two containers, rarely a cause


ENVIRONMENT_SECTIONS = (
    _EnvironmentSection("python-distribution", "python_distributions", _flat,
                        "Python distribution"),
    _EnvironmentSection("blas", "blas", _blas_facts, "BLAS/OpenMP library"),
    _EnvironmentSection("os-package", "os_packages", _flat, "OS package"),
    _EnvironmentSection("python", "python", _flat, "Python"),
    _EnvironmentSection("cpu", "cpu", _cpu_facts, "CPU"),
    _EnvironmentSection("cpu-flag", "cpu", _cpu_flags, "CPU flag"),
    _EnvironmentSection("kernel", "kernel", _scalar("release"), "kernel"),
    _EnvironmentSection("os", "os", _flat, "OS release"),
    _EnvironmentSection("limits", "limits", _flat, "container limit"),
    _EnvironmentSection("engine", "host", _host_facts, "container engine"),
    _EnvironmentSection("env", "env", _env_facts, "environment variable"),
    _EnvironmentSection("locale", "locale", _flat, "locale setting"),
    _EnvironmentSection("user", "user", _flat, "user"),
    _EnvironmentSection("hostname", "hostname", _scalar("hostname"), "hostname",
                        material=False),
)
_SECTION_BY_NAME = {s.section: s for s in ENVIRONMENT_SECTIONS}


def compare_environments(
    a: EnvironmentManifest, b: EnvironmentManifest, a_id: str = "a", b_id: str = "b",
) -> tuple[tuple[EnvironmentRow, ...], list[str]]:
    """Rows for every fact that was added, removed or changed; notes for facts not compared."""
    rows: list[EnvironmentRow] = []
    notes: list[str] = []
    for spec in ENVIRONMENT_SECTIONS:
        unread = [(run_id, manifest.missing[spec.manifest_field])
                  for run_id, manifest in ((a_id, a), (b_id, b))
                  if spec.manifest_field in (manifest.missing or {})]
        if unread:
            # A fact one side could not read would otherwise show as everything added/removed.
            if spec.section != "cpu-flag":
                why = "; ".join(f"run {run_id}: {reason}" for run_id, reason in unread)
                notes.append(f"{spec.manifest_field} not compared: could not be read ({why})")
            continue
        left = spec.facts(getattr(a, spec.manifest_field))
        right = spec.facts(getattr(b, spec.manifest_field))
        for name in sorted(set(left) | set(right), key=str):
            ta, tb = _text(left.get(name, _ABSENT)), _text(right.get(name, _ABSENT))
            if ta == tb:
                continue
            change = ADDED if ta is None else REMOVED if tb is None else CHANGED
            rows.append(EnvironmentRow(section=spec.section, name=str(name), a=ta, b=tb,
                                       change=change))
    return tuple(rows), notes


# --- metrics --------------------------------------------------------------------------------

def _metrics_of(record: RunRecord) -> dict[str, float]:
    if record.outputs is None:
        return {}
    return {name: float(value) for name, value in (record.outputs.metrics or {}).items()}


def compare_metrics(
    a: dict[str, float], b: dict[str, float], tolerances: Tolerances,
) -> tuple[tuple[MetricRow, ...], list[str]]:
    rows: list[MetricRow] = []
    notes: list[str] = []
    for name in sorted(set(a) | set(b)):
        tolerance = tolerances.for_metric(name)
        va, vb = a.get(name), b.get(name)
        delta: float | None = None
        if va is not None and vb is not None:
            delta = 0.0 if _same_float(va, vb) else vb - va
        if tolerance.kind == "ignore":
            status = M_IGNORED
        elif va is None:
            status = MISSING_A
        elif vb is None:
            status = MISSING_B
        elif _same_float(va, vb):
            status = M_IDENTICAL
            if math.isnan(va):
                notes.append(f"metric {name} is NaN in both runs; counted as identical")
        elif not (math.isfinite(va) and math.isfinite(vb)):
            # NaN against a number, or infinities that disagree: no tolerance spans those.
            status = M_BEYOND
        else:
            status = M_WITHIN if tolerance.allows(va, vb) else M_BEYOND
        rows.append(MetricRow(name=name, a=va, b=vb, delta=delta, tolerance=tolerance.text,
                              status=status))
    return tuple(rows), notes


# --- artifacts ------------------------------------------------------------------------------

def _artifacts_of(record: RunRecord) -> dict[str, Any]:
    return {} if record.outputs is None else dict(record.outputs.artifacts or {})


def compare_artifacts(a: dict[str, Any], b: dict[str, Any], mode: str) -> tuple[ArtifactRow, ...]:
    rows = []
    for name in sorted(set(a) | set(b)):
        fa, fb = a.get(name), b.get(name)
        if mode == "ignore":
            status = A_IGNORED
        elif fa is None:
            status = MISSING_A
        elif fb is None:
            status = MISSING_B
        else:
            status = A_IDENTICAL if fa.sha256 == fb.sha256 else A_DIFFERS
        rows.append(ArtifactRow(
            name=name,
            a_sha256=fa.sha256 if fa else None, b_sha256=fb.sha256 if fb else None,
            a_size=fa.size if fa else None, b_size=fb.size if fb else None,
            status=status))
    return tuple(rows)


# --- likely causes --------------------------------------------------------------------------

_INPUT_GROUPS = (
    # prefix of InputRow.field, how the cause names it
    ("params.", "the params differ"),
    ("command", "the command differs"),
    ("env.", "the environment variables given to the job differ"),
    ("resources.", "the resources differ"),
    ("container.", "the container settings differ"),
)

# Per environment section, at most this many changes get a cause each; more become one cause.
_CHANGES_PER_CAUSE = 3


def likely_causes(
    a: RunRecord, b: RunRecord, verdict: str,
    inputs: Sequence[InputRow], environment: Sequence[EnvironmentRow],
    metrics: Sequence[MetricRow], artifacts: Sequence[ArtifactRow],
) -> tuple[Cause, ...]:
    """Ranked: runs that failed, then inputs that differ, then the environment, then hints."""
    causes: list[Cause] = []
    for record in (a, b):
        if record.status != SUCCEEDED:
            details = (record.outputs.message,) if record.outputs and record.outputs.message else ()
            causes.append(Cause(CAUSE_RUN, f"run {record.id} did not succeed: "
                                           f"{_failure_text(record)}", details))

    input_causes = _input_causes(inputs)
    causes.extend(input_causes)

    material = [row for row in environment if _SECTION_BY_NAME[row.section].material]
    incidental = [row for row in environment if not _SECTION_BY_NAME[row.section].material]
    causes.extend(_environment_causes(material))
    if verdict == DIFFERS and not input_causes and not material:
        causes.extend(_nondeterminism_causes(a, b, metrics, artifacts))
    causes.extend(_environment_causes(incidental))
    return tuple(causes)


def _input_causes(inputs: Sequence[InputRow]) -> list[Cause]:
    differ = {row.field: row for row in inputs if not row.same}
    causes = []
    image = [differ[f] for f in ("image.id", "image.repo_digest") if f in differ]
    if image:
        first = image[0]
        causes.append(Cause(CAUSE_INPUT, f"the image differs: {_shown(first.a)} vs "
                                         f"{_shown(first.b)}",
                            tuple(f"{r.field}: {_shown(r.a)} vs {_shown(r.b)}"
                                  for r in image[1:])))
    if "dataset.sha256" in differ:
        row = differ["dataset.sha256"]
        causes.append(Cause(CAUSE_INPUT, "the dataset differs",
                            (f"sha256 {_shown(row.a)} vs {_shown(row.b)}",)))
    if "seed" in differ:
        row = differ["seed"]
        causes.append(Cause(CAUSE_INPUT, f"the seed differs: {_shown(row.a)} vs {_shown(row.b)}"))
    for prefix, summary in _INPUT_GROUPS:
        rows = [r for name, r in differ.items() if name.startswith(prefix)]
        if rows:
            details = tuple(f"{r.field}: {_shown(r.a)} vs {_shown(r.b)}" for r in rows)
            if len(details) == 1:
                causes.append(Cause(CAUSE_INPUT, f"{summary}: {details[0]}"))
            else:
                causes.append(Cause(CAUSE_INPUT, summary, details))
    return causes


def _change_text(row: EnvironmentRow) -> str:
    label = _SECTION_BY_NAME[row.section].label
    if row.change == CHANGED:
        return f"{label} {row.name} changed: {row.a} → {row.b}"
    if row.change == ADDED:
        return f"{label} {row.name} added" + ("" if row.b == "present" else f": {row.b}")
    return f"{label} {row.name} removed" + ("" if row.a == "present" else f" (was {row.a})")


def _environment_causes(rows: Sequence[EnvironmentRow]) -> list[Cause]:
    causes = []
    for spec in ENVIRONMENT_SECTIONS:
        section_rows = [r for r in rows if r.section == spec.section]
        if not section_rows:
            continue
        if len(section_rows) <= _CHANGES_PER_CAUSE:
            causes.extend(Cause(CAUSE_ENVIRONMENT, _change_text(r)) for r in section_rows)
            continue
        counts = {c: sum(r.change == c for r in section_rows) for c in CHANGES}
        how = ", ".join(f"{n} {c}" for c, n in counts.items() if n)
        causes.append(Cause(CAUSE_ENVIRONMENT,
                            f"{len(section_rows)} {spec.label} facts differ ({how})",
                            tuple(_change_text(r) for r in section_rows)))
    return causes


def _nondeterminism_causes(
    a: RunRecord, b: RunRecord, metrics: Sequence[MetricRow], artifacts: Sequence[ArtifactRow],
) -> list[Cause]:
    records = (a, b)
    hints: list[Cause] = []
    metrics_agree = all(r.status in (M_IDENTICAL, M_WITHIN, M_IGNORED) for r in metrics)
    artifacts_differ = any(r.status == A_DIFFERS for r in artifacts)
    if metrics_agree and artifacts_differ:
        names = [r.name for r in artifacts if r.status == A_DIFFERS]
        hints.append(Cause(
            CAUSE_NONDETERMINISM,
            "artifacts differ while metrics match: artifact serialisation embeds time or "
            "randomness", tuple(f"artifact {n} differs" for n in names)))

    # Without the container's variables (the probe could not read them) nothing can be said
    # about what was set, only about what the BLAS libraries themselves reported.
    env_known = [r for r in records if "env" not in (r.environment.missing or {})]
    unpinned = []
    for record in records:
        env = _job_env(record)
        absent = [v for v in THREAD_VARIABLES if v not in env]
        if absent and record in env_known:
            unpinned.append(f"run {record.id}: {', '.join(absent)} not set")
        for lib in record.environment.blas or []:
            threads = lib.get("num_threads") if isinstance(lib, dict) else None
            if isinstance(threads, (int, float)) and threads > 1:
                unpinned.append(f"run {record.id}: {lib.get('internal_api', '?')} "
                                f"({lib.get('filepath', '?')}) uses {threads} threads")
    if unpinned:
        hints.append(Cause(CAUSE_NONDETERMINISM,
                           "threads are not pinned: parallel reductions may add floats in a "
                           "different order on each run", tuple(unpinned)))

    multi_cpu = []
    for record in records:
        cpus = record.environment.limits.get("cpus") or record.inputs.resources.get("cpus")
        count = record.environment.cpu.get("count")
        if isinstance(cpus, (int, float)) and cpus > 1:
            multi_cpu.append(f"run {record.id}: limited to {cpus} CPUs")
        elif not cpus and isinstance(count, int) and count > 1:
            multi_cpu.append(f"run {record.id}: no CPU limit, {count} CPUs visible")
    if multi_cpu:
        hints.append(Cause(CAUSE_NONDETERMINISM,
                           "more than one CPU: work split across cores can finish and combine "
                           "in a different order", tuple(multi_cpu)))

    hints.append(Cause(
        CAUSE_NONDETERMINISM,
        "the job may draw randomness that does not come from REPRUN_SEED/{seed}",
        (f"image, dataset and seed {a.inputs.seed} are identical in both runs",)))

    hashseed = [f"run {r.id}" for r in env_known
                if _job_env(r).get("PYTHONHASHSEED") in (None, "", "random")]
    if hashseed:
        hints.append(Cause(CAUSE_NONDETERMINISM,
                           "PYTHONHASHSEED is not set: set and dict iteration order can vary",
                           tuple(f"{where}: PYTHONHASHSEED not set" for where in hashseed)))

    if artifacts_differ and not metrics_agree:
        names = [r.name for r in artifacts if r.status == A_DIFFERS]
        hints.append(Cause(CAUSE_NONDETERMINISM, "the artifacts differ as well",
                           tuple(f"artifact {n} differs" for n in names)))

    head = Cause(CAUSE_NONDETERMINISM,
                 "nondeterministic under identical inputs: the same image, dataset, seed and "
                 "environment gave different results")
    return [head, *hints]


def _job_env(record: RunRecord) -> dict[str, str]:
    return {**(record.environment.env or {}), **(record.inputs.env or {})}


# --- small helpers --------------------------------------------------------------------------

def _shown(text: str | None) -> str:
    return "(absent)" if text is None else text


def _failure_text(record: RunRecord) -> str:
    reason = record.outputs.reason if record.outputs else None
    return record.status if not reason or reason == "ok" else f"{record.status}, {reason}"


def _summary(record: RunRecord, *, baseline: bool) -> RunSummary:
    return RunSummary(
        run_id=record.id, spec_name=record.inputs.spec_name, status=record.status,
        started_at=record.started_at, image_id=record.inputs.image.id, baseline=baseline,
        reason=record.outputs.reason if record.outputs else None)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _summary_line(
    verdict: str, unsuccessful: Sequence[RunRecord], inputs: Sequence[InputRow],
    environment: Sequence[EnvironmentRow], metrics: Sequence[MetricRow],
    artifacts: Sequence[ArtifactRow],
) -> str:
    parts = []
    if unsuccessful:
        parts.append("; ".join(f"run {r.id} did not succeed ({_failure_text(r)})"
                               for r in unsuccessful))
    for what, rows, statuses in (("metric", metrics, METRIC_STATUSES),
                                 ("artifact", artifacts, ARTIFACT_STATUSES)):
        if rows:
            counts = [(status, sum(row.status == status for row in rows)) for status in statuses]
            parts.append(f"{_count(len(rows), what)}: " + ", ".join(
                f"{n} {status}" for status, n in counts if n))
        else:
            parts.append(f"no {what}s")
    differing_inputs = sum(not row.same for row in inputs)
    parts.append(f"{_count(differing_inputs, 'input')} differ"
                 if differing_inputs != 1 else "1 input differs")
    parts.append(f"{_count(len(environment), 'environment change')}")
    return f"{verdict}: " + "; ".join(parts)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
