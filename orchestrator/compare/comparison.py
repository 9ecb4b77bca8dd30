"""Comparison of two run records: verdict and differences, computed once.

`compare_records` turns two `RunRecord`s into one frozen `Comparison` (`compare.value`). The
verdict is about results (metrics and artifacts). Differences in inputs and environment do not
change it; they are what the likely causes (`compare.causes`) are made of.
"""
from __future__ import annotations

import dataclasses
import math
import re
import shlex
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from orchestrator.compare.artifacts.findings import EQUIVALENT as CONTENT_EQUIVALENT
from orchestrator.compare.artifacts.findings import PARTS_KEPT, SAME
from orchestrator.compare.artifacts.policy import IGNORE, ArtifactPolicies
from orchestrator.compare.causes import failure_text, likely_causes
from orchestrator.compare.environment import compare_environments
from orchestrator.compare.series import compare_series
from orchestrator.compare.tolerance import Tolerances, parse_tolerances
from orchestrator.compare.value import (ABSENT, A_DIFFERS, A_EQUIVALENT, A_IDENTICAL, A_IGNORED,
                                        ARTIFACT_STATUSES, DIFFERS, EQUIVALENT, IDENTICAL,
                                        INCOMPLETE, METRIC_STATUSES, MISSING_A, MISSING_B,
                                        M_BEYOND, M_IDENTICAL, M_IGNORED, M_WITHIN, ArtifactRow,
                                        CURVE, MIXED, M_DIFFERS, NUMBER, Comparison,
                                        EnvironmentRow, InputRow, MetricRow, RunSummary,
                                        Sections, SeriesRow, Verdict, display_text, metric_kind,
                                        same_float, same_value)
from orchestrator.clock import utc_now
from orchestrator.errors import UsageError
from orchestrator.records import SUCCEEDED, RunRecord

if TYPE_CHECKING:
    from orchestrator.compare.artifacts.contents import ArtifactContents

def compare_records(
    a: RunRecord,
    b: RunRecord,
    *,
    tolerances: dict[str, Any] | None = None,
    baseline_id: str | None = None,
    created_at: str | None = None,
    extra: dict[str, Any] | None = None,
    contents: "ArtifactContents | None" = None,
) -> Comparison:
    """Compare run `a` with run `b`.

    Tolerances are `a.compare` unless given (same shape). The baseline is the run whose id is
    `baseline_id`, or `a` when none is given. With `contents`, artifacts whose bytes differ are
    also compared by what they hold (compare/artifacts/); without, by their hashes alone.
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
    metrics, metric_notes, curves = compare_metrics(_metrics_of(a), _metrics_of(b),
                                                    parsed_tolerances)
    notes.extend(metric_notes)
    series = (*compare_steps(a, b, parsed_tolerances), *curves)
    artifacts = compare_artifacts(a, b, parsed_tolerances.artifacts, contents)

    unsuccessful = [r for r in (a, b) if r.status != SUCCEEDED]
    verdict = INCOMPLETE if unsuccessful else results_verdict(metrics, artifacts, series)
    for record in unsuccessful:
        notes.append(f"run {record.id} did not succeed ({failure_text(record)}); "
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
        a=RunSummary.of(a),
        b=RunSummary.of(b),
        baseline=baseline,
        sections=Sections(inputs=inputs, environment=environment, metrics=metrics,
                          artifacts=artifacts, series=series),
        verdict=verdict,
        summary=_summary_line(verdict, unsuccessful, inputs, environment, metrics, artifacts,
                              series),
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


def combined_verdict(comparisons: Iterable[Comparison]) -> Verdict:
    """The worst verdict of several comparisons."""
    verdicts = [Verdict(c.verdict) for c in comparisons]
    if not verdicts:
        raise UsageError("no comparisons to combine")
    return max(verdicts, key=lambda v: v.rank)


def results_verdict(metrics: Sequence[MetricRow], artifacts: Sequence[ArtifactRow],
                    series: Sequence[SeriesRow] = ()) -> Verdict:
    metric_statuses = {row.status for row in (*metrics, *series)}
    artifact_statuses = {row.status for row in artifacts}
    if not artifact_statuses <= {A_IDENTICAL, A_EQUIVALENT, A_IGNORED}:
        return DIFFERS
    if metric_statuses <= {M_IDENTICAL, M_IGNORED} and A_EQUIVALENT not in artifact_statuses:
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
        _repo_digest_row(ia.image, ib.image),
        _input_row("dataset.sha256", ia.dataset.sha256 if ia.dataset else None,
                   ib.dataset.sha256 if ib.dataset else None),
        _input_row("seed", ia.seed, ib.seed),
        _input_row("command", shlex.join(ia.command), shlex.join(ib.command)),
    ]
    for group in ("params", "env", "resources", "container"):
        left, right = getattr(ia, group) or {}, getattr(ib, group) or {}
        for key in sorted(set(left) | set(right), key=str):
            rows.append(_input_row(f"{group}.{key}", left.get(key, ABSENT),
                                   right.get(key, ABSENT)))
    return tuple(rows)


def _repo_digest_row(a, b) -> InputRow:
    """The same image ID is the same image: pushing it to a registry gives it a repo digest
    that the run before the push could not record, which is no difference."""
    row = _input_row("image.repo_digest", a.repo_digest, b.repo_digest)
    if a.id == b.id and None in (a.repo_digest, b.repo_digest):
        return dataclasses.replace(row, same=True)
    return row


def _input_row(name: str, a: Any, b: Any) -> InputRow:
    ta, tb = display_text(ABSENT if a is None else a), display_text(ABSENT if b is None else b)
    return InputRow(field=name, a=ta, b=tb, same=ta == tb)

# --- metrics --------------------------------------------------------------------------------

def _metrics_of(record: RunRecord) -> dict[str, Any]:
    if record.outputs is None:
        return {}
    return dict(record.outputs.metrics or {})


def natural_key(name: str) -> tuple:
    """`round.2` before `round.10`: runs of digits compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", name) if part)


