"""A verdict from N runs of one spec: how far their results spread, and whether they agree.

`spread_of` compares every pair of the N runs (under the tolerances of the first) and, per
numeric metric, gives the mean, the sample standard deviation and the range. When all pairs
agree the verdict is theirs (identical or equivalent); when none do it is `differs`; when some
pairs agree and others do not it is `flaky`.

A suggested tolerance per metric, from what was seen: twice the largest difference between two
of the N runs, rounded up to two significant digits — and for an accuracy-like metric whose test
set size is given (`compare.test_examples`), at least twice the binomial standard error
sqrt(p(1-p)/n), the noise a test set of that size alone makes. A metric that never moved keeps
its tolerance.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from dataclasses import dataclass
from typing import Sequence

from orchestrator.compare.comparison import compare_records, natural_key
from orchestrator.compare.numbers import shown
from orchestrator.compare.tolerance import Tolerance, parse_tolerances
from orchestrator.compare.value import (DIFFERS, EQUIVALENT, FLAKY, IDENTICAL, INCOMPLETE,
                                        Verdict)
from orchestrator.records import SUCCEEDED, RunRecord

# Names of metrics that are a share of test examples right (or wrong).
ACCURACY_LIKE = re.compile(r"acc|precision|recall|f1|error|err\b|auc", re.IGNORECASE)


@dataclass(frozen=True)
class MetricSpread:
    name: str
    values: tuple[float, ...]
    mean: float
    stdev: float
    low: float
    high: float
    agree: bool                       # every pair within the metric's tolerance
    tolerance: str                    # the tolerance the runs were judged by
    suggested: Tolerance
    binomial_se: float | None = None  # sqrt(p(1-p)/n) for an accuracy-like metric

    @property
    def range(self) -> float:
        return self.high - self.low

    @property
    def spread_text(self) -> str:
        if self.binomial_se is None:
            return f"range {shown(self.range)}"
        within = "within" if self.range <= 2 * self.binomial_se else "beyond"
        return (f"range {shown(self.range)}, {within} the {shown(self.binomial_se)} expected "
                f"from the test set (binomial standard error)")


@dataclass(frozen=True)
class Spread:
    runs: tuple[str, ...]
    verdict: Verdict
    pairs: int
    agreeing_pairs: int
    metrics: tuple[MetricSpread, ...]
    test_examples: int | None = None

    @property
    def summary(self) -> str:
        return (f"{self.verdict.upper()} across {len(self.runs)} runs: {self.agreeing_pairs} "
                f"of {self.pairs} pairs agree")

    def table(self) -> dict:
        """As a report's extra section: every format draws it."""
        rows = [[m.name, shown(m.mean), shown(m.stdev), f"{shown(m.low)} .. {shown(m.high)}",
                 "yes" if m.agree else "no", m.tolerance, m.suggested.text, m.spread_text]
                for m in self.metrics]
        return {"title": self.summary,
                "columns": ["metric", "mean", "std dev", "range", "all agree", "tolerance",
                            "suggested", "spread"],
                "rows": rows}

    def suggested_block(self, artifacts: str | dict = "bitwise", keep: dict | None = None) -> str:
        """The `compare:` block to paste into the spec."""
        tolerances = dict(keep or {})
        for m in self.metrics:
            if not m.agree or m.range > 0:
                tolerances[m.name] = m.suggested
        default = tolerances.pop("default", Tolerance())
        lines = ["compare:", "  metrics:", f"    default: {_yaml(default)}"]
        lines += [f"    {_key(name)}: {_yaml(t)}"
                  for name, t in sorted(tolerances.items(), key=lambda kv: natural_key(kv[0]))]
        # Per-pattern policies are a mapping: JSON is YAML's flow style, and pastes as such.
        lines.append(f"  artifacts: {artifacts if isinstance(artifacts, str) else json.dumps(artifacts)}")
        if self.test_examples is not None:
            lines.append(f"  test_examples: {self.test_examples}")
        return "\n".join(lines) + "\n"


def spread_of(records: Sequence[RunRecord]) -> Spread:
    tolerances = parse_tolerances(records[0].compare)
    verdicts = [compare_records(a, b, baseline_id=a.id).verdict
                for a, b in itertools.combinations(records, 2)]
    agreeing = sum(v in (IDENTICAL, EQUIVALENT) for v in verdicts)
    if any(r.status != SUCCEEDED for r in records):
        verdict = INCOMPLETE
    elif agreeing == len(verdicts):
        verdict = max(verdicts, key=lambda v: v.rank)
    elif agreeing == 0:
        verdict = DIFFERS
    else:
        verdict = FLAKY
    names = sorted({name for r in records if r.outputs for name, value in r.outputs.metrics.items()
                    if _is_number(value)}, key=natural_key)
    metrics = []
    for name in names:
        values = tuple(float(r.outputs.metrics[name]) for r in records
                       if r.outputs and _is_number(r.outputs.metrics.get(name)))
        if len(values) < 2 or not all(map(math.isfinite, values)):
            continue
        tolerance = tolerances.for_metric(name)
        agree = all(a == b or tolerance.kind == "ignore" or tolerance.allows(a, b)
                    for a, b in itertools.combinations(values, 2))
        se = _binomial_se(name, values, tolerances.test_examples)
        metrics.append(MetricSpread(
            name=name, values=values, mean=statistics.fmean(values),
            stdev=statistics.stdev(values), low=min(values), high=max(values), agree=agree,
            tolerance=tolerance.text, suggested=_suggested(values, tolerance, se),
            binomial_se=se))
    return Spread(runs=tuple(r.id for r in records), verdict=verdict, pairs=len(verdicts),
                  agreeing_pairs=agreeing, metrics=tuple(metrics),
                  test_examples=tolerances.test_examples)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _binomial_se(name: str, values: tuple[float, ...], examples: int | None) -> float | None:
    if examples is None or not ACCURACY_LIKE.search(name) or not all(0 <= v <= 1 for v in values):
        return None
    p = statistics.fmean(values)
    return math.sqrt(p * (1 - p) / examples)


def _suggested(values: tuple[float, ...], tolerance: Tolerance, se: float | None) -> Tolerance:
    largest = max(values) - min(values)
    if largest == 0:
        return tolerance
    bound = max(2 * largest, 2 * se if se is not None else 0.0)
    return Tolerance("abs", _round_up(bound))


def _round_up(x: float, digits: int = 2) -> float:
    """Up to `digits` significant digits, never below x: 0.00873 -> 0.0088."""
    exponent = math.floor(math.log10(x)) - digits + 1
    step = 10.0 ** exponent
    return float(f"{math.ceil(x / step - 1e-9) * step:.{max(-exponent, 0)}f}")


def _yaml(tolerance: Tolerance) -> str:
    if tolerance.kind in ("exact", "ignore"):
        return tolerance.kind
    return f"{{{tolerance.kind}: {tolerance.value!r}}}"


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_.\-]+", name) else '"' + name.replace('"', '\\"') + '"'
