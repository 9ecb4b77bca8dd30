"""The terminal report: the verdict in capitals, compact tables, numbered likely causes."""
from __future__ import annotations

import re

from tabulate import tabulate

from orchestrator.compare.value import Comparison
from orchestrator.reports import Table, extra_tables, metric_cells, short_sha, tables, text

_RESET = "\033[0m"
_BOLD = "\033[1m"
_COLOURS = {
    "green": "\033[32m",
    "yellow": "\033[33m",
    "red": "\033[31m",
    "dim": "\033[2m",
}
_VERDICT_COLOUR = {
    "identical": "green", "equivalent": "green", "flaky": "red", "differs": "red",
    "incomplete": "yellow",
}
_STATUS_COLOUR = {
    "identical": "green", "succeeded": "green",
    "within": "yellow", "ignored": "dim", "added": "yellow", "removed": "yellow",
    "changed": "yellow",
    "beyond": "red", "differs": "red", "missing-a": "red", "missing-b": "red",
    "failed": "red", "error": "red", "interrupted": "red",
}


# Control characters a job could put in a metric, package or file name: an escape sequence
# in a report would recolour, retitle or rewrite the reader's terminal. Shown as \xNN instead.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def cell(text: str) -> str:
    return plain(text).replace("\n", "\\n")


# The default report fits a screen: at most this many rows of what differs and this many
# causes; -v (verbose) shows every table in full, as the other formats do.
CONCISE_ROWS = 12
CONCISE_CAUSES = 3
_ROWS_PER_KIND = {"metric": 6, "series": 3, "artifact": 3, "input": 3, "environment": 3}
DEFAULT_WIDTH = 100
# Sections that are the explanation itself, short by construction: what a diagnosis tried and
# what each pair gave are shown by default, as the culprit is.
EXPLAINING_EXTRAS = ("diagnosis", "diagnosis_pairs")
_AGREE = {"identical", "ignored", "succeeded", ""}


def render(comparison: Comparison, *, color: bool = False, verbose: bool = False,
           width: int | None = None) -> str:
    def paint(text: str, colour: str | None, bold: bool = False) -> str:
        if not color or (colour is None and not bold):
            return text
        return (_BOLD if bold else "") + _COLOURS.get(colour or "", "") + text + _RESET

    a, b = comparison.a, comparison.b
    lines = [
        paint(comparison.verdict.upper(), _VERDICT_COLOUR.get(comparison.verdict), bold=True)
        + plain(f"  {a.id} vs {b.id}  ({a.spec})"),
        plain(comparison.summary),
    ]
    if not verbose:
        return _concise(comparison, lines, paint, max(width or DEFAULT_WIDTH, 40))
    for table in tables(comparison):
        lines.append("")
        lines.extend(_table(table, paint))

    if comparison.notes:
        lines += ["", paint("Notes", None, bold=True)]
        lines += [f"  - {plain(note)}" for note in comparison.notes]
    if comparison.causes:
        lines += ["", paint("Likely causes", None, bold=True)]
        for number, cause in enumerate(comparison.causes, 1):
            lines.append(f"  {number}. {plain(cause.summary)}")
            lines += [f"       - {plain(detail)}" for detail in cause.details]
    return "\n".join(lines) + "\n"


def _concise(comparison: Comparison, lines: list[str], paint, width: int) -> str:
    """The verdict, the rows that differ (one table, capped) and the top causes, each line
    within `width` (cut with an ellipsis)."""
    rows, statuses, left_out = _differing_rows(comparison, _column_widths(width))
    if rows:
        lines.append("")
        body = tabulate(rows, headers=["what", "name", "a", "b", "how"], tablefmt="simple",
                        disable_numparse=True).splitlines()
        lines.extend(body[:2])
        for line, status in zip(body[2:], statuses):
            lines.append(_paint_status(_cut(line, width), status, paint))
        if left_out:
            lines.append(f"... and {left_out} more rows that differ")
    parted = [r for r in comparison.sections.series if r.first_differ is not None]
    if parted:
        lines += ["", paint("Where the runs part", None, bold=True)]
        lines += [f"  {plain(r.name)}: {plain(r.summary)}" for r in parted[:3]]
        if len(parted) > 3:
            lines.append(f"  ... and {len(parted) - 3} more series")
    read = [f for f in comparison.sections.artifacts if f.detail and f.status not in _AGREE]
    if read:
        lines += ["", paint("What the artifacts' contents say", None, bold=True)]
        lines += [f"  {plain(f.name)}: {plain(f.detail)}" for f in read[:5]]
        if len(read) > 5:
            lines.append(f"  ... and {len(read) - 5} more artifacts")
    for table in extra_tables({key: value for key, value in comparison.extra.items()
                               if key in EXPLAINING_EXTRAS}):
        lines.append("")
        lines.extend(_table(table, paint))
    causes = comparison.causes[:CONCISE_CAUSES]
    if causes:
        lines += ["", paint("Likely causes", None, bold=True)]
        lines += [f"  {n}. {plain(cause.summary)}" for n, cause in enumerate(causes, 1)]
    more = [f"{count} more {what}{'s' if count > 1 else ''}" for count, what in (
        (len(comparison.causes) - len(causes), "cause"), (len(comparison.notes), "note"))
        if count > 0]
    if more or left_out:
        lines.append(f"(-v shows everything{': ' + ', '.join(more) if more else ''})")
    return "\n".join(_cut(line, width) for line in lines) + "\n"


