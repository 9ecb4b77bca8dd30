"""Every report format, produced from one comparison and parsed back."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import jsonschema
import pytest

from orchestrator.compare.comparison import Comparison, compare_records
from orchestrator.errors import ExitCode, UsageError
from orchestrator.records import (Artifact, DatasetFacts, EnvironmentManifest, ImageFacts, Inputs,
                                  Outputs, RunRecord)
from orchestrator.reports import (EXTENSIONS, FORMATS, format_for_path, load_json_report, render,
                                  report_schema, write_report)

IMAGE_A = "sha256:" + "a" * 64
IMAGE_B = "sha256:" + "b" * 64
XSS_IMG = "<img src=x onerror=\"document.title='pwned'\">"
XSS_SCRIPT = "<script>document.title='pwned'</script>"


def make_record(run_id: str, *, image_id: str = IMAGE_A, numpy: str = "1.24.2",
                metrics: dict[str, float] | None = None,
                artifacts: dict[str, Artifact] | None = None, status: str = "succeeded",
                params: dict | None = None) -> RunRecord:
    return RunRecord(
        id=run_id, status=status, started_at="2024-05-01T10:00:00Z",
        finished_at="2024-05-01T10:01:00Z",
        inputs=Inputs(
            spec_name="digits-logreg", spec_path="specs/digits-logreg.yaml", spec_sha256="e" * 64,
            seed=42, command=["python3", "/app/train.py"], params=params or {"C": 1.0}, env={},
            resources={"cpus": 1}, container={"network": "none"},
            image=ImageFacts(id=image_id),
            dataset=DatasetFacts(path="data.csv", sha256="d" * 64, kind="file", files=1,
                                 bytes=10, mount="/data")),
        environment=EnvironmentManifest(
            python_distributions={"numpy": numpy, "scikit-learn": "1.2.1"},
            env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                 "PYTHONHASHSEED": "0"},
            limits={"cpus": 1.0}, cpu={"count": 1}),
        outputs=Outputs(
            exit_code=0, reason="ok", duration_s=1.0,
            metrics=metrics if metrics is not None else {"accuracy": 0.95, "loss": 0.125},
            artifacts=artifacts if artifacts is not None else {
                "model.pkl": Artifact(sha256="f" * 64, size=4096)},
            log_sha256=None, log_bytes=0, log_truncated=False),
        compare={"metrics": {"default": {"kind": "exact", "value": 0.0},
                             "accuracy": {"kind": "abs", "value": 1e-9}},
                 "artifacts": "bitwise"},
        reprun_version="0.1.0",
    )


@pytest.fixture
def differs() -> Comparison:
    """An image that differs by one package, a metric beyond, NaN, infinities, a missing
    metric, a changed and a missing artifact, hostile text in values, and an extra section."""
    a = make_record("run-a", metrics={"accuracy": 0.95, "loss": math.nan, "auc": math.inf,
                                      "f1": 0.5},
                    params={"C": 1.0, "note": XSS_IMG})
    b = make_record("run-b", image_id=IMAGE_B, numpy="1.26.4",
                    metrics={"accuracy": 0.9, "loss": math.nan, "auc": -math.inf,
                             "recall": 0.25},
                    artifacts={"model.pkl": Artifact(sha256="1" * 64, size=4100),
                               "a|b`c.pkl": Artifact(sha256="2" * 64, size=1)},
                    params={"C": 1.0, "note": XSS_SCRIPT})
    return compare_records(a, b, created_at="2024-05-01T11:00:00Z",
                           extra={"variations": [{"name": "tz", "value": "Asia/Tokyo"},
                                                 {"name": "umask", "value": "0077"}]})


@pytest.fixture
def identical() -> Comparison:
    return compare_records(make_record("run-a"), make_record("run-b"),
                           created_at="2024-05-01T11:00:00Z")


# --- choosing a format ----------------------------------------------------------------------

@pytest.mark.parametrize("path, fmt", [
    ("report.md", "md"), ("r.markdown", "md"), ("r.html", "html"), ("R.HTM", "html"),
    ("out/report.json", "json"), ("junit.xml", "junit"),
])
def test_the_format_follows_the_extension(path, fmt):
    assert format_for_path(path) == fmt
    assert fmt in FORMATS


def test_an_unknown_extension_is_a_usage_error_naming_the_supported_ones():
    with pytest.raises(UsageError) as info:
        format_for_path("report.pdf")
    assert info.value.exit_code == ExitCode.INVALID
    for extension in EXTENSIONS:
        assert extension in info.value.message


def test_an_unknown_format_name_is_a_usage_error(identical):
    with pytest.raises(UsageError):
        render(identical, "pdf")


def test_every_format_renders_every_comparison(differs, identical):
    for comparison in (differs, identical):
        for fmt in FORMATS:
            assert render(comparison, fmt).strip()


# --- terminal -------------------------------------------------------------------------------

def test_the_verbose_terminal_report_leads_with_the_verdict_then_tables_then_numbered_causes(
        differs):
    out = render(differs, "terminal", verbose=True)
    lines = out.splitlines()
    assert lines[0].startswith("DIFFERS  run-a vs run-b")
    assert "\033[" not in out
    assert re.search(r"^accuracy\s+0\.95\s+0\.90\s+-0\.05\s+abs 1e-09\s+beyond$", out, re.M)
    assert re.search(r"^loss\s+NaN\s+NaN\s+0\s+exact\s+identical$", out, re.M)
    assert re.search(r"^auc\s+inf\s+-inf\s+-inf\s+exact\s+beyond$", out, re.M)
    assert re.search(r"^recall\s+—\s+0\.25\s+—\s+exact\s+missing-a$", out, re.M)
    assert re.search(r"^python-distribution\s+numpy\s+1\.24\.2\s+1\.26\.4\s+changed$", out, re.M)
    assert "Likely causes" in out
    assert f"  1. the image differs: {IMAGE_A} vs {IMAGE_B}" in lines
    assert "  2. the params differ: params.note: " + XSS_IMG + " vs " + XSS_SCRIPT in lines
    assert "  3. Python distribution numpy changed: 1.24.2 → 1.26.4" in lines


def test_the_default_terminal_report_shows_the_verdict_what_differs_and_the_top_causes(differs):
    out = render(differs, "terminal", width=80)
    lines = out.splitlines()
    assert lines[0] == "DIFFERS  run-a vs run-b  (digits-logreg)"
    assert len(lines) <= 25 and all(len(line) <= 80 for line in lines)
    assert re.search(r"^metric\s+accuracy\s+0\.95\s+0\.90\s+delta -0\.05, beyond", out, re.M)
    # Only what differs: the identical NaN loss is not listed.
    assert not re.search(r"^metric\s+loss\b", out, re.M)
    assert "  1. the image differs: " in out and "  4." not in out
    assert "(-v shows everything" in lines[-1]


def test_the_terminal_report_uses_colour_only_when_asked(differs):
    coloured = render(differs, "terminal", color=True)
    assert "\033[31m" in coloured and "\033[0m" in coloured
    assert re.sub(r"\033\[[0-9;]*m", "", coloured).splitlines()[0] == \
        render(differs, "terminal").splitlines()[0]


def test_the_verbose_terminal_report_caps_environment_changes():
    many = {f"pkg{i:02}": "1.0" for i in range(45)}
    a = make_record("run-a")
    b = dataclasses.replace(make_record("run-b"), environment=dataclasses.replace(
        make_record("run-b").environment, python_distributions=many))
    out = render(compare_records(a, b), "terminal", verbose=True)
    env_rows = [line for line in out.splitlines() if line.startswith("python-distribution")]
    assert len(env_rows) == 30
    assert "... and 17 more" in out


def test_the_terminal_report_of_identical_runs_says_so(identical):
    assert render(identical, "terminal").splitlines() == [
        "IDENTICAL  run-a vs run-b  (digits-logreg)",
        "identical: 2 metrics: 1 identical, 1 within; 1 artifact: 1 identical; 0 inputs "
        "differ; 0 environment changes"] or render(identical, "terminal").startswith("IDENTICAL")
    out = render(identical, "terminal", verbose=True)
    assert out.startswith("IDENTICAL")
    assert "Inputs that differ: all inputs identical" in out
    assert "Environment changes: no environment changes" in out
    assert "Likely causes" not in out


# --- Markdown -------------------------------------------------------------------------------

def test_the_markdown_report_has_a_verdict_heading_and_table_rows(differs):
    out = render(differs, "md")
    assert out.startswith("## reprun: differs\n")
    assert "| accuracy | 0.95 | 0.90 | -0.05 |" in out
    assert "| python-distribution | numpy | 1.24.2 | 1.26.4 | changed |" in out
    assert "1. the image differs:" in out
    assert "| tz | Asia/Tokyo |" in out


def test_markdown_escapes_pipes_backticks_and_html_in_values(differs):
    out = render(differs, "md")
    assert "| a\\|b\\`c.pkl |" in out
    assert XSS_SCRIPT not in out and "\\<script\\>" in out
    # Every row of the artifacts table still has exactly its six cells.
    section = out.split("### Artifacts")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) == 4
    for row in rows:
        assert len(re.split(r"(?<!\\)\|", row)) == 6 + 2


def test_markdown_renders_to_html_tables_with_those_cells(differs):
    markdown_it = pytest.importorskip("markdown_it")
    page = markdown_it.MarkdownIt("commonmark").enable("table").render(render(differs, "md"))
    assert "<td>accuracy</td>" in page
    assert "<td>a|b`c.pkl</td>" in page
    assert "<script>" not in page and "<img" not in page


# --- HTML -----------------------------------------------------------------------------------

_VOID = {"meta", "link", "br", "img", "hr", "input", "col", "area", "base", "wbr", "source",
         "line", "rect"}


class _WellFormed(HTMLParser):
    """Checks that every element that was opened is closed in order, and records text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_html(page: str) -> _WellFormed:
    parser = _WellFormed()
    parser.feed(page)
    parser.close()
    return parser


