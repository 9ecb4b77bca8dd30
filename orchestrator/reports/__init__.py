"""Reports: thin renderers over one `Comparison`.

Each format module has `render(comparison) -> str` and computes nothing about the runs; the
tables they draw are laid out once here (`tables`) so that every format shows the same cells.
A JSON report can be read back with `load_json_report` and rendered again in any format.
"""
from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from orchestrator.compare.numbers import delta_shown, metric_value_text, shown, tell_apart
from orchestrator.compare.value import (MISSING_A, MISSING_B, NUMBER, REPORT_SCHEMA, Comparison,
                                        MetricRow, SeriesRow, same_float)
from orchestrator.errors import UsageError

FORMATS = frozenset({"terminal", "md", "html", "json", "junit"})

# File extension -> format, for `--report PATH`.
EXTENSIONS = {
    ".md": "md", ".markdown": "md",
    ".html": "html", ".htm": "html",
    ".json": "json",
    ".xml": "junit",
}

_MODULES = {
    "terminal": "orchestrator.reports.terminal",
    "md": "orchestrator.reports.markdown",
    "html": "orchestrator.reports.html",
    "json": "orchestrator.reports.json_report",
    "junit": "orchestrator.reports.junit",
}

# Each report schema a JSON report may carry; older ones are read and upgraded.
SCHEMA_RESOURCES = {"reprun.report/2": "report-v2.schema.json",
                    "reprun.report/1": "report-v1.schema.json"}

# The terminal and Markdown reports list at most this many environment changes.
ENVIRONMENT_ROWS_SHOWN = 30


def format_for_path(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    try:
        return EXTENSIONS[suffix]
    except KeyError:
        supported = ", ".join(sorted(EXTENSIONS))
        raise UsageError(
            f"cannot tell the report format of {path}: use one of the extensions {supported} "
            "(.xml is JUnit XML)") from None


def render(comparison: Comparison, fmt: str, **options: Any) -> str:
    """Render in one of FORMATS; options go to that format (e.g. color=True for terminal)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r}; use one of {', '.join(sorted(FORMATS))}")
    module = importlib.import_module(_MODULES[fmt])
    return module.render(comparison, **options)


def write_report(comparison: Comparison, path: str | Path) -> str:
    """Write the report in the format its extension names; returns the format."""
    from orchestrator.files import write_text
    fmt = format_for_path(path)
    text = render(comparison, fmt)
    write_text(Path(path), text if text.endswith("\n") else text + "\n", "report")
    return fmt


def report_schema(schema: str = REPORT_SCHEMA) -> dict[str, Any]:
    resource = SCHEMA_RESOURCES[schema]
    text = resources.files(__package__).joinpath(resource).read_text(encoding="utf-8")
    return json.loads(text)


def load_json_report(path: str | Path) -> Comparison:
    """Read a JSON report written by reprun, checked against the report schema."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the report {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path} is not a reprun report: it is not JSON ({exc})") from None
    problems = validation_errors(data)
    if problems:
        raise UsageError(
            f"{path} is not a reprun report (schema {REPORT_SCHEMA}); the first problems:",
            details=problems[:5])
    return Comparison.from_dict(data)


def validation_errors(data: Any) -> list[str]:
    """Where `data` departs from the report schema, one line per problem (empty when valid)."""
    if not isinstance(data, dict) or data.get("schema") not in SCHEMA_RESOURCES:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        return [f"schema: expected {REPORT_SCHEMA!r}, found {found!r}"]
    schema = report_schema(data["schema"])
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema comes with the test extra
        return [f"{key}: missing" for key in schema["required"] if key not in data]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    ]


# --------------------------------------------------------------------------------------------
# The cells every format draws
# --------------------------------------------------------------------------------------------

MISSING = "—"


@dataclass(frozen=True)
class Table:
    key: str                          # "runs", "metrics", "artifacts", "inputs", ...
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    statuses: tuple[str, ...] = ()    # one per row, for colour or styling; "" when none
    more: int = 0                     # rows left out of `rows`
    empty: str = "none"               # what to say when there are no rows


def number(x: float | None, *, signed: bool = False) -> str:
    """Shortest text that reads back as the same float: 0.9533333333333334, not 0.953333."""
    if x is None:
        return MISSING
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+inf" if x > 0 and signed else "inf" if x > 0 else "-inf"
    return f"{x:+}" if signed and x != 0 else repr(float(x))


