"""The JUnit XML report: one test case per metric and per artifact, for CI dashboards.

A metric beyond tolerance, an artifact that differs or anything missing is a <failure>; an
ignored metric or artifact is <skipped>. The test cases "run" (both runs succeeded), "inputs"
and "environment" carry what differs in <system-out>; only "run" can fail, because the verdict
is about results.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from orchestrator.compare.comparison import Comparison
from orchestrator.reports import MISSING, extra_tables, number, size, text

# XML 1.0 cannot carry most control characters, even escaped; a record value might hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

_FAILING_METRIC = {"beyond", "missing-a", "missing-b"}
_FAILING_ARTIFACT = {"differs", "missing-a", "missing-b"}


def _clean(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def render(comparison: Comparison) -> str:
    a, b = comparison.a, comparison.b
    spec = a.spec_name
    suite_name = f"reprun {spec}"
    suites = ET.Element("testsuites", name="reprun")
    suite = ET.SubElement(suites, "testsuite", name=_clean(suite_name),
                          timestamp=_clean(comparison.created_at))
    properties = ET.SubElement(suite, "properties")
    for name, value in (("verdict", comparison.verdict), ("run_a", a.run_id),
                        ("run_b", b.run_id), ("schema", comparison.schema)):
        ET.SubElement(properties, "property", name=name, value=_clean(value))

    cases: list[ET.Element] = []

    def case(classname: str, name: str) -> ET.Element:
        element = ET.Element("testcase", classname=_clean(f"reprun.{spec}.{classname}"),
                             name=_clean(name), time="0")
        cases.append(element)
        return element

    run_case = case("runs", "run")
    failed = [r for r in (a, b) if r.status != "succeeded"]
    if failed:
        message = "; ".join(f"run {r.run_id} {r.status}"
                            + (f" ({r.reason})" if r.reason not in (None, "ok") else "")
                            for r in failed)
        ET.SubElement(run_case, "failure", message=_clean(message), type="incomplete")

    for m in comparison.sections.metrics:
        element = case("metrics", m.name)
        detail = (f"a={number(m.a)} b={number(m.b)} delta={number(m.delta, signed=True)} "
                  f"tolerance={m.tolerance}")
        if m.status in _FAILING_METRIC:
            ET.SubElement(element, "failure", message=_clean(f"{m.status}: {detail}"),
                          type=m.status).text = _clean(detail)
        elif m.status == "ignored":
            ET.SubElement(element, "skipped", message="ignored by tolerance")
        else:
            ET.SubElement(element, "system-out").text = _clean(f"{m.status}: {detail}")

    for f in comparison.sections.artifacts:
        element = case("artifacts", f.name)
        detail = (f"a={text(f.a_sha256)} ({size(f.a_size)} bytes) "
                  f"b={text(f.b_sha256)} ({size(f.b_size)} bytes)")
        if f.status in _FAILING_ARTIFACT:
            ET.SubElement(element, "failure", message=_clean(f"{f.status}: {detail}"),
                          type=f.status).text = _clean(detail)
        elif f.status == "ignored":
            ET.SubElement(element, "skipped", message="artifacts ignored by the spec")

    inputs_case = case("inputs", "inputs")
    differ = comparison.inputs_that_differ
    if differ:
        ET.SubElement(inputs_case, "system-out").text = _clean("\n".join(
            f"{row.field}: {text(row.a)} -> {text(row.b)}" for row in differ))

    env_case = case("environment", "environment")
    changes = comparison.sections.environment
    if changes:
        ET.SubElement(env_case, "system-out").text = _clean("\n".join(
            f"{row.section} {row.name}: {row.change} {text(row.a)} -> {text(row.b)}"
            for row in changes))

    suite.extend(cases)
    failures = sum(c.find("failure") is not None for c in cases)
    skipped = sum(c.find("skipped") is not None for c in cases)
    for element in (suites, suite):
        element.set("tests", str(len(cases)))
        element.set("failures", str(failures))
        element.set("errors", "0")
        element.set("skipped", str(skipped))
    summary = [comparison.summary, *(f"cause {i}: {c.summary}"
                                     for i, c in enumerate(comparison.causes, 1)),
               *(f"note: {n}" for n in comparison.notes),
               *_extra_lines(comparison)]
    ET.SubElement(suite, "system-out").text = _clean("\n".join(summary))

    ET.indent(suites)
    body = ET.tostring(suites, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


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