def test_the_html_report_is_well_formed_and_self_contained(differs):
    page = render(differs, "html")
    parsed = parse_html(page)
    assert parsed.errors == [] and parsed.stack == []
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert "svg" in parsed.tags  # the delta chart
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page
    text = " ".join(parsed.text)
    assert "DIFFERS" in text and "accuracy" in text and "Asia/Tokyo" in text


def test_the_html_report_escapes_every_value(differs):
    page = render(differs, "html")
    assert XSS_SCRIPT not in page and XSS_IMG not in page
    assert "&lt;script&gt;" in page
    assert "&lt;img src=x onerror=&quot;document.title=&#x27;pwned&#x27;&quot;&gt;" in page
    # The text a reader sees is the original value.
    assert XSS_IMG in " ".join(parse_html(page).text)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None,
                    reason="chromium is not installed (bash scripts/test-deps.sh installs it)")
def test_the_html_report_in_a_real_browser_shows_the_verdict_and_runs_no_injected_code(
        differs, tmp_path):
    report = tmp_path / "report.html"
    report.write_text(render(differs, "html"), encoding="utf-8")
    profile = tmp_path / "profile"
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert title and title.group(1) == "reprun: differs — digits-logreg"
    assert re.search(r"<h1>DIFFERS</h1>", dom)
    assert re.search(r"<tr[^>]*><td>accuracy</td><td[^>]*>0\.95</td><td[^>]*>0\.90</td>", dom)
    # The hostile values stayed text: no element was made of them, nothing ran.
    assert "<img" not in dom and "<script" not in dom
    assert "pwned" not in title.group(1)


