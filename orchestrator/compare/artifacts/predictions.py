"""Predictions (CSV, or JSON Lines with one object per example): prediction churn, the share
and count of examples on which the two models disagree, per-class accuracy deltas when the
true label is there, and the largest differences of predicted values for a regression.
"""
from __future__ import annotations

import collections
import csv
import io
import itertools
import json
import operator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.compare.artifacts.findings import (
    DIFFERS, EQUIVALENT, SAME, CannotCompare, ContentFindings, excerpt)
from orchestrator.compare.artifacts.policy import ArtifactPolicy, PredictionColumns

MAX_PREDICTION_BYTES = 2 << 30
LARGEST_KEPT = 5                  # regression: the examples with the largest |Δ|
CLASSES_KEPT = 100


@dataclass(frozen=True)
class _Predictions:
    ids: list[str]
    predicted: list[str]
    truth: list[str] | None


def _read_bytes(path: Path, side: str) -> str:
    size = path.stat().st_size
    if size > MAX_PREDICTION_BYTES:
        raise CannotCompare(f"run {side}'s predictions are {size:,} bytes, more than the "
                            f"{MAX_PREDICTION_BYTES:,} read to compare them")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CannotCompare(f"run {side}'s predictions are not UTF-8 ({exc.reason})") from None


def _from_plain_csv(text: str, columns: PredictionColumns, side: str) -> _Predictions | None:
    """Without quotes a CSV file is lines of fields split at commas: one split of the whole
    text, then every column a slice of it (a million rows in a fraction of a second, where a
    row-by-row reader takes seconds). None when the file needs the full reader."""
    if '"' in text or "\r" in text:
        return None
    lines = text.rstrip("\n").split("\n")
    header = lines[0].split(",")
    commas = set(map(str.count, lines, itertools.repeat(",")))
    if commas != {len(header) - 1} or "" in lines:
        return None
    wanted = [columns.id, columns.predicted] + ([columns.truth] if columns.truth else [])
    missing = [name for name in wanted if name not in header]
    if missing:
        raise CannotCompare(f"run {side}'s predictions have no column {missing[0]!r} (the "
                            f"header is {', '.join(header[:10])})")
    fields = ",".join(lines[1:]).split(",") if len(lines) > 1 else []
    width = len(header)
    pick = [fields[header.index(name)::width] for name in wanted]
    return _Predictions(pick[0], pick[1], pick[2] if columns.truth else None)


def _from_csv(text: str, columns: PredictionColumns, side: str) -> _Predictions:
    plain = _from_plain_csv(text, columns, side)
    if plain is not None:
        return plain
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(rows)
        wanted = [columns.id, columns.predicted] + ([columns.truth] if columns.truth else [])
        missing = [name for name in wanted if name not in header]
        if missing:
            raise CannotCompare(f"run {side}'s predictions have no column {missing[0]!r} (the "
                                f"header is {', '.join(header[:10])})")
        at = [header.index(name) for name in wanted]
        width = max(at) + 1
        table = [row for row in rows if row]
    except csv.Error as exc:
        raise CannotCompare(f"run {side}'s predictions are not CSV ({exc})") from None
    except StopIteration:
        raise CannotCompare(f"run {side}'s predictions are empty") from None
    short = next((i for i, row in enumerate(table) if len(row) < width), None)
    if short is not None:
        raise CannotCompare(f"line {short + 2} of run {side}'s predictions has "
                            f"{len(table[short])} fields, fewer than its header")
    ids = [row[at[0]] for row in table]
    predicted = [row[at[1]] for row in table]
    truth = [row[at[2]] for row in table] if columns.truth else None
    return _Predictions(ids, predicted, truth)


def _from_json_lines(text: str, columns: PredictionColumns, side: str) -> _Predictions:
    ids, predicted, truth = [], [], [] if columns.truth else None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CannotCompare(f"line {number} of run {side}'s predictions is not JSON "
                                f"({exc})") from None
        if not isinstance(row, dict):
            raise CannotCompare(f"line {number} of run {side}'s predictions is not an object")
        for key in (columns.id, columns.predicted, columns.truth):
            if key is not None and key not in row:
                raise CannotCompare(f"line {number} of run {side}'s predictions has no "
                                    f"{key!r}")
        ids.append(_as_text(row[columns.id]))
        predicted.append(_as_text(row[columns.predicted]))
        if truth is not None:
            truth.append(_as_text(row[columns.truth]))
    return _Predictions(ids, predicted, truth)


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def read_predictions(path: Path, columns: PredictionColumns, side: str) -> _Predictions:
    text = _read_bytes(path, side)
    json_lines = path.suffix.lower() in (".jsonl", ".ndjson") or text.lstrip()[:1] == "{"
    return (_from_json_lines if json_lines else _from_csv)(text, columns, side)


def _refuse_repeated_ids(predictions: _Predictions, side: str) -> None:
    """Paired by id, an id named twice is ambiguous (in the same order on both sides, pairing
    by position is not, and this check is skipped: it costs a set of every id)."""
    if len(set(predictions.ids)) != len(predictions.ids):
        seen: set[str] = set()
        twice = next(i for i in predictions.ids if i in seen or seen.add(i))
        raise CannotCompare(f"run {side}'s predictions name the example {twice!r} more than "
                            "once, so they cannot be paired by id")


