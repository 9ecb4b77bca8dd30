"""What the user asks reprun to write or list: refused before any work when it cannot be done,
and never an internal error or a silent wrong answer."""
from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import REPO, REPRUN
from orchestrator.store.db import Store
from test_reliability import write_run


def reprun(cwd: Path, *args: str, store: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "REPRUN_STORE": str(store or cwd / ".reprun")}
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} | kwargs
    return subprocess.run([*REPRUN, *args], cwd=cwd, env=env, text=True, timeout=120, **streams)


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


# --------------------------------------------------------------------------- lock

def test_lock_refuses_a_missing_spec_a_folder_and_broken_yaml_as_run_does(tmp_path: Path):
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "broken.yaml").write_text("name: x\n  bad: [\n")
    assert_refused(reprun(tmp_path, "lock", "missing.yaml"), "cannot read spec missing.yaml",
                   "No such file")
    assert_refused(reprun(tmp_path, "lock", "folder.yaml"), "Is a directory")
    assert_refused(reprun(tmp_path, "lock", "broken.yaml"), "broken.yaml:2:", "malformed")
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    assert_refused(reprun(tmp_path, "lock", "latin1.yaml"), "latin1.yaml:1:10", "not UTF-8")


@pytest.mark.parametrize("command", ["lock", "run", "validate"])
def test_a_spec_that_is_a_fifo_is_refused_instead_of_blocking(tmp_path: Path, command):
    os.mkfifo(tmp_path / "spec.yaml")
    result = reprun(tmp_path, command, "spec.yaml")      # the timeout fails a read that blocks
    assert result.returncode == 2 and "not a regular file" in (result.stderr + result.stdout)


# --------------------------------------------------------------------------- files to write

@pytest.mark.parametrize("output, words", [
    ("{tmp}", ["is a folder"]),
    ("{file}/run.tar", ["cannot be written", "is a file, not a folder"]),
    ("{tmp}/run.zip", ["must end in .tar, .tar.gz"]),
    ("{tmp}/run.TAR.GZ.bak", ["must end in .tar, .tar.gz"]),
])
def test_archive_refuses_an_output_it_could_not_write_before_any_work(tmp_path, a_file,
                                                                      output, words):
    # The run does not even exist: the output is checked first, not after saving the image.
    target = output.format(tmp=tmp_path, file=a_file)
    assert_refused(reprun(tmp_path, "archive", "no-such-run", "-o", target), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]     # nothing left behind


def test_check_refuses_a_report_folder_or_junit_file_it_could_not_write_before_any_work(
        tmp_path, a_file):
    # No spec would be found: the refusal has to come before the check starts.
    assert_refused(reprun(tmp_path, "check", "missing.yaml", "--report-dir", str(a_file)),
                   f"the report folder {a_file} cannot be written")
    assert_refused(reprun(tmp_path, "check", "missing.yaml", "--junit", str(tmp_path)),
                   f"the JUnit file {tmp_path} is a folder")


def test_a_report_path_through_a_file_is_refused_before_the_runs_are_read(tmp_path, a_file):
    assert_refused(reprun(tmp_path, "diff", "run-a", "run-b", "--report", f"{a_file}/r.md"),
                   "is a file, not a folder")


def test_a_report_rendered_again_into_a_missing_folder_makes_it(tmp_path: Path):
    store = Store(tmp_path / ".reprun")
    a, b = write_run(store, score=1.0), write_run(store, score=1.0)
    diff = reprun(tmp_path, "diff", a.id, b.id)
    assert diff.returncode == 0, diff.stderr
    saved = diff.stderr.rsplit("report saved in the store: ", 1)[1].strip()
    target = tmp_path / "new" / "folder" / "report.md"
    again = reprun(tmp_path, "report", saved, "-f", "md", "-o", str(target))
    assert again.returncode == 0, again.stderr
    assert a.id in target.read_text()


# --------------------------------------------------------------------------- a reader that leaves

