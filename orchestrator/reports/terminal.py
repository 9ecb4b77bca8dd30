"""The terminal report: the verdict in capitals, compact tables, numbered likely causes."""
from __future__ import annotations

import re

from tabulate import tabulate

from orchestrator.compare.value import Comparison
from orchestrator.reports import Table, tables

_RESET = "\033[0m"
_BOLD = "\033[1m"
_COLOURS = {
    "green": "\033[32m",
    "yellow": "\033[33m",
    "red": "\033[31m",
    "dim": "\033[2m",
}
_VERDICT_COLOUR = {
    "identical": "green", "equivalent": "green", "differs": "red", "incomplete": "yellow",
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


def render(comparison: Comparison, *, color: bool = False) -> str:
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
