"""`reprun verify` and `reprun diff` against the real engine: verdicts, causes, every report."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from conftest import REPO, WRITE_METRICS

pytestmark = pytest.mark.engine


def test_the_digits_example_verifies_as_identical(project):
    result = project.reprun("verify", str(REPO / "specs" / "digits.yaml"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("IDENTICAL")
    runs = json.loads(project.reprun("runs", "--json").stdout)
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]


def test_the_nondeterministic_example_differs_and_says_why(project):
    result = project.reprun("verify", str(REPO / "specs" / "nondeterministic" / "digits-noisy.yaml"), "--quiet")
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("DIFFERS")
    assert "nondeterministic under identical inputs" in result.stdout
    assert "beyond" in result.stdout


def test_parallel_and_sequential_runs_agree_and_parallel_runs_overlap(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS + "\nimport time; time.sleep(2)")
    parallel = project.reprun("verify", str(spec), "--quiet")
    sequential = project.reprun("verify", str(spec), "--quiet", "--sequential")
    assert parallel.returncode == sequential.returncode == 0
    runs = sorted(json.loads(project.reprun("runs", "--json").stdout), key=lambda r: r["started_at"])
    first, second, third, fourth = runs
    assert second["started_at"] < first["finished_at"]       # side by side
    assert fourth["started_at"] >= third["finished_at"]      # one after another


NOISE = """
import json, os, sys
noise = int.from_bytes(os.urandom(2), "little") * 1e-15
json.dump({"loss": 0.5 + noise}, open("/out/metrics.json", "w"))
"""


@pytest.mark.parametrize("tolerance, code, verdict", [
    ("{metrics: {default: {abs: 1.0e-9}}, artifacts: bitwise}", 0, "EQUIVALENT"),
    ("{metrics: {default: exact}, artifacts: bitwise}", 1, "DIFFERS"),
], ids=["within-abs-1e-9", "exact"])
def test_a_metric_within_tolerance_is_equivalent_and_differs_without_it(project, tolerance, code, verdict):
    project.dataset()
    spec = project.spec(script=NOISE, compare=tolerance)
    result = project.reprun("verify", str(spec), "--quiet")
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout.startswith(verdict)


def fake_distribution(version: str) -> str:
    """A Dockerfile line that installs a Python distribution `fakepkg` at `version`."""
    site = "/usr/lib/python3/dist-packages/fakepkg-{v}.dist-info".format(v=version)
    return (f"RUN mkdir -p {site} && printf 'Metadata-Version: 2.1\\nName: fakepkg\\n"
            f"Version: {version}\\n' > {site}/METADATA")


def build_spec(project, version: str) -> Path:
    context = project.root / "image"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(
        f"FROM reprun/sklearn:latest\n{fake_distribution(version)}\n")
    spec = project.spec(script=WRITE_METRICS)
    text = spec.read_text().replace(f"  ref: {project.image_ref}\n", "  build: {context: image}\n")
    spec.write_text(text)
    return spec


def test_images_that_differ_by_one_package_name_it_with_both_versions(project):
    project.dataset()
    spec = build_spec(project, "1.0")
    assert project.reprun("run", str(spec), "-q").returncode == 0
    build_spec(project, "2.0")
    assert project.reprun("run", str(spec), "-q").returncode == 0
    old, new = sorted(json.loads(project.reprun("runs", "--json").stdout),
                      key=lambda r: r["started_at"])
    result = project.reprun("diff", old["id"], new["id"], "--report", "d.json")
    assert result.returncode == 0, result.stderr          # the results still agree
    report = json.loads((project.root / "d.json").read_text())
    rows = [r for r in report["sections"]["environment"] if r["name"] == "fakepkg"]
    assert rows and (rows[0]["a"], rows[0]["b"]) == ("1.0", "2.0")
    causes = " ".join(c["summary"] + " ".join(c.get("details", [])) for c in report["causes"])
    assert "fakepkg" in causes and "the image differs" in causes


def test_every_report_format_is_written_and_reads_back(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    result = project.reprun("verify", str(spec), "-q", "--report", "r.md", "--report", "r.html",
                            "--report", "r.json", "--report", "r.xml")
    assert result.returncode == 0, result.stderr
    root = project.root
    schema = json.loads((REPO / "orchestrator" / "reports" / "report-v2.schema.json").read_text())
    report = json.loads((root / "r.json").read_text())
    jsonschema.validate(report, schema)
    assert report["verdict"] == "identical"
    suite = ET.parse(root / "r.xml").getroot()
    names = {case.get("name") for case in suite.iter("testcase")}
    assert {"score", "nested.loss", "model.bin"} <= names
    assert "| score |" in (root / "r.md").read_text().replace("`", "")
    assert "identical" in (root / "r.html").read_text().lower()
    again = project.reprun("report", "r.json", "--format", "md")
    assert again.returncode == 0
    assert again.stdout.strip() == (root / "r.md").read_text().strip()   # rendered again, same
    saved = list((project.store / "reports").glob("*.json"))
    assert len(saved) == 1


def test_a_report_file_that_is_not_a_reprun_report_is_refused(project):
    (project.root / "junk.json").write_text('{"hello": 1}')
    result = project.reprun("report", "junk.json", "--format", "md")
    assert result.returncode == 2 and "Traceback" not in result.stderr


# A job whose training curve is the same in every run up to step 14 and parts at step 15: from
# there on it adds noise drawn from the OS, which no seed controls. A list metric does the same.
PARTS_AT_15 = """
import json, os
noise = lambda: 1e-3 * (1 + int.from_bytes(os.urandom(4), "little") / 2**32)
curve = []
with open("/out/steps.jsonl", "w") as steps:
    for step in range(30):
        loss = 1.0 / (step + 1) + (noise() if step >= 15 else 0.0)
        steps.write(json.dumps({"step": step, "loss": loss, "lr": 0.1}) + "\\n")
        curve.append(loss)
    steps.write("not json\\n")
