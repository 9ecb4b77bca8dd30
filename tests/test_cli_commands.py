"""Commands as a user meets them, against the real engine: what they pass on to the job, and
what they print about it — marked, prefixed, and safe for the terminal it lands in."""
from __future__ import annotations

import json
import re

from conftest import WRITE_METRICS

ESC = "\x1b"

# A job that names its metrics and artifact with terminal escapes (OSC 52 writes the reader's
# clipboard, OSC 0 retitles the window) and a bidi override, and reports a NaN.
HOSTILE = r"""
import json
json.dump({"\u001b]52;c;cHduZWQ=\u0007acc": 1.0, "\u202egnp.exe": 2.0, "loss": float("nan")},
          open("/out/metrics.json", "w"))
open("/out/model\u001b[2J.bin", "wb").write(b"x")
"""


def runs_json(project) -> list[dict]:
    result = project.reprun("runs", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_seed_given_to_run_reaches_the_job_and_the_record(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)       # seed 7 in the spec
    result = project.reprun("run", str(spec), "--seed", "6", "-q")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^score +0\.6$", result.stdout, re.M)   # computed from 6, not 7
    (run,) = runs_json(project)
    shown = json.loads(project.reprun("runs", "show", run["id"], "--json").stdout)
    assert shown["inputs"]["seed"] == 6 and shown["outputs"]["metrics"]["score"] == 0.6


def test_names_a_job_chose_are_printed_escaped_everywhere_and_json_is_standard(project):
    project.dataset()
    spec = project.spec(script=HOSTILE, compare="{metrics: {default: exact}, artifacts: bitwise}")
    result = project.reprun("run", str(spec), "-q")
    assert result.returncode == 0, result.stderr
    assert ESC not in result.stdout and "\u202e" not in result.stdout
    assert r"\x1b]52;c;cHduZWQ=\x07acc" in result.stdout and r"\u202egnp.exe" in result.stdout
    (run,) = runs_json(project)
    shown = project.reprun("runs", "show", run["id"])
    assert shown.returncode == 0, shown.stderr
    assert ESC not in shown.stdout and r"model\x1b[2J.bin" in shown.stdout
    listed = project.reprun("runs")
    assert ESC not in listed.stdout
    as_json = project.reprun("runs", "show", run["id"], "--json").stdout
    record = json.loads(as_json, parse_constant=lambda token: f"bare {token}")
    assert record["outputs"]["metrics"]["loss"] == "NaN"


def test_a_failure_message_shows_the_log_tail_escaped(project):
    project.dataset()
    spec = project.spec(command=["sh", "-c", r"printf 'epoch 1\033]0;pwned\007\n'; exit 3"])
    result = project.reprun("run", str(spec), "-q")
    assert result.returncode == 5, result.stderr
    assert ESC not in result.stderr and r"epoch 1\x1b]0;pwned\x07" in result.stderr


def test_runs_marks_the_approved_baseline_and_only_it(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    for _ in range(2):
        assert project.reprun("run", str(spec), "-q").returncode == 0
    first, second = sorted(runs_json(project), key=lambda r: r["started_at"])
    assert project.reprun("runs", "approve", first["id"], "--reason", "signed off").returncode == 0
    listing = project.reprun("runs").stdout.splitlines()
    assert "baseline" in listing[0]
    (marked,) = [line for line in listing if "approved" in line]
    assert first["id"] in marked
    assert {r["id"]: r["baseline"] for r in runs_json(project)} == {first["id"]: True,
                                                                   second["id"]: False}


def test_job_output_says_which_run_printed_it_in_sequential_and_varied_verify(project):
    project.dataset()
    spec = project.spec(script="print('training now')\n" + WRITE_METRICS)
    sequential = project.reprun("verify", str(spec), "--sequential")
    assert sequential.returncode == 0, sequential.stderr
    assert "[run 1/2] | training now" in sequential.stderr
    assert "[run 2/2] | training now" in sequential.stderr
    varied = project.reprun("verify", str(spec), "--vary", "tz", timeout=600)
    assert varied.returncode == 0, varied.stderr
    assert "[control] | training now" in varied.stderr and "[varied] | training now" in varied.stderr