def text(value: str | None) -> str:
    return MISSING if value is None else value


def short_sha(digest: str | None, chars: int | None) -> str:
    if digest is None:
        return MISSING
    if chars is None:
        return digest
    head, _, hexpart = digest.rpartition(":")
    return (head + ":" if head else "") + hexpart[:chars]


def size(n: int | None) -> str:
    return MISSING if n is None else f"{n:,}"


def run_label(comparison: Comparison, side: str) -> str:
    run = comparison.a if side == "a" else comparison.b
    marked = run.id == comparison.baseline and (side == "a" or comparison.a.id != run.id)
    return f"{run.id} (baseline)" if marked else run.id


def tables(
    comparison: Comparison, *, environment_rows: int | None = ENVIRONMENT_ROWS_SHOWN,
    sha_chars: int | None = 12,
) -> list[Table]:
    """The runs, metrics, artifacts, inputs that differ, environment changes, then extras."""
    s = comparison.sections
    runs = Table(
        "runs", "Runs", ("", "run", "spec", "status", "started", "image"),
        tuple((side, run_label(comparison, side), run.spec,
               run.status + (f" ({run.reason})" if run.reason not in (None, "ok") else ""),
               run.started_at, short_sha(run.image_id, sha_chars))
              for side, run in (("a", comparison.a), ("b", comparison.b))),
        tuple(run.status for run in (comparison.a, comparison.b)))
    metrics = Table(
        "metrics", "Metrics", ("metric", "a", "b", "delta", "tolerance", "status"),
        tuple((m.name, *metric_cells(m), m.tolerance, m.status) for m in s.metrics),
        tuple(m.status for m in s.metrics), empty="no metrics in either run")
    series = Table(
        "series", "Series", ("series", "from", "status", "steps a", "steps b", "where they part"),
        tuple((r.name, "steps file" if r.source == "steps" else "list metric", r.status,
               str(len(r.a_steps)), str(len(r.b_steps)), r.summary) for r in s.series),
        tuple(r.status for r in s.series), empty="no per-step series in either run")
    artifacts = Table(
        "artifacts", "Artifacts", ("artifact", "a sha256", "b sha256", "a bytes", "b bytes",
                                   "status"),
        tuple((f.name, short_sha(f.a_sha256, sha_chars), short_sha(f.b_sha256, sha_chars),
               size(f.a_size), size(f.b_size), f.status) for f in s.artifacts),
        tuple(f.status for f in s.artifacts), empty="no artifacts in either run")
    differ = comparison.inputs_that_differ
    inputs = Table(
        "inputs", "Inputs that differ", ("input", "a", "b"),
        tuple((row.field, text(row.a), text(row.b)) for row in differ),
        tuple("differs" for _ in differ), empty="all inputs identical")
    env_rows = s.environment if environment_rows is None else s.environment[:environment_rows]
    environment = Table(
        "environment", "Environment changes", ("section", "name", "a", "b", "change"),
        tuple((row.section, row.name, text(row.a), text(row.b), row.change)
              for row in env_rows),
        tuple(row.change for row in env_rows), more=len(s.environment) - len(env_rows),
        empty="no environment changes")
    shown_series = [series] if s.series else []
    return [runs, metrics, *shown_series, artifacts, *artifact_content_tables(s.artifacts),
            inputs, environment, *extra_tables(comparison.extra)]