def test_a_reader_that_leaves_does_not_turn_the_exit_code_into_differs(tmp_path: Path):
    """`reprun diff A B | head -1`: Click alone would exit 1, which means "differs"."""
    store = Store(tmp_path / ".reprun")
    a, b = write_run(store, score=1.0), write_run(store, score=1.0)
    read, write = os.pipe()
    os.close(read)                       # every write to stdout now fails with EPIPE
    try:
        result = reprun(tmp_path, "diff", a.id, b.id, stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "report saved in the store" in result.stderr       # it carried on to the end


# --------------------------------------------------------------------------- runs --since/--until

def listed(cwd: Path, *args: str) -> list[str]:
    result = reprun(cwd, "runs", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [run["id"] for run in json.loads(result.stdout)]


def test_since_and_until_take_the_time_as_the_table_prints_it_offsets_and_times_ago(tmp_path):
    store = Store(tmp_path / ".reprun")
    first = write_run(store)
    second = write_run(store)
    assert first.started_at < second.started_at
    at = datetime.fromisoformat(second.started_at.replace("Z", "+00:00"))
    as_printed = at.strftime("%Y-%m-%d %H:%M:%S.%f")[:23]          # a space, not a T
    assert listed(tmp_path, "--since", as_printed) == [second.id]
    assert listed(tmp_path, "--until", as_printed) == [first.id]
    elsewhere = at.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="milliseconds")
    assert listed(tmp_path, "--since", elsewhere) == [second.id]
    assert listed(tmp_path, "--since", "1h") == [second.id, first.id]
    assert listed(tmp_path, "--until", "1h") == []


@pytest.mark.parametrize("args, words", [
    (["--since", "yesterday"], ["--since 'yesterday' is not a time", "7d"]),
    (["--until", "2026-13-45"], ["--until '2026-13-45' is not a time"]),
    (["--status", "bogus"], ["--status 'bogus' is not a status", "succeeded"]),
    (["--since", "2h", "--until", "3h"], ["--since 2h is not before --until 3h"]),
])
def test_a_filter_runs_cannot_understand_is_refused_not_answered_with_nothing(tmp_path, args,
                                                                              words):
    write_run(Store(tmp_path / ".reprun"))
    assert_refused(reprun(tmp_path, "runs", *args), *words)


def test_a_missing_archive_is_a_bad_invocation_not_a_damaged_archive(tmp_path: Path):
    assert_refused(reprun(tmp_path, "rerun", "--from-archive", "nosuch.tar"),
                   "there is no archive file at nosuch.tar")
    assert not (tmp_path / ".reprun" / "archives").exists() or \
        not any((tmp_path / ".reprun" / "archives").iterdir())


def test_the_reference_of_a_check_without_a_baseline_is_never_a_varied_run(tmp_path: Path):
    store = Store(tmp_path / ".reprun")
    write_run(store, score=1.0)
    write_run(store, score=2.0, container={"variations": {"seed": 3, "varied": {"tz": "Asia/Tokyo"}}})
    assert store.latest_succeeded("job").outputs.metrics == {"score": 1.0}
    write_run(store, score=3.0, container={"variations": {"seed": 3, "varied": {}}})   # a control
    assert store.latest_succeeded("job").outputs.metrics == {"score": 3.0}


def test_an_approval_without_a_reason_is_refused(tmp_path: Path):
    run = write_run(Store(tmp_path / ".reprun"))
    assert_refused(reprun(tmp_path, "runs", "approve", run.id, "--reason", "  "),
                   "an approval needs a reason")
    approved = reprun(tmp_path, "runs", "approve", run.id, "--reason", "model v3")
    assert approved.returncode == 0, approved.stderr


def test_filters_that_match_nothing_say_so_rather_than_that_nothing_was_recorded(tmp_path):
    write_run(Store(tmp_path / ".reprun"))
    result = reprun(tmp_path, "runs", "--spec", "another")
    assert result.returncode == 0 and "no runs match these filters" in result.stdout
    (tmp_path / "elsewhere").mkdir()
    empty = reprun(tmp_path / "elsewhere", "runs", "--spec", "another")
    assert empty.returncode == 0 and empty.stdout.strip() == "no runs recorded"


def test_archive_names_are_read_whatever_their_case(tmp_path: Path):
    from orchestrator.store.archive import compression_of, refuse_output
    refuse_output(tmp_path / "model-v3.TAR.GZ")          # accepted, and compressed as it says
    assert compression_of(tmp_path / "model-v3.TAR.GZ") == "gz"
    assert compression_of(tmp_path / "model-v3.Tar.Xz") == "xz"
    assert compression_of(tmp_path / "model-v3.TAR.ZST") == "zst"
    assert compression_of(tmp_path / "model-v3.tar") is None
