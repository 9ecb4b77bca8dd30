"""The JUnit XML report: one test case per metric and per artifact, for CI dashboards.

A metric beyond tolerance, an artifact that differs or anything missing is a <failure>; an
ignored metric or artifact is <skipped>. The test cases "run" (both runs succeeded), "inputs"
and "environment" carry what differs in <system-out>; only "run" can fail, because the verdict
is about results.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from orchestrator.compare.value import Comparison
from orchestrator.reports import MISSING, extra_tables, metric_cells, size, text

# XML 1.0 cannot carry most control characters, even escaped; a record value might hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

_FAILING_METRIC = {"beyond", "differs", "missing-a", "missing-b"}
_FAILING_ARTIFACT = {"differs", "missing-a", "missing-b"}


def _clean(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


@dataclass(frozen=True)
class JUnitCase:
    classname: str
    name: str
    failure: tuple[str, str, str] | None = None   # (type, message, body)
    skipped: str | None = None                    # the reason it was skipped
    output: str | None = None                     # <system-out>


def junit_xml(suite_name: str, cases: list[JUnitCase], *, properties: dict[str, str] | None = None,
              timestamp: str | None = None, output: str | None = None) -> str:
    """The one JUnit XML writer (comparison reports and `check`): counts, escaping, layout."""
    suites = ET.Element("testsuites", name="reprun")
    suite = ET.SubElement(suites, "testsuite", name=_clean(suite_name))
    if timestamp is not None:
        suite.set("timestamp", _clean(timestamp))
    if properties:
        element = ET.SubElement(suite, "properties")
        for name, value in properties.items():
            ET.SubElement(element, "property", name=name, value=_clean(value))
    for case in cases:
        element = ET.SubElement(suite, "testcase", classname=_clean(case.classname),
                                name=_clean(case.name), time="0")
        if case.failure is not None:
            kind, message, body = case.failure
            ET.SubElement(element, "failure", message=_clean(message),
                          type=_clean(kind)).text = _clean(body)
        if case.skipped is not None:
            ET.SubElement(element, "skipped", message=_clean(case.skipped))
        if case.output:
            ET.SubElement(element, "system-out").text = _clean(case.output)
    failures = sum(c.failure is not None for c in cases)
    skipped = sum(c.skipped is not None for c in cases)
    for element in (suites, suite):
        element.set("tests", str(len(cases)))
        element.set("failures", str(failures))
        element.set("errors", "0")
        element.set("skipped", str(skipped))
    if output:
        ET.SubElement(suite, "system-out").text = _clean(output)
    ET.indent(suites)
    body = ET.tostring(suites, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


def render(comparison: Comparison) -> str:
    a, b = comparison.a, comparison.b
    spec = a.spec
    cases: list[JUnitCase] = []

    def case(classname: str, name: str, **outcome) -> None:
        cases.append(JUnitCase(f"reprun.{spec}.{classname}", name, **outcome))

    failed = [r for r in (a, b) if r.status != "succeeded"]
    message = "; ".join(f"run {r.id} {r.status}"
                        + (f" ({r.reason})" if r.reason not in (None, "ok") else "")
                        for r in failed)
    case("runs", "run", failure=("incomplete", message, "") if failed else None)

    for m in comparison.sections.metrics:
        ta, tb, delta = metric_cells(m)
        detail = f"a={ta} b={tb} delta={delta} tolerance={m.tolerance}"
        if m.status in _FAILING_METRIC:
            case("metrics", m.name, failure=(m.status, f"{m.status}: {detail}", detail))
        elif m.status == "ignored":
            case("metrics", m.name, skipped="ignored by tolerance")
        else:
            case("metrics", m.name, output=f"{m.status}: {detail}")

    for s in comparison.sections.series:
        if s.status in _FAILING_METRIC:
            case("series", s.name, failure=(s.status, f"{s.status}: {s.summary}", s.summary))
        elif s.status == "ignored":
            case("series", s.name, skipped="ignored by tolerance")
        else:
            case("series", s.name, output=f"{s.status}: {s.summary}")

    for f in comparison.sections.artifacts:
        detail = (f"a={text(f.a_sha256)} ({size(f.a_size)} bytes) "
                  f"b={text(f.b_sha256)} ({size(f.b_size)} bytes)")
        message = f"{f.status}: {f.detail or detail}"
        if f.detail:
            detail = "\n".join([f"{f.kind}: {f.detail}", *f.excerpt, detail])
        if f.status in _FAILING_ARTIFACT:
            case("artifacts", f.name, failure=(f.status, message, detail))
        elif f.status == "ignored":
            case("artifacts", f.name, skipped="artifacts ignored by the spec")
        else:
            case("artifacts", f.name)

    case("inputs", "inputs", output="\n".join(
        f"{row.field}: {text(row.a)} -> {text(row.b)}" for row in comparison.inputs_that_differ))
    case("environment", "environment", output="\n".join(
        f"{row.section} {row.name}: {row.change} {text(row.a)} -> {text(row.b)}"
        for row in comparison.sections.environment))

    summary = [comparison.summary, *(f"cause {i}: {c.summary}"
                                     for i, c in enumerate(comparison.causes, 1)),
               *(f"note: {n}" for n in comparison.notes),
               *_extra_lines(comparison)]
    return junit_xml(f"reprun {spec}", cases, timestamp=comparison.created_at,
                     properties={"verdict": comparison.verdict, "run_a": a.id,
                                 "run_b": b.id, "schema": comparison.schema},
                     output="\n".join(summary))


def _extra_lines(comparison: Comparison) -> list[str]:
    """Extra sections (e.g. variations) as plain lines: CI shows system-out as text."""
    lines = []
    for table in extra_tables(comparison.extra):
        lines.append(f"{table.title}:")
        for row in table.rows:
            if not any(table.headers):
                lines.append("  " + ": ".join(row))
                continue
            cells = [f"{h}: {c}" for h, c in zip(table.headers, row) if c not in (MISSING, "")]
            lines.append("  " + "; ".join(cells))
    return lines