def compare_metrics(
    a: dict[str, Any], b: dict[str, Any], tolerances: Tolerances,
) -> tuple[tuple[MetricRow, ...], list[str], tuple[SeriesRow, ...]]:
    """One row per metric; a list metric (a curve) also gets a series, compared step by step."""
    rows: list[MetricRow] = []
    notes: list[str] = []
    series: list[SeriesRow] = []
    for name in sorted(set(a) | set(b), key=natural_key):
        tolerance = tolerances.for_metric(name)
        va, vb = a.get(name), b.get(name)
        ka, kb = metric_kind(va), metric_kind(vb)
        kind = ka if name not in b else kb if name not in a else ka if ka == kb else MIXED
        delta: float | None = None
        if kind == NUMBER and name in a and name in b:
            delta = 0.0 if same_float(va, vb) else vb - va
        if kind == CURVE:
            curve = compare_series(
                name, "metric", None if name not in a else list(enumerate(va)),
                None if name not in b else list(enumerate(vb)), tolerance)
            series.append(curve)
            delta = curve.largest_delta if curve.status == M_BEYOND else None
        if tolerance.kind == "ignore":
            status = M_IGNORED
        elif name not in a:
            status = MISSING_A
        elif name not in b:
            status = MISSING_B
        elif kind == CURVE:
            status = curve.status
        elif kind != NUMBER:
            status = M_IDENTICAL if same_value(va, vb) else M_DIFFERS
        elif same_float(va, vb):
            status = M_IDENTICAL
            if math.isnan(va):
                notes.append(f"metric {name} is NaN in both runs; counted as identical")
        elif not (math.isfinite(va) and math.isfinite(vb)):
            # NaN against a number, or infinities that disagree: no tolerance spans those.
            status = M_BEYOND
        else:
            status = M_WITHIN if tolerance.allows(va, vb) else M_BEYOND
        shown_tolerance = tolerance.text if kind in (NUMBER, CURVE) or status == M_IGNORED \
            else "exact"
        rows.append(MetricRow(name=name, a=_frozen(va), b=_frozen(vb), delta=delta,
                              tolerance=shown_tolerance, status=status, kind=kind))
    return tuple(rows), notes, tuple(series)


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def compare_steps(a: RunRecord, b: RunRecord, tolerances: Tolerances) -> tuple[SeriesRow, ...]:
    """The per-step streams of both runs, series by series, in natural order of their names."""
    left, right = _steps_of(a), _steps_of(b)
    return tuple(compare_series(name, "steps", left.get(name), right.get(name),
                                tolerances.for_metric(name))
                 for name in sorted(set(left) | set(right), key=natural_key))


def _steps_of(record: RunRecord) -> dict[str, list[tuple[int, float]]]:
    steps = getattr(record.outputs, "steps", None) or {}
    return {name: [(int(step), float(value)) for step, value in points]
            for name, points in steps.items()}


# --- artifacts ------------------------------------------------------------------------------

def _artifacts_of(record: RunRecord) -> dict[str, Any]:
    return {} if record.outputs is None else dict(record.outputs.artifacts or {})


def compare_artifacts(ra: RunRecord, rb: RunRecord, policies: ArtifactPolicies,
                      contents: "ArtifactContents | None" = None) -> tuple[ArtifactRow, ...]:
    a, b = _artifacts_of(ra), _artifacts_of(rb)
    rows = []
    for name in sorted(set(a) | set(b)):
        fa, fb = a.get(name), b.get(name)
        policy = policies.for_artifact(name)
        found = None
        if policy.how == IGNORE:
            status = A_IGNORED
        elif fa is None:
            status = MISSING_A
        elif fb is None:
            status = MISSING_B
        elif fa.sha256 == fb.sha256:
            status = A_IDENTICAL
        elif contents is None:
            status = A_DIFFERS
        else:
            found = contents.compare(name, ra, rb, policy)
            status = {SAME: A_EQUIVALENT, CONTENT_EQUIVALENT: A_EQUIVALENT}.get(found.status,
                                                                                A_DIFFERS)
        rows.append(ArtifactRow(
            name=name,
            a_sha256=fa.sha256 if fa else None, b_sha256=fb.sha256 if fb else None,
            a_size=fa.size if fa else None, b_size=fb.size if fb else None,
            status=status, policy=policy.text,
            **({} if found is None else dict(
                kind=found.kind, detail=found.detail, fallback=found.fallback,
                parts=found.parts[:PARTS_KEPT], excerpt=found.excerpt, figures=found.figures))))
    return tuple(rows)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 or word.endswith("s") else "s")


def _summary_line(
    verdict: str, unsuccessful: Sequence[RunRecord], inputs: Sequence[InputRow],
    environment: Sequence[EnvironmentRow], metrics: Sequence[MetricRow],
    artifacts: Sequence[ArtifactRow], series: Sequence[SeriesRow] = (),
) -> str:
    parts = []
    if unsuccessful:
        parts.append("; ".join(f"run {r.id} did not succeed ({failure_text(r)})"
                               for r in unsuccessful))
    for what, rows, statuses in (("metric", metrics, METRIC_STATUSES),
                                 ("series", [r for r in series if r.source == "steps"],
                                  METRIC_STATUSES),
                                 ("artifact", artifacts, ARTIFACT_STATUSES)):
        if what == "series" and not rows:
            continue
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
    return utc_now("seconds")