def _column_widths(width: int) -> tuple[int, ...]:
    """what, name, a, b, how: the values get room, the explanation the rest of the line."""
    what, name, value = (19 if width >= 100 else 11), max(width // 5, 12), max(width // 7, 10)
    return what, name, value, value, max(width - what - name - 2 * value - 8, 16)


def _differing_rows(comparison: Comparison, widths: tuple[int, ...]
                    ) -> tuple[list[tuple[str, ...]], list[str], int]:
    s = comparison.sections
    found: list[tuple[str, tuple[str, ...], str]] = []      # kind, cells, status
    for run in (comparison.a, comparison.b):
        if run.status != "succeeded":
            found.append(("run", ("run", run.id, "", "", run.status
                                  + (f" ({run.reason})" if run.reason not in (None, "ok")
                                     else "")), run.status))
    for m in s.metrics:
        if m.status not in _AGREE:
            ta, tb, delta = metric_cells(m)
            how = m.status if delta in ("—", "0") else f"delta {delta}, {m.status}"
            found.append(("metric", ("metric", m.name, ta, tb, f"{how} ({m.tolerance})"),
                          m.status))
    for r in s.series:
        if r.status not in _AGREE and r.source == "steps":
            found.append(("series", ("series", r.name, f"{len(r.a_steps)} steps",
                                     f"{len(r.b_steps)} steps", r.status), r.status))
    for f in s.artifacts:
        if f.status not in _AGREE:
            found.append(("artifact", ("artifact", f.name, short_sha(f.a_sha256, 12),
                                       short_sha(f.b_sha256, 12), f.status), f.status))
    for row in comparison.inputs_that_differ:
        found.append(("input", ("input", row.field, text(row.a), text(row.b), "differs"),
                      "differs"))
    for row in s.environment:
        found.append(("environment", (row.section, row.name, text(row.a), text(row.b),
                                      row.change), row.change))
    kept, taken = [], {}
    for kind, cells, status in found:
        taken[kind] = taken.get(kind, 0) + 1
        if taken[kind] <= _ROWS_PER_KIND.get(kind, 2) and len(kept) < CONCISE_ROWS:
            kept.append((cells, status))
    rows = [tuple(_cut(cell(value), w) for value, w in zip(cells, widths)) for cells, _ in kept]
    return rows, [status for _, status in kept], len(found) - len(kept)


def _paint_status(line: str, status: str, paint) -> str:
    colour = _STATUS_COLOUR.get(status)
    return paint(line, colour) if colour else line


def _cut(line: str, width: int) -> str:
    # Escapes from paint() take no columns; only plain lines are measured.
    if "\033[" in line or len(line) <= width:
        return line
    return line[:width - 1] + "…"


def _table(table: Table, paint) -> list[str]:
    heading = paint(plain(table.title), None, bold=True)
    if not table.rows:
        return [f"{heading}: {plain(table.empty)}"]
    rows = []
    for row, status in zip(table.rows, table.statuses or ("",) * len(table.rows)):
        row = tuple(cell(value) for value in row)
        colour = _STATUS_COLOUR.get(status)
        # The status is the last cell of each row that has one; colour only that cell.
        rows.append((*row[:-1], paint(row[-1], colour)) if status and row[-1] == status
                    else row)
    body = tabulate(rows, headers=[cell(h) for h in table.headers], tablefmt="simple",
                    disable_numparse=True)
    out = [heading, *body.splitlines()]
    if table.more:
        out.append(f"... and {table.more} more")
    return out