json.dump({"loss": curve[-1], "val.curve": curve, "optimizer": "sgd", "converged": True,
           "best_epoch": None, "round": {"2": 0.5, "10": 0.25}}, open("/out/metrics.json", "w"))
"""


def test_a_curve_that_parts_at_step_15_is_named_at_that_step_in_every_report(project):
    project.dataset()
    spec = project.spec(script=PARTS_AT_15, extra="")
    text = spec.read_text().replace(
        'artifacts: ["*.bin"]}', 'artifacts: ["*.bin"], steps: steps.jsonl}')
    spec.write_text(text)
    assert project.reprun("validate", str(spec)).returncode == 0
    reports = {fmt: project.root / f"r.{fmt}" for fmt in ("md", "html", "json", "xml")}
    result = project.reprun("verify", str(spec), "--quiet",
                            *[arg for path in reports.values() for arg in ("--report", str(path))])
    # Text, booleans and null metrics no longer fail the run after training (exit 5).
    assert result.returncode == 1, result.stdout + result.stderr
    assert "first differ at step 15: loss" in result.stdout
    assert "identical up to step 14" in result.stdout

    data = json.loads(reports["json"].read_text())
    series = {(s["source"], s["name"]): s for s in data["sections"]["series"]}
    steps = series[("steps", "loss")]
    assert (steps["agree_until"], steps["first_differ"], steps["status"]) == (14, 15, "beyond")
    assert steps["a_steps"] == list(range(30)) and len(steps["b"]) == 30
    assert series[("steps", "lr")]["status"] == "identical"
    curve = series[("metric", "val.curve")]
    assert (curve["agree_until"], curve["first_differ"]) == (14, 15)
    metrics = {m["name"]: m for m in data["sections"]["metrics"]}
    assert (metrics["optimizer"]["kind"], metrics["optimizer"]["status"]) == ("text", "identical")
    assert metrics["converged"]["a"] is True and metrics["best_epoch"]["kind"] == "null"
    names = [m["name"] for m in data["sections"]["metrics"]]
    assert names.index("round.2") < names.index("round.10")
    jsonschema.validate(data, json.loads(
        (REPO / "orchestrator" / "reports" / "report-v2.schema.json").read_text()))

    markdown = reports["md"].read_text()
    assert "#### loss around step 15" in markdown
    window = markdown.split("#### loss around step 15")[1].split("####")[0]
    assert [line.split("|")[1].strip() for line in window.splitlines()
            if line.startswith("| ") and "step" not in line] == ["13", "14", "15", "16", "17"]
    assert "first differ at step 15" in reports["html"].read_text()
    junit = ET.parse(reports["xml"]).getroot()
    failed = {case.get("name"): case.find("failure") for case in junit.iter("testcase")
              if case.get("classname", "").endswith(".series")}
    assert failed["loss"] is not None and "step 15" in failed["loss"].get("message")
    assert failed["lr"] is None

    run = json.loads(project.reprun("runs", "--json").stdout)[0]["id"]
    shown = project.reprun("runs", "show", run)
    assert "1 line(s) of the steps file steps.jsonl are not an object" in shown.stdout, shown.stdout


SLOW_STEPS = """
import json, time
with open("/out/steps.jsonl", "w") as steps:
    for step in range(4):
        steps.write(json.dumps({"step": step, "loss": 1.0 / (step + 1)}) + "\\n")
        steps.flush()
        time.sleep(1.5)