# --- JSON -----------------------------------------------------------------------------------

def test_the_json_report_is_valid_json_that_matches_the_schema(differs, identical):
    schema = report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for comparison in (differs, identical):
        text = render(comparison, "json")

        def refuse(token):
            raise AssertionError(f"non-standard JSON token {token}")

        data = json.loads(text, parse_constant=refuse)
        jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)
        assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)


def test_the_json_report_round_trips_through_from_dict(differs):
    data = json.loads(render(differs, "json"))
    metrics = {row["name"]: row for row in data["sections"]["metrics"]}
    assert metrics["loss"]["a"] == "NaN" and metrics["auc"]["b"] == "-Infinity"
    again = Comparison.from_dict(data)
    assert again == differs
    assert render(again, "json") == render(differs, "json")


def test_a_stored_json_report_renders_again_in_every_format(differs, tmp_path):
    path = tmp_path / "report.json"
    assert write_report(differs, path) == "json"
    loaded = load_json_report(path)
    assert loaded == differs
    for fmt in FORMATS:
        assert render(loaded, fmt) == render(differs, fmt)


def test_write_report_picks_the_format_from_the_extension(differs, tmp_path):
    for name, fmt in (("r.md", "md"), ("r.html", "html"), ("r.xml", "junit")):
        assert write_report(differs, tmp_path / name) == fmt
        assert (tmp_path / name).read_text(encoding="utf-8") == render(differs, fmt)


