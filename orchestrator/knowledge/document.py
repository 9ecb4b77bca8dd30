"""docs/causes.md, generated from the table so that the two never disagree."""
from __future__ import annotations

from orchestrator.knowledge.causes import CAUSES, KnownCause

HEADER = """\
# Known causes of nondeterminism in ML training

Generated from `orchestrator/knowledge/causes.py` by `python -m orchestrator.knowledge >
docs/causes.md`; edit the table, not this page (a test checks that the page is current).

reprun cites these entries by id in its likely causes: a diagnosis (`verify --diagnose`, see
[variations.md](variations.md)) whose pair agrees with *the entropy fixed* cites the entries of
that intervention for the libraries the job's manifest shows. An entry with a manifest fact
(the frameworks section the environment probe reads, see [reports.md](reports.md)) is cited
with that fact (the probe reads the settings before the job starts, so a fact that says "not
live" leaves nothing out: the job may change the setting itself).

| id | cause | looks like | fix | found by | source |
|---|---|---|---|---|---|
"""


def _found_by(cause: KnownCause) -> str:
    ways = [f"intervention `{name}`" for name in cause.interventions]
    ways += [f"`--vary {name}`" for name in cause.factors]
    if cause.shows:
        path, test, value = cause.shows
        ways.append(f"the manifest: `{path} {test} {value!r}`")
    if not cause.on_cpu:
        ways.append("GPU only")
    return ", ".join(ways) or "the manifest"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def causes_markdown() -> str:
    rows = [f"| `{c.id}` | {_cell(c.title)} | {_cell(c.looks_like)} | {_cell(c.fix)} | "
            f"{_found_by(c)} | [link]({c.source}) |" for c in CAUSES]
    return HEADER + "\n".join(rows) + "\n"