def artifact_content_tables(artifacts) -> list[Table]:
    """What the contents of artifacts whose bytes differ say: one sentence each, the arrays or
    parameters that differ with their figures, and the readable excerpts. None when no
    artifact was read (a report from before, or only hashes compared)."""
    read = [f for f in artifacts if f.kind is not None]
    if not read:
        return []
    contents = Table(
        "artifact-contents", "Artifact contents", ("artifact", "kind", "policy", "what differs",
                                                    "status"),
        tuple((f.name, f.kind, f.policy, (f.detail or "") + (
            f"; compared bitwise: {f.fallback}" if f.fallback else ""), f.status) for f in read),
        tuple(f.status for f in read))
    parts = [(f.name, p) for f in read for p in f.parts if p.status != "identical"]
    figures = Table(
        "artifact-parts", "Arrays and parameters that differ",
        ("artifact", "part", "shape", "dtype", "max |Δ|", "max rel Δ", "differing", "status"),
        tuple((name, p.name, _pair(p.shape_a, p.shape_b), _pair(p.dtype_a, p.dtype_b),
               number(p.max_abs), number(p.max_rel),
               MISSING if p.differing is None else
               f"{p.differing:,} of {p.elements:,} ({p.share_differing:.2%})", p.status)
              for name, p in parts),
        tuple(p.status for _, p in parts))
    lines = [(f.name, line) for f in read for line in f.excerpt]
    excerpts = Table("artifact-excerpts", "Where the artifacts differ", ("artifact", "excerpt"),
                     tuple(lines))
    return [contents, *([figures] if parts else []), *([excerpts] if lines else [])]


def _pair(a: str | None, b: str | None) -> str:
    return text(a) if a == b else f"{text(a)} vs {text(b)}"


def divergence_table(row: SeriesRow, around: int = 2) -> Table:
    """The steps around where two series part: a few before, the step itself, a few after."""
    left, right = dict(zip(row.a_steps, row.a)), dict(zip(row.b_steps, row.b))
    steps = sorted(set(left) | set(right))
    at = steps.index(row.first_differ) if row.first_differ in steps else 0
    cells, statuses = [], []
    for step in steps[max(at - around, 0):at + around + 1]:
        va, vb = left.get(step), right.get(step)
        if va is not None and vb is not None:
            ta, tb = tell_apart(va, vb)
            delta = delta_shown(0.0 if same_float(va, vb) else vb - va, va, vb)
        else:
            ta, tb, delta = shown(va), shown(vb), MISSING
        cells.append((str(step), ta, tb, delta))
        statuses.append("beyond" if step == row.first_differ else "")
    return Table(f"series.{row.name}", f"{row.name} around step {row.first_differ}",
                 ("step", "a", "b", "delta"), tuple(cells), tuple(statuses))


def metric_cells(m: MetricRow) -> tuple[str, str, str]:
    """a, b and delta of one metric row, numbers with the digits that tell them apart."""
    missing_a, missing_b = m.status == MISSING_A, m.status == MISSING_B
    if m.kind == NUMBER and isinstance(m.a, float) and isinstance(m.b, float):
        ta, tb = tell_apart(m.a, m.b)
        return ta, tb, delta_shown(m.delta, m.a, m.b)
    return (MISSING if missing_a else metric_value_text(m.a),
            MISSING if missing_b else metric_value_text(m.b),
            MISSING if m.delta is None else delta_shown(m.delta))


def extra_tables(extra: dict[str, Any]) -> list[Table]:
    """Free-form sections, shown generically: `{"title", "columns", "rows"}` is a table laid
    out as given (JSON keeps list order, not key order, so a stored report renders alike), a
    list of mappings is a table, a mapping is key/value rows, anything else one value per row."""
    result = []
    for key in sorted(extra):
        value = extra[key]
        title = str(key).replace("_", " ").capitalize()
        if (isinstance(value, dict) and isinstance(value.get("columns"), list)
                and isinstance(value.get("rows"), list)
                and all(isinstance(row, list) for row in value["rows"])):
            result.append(Table(f"extra.{key}", str(value.get("title") or title),
                                tuple(map(str, value["columns"])),
                                tuple(tuple(_cell(cell) for cell in row)
                                      for row in value["rows"])))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            headers: list[str] = []
            for item in value:
                headers.extend(k for k in item if k not in headers)
            rows = tuple(tuple(_cell(item.get(h)) for h in headers) for item in value)
            result.append(Table(f"extra.{key}", title, tuple(map(str, headers)), rows))
        elif isinstance(value, dict):
            rows = tuple((str(k), _cell(v)) for k, v in value.items())
            result.append(Table(f"extra.{key}", title, ("key", "value"), rows))
        elif isinstance(value, list):
            result.append(Table(f"extra.{key}", title, ("value",),
                                tuple((_cell(v),) for v in value)))
        else:
            result.append(Table(f"extra.{key}", title, ("value",), ((_cell(value),),)))
    return result


def _cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return number(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)
