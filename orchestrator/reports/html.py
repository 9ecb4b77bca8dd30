"""The HTML report: one self-contained page, no scripts, no external resources.

Every value from a record is escaped; a Content-Security-Policy that allows no script is the
second lock on the door, for a page that may be opened from a CI artifact store.
"""
from __future__ import annotations

import math
from html import escape

from orchestrator.compare.value import Comparison, MetricRow, SeriesRow
from orchestrator.reports import Table, metric_cells, tables

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1f2328; background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 0 1.5rem 2rem; }
.banner { padding: 1.2rem 1.5rem; color: #fff; }
.banner h1 { margin: 0; font-size: 1.8rem; letter-spacing: .05em; }
.banner p { margin: .3rem 0 0; }
.verdict-identical, .verdict-equivalent { background: #1a7f37; }
.verdict-differs, .verdict-flaky { background: #cf222e; }
.verdict-incomplete { background: #9a6700; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .5rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #eaeef2;
         vertical-align: top; overflow-wrap: break-word; }
th { background: #f6f8fa; white-space: nowrap; }
td.num { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; word-break: break-all; }
svg { max-width: 100%; height: auto; }
tr.s-beyond td, tr.s-differs td, tr.s-missing-a td, tr.s-missing-b td,
tr.s-failed td, tr.s-error td, tr.s-interrupted td { background: #ffebe9; }
tr.s-within td, tr.s-changed td, tr.s-added td, tr.s-removed td { background: #fff8c5; }
tr.s-ignored td { color: #656d76; }
.empty, .more, footer { color: #656d76; }
ol.causes li { margin-bottom: .4rem; }
svg text { font: 11px ui-monospace, SFMono-Regular, Menlo, monospace; fill: #1f2328; }
"""

# Columns that hold numbers or digests, set in a monospace font.
_NUMERIC = {"a", "b", "delta", "a sha256", "b sha256", "a bytes", "b bytes", "image"}


def render(comparison: Comparison) -> str:
    a, b = comparison.a, comparison.b
    verdict = comparison.verdict
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>reprun: {escape(verdict)} — {escape(a.spec)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f'<header class="banner verdict-{escape(verdict, quote=True)}" id="verdict">',
        f"<h1>{escape(verdict.upper())}</h1>",
        f"<p>run <code>{escape(a.id)}</code> vs run <code>{escape(b.id)}</code>"
        f" of spec <code>{escape(a.spec)}</code></p>",
        f"<p>{escape(comparison.summary)}</p>",
        "</header>",
        "<main>",
    ]
    # The likely causes come first: a --vary run's culprit is what the reader came for, not the
    # environment rows the variation changed on purpose.
    if comparison.causes:
        parts.append('<section id="causes"><h2>Likely causes</h2><ol class="causes">')
        for cause in comparison.causes:
            details = "".join(f"<li>{escape(d)}</li>" for d in cause.details)
            parts.append(f"<li>{escape(cause.summary)}"
                         + (f"<ul>{details}</ul>" if details else "") + "</li>")
        parts.append("</ol></section>")
    for table in tables(comparison, environment_rows=None, sha_chars=None):
        parts.append(f'<section id="{escape(table.key, quote=True)}">')
        parts.append(f"<h2>{escape(table.title)}</h2>")
        if table.key == "metrics":
            parts.append(_delta_chart(comparison.sections.metrics))
        parts.append(_table(table))
        if table.key == "series":
            parts.extend(_series_chart(row) for row in comparison.sections.series
                         if row.status not in ("identical", "ignored"))
        parts.append("</section>")
    if comparison.notes:
        parts.append('<section id="notes"><h2>Notes</h2><ul>')
        parts.extend(f"<li>{escape(note)}</li>" for note in comparison.notes)
        parts.append("</ul></section>")
    parts += [
        f"<footer><p>{escape(comparison.schema)}, created {escape(comparison.created_at)}"
        "</p></footer>",
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _table(table: Table) -> str:
    if not table.rows:
        return f'<p class="empty">{escape(table.empty)}</p>'
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in table.headers)
    body = []
    statuses = table.statuses or ("",) * len(table.rows)
    for row, status in zip(table.rows, statuses):
        cells = "".join(
            f'<td class="num">{escape(cell)}</td>' if header in _NUMERIC
            else f"<td>{escape(cell)}</td>"
            for header, cell in zip(table.headers, row))
        css = f' class="s-{escape(status, quote=True)}"' if status else ""
        body.append(f"<tr{css}>{cells}</tr>")
    more = (f'<p class="more">and {table.more} more</p>' if table.more else "")
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            + more)


def _delta_chart(metrics: tuple[MetricRow, ...]) -> str:
    """A bar per numeric metric, its length the *relative* difference |b - a| / max(|a|, |b|):
    a count of 13 batches and a loss of 3e-4 sit on one comparable axis."""
    shown = [(m, _relative(m)) for m in metrics
             if m.kind == "number" and m.delta is not None and m.delta != 0]
    if not shown:
        return ""
    finite = [r for _, r in shown if math.isfinite(r)]
    largest = max(finite, default=0.0) or 1.0
    row_height, label_width, span = 18, 180, 320
    width = label_width + span + 220
    height = row_height * len(shown) + 24
    items = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" class="metric-deltas" '
        'aria-label="relative difference of each metric, b against a">',
        f'<text x="{label_width}" y="12">relative difference |b − a| / max(|a|, |b|)</text>',
    ]
    for i, (m, relative) in enumerate(shown):
        y = 20 + i * row_height
        name = m.name if len(m.name) <= 24 else m.name[:23] + "…"
        items.append(f'<text x="0" y="{y + 12}">{escape(name)}</text>')
        colour = {"beyond": "#cf222e", "within": "#bf8700"}.get(m.status, "#1a7f37")
        length = span if not math.isfinite(relative) else max(relative / largest * span, 1.0)
        items.append(f'<rect x="{label_width}" y="{y + 2}" width="{length:.1f}" '
                     f'height="{row_height - 6}" fill="{colour}"/>')
        _, _, delta = metric_cells(m)
        label = "n/a" if not math.isfinite(relative) else f"{relative:.2%}"
        items.append(f'<text x="{label_width + span + 8}" y="{y + 12}">'
                     f"{escape(label)} (Δ {escape(delta)})</text>")
    items.append("</svg>")
    return "".join(items)


def _relative(m: MetricRow) -> float:
    a, b = float(m.a), float(m.b)
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    scale = max(abs(a), abs(b))
    return abs(b - a) / scale if scale else 0.0


_WIDTH, _PLOT, _DIFF, _LEFT = 720, 180, 90, 70
_MOST_POINTS = 2000


def _series_chart(row: SeriesRow) -> str:
    """Both runs' curves, their difference beneath, and the step where they part marked.
    Inline SVG: no script, nothing fetched, drawn within the page's strict CSP."""
    left, right = dict(zip(row.a_steps, row.a)), dict(zip(row.b_steps, row.b))
    steps = sorted(set(left) | set(right))
    if len(steps) < 2:
        return ""
    first, last = steps[0], steps[-1]
    plot_width = _WIDTH - _LEFT - 10
    height = _PLOT + _DIFF + 50

    def x(step: int) -> float:
        return _LEFT + (step - first) / (last - first) * plot_width

    values = [v for v in (*row.a, *row.b) if math.isfinite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high == low:
        high, low = high + 0.5, low - 0.5
    deltas = {s: right[s] - left[s] for s in steps if s in left and s in right
              and math.isfinite(left[s]) and math.isfinite(right[s])}
    reach = max((abs(d) for d in deltas.values()), default=0.0) or 1.0

    def y(value: float) -> float:
        return 10 + (high - value) / (high - low) * _PLOT

    def y_delta(delta: float) -> float:
        return _PLOT + 30 + _DIFF / 2 - delta / reach * (_DIFF / 2)

    def line(points: dict[int, float], to_y, colour: str, css: str) -> str:
        chosen = _thinned(sorted(points), row.first_differ)
        coords = " ".join(f"{x(s):.1f},{to_y(points[s]):.1f}" for s in chosen
                          if math.isfinite(points[s]))
        return (f'<polyline class="{css}" fill="none" stroke="{colour}" stroke-width="1.5" '
                f'points="{coords}"/>')

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" role="img" class="series-chart" '
        f'data-series="{escape(row.name, quote=True)}" '
        f'aria-label="{escape(row.name, quote=True)}: run a, run b and their difference">',
        f'<text x="0" y="{10 + _PLOT / 2:.0f}">{escape(row.name[:10])}</text>',
        f'<text x="{_LEFT}" y="{_PLOT + 24}">b − a</text>',
        f'<line x1="{_LEFT}" y1="{y_delta(0):.1f}" x2="{_WIDTH - 10}" y2="{y_delta(0):.1f}" '
        'stroke="#8c959f"/>',
        line(left, y, "#0969da", "run-a"),
        line(right, y, "#bc4c00", "run-b"),
        line(deltas, y_delta, "#cf222e", "difference"),
        f'<text x="{_LEFT}" y="{height - 4}">step {first}</text>',
        f'<text x="{_WIDTH - 80}" y="{height - 4}">step {last}</text>',
    ]
    if row.first_differ is not None:
        at = x(row.first_differ)
        parts.append(f'<line class="divergence" data-step="{row.first_differ}" x1="{at:.1f}" '
                     f'y1="0" x2="{at:.1f}" y2="{_PLOT + _DIFF + 30}" stroke="#cf222e" '
                     'stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{min(at + 4, _WIDTH - 120):.1f}" y="{_PLOT + 24}">'
                     f"parts at step {row.first_differ}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _thinned(steps: list[int], keep: int | None) -> list[int]:
    """At most about _MOST_POINTS points per line, always keeping the divergence step."""
    if len(steps) <= _MOST_POINTS:
        return steps
    stride = len(steps) / _MOST_POINTS
    chosen = {steps[int(i * stride)] for i in range(_MOST_POINTS)} | {steps[-1]}
    if keep is not None and keep in steps:
        chosen.add(keep)
    return sorted(chosen)
