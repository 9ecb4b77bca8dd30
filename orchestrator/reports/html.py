"""The HTML report: one self-contained page, no scripts, no external resources.

Every value from a record is escaped; a Content-Security-Policy that allows no script is the
second lock on the door, for a page that may be opened from a CI artifact store.
"""
from __future__ import annotations

import math
from html import escape

from orchestrator.compare.value import Comparison, MetricRow
from orchestrator.reports import Table, number, tables

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1f2328; background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 0 1.5rem 2rem; }
.banner { padding: 1.2rem 1.5rem; color: #fff; }
.banner h1 { margin: 0; font-size: 1.8rem; letter-spacing: .05em; }
.banner p { margin: .3rem 0 0; }
.verdict-identical, .verdict-equivalent { background: #1a7f37; }
.verdict-differs { background: #cf222e; }
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
    for table in tables(comparison, environment_rows=None, sha_chars=None):
        parts.append(f'<section id="{escape(table.key, quote=True)}">')
        parts.append(f"<h2>{escape(table.title)}</h2>")
        if table.key == "metrics":
            parts.append(_delta_chart(comparison.sections.metrics))
        parts.append(_table(table))
        parts.append("</section>")
    if comparison.causes:
        parts.append('<section id="causes"><h2>Likely causes</h2><ol class="causes">')
        for cause in comparison.causes:
            details = "".join(f"<li>{escape(d)}</li>" for d in cause.details)
            parts.append(f"<li>{escape(cause.summary)}"
                         + (f"<ul>{details}</ul>" if details else "") + "</li>")
        parts.append("</ol></section>")
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
    """A bar per metric, length proportional to |b - a| against the largest finite delta."""
    shown = [m for m in metrics if m.delta is not None]
    finite = [abs(m.delta) for m in shown if math.isfinite(m.delta)]
    largest = max(finite, default=0.0)
    if not shown or (largest == 0.0 and len(finite) == len(shown)):
        return ""
    row_height, label_width, half = 18, 180, 200
    width = label_width + 2 * half + 160
    height = row_height * len(shown) + 10
    centre = label_width + half
    items = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="metric deltas, b minus a">',
        f'<line x1="{centre}" y1="0" x2="{centre}" y2="{height}" stroke="#8c959f"/>',
    ]
    for i, m in enumerate(shown):
        y = 5 + i * row_height
        name = m.name if len(m.name) <= 24 else m.name[:23] + "…"
        items.append(f'<text x="0" y="{y + 12}">{escape(name)}</text>')
        colour = {"beyond": "#cf222e", "within": "#bf8700"}.get(m.status, "#1a7f37")
        if math.isfinite(m.delta) and largest > 0:
            length = max(abs(m.delta) / largest * half, 1.0 if m.delta else 0.0)
            x = centre if m.delta >= 0 else centre - length
            items.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{length:.1f}" '
                         f'height="{row_height - 6}" fill="{colour}"/>')
        items.append(f'<text x="{centre + half + 8}" y="{y + 12}">'
                     f"{escape(number(m.delta, signed=True))}</text>")
    items.append("</svg>")
    return "".join(items)