json.dump({"loss": 0.25}, open("/out/metrics.json", "w"))
"""


def test_the_latest_step_is_shown_while_the_job_runs(project):
    project.dataset()
    spec = project.spec(script=SLOW_STEPS)
    spec.write_text(spec.read_text().replace(
        'artifacts: ["*.bin"]}', 'artifacts: ["*.bin"], steps: steps.jsonl}'))
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    shown = [line for line in result.stderr.splitlines() if "] step " in line]
    # Shown as the job went, not only at the end: more than one step, in order.
    assert len(shown) >= 2 and "step 0: loss 1" in shown[0], result.stderr
    assert [int(line.split("] step ")[1].split(":")[0]) for line in shown] == \
        sorted(int(line.split("] step ")[1].split(":")[0]) for line in shown)


@pytest.mark.parametrize("script, reason, timeout", [
    ("import sys; sys.exit(3)", "exit", "2m"),
    ("import json; json.dump([1, 2], open('/out/metrics.json', 'w'))", "outputs", "2m"),
    ("import time; time.sleep(60)", "timeout", "3s"),
], ids=["crash", "bad-outputs", "timeout"])
def test_a_run_that_fails_still_writes_every_report_with_the_incomplete_verdict(
        project, script, reason, timeout):
    project.dataset()
    spec = project.spec(script=script,
                        resources=f"{{cpus: 1, memory: 512m, timeout: {timeout}}}")
    paths = [project.root / f"r.{ext}" for ext in ("json", "md", "html", "xml")]
    result = project.reprun("verify", str(spec), "-q",
                            *[arg for path in paths for arg in ("--report", str(path))])
    assert result.returncode == 5, result.stdout + result.stderr
    data = json.loads(paths[0].read_text())
    assert data["verdict"] == "incomplete"
    assert data["a"]["reason"] == reason and data["a"]["status"] == "failed"
    assert any(c["kind"] == "run" and reason in c["summary"] for c in data["causes"])
    assert "incomplete" in paths[1].read_text() and "INCOMPLETE" in paths[2].read_text()
    run_case = next(c for c in ET.parse(paths[3]).getroot().iter("testcase")
                    if c.get("name") == "run")
    assert run_case.find("failure").get("type") == "incomplete"
    # The failure is still told as before, with its exit code.
    assert "failed" in result.stderr


def test_diff_writes_an_html_report_under_a_locale_that_is_not_utf8(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS + "\nprint('ünïcödé → 日本')")
    assert project.reprun("run", str(spec), "-q").returncode == 0
    assert project.reprun("run", str(spec), "-q").returncode == 0
    first, second = (r["id"] for r in json.loads(project.reprun("runs", "--json").stdout))
    # en_US.ISO-8859-1 where it is installed; where it is not, Python falls back to ASCII,
    # which fails the same way (UTF-8 mode is turned off so that it does not rescue us).
    latin = {"LC_ALL": "en_US.ISO-8859-1", "LANG": "en_US.ISO-8859-1",
             "PYTHONIOENCODING": "", "PYTHONUTF8": "0"}
    result = project.reprun("diff", first, second, "--report", "x.html", "--report", "x.md",
                            extra_env=latin)
    assert result.returncode == 0, result.stderr
    page = (project.root / "x.html").read_bytes().decode("utf-8")
    assert page.startswith("<!DOCTYPE html>") and "IDENTICAL" in page
    assert not list(project.root.glob(".x.html.*"))          # no temporary file left behind


# A job whose accuracy is one of four values, drawn from its run's own random ID: over five runs
# some pairs must agree (five runs, four values) and, but for a 1-in-256 draw, some must not.
FLAKY = """
import json, os
token = int(os.environ["REPRUN_RUN_ID"].rsplit("-", 1)[1], 16)
json.dump({"accuracy": 0.95 + 0.002 * (token % 4), "epochs": 3}, open("/out/metrics.json", "w"))
"""


def test_a_flaky_job_over_five_runs_is_flaky_with_its_spread_and_a_tolerance_to_paste(project):
    project.dataset()
    spec = project.spec(script=FLAKY,
                        compare="{metrics: {default: exact}, artifacts: bitwise, "
                                "test_examples: 450}")
    result = project.reprun("verify", str(spec), "--times", "5", "--suggest", "-q",
                            "--report", "r.json", "--report", "r.md")
    values = [r["outputs"]["metrics"]["accuracy"] for r in (
        json.loads(project.reprun("runs", "show", run["id"], "--json").stdout)
        for run in json.loads(project.reprun("runs", "--json").stdout))]
    assert len(values) == 5
    if len(set(values)) == 1:       # the 1-in-256 draw: every run alike
        assert result.returncode == 0 and result.stdout.startswith("IDENTICAL across 5 runs")
        return
    assert result.returncode == 1, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    agreeing = sum(a == b for i, a in enumerate(values) for b in values[i + 1:])
    assert first == f"FLAKY across 5 runs: {agreeing} of 10 pairs agree"
    block = result.stdout[result.stdout.index("compare:\n"):]
    import yaml
    pasted = yaml.safe_load(block.split("\n\n")[0])["compare"]
    suggested = pasted["metrics"]["accuracy"]["abs"]
    assert suggested >= 2 * (max(values) - min(values)) and pasted["test_examples"] == 450
    assert pasted["metrics"]["default"] == "exact" and "epochs" not in pasted["metrics"]
    # The pasted block is a valid spec section, and with it the same runs agree.
    spec.write_text(spec.read_text().replace(
        "compare: {metrics: {default: exact}, artifacts: bitwise, test_examples: 450}",
        "compare: " + json.dumps(pasted)))
    assert project.reprun("validate", str(spec)).returncode == 0
    reports = sorted(project.root.glob("r-*.json"))
    assert len(reports) == 4
    spread = json.loads(reports[0].read_text())["extra"]["spread"]
    assert spread["title"].startswith("FLAKY across 5 runs")
    row = next(r for r in spread["rows"] if r[0] == "accuracy")
    assert row[4] == "no" and "expected from the test set" in row[7]
    assert "FLAKY across 5 runs" in sorted(project.root.glob("r-*.md"))[0].read_text()