@pytest.mark.parametrize("content, expected", [
    ("not json at all", "not JSON"),
    ('{"schema": "reprun.run/1", "id": "x"}', "not a reprun report"),
    ('[1, 2, 3]', "not a reprun report"),
])
def test_loading_something_that_is_not_a_report_is_a_usage_error(tmp_path, content, expected):
    path = tmp_path / "thing.json"
    path.write_text(content)
    with pytest.raises(UsageError) as info:
        load_json_report(path)
    assert expected in info.value.message
    assert info.value.exit_code == ExitCode.INVALID == 2


def test_a_report_with_a_broken_row_is_refused_with_the_place_named(differs, tmp_path):
    data = json.loads(render(differs, "json"))
    data["sections"]["metrics"][0]["status"] = "sort of"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError) as info:
        load_json_report(path)
    assert any(detail.startswith("sections/metrics/0/status") for detail in info.value.details)


def test_a_missing_report_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        load_json_report(tmp_path / "absent.json")


# --- JUnit ----------------------------------------------------------------------------------

def test_the_junit_report_has_a_test_case_per_metric_and_artifact(differs):
    root = ET.fromstring(render(differs, "junit").encode())
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite.get("name") == "reprun digits-logreg"
    cases = {(c.get("classname").rsplit(".", 1)[-1], c.get("name")): c
             for c in suite.iter("testcase")}
    metric_names = {row.name for row in differs.sections.metrics}
    artifact_names = {row.name for row in differs.sections.artifacts}
    assert {name for kind, name in cases if kind == "metrics"} == metric_names
    assert {name for kind, name in cases if kind == "artifacts"} == artifact_names

    def failure(kind, name):
        return cases[(kind, name)].find("failure")

    assert failure("metrics", "accuracy").get("type") == "beyond"
    assert failure("metrics", "auc").get("type") == "beyond"
    assert failure("metrics", "f1").get("type") == "missing-b"
    assert failure("metrics", "recall").get("type") == "missing-a"
    assert failure("metrics", "loss") is None
    assert failure("artifacts", "model.pkl").get("type") == "differs"
    assert failure("artifacts", "a|b`c.pkl").get("type") == "missing-a"

    environment = cases[("environment", "environment")]
    assert environment.find("failure") is None
    assert "numpy: changed 1.24.2 -> 1.26.4" in environment.find("system-out").text
    failures = sum(c.find("failure") is not None for c in cases.values())
    assert suite.get("failures") == str(failures) == root.get("failures")
    assert suite.get("tests") == str(len(cases))
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["verdict"] == "differs"


def test_the_junit_report_of_identical_runs_has_no_failures(identical):
    suite = ET.fromstring(render(identical, "junit").encode()).find("testsuite")
    assert suite.get("failures") == "0"
    environment = [c for c in suite.iter("testcase") if c.get("name") == "environment"][0]
    assert list(environment) == []


def test_the_junit_report_marks_a_failed_run_and_survives_control_characters():
    a = make_record("run-a")
    b = make_record("run-b", status="failed", params={"C": "x\x00\x1by"})
    suite = ET.fromstring(render(compare_records(a, b), "junit").encode()).find("testsuite")
    run = [c for c in suite.iter("testcase") if c.get("name") == "run"][0]
    assert "run-b failed" in run.find("failure").get("message")


# --- series ---------------------------------------------------------------------------------

def parting_at(step: int, steps: int = 30) -> Comparison:
    """Two runs whose loss curves are identical up to `step - 1` and part at `step`."""
    def curve(shift: float) -> list[list[float]]:
        return [[s, 1.0 / (s + 1) + (shift * (s - step + 1) if s >= step else 0.0)]
                for s in range(steps)]
    a, b = make_record("run-a"), make_record("run-b")
    a = dataclasses.replace(a, outputs=dataclasses.replace(a.outputs, steps={"loss": curve(0.0)}))
    b = dataclasses.replace(b, outputs=dataclasses.replace(b.outputs, steps={"loss": curve(1e-3)}))
    return compare_records(a, b, created_at="2024-05-01T11:00:00Z")


def test_every_format_names_the_step_where_two_curves_part():
    comparison = parting_at(15)
    row, = comparison.sections.series
    assert row.summary.startswith("identical up to step 14; first differ at step 15: loss "
                                  "0.0625 vs 0.0635; largest difference +0.015000 at step 29")
    for fmt in ("terminal", "md", "html", "junit"):
        assert "first differ at step 15" in render(comparison, fmt), fmt
    data = json.loads(render(comparison, "json"))
    assert data["sections"]["series"][0]["first_differ"] == 15
    assert load_json_report_text(render(comparison, "json")) == comparison


