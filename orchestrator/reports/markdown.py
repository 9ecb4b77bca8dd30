"""The Markdown report: GitHub-flavoured, fit for a pull-request comment."""
from __future__ import annotations

import re

from orchestrator.compare.value import Comparison
from orchestrator.reports import Table, divergence_table, tables

# Characters that would start Markdown or HTML inside a table cell or a list item. A backslash
# before ASCII punctuation is always a literal in CommonMark, so escaping more is harmless.
_SPECIAL = re.compile(r"([\\`|*_\[\]<>&~#!])")
# Control characters (a terminal escape in a package name) are shown as \xNN: a Markdown report
# is often read with `cat` in a terminal, and GitHub drops them anyway.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


# Bidirectional overrides and isolates reorder what a reader sees (a name that reads "gpj.exe"
# backwards); shown as \u202e instead.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# What GitHub turns into a notification or a link. Its mention filter reads the rendered text
# but leaves code spans alone, so a value with an @ is set as code; its autolinks are found in
# the source text, so the ":" of a scheme and the "." after www become character references,
# which read the same and link nothing.
_MENTION = re.compile(r"@")
_AUTOLINK = re.compile(r"(?<=[A-Za-z])(:)(?=//)|(?<=\bwww)(\.)|(?<=\bmailto)(:)",
                       re.IGNORECASE)


def _visible(value: str) -> str:
    value = _BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def escape(value: str) -> str:
    one_line = " ".join(value.splitlines())
    if _MENTION.search(one_line):
        return "`" + _code(one_line).replace("|", "\\|") + "`"
    escaped = _visible(_SPECIAL.sub(r"\\\1", one_line))
    return _AUTOLINK.sub(lambda m: f"&#{ord(m.group()):d};", escaped)


def render(comparison: Comparison) -> str:
    a, b = comparison.a, comparison.b
    out = [
        f"## reprun: {comparison.verdict}",
        "",
        f"**Verdict: {comparison.verdict.upper()}** — run `{_code(a.id)}` vs run "
        f"`{_code(b.id)}` of spec `{_code(a.spec)}`",
        "",
        escape(comparison.summary),
    ]
    for table in tables(comparison):
        out += ["", f"### {escape(table.title)}", ""]
        out += _table(table)
        if table.key == "series":
            for row in comparison.sections.series:
                if row.first_differ is not None:
                    window = divergence_table(row)
                    out += ["", f"#### {escape(window.title)}", ""]
                    out += _table(window)
    if comparison.causes:
        out += ["", "### Likely causes", ""]
        for number, cause in enumerate(comparison.causes, 1):
            out.append(f"{number}. {escape(cause.summary)}")
            out += [f"   - {escape(detail)}" for detail in cause.details]
    if comparison.notes:
        out += ["", "### Notes", ""]
        out += [f"- {escape(note)}" for note in comparison.notes]
    return "\n".join(out) + "\n"


def _code(value: str) -> str:
    # Inside a code span nothing is interpreted, but a backtick would end it.
    return _visible(value.replace("`", "'"))


def _table(table: Table) -> list[str]:
    if not table.rows:
        return [f"_{escape(table.empty)}_"]
    lines = [
        "| " + " | ".join(escape(h) or " " for h in table.headers) + " |",
        "|" + "|".join("---" for _ in table.headers) + "|",
    ]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in table.rows]
    if table.more:
        lines += ["", f"… and {table.more} more"]
    return lines
