"""JSON, YAML, CSV and plain text: the first lines or fields that differ, as a bounded excerpt.

Numbers inside JSON, YAML and CSV are compared under the artifact's tolerance, so a results
file whose only changes are within it is equivalent.
"""
from __future__ import annotations

import csv
import difflib
import io
import json
import math
import operator
from pathlib import Path
from typing import Any, Iterator

import yaml

from orchestrator.compare.artifacts.findings import (
    DIFFERS, EQUIVALENT, EXCERPT_LINES, SAME, CannotCompare, ContentFindings, excerpt)
from orchestrator.compare.artifacts.policy import ArtifactPolicy

MAX_TEXT_BYTES = 64 << 20        # parsed whole; beyond it the artifact is compared bitwise
MAX_NODES = 1_000_000            # visited in a structure: YAML aliases can multiply a small file
_DIFFERENCES_KEPT = EXCERPT_LINES


def _read_text(path: Path, what: str) -> str:
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise CannotCompare(f"the {what} is {size:,} bytes, more than the {MAX_TEXT_BYTES:,} "
                            "read to compare its contents")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CannotCompare(f"the {what} is not UTF-8 text ({exc.reason} at byte {exc.start})")


def _numbers_within(a: Any, b: Any, policy: ArtifactPolicy) -> bool | None:
    """True/False for two numbers under the tolerance; None when either is not a number."""
    if isinstance(a, bool) or isinstance(b, bool) or not (
            isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return None
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    if policy.abs is not None:
        return abs(a - b) <= policy.abs
    if policy.rel is not None:
        return abs(a - b) <= policy.rel * max(abs(a), abs(b))
    return False


def _walk(a: Any, b: Any, path: str, budget: list[int]) -> Iterator[tuple[str, Any, Any]]:
    """Every (path, a, b) where two parsed documents disagree, depth first, in key order."""
    budget[0] -= 1
    if budget[0] < 0:
        raise CannotCompare(f"the documents hold more than {MAX_NODES:,} values")
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{path}.{key}"
            if key not in a or key not in b:
                yield where, a.get(key, _ABSENT), b.get(key, _ABSENT)
            else:
                yield from _walk(a[key], b[key], where, budget)
    elif isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _walk(x, y, f"{path}[{i}]", budget)
        if len(a) != len(b):
            yield f"{path} length", len(a), len(b)
    elif type(a) is not type(b) and not _both_numbers(a, b) or a != b:
        if not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
            yield path, a, b


def _both_numbers(a: Any, b: Any) -> bool:
    return _numbers_within(a, b, ArtifactPolicy()) is not None


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _structured(kind: str, a: Any, b: Any, policy: ArtifactPolicy) -> ContentFindings:
    lines, total, beyond = [], 0, 0
    for where, x, y in _walk(a, b, "$", [MAX_NODES]):
        total += 1
        within = _numbers_within(x, y, policy)
        beyond += within is not True
        if len(lines) < _DIFFERENCES_KEPT:
            mark = " (within tolerance)" if within else ""
            lines.append(f"{where}: {_short(x)} vs {_short(y)}{mark}")
    if total == 0:
        return ContentFindings(kind, SAME, "the same content, written differently")
    status = DIFFERS if beyond else EQUIVALENT
    detail = (_counted(total, "value")
              + (f", {beyond:,} beyond the tolerance" if beyond and beyond != total else "")
              + (", all within the tolerance" if not beyond else "")
              + f"; first at {lines[0].split(':', 1)[0]}")
    return ContentFindings(kind, status, detail, excerpt=excerpt(lines, total - len(lines)))


def _counted(n: int, noun: str) -> str:
    return f"1 {noun} differs" if n == 1 else f"{n:,} {noun}s differ"


def _short(value: Any) -> str:
    text = json.dumps(value, default=repr, ensure_ascii=False) if value is not _ABSENT \
        else "(absent)"
    return text if len(text) <= 60 else text[:59] + "…"


def compare_json(path_a: Path, path_b: Path, policy: ArtifactPolicy) -> ContentFindings:
    docs = []
    for path, side in ((path_a, "a"), (path_b, "b")):
        try:
            docs.append(json.loads(_read_text(path, f"JSON file of run {side}")))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CannotCompare(f"run {side}'s file is not JSON ({exc})") from None
    return _structured("json", docs[0], docs[1], policy)


def compare_yaml(path_a: Path, path_b: Path, policy: ArtifactPolicy) -> ContentFindings:
    docs = []
    for path, side in ((path_a, "a"), (path_b, "b")):
        try:
            docs.append(list(yaml.safe_load_all(_read_text(path, f"YAML file of run {side}"))))
        except (yaml.YAMLError, RecursionError) as exc:
            raise CannotCompare(f"run {side}'s file is not YAML ({str(exc).splitlines()[0]})") \
                from None
    return _structured("yaml", docs[0], docs[1], policy)


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def compare_csv(path_a: Path, path_b: Path, policy: ArtifactPolicy) -> ContentFindings:
    tables = []
    for path, side in ((path_a, "a"), (path_b, "b")):
        text = _read_text(path, f"CSV file of run {side}")
        try:
            tables.append(list(csv.reader(io.StringIO(text, newline=""))))
        except csv.Error as exc:
            raise CannotCompare(f"run {side}'s file is not CSV ({exc})") from None
    a, b = tables
    header = a[0] if a else []
    lines, total, beyond = [], 0, 0
    for row, (ra, rb) in enumerate(zip(a, b)):
        for col in range(max(len(ra), len(rb))):
            x = ra[col] if col < len(ra) else None
            y = rb[col] if col < len(rb) else None
            if x == y:
                continue
            total += 1
            within = (_numbers_within(_number(x), _number(y), policy)
                      if x is not None and y is not None and row > 0 else None)
            beyond += within is not True
            if len(lines) < _DIFFERENCES_KEPT:
                name = header[col] if row > 0 and col < len(header) else f"column {col + 1}"
                lines.append(f"line {row + 1}, {name}: {x!r} vs {y!r}"
                             + (" (within tolerance)" if within else ""))
    if len(a) != len(b):
        total += 1
        beyond += 1
        lines.append(f"run a has {len(a):,} lines, run b {len(b):,}")
    if total == 0:
        return ContentFindings("csv", SAME, "the same rows and fields, written differently")
    detail = (_counted(total, "field")
              + (", all within the tolerance" if not beyond else "")
              + f"; first at {lines[0].split(':', 1)[0]}")
    return ContentFindings("csv", DIFFERS if beyond else EQUIVALENT, detail,
                           excerpt=excerpt(lines, total - len(lines)))


def compare_text(path_a: Path, path_b: Path, policy: ArtifactPolicy) -> ContentFindings:
    a = _read_text(path_a, "text file of run a").splitlines()
    b = _read_text(path_b, "text file of run b").splitlines()
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if first == len(a) == len(b):
        return ContentFindings("text", SAME, "the same lines (line endings differ)")
    # A window around the first difference: difflib over whole large files is quadratic.
    window = slice(max(0, first - 2), first + 4 * EXCERPT_LINES)
    diff = list(difflib.unified_diff(a[window], b[window], "run a", "run b", lineterm="", n=2))
    by_position = sum(map(operator.ne, a, b)) + abs(len(a) - len(b))
    detail = (f"first differ at line {first + 1} of {len(a):,} (run a) and {len(b):,} (run b); "
              f"{by_position:,} line{'s' if by_position != 1 else ''} differ by position")
    return ContentFindings("text", DIFFERS, detail, excerpt=excerpt(diff[2:]))