def load_json_report_text(text: str) -> Comparison:
    return Comparison.from_dict(json.loads(text))


@pytest.mark.skipif(_chromium() is None,
                    reason="chromium is not installed (bash scripts/test-deps.sh installs it)")
def test_the_html_report_draws_both_curves_and_their_difference_with_the_step_marked(tmp_path):
    page = render(parting_at(15), "html")
    assert "<script" not in page and "http" not in page.split("<svg", 1)[1].replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "content=\"default-src 'none'; style-src 'unsafe-inline'\"" in page
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         report.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    chart = re.search(r'<svg[^>]*class="series-chart"[^>]*data-series="loss".*?</svg>', dom, re.S)
    assert chart, "the browser's DOM has no chart of the loss series"
    svg = chart.group(0)
    for line in ("run-a", "run-b", "difference"):
        polyline = re.search(rf'<polyline class="{line}"[^>]*points="([^"]+)"', svg)
        assert polyline and len(polyline.group(1).split()) >= 15, line
    marker = re.search(r'<line class="divergence" data-step="(\d+)" x1="([\d.]+)"', svg)
    assert marker and marker.group(1) == "15"
    # The marker sits where step 15 is drawn: the 16th point of run b's curve.
    b_points = re.search(r'<polyline class="run-b"[^>]*points="([^"]+)"', svg).group(1).split()
    assert float(marker.group(2)) == pytest.approx(float(b_points[15].split(",")[0]), abs=0.1)


def test_markdown_neutralises_bidi_overrides_mentions_and_autolinks():
    a = make_record("run-a", metrics={"acc\u202egpj.exe": 1.0, "@octocat": 1.0,
                                      "see https://evil.example/x": 1.0, "www.evil.example": 1.0})
    out = render(compare_records(a, a), "md")
    assert "\u202e" not in out and "acc\\u202egpj.exe" in out
    table = out.split("### Metrics")[1].split("###")[0]
    assert "| `@octocat` |" in table
    assert "| see https&#58;//evil.example/x |" in table and "| www&#46;evil.example |" in table
    # Nowhere outside a code span: no mention, no link for GitHub to make.
    outside = re.sub(r"`[^`]*`", "", out)
    assert "@octocat" not in outside and "https://" not in outside and "www." not in outside


def test_the_same_image_pushed_to_a_registry_is_not_an_image_difference():
    before = make_record("run-a")
    pushed = make_record("run-b")
    pushed = dataclasses.replace(pushed, inputs=dataclasses.replace(
        pushed.inputs, image=ImageFacts(id=IMAGE_A, repo_digest="127.0.0.1:5000/x@sha256:" + "c" * 64)),
        environment=dataclasses.replace(pushed.environment, host={"repo_digest": None}))
    comparison = compare_records(before, pushed)
    assert not any("image differs" in c.summary for c in comparison.causes)
    assert comparison.inputs_that_differ == ()
    for fmt in ("terminal", "md", "html"):
        out = render(comparison, fmt, **({"verbose": True} if fmt == "terminal" else {}))
        assert "(absent)" not in out and "null" not in out, fmt


def test_the_html_report_shows_the_likely_causes_before_the_tables(differs):
    page = render(differs, "html")
    assert page.index('id="causes"') < page.index('id="metrics"') < page.index('id="environment"')


def test_the_html_metric_chart_puts_metrics_of_different_scales_on_one_footing():
    a = make_record("run-a", metrics={"batches": 13.0, "loss": 3.0e-4})
    b = make_record("run-b", metrics={"batches": 14.0, "loss": 3.1e-4})
    page = render(compare_records(a, b), "html")
    chart = re.search(r'<svg[^>]*class="metric-deltas".*?</svg>', page, re.S).group(0)
    widths = dict(zip(re.findall(r"<text x=\"0\" y=\"\d+\">([^<]+)</text>", chart),
                      map(float, re.findall(r'<rect [^>]*width="([\d.]+)"', chart))))
    # Relative differences: 1/14 = 7.1 % and 0.1/3.1 = 3.2 %, so the loss bar is about half the
    # batches bar, not a thousandth of it as on one absolute axis.
    assert widths["loss"] / widths["batches"] == pytest.approx((0.1 / 3.1) / (1 / 14), rel=0.01)
    assert "7.14%" in chart and "3.23%" in chart