def _regression_values(values: list[str]) -> np.ndarray | None:
    """The predicted values as numbers when they are a regression's (some not whole numbers),
    None for class labels; a sample decides before the whole column is converted."""
    sample = values[:1000]
    if not any(("." in v or "e" in v or "E" in v) for v in sample):
        return None
    try:
        numbers = np.array(values, dtype=np.float64)
    except ValueError:
        return None
    return None if np.all(numbers == np.round(numbers)) else numbers


def compare_predictions(path_a: Path, path_b: Path, policy: ArtifactPolicy) -> ContentFindings:
    columns = policy.columns or PredictionColumns()
    a = read_predictions(path_a, columns, "a")
    b = read_predictions(path_b, columns, "b")
    if a.ids == b.ids:
        shared, pa, pb, truth = a.ids, a.predicted, b.predicted, a.truth
        only_a = only_b = 0
    else:
        _refuse_repeated_ids(a, "a")
        _refuse_repeated_ids(b, "b")
        where_b = {id_: i for i, id_ in enumerate(b.ids)}
        pairs = [(i, where_b[id_]) for i, id_ in enumerate(a.ids) if id_ in where_b]
        shared = [a.ids[i] for i, _ in pairs]
        pa = [a.predicted[i] for i, _ in pairs]
        pb = [b.predicted[j] for _, j in pairs]
        truth = [a.truth[i] for i, _ in pairs] if a.truth is not None else None
        only_a, only_b = len(a.ids) - len(pairs), len(b.ids) - len(pairs)
    figures: dict = {"examples": len(shared), "only_a": only_a, "only_b": only_b}
    lines: list[str] = []
    na = _regression_values(pa) if truth is None else None
    nb = _regression_values(pb) if na is not None else None
    if na is not None and nb is None:
        nb = _as_numbers(pb)
    regression = na is not None and nb is not None
    if regression:
        delta = np.abs(na - nb)
        delta = np.where(np.isnan(delta) & ~(np.isnan(na) & np.isnan(nb)), np.inf,
                         np.nan_to_num(delta, nan=0.0))
        bound = policy.abs if policy.abs is not None else 0.0
        churn = int(np.count_nonzero(delta > bound))
        figures["max_abs"] = float(delta.max()) if delta.size else 0.0
        order = np.argsort(-delta, kind="stable")[:LARGEST_KEPT]
        figures["largest"] = [{"id": shared[i], "a": float(na[i]), "b": float(nb[i]),
                               "delta": float(nb[i] - na[i])} for i in order if delta[i] > 0]
        lines += [f"example {row['id']}: {row['a']:.6g} vs {row['b']:.6g} "
                  f"(Δ {row['delta']:+.3g})" for row in figures["largest"]]
    else:
        churn = sum(map(operator.ne, pa, pb))
    figures["churn"] = churn
    figures["churn_share"] = churn / len(shared) if shared else 0.0
    if truth is not None:
        figures["classes"] = _per_class(truth, pa, pb)
        lines += [f"class {c['class']}: accuracy {c['accuracy_a']:.4f} → {c['accuracy_b']:.4f} "
                  f"(Δ {c['delta']:+.4f}, {c['examples']:,} examples)"
                  for c in figures["classes"] if c["delta"] != 0]
    detail = (f"prediction churn {figures['churn_share']:.2%}: the two models disagree on "
              f"{churn:,} of {len(shared):,} examples")
    if regression:
        detail += f" (largest |Δ| {figures['max_abs']:.6g})"
    if only_a or only_b:
        detail += f"; {only_a:,} examples only in run a, {only_b:,} only in run b"
    if churn == 0 and not (only_a or only_b):
        status = SAME if not regression or figures["max_abs"] == 0 else EQUIVALENT
    elif not (only_a or only_b) and figures["churn_share"] <= policy.churn:
        status = EQUIVALENT
    else:
        status = DIFFERS
    return ContentFindings("predictions", status, detail, excerpt=excerpt(lines),
                           figures=figures)


def _as_numbers(values: list[str]) -> np.ndarray | None:
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        return None


def _per_class(truth: list[str], pa: list[str], pb: list[str]) -> list[dict]:
    # Counter counts in C: (class, a right, b right) for each example.
    tallies = collections.Counter(zip(truth, map(operator.eq, pa, truth),
                                      map(operator.eq, pb, truth)))
    counts: dict[str, list[int]] = {}
    for (label, right_a, right_b), n in tallies.items():
        tally = counts.setdefault(label, [0, 0, 0])
        tally[0] += n
        tally[1] += n * right_a
        tally[2] += n * right_b
    classes = []
    for label in sorted(counts, key=_natural)[:CLASSES_KEPT]:
        n, right_a, right_b = counts[label]
        classes.append({"class": label, "examples": n, "accuracy_a": right_a / n,
                        "accuracy_b": right_b / n, "delta": (right_b - right_a) / n})
    return classes


def _natural(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
