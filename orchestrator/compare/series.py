"""Two runs' series compared step by step: where they part, and by how much after.

A series is a per-step stream the job appends (`outputs.steps`, one JSON object per line) or a
list metric (its index is the step). Steps are matched by number; the first step where the two
values differ beyond the tolerance of the metric of that name (or where only one run has a
value) is where the trainings part — the step to hunt for, as the first differing action of
a build is.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

from orchestrator.compare.numbers import delta_shown, tell_apart
from orchestrator.compare.tolerance import Tolerance
from orchestrator.compare.value import (M_BEYOND, M_IDENTICAL, M_IGNORED, M_WITHIN, MISSING_A,
                                        MISSING_B, SeriesRow, same_float)

Point = tuple[int, float]


def compare_series(name: str, source: str, a: Sequence[Point] | None,
                   b: Sequence[Point] | None, tolerance: Tolerance) -> SeriesRow:
    """`a` or `b` is None when that run has no such series."""
    left, right = dict(a or ()), dict(b or ())
    row = dict(name=name, source=source, tolerance=tolerance.text,
               a_steps=tuple(sorted(left)), a=tuple(left[s] for s in sorted(left)),
               b_steps=tuple(sorted(right)), b=tuple(right[s] for s in sorted(right)))
    if tolerance.kind == "ignore":
        return SeriesRow(**row, status=M_IGNORED, summary=f"{name}: ignored by tolerance")
    if a is None or b is None:
        status, only_in = (MISSING_A, "b") if a is None else (MISSING_B, "a")
        return SeriesRow(**row, status=status, summary=f"{name}: only in run {only_in}")
    agree_until, first, within = None, None, False
    for step in sorted(set(left) | set(right)):
        if step not in left or step not in right:
            first = step
            break
        va, vb = left[step], right[step]
        if same_float(va, vb):
            agree_until = step
        elif math.isfinite(va) and math.isfinite(vb) and tolerance.allows(va, vb):
            agree_until, within = step, True
        else:
            first = step
            break
    if first is None:
        status = M_WITHIN if within else M_IDENTICAL
        steps = len(left)
        return SeriesRow(**row, status=status, agree_until=agree_until,
                         summary=f"{name}: {'identical' if not within else 'within tolerance'} "
                                 f"at all {steps} steps")
    largest_step, largest = _largest_difference(
        (s, left[s], right[s]) for s in sorted(left) if s >= first and s in right)
    return SeriesRow(**row, status=M_BEYOND, agree_until=agree_until, first_differ=first,
                     a_at=left.get(first), b_at=right.get(first), largest_step=largest_step,
                     largest_delta=largest,
                     summary=_parting(name, agree_until, first, left, right, within,
                                      largest_step, largest))


def _largest_difference(triples: Iterable[tuple[int, float, float]]
                        ) -> tuple[int | None, float | None]:
    best_step, best = None, None
    for step, va, vb in triples:
        if same_float(va, vb):
            continue
        delta = vb - va if math.isfinite(va) and math.isfinite(vb) else math.inf
        if best is None or abs(delta) > abs(best):
            best_step, best = step, delta
    return best_step, best


def _parting(name: str, agree_until: int | None, first: int, left: dict, right: dict,
             within: bool, largest_step: int | None, largest: float | None) -> str:
    how = "within tolerance" if within else "identical"
    head = f"{how} up to step {agree_until}; " if agree_until is not None else ""
    if first not in left or first not in right:
        return (f"{head}first differ at step {first}: {name} only in run "
                f"{'a' if first in left else 'b'} (run a has {len(left)} steps, run b "
                f"{len(right)})")
    ta, tb = tell_apart(left[first], right[first])
    text = f"{head}first differ at step {first}: {name} {ta} vs {tb}"
    if largest_step is not None and largest is not None:
        text += (f"; largest difference {delta_shown(largest, left[largest_step], right[largest_step])}"
                 f" at step {largest_step}")
    if len(left) != len(right):
        text += f"; run a has {len(left)} steps, run b {len(right)}"
    return text
