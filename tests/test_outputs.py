"""What a job leaves behind, read safely: artifacts bounded by size, links never followed, odd
metric names kept and shown escaped."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator import outputs
from orchestrator.outputs import OutputsError, find_artifacts, parse_metrics

SPARSE_8_GIB = 8 << 30


def outputs_folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    for name, content in files.items():
        (out / name).write_bytes(content)
    return out


# --------------------------------------------------------------------------- size

def sparse(path: Path) -> None:
    with open(path, "wb") as f:         # no disk used, 8 GiB to read
        f.truncate(SPARSE_8_GIB)


def test_artifacts_over_the_limit_are_refused_before_a_byte_is_hashed(tmp_path, monkeypatch):
    out = outputs_folder(tmp_path, {"small.bin": b"x" * 10})
    sparse(out / "huge.bin")
    hashed = []
    monkeypatch.setattr(outputs, "sha256_file", lambda path: hashed.append(path) or ("0" * 64, 0))
    with pytest.raises(OutputsError) as refused:
        find_artifacts(out, ("*.bin",))
    assert hashed == []
    message = str(refused.value)
    assert f"{SPARSE_8_GIB + 10} bytes" in message and "outputs.max_size" in message
    assert f"huge.bin {SPARSE_8_GIB} bytes" in message


def test_a_spec_can_raise_the_limit(tmp_path):
    out = outputs_folder(tmp_path, {"model.bin": b"m" * 3000})
    with pytest.raises(OutputsError, match="over the 2048-byte limit"):
        find_artifacts(out, ("*.bin",), max_bytes=2048)
    assert find_artifacts(out, ("*.bin",), max_bytes=4096).artifacts["model.bin"].size == 3000


def test_files_no_pattern_matches_do_not_count_toward_the_limit(tmp_path):
    out = outputs_folder(tmp_path, {"model.bin": b"m" * 100})
    sparse(out / "scratch.tmp")
    assert set(find_artifacts(out, ("*.bin",), max_bytes=1000).artifacts) == {"model.bin"}


# --------------------------------------------------------------------------- links

def test_a_link_into_the_dataset_is_noted_neither_followed_nor_hashed(tmp_path):
    out = outputs_folder(tmp_path, {"model.pt": b"weights"})
    (out / "train.pt").symlink_to("/data/train.pt")       # the dataset, as the job saw it
    (out / "copy.pt").symlink_to("model.pt")              # inside: still a link, not a file
    found = find_artifacts(out, ("*.pt",))
    assert set(found.artifacts) == {"model.pt"}
    assert found.links == ("copy.pt -> model.pt", "train.pt -> /data/train.pt")
    assert "train.pt -> /data/train.pt is a symbolic link" in " ".join(found.notes())


def test_a_link_to_a_host_file_is_never_read(tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"root-only")
    out = outputs_folder(tmp_path, {})
    (out / "model.bin").symlink_to(secret)
    found = find_artifacts(out, ("*.bin",))
    assert found.artifacts == {} and found.links == (f"model.bin -> {secret}",)


def test_a_link_loop_in_the_outputs_is_an_outputs_error(tmp_path):
    out = outputs_folder(tmp_path, {})
    (out / "loop.bin").symlink_to("loop.bin")
    with pytest.raises(OutputsError, match=r"loop\.bin is a symbolic link loop"):
        find_artifacts(out, ("*.bin",))


def test_a_metrics_file_behind_a_folder_loop_is_refused_not_a_crash(tmp_path):
    out = outputs_folder(tmp_path, {})
    (out / "sub").symlink_to("sub")
    with pytest.raises(OutputsError):
        outputs.read_metrics(out / "sub" / "metrics.json", root=out)


# --------------------------------------------------------------------------- odd names

def test_a_lone_surrogate_in_a_metric_name_is_kept_escaped():
    metrics = parse_metrics(b'{"\\ud800x": 1, "a": {"\\udfffy": 2}, "pair\\ud83d\\ude00": 3}', "m")
    assert metrics == {"\\ud800x": 1.0, "a.\\udfffy": 2.0, "pair\U0001F600": 3.0}
    for name in metrics:
        name.encode("utf-8")       # every name is text any file, terminal or database can hold


# --------------------------------------------------------------------------- against the engine

def run_job(project, script: str, extra: str = "", artifacts: str = '["*.bin"]'):
    project.dataset()
    spec = project.spec(script=script, extra=extra)
    spec.write_text(spec.read_text().replace('artifacts: ["*.bin"]', f"artifacts: {artifacts}"))
    result = project.reprun("run", str(spec))
    runs = json.loads(project.reprun("runs", "--json").stdout)
    record = json.loads(project.reprun("runs", "show", runs[0]["id"], "--json").stdout) if runs else None
    return spec, result, record


SPARSE_ARTIFACT = """
import json, os
json.dump({"score": 1}, open("/out/metrics.json", "w"))
with open("/out/model.bin", "wb") as f:
    f.truncate(8 << 30)
"""


@pytest.mark.engine
def test_an_8_gib_sparse_artifact_is_exit_5_with_a_record_instead_of_a_long_hash(project):
    _, result, record = run_job(project, SPARSE_ARTIFACT)
    assert result.returncode == 5, result.stderr
    assert "outputs.max_size" in result.stderr and "Traceback" not in result.stderr
    assert record["status"] == "failed" and record["outputs"]["reason"] == "outputs"
    assert "model.bin 8589934592 bytes" in record["outputs"]["message"]
    assert record["outputs"]["artifacts"] == {}


@pytest.mark.engine
def test_outputs_max_size_in_the_spec_raises_the_limit(project):
    script = ("import json; json.dump({'score': 1}, open('/out/metrics.json', 'w'))\n"
              "open('/out/model.bin', 'wb').write(b'm' * 3 * 1024 * 1024)\n")
    spec, result, record = run_job(project, script,
                                   extra="")
    assert result.returncode == 0, result.stderr
    spec.write_text(spec.read_text().replace("outputs: {", "outputs: {max_size: 1m, "))
    refused = project.reprun("run", str(spec))
    assert refused.returncode == 5 and "over the 1048576-byte limit" in refused.stderr
    spec.write_text(spec.read_text().replace("max_size: 1m", "max_size: 4m"))
    assert project.reprun("run", str(spec), "-q").returncode == 0


@pytest.mark.engine
def test_a_symlink_loop_in_the_outputs_is_exit_5_with_a_record(project):
    script = ("import json, os; json.dump({'score': 1}, open('/out/metrics.json', 'w'))\n"
              "os.symlink('loop.bin', '/out/loop.bin')\n")
    _, result, record = run_job(project, script)
    assert result.returncode == 5, result.stderr
    assert "loop.bin is a symbolic link loop" in result.stderr and "internal error" not in result.stderr
    assert record["status"] == "failed" and "symbolic link loop" in record["outputs"]["message"]
    assert (project.store / "runs" / record["id"] / "record.json").is_file()


@pytest.mark.engine
def test_a_link_to_the_dataset_among_the_artifacts_keeps_the_run(project):
    script = ("import json, os; json.dump({'score': 1}, open('/out/metrics.json', 'w'))\n"
              "open('/out/model.pt', 'wb').write(b'weights')\n"
              "os.symlink('/data/train.csv', '/out/train.pt')\n")
    _, result, record = run_job(project, script, artifacts='["*.pt"]')
    assert result.returncode == 0, result.stderr
    assert "train.pt -> /data/train.csv is a symbolic link" in result.stderr      # said
    assert set(record["outputs"]["artifacts"]) == {"model.pt"}
    assert "train.pt -> /data/train.csv" in record["outputs"]["message"]         # and recorded


@pytest.mark.engine
def test_a_metric_named_with_a_lone_surrogate_survives_run_show_diff_and_reports(project, tmp_path):
    script = ('import json, sys; open("/out/metrics.json", "w").write('
              '\'{"\\\\ud800x": 1, "score": \' + str(int(sys.argv[1]) % 2) + "}")\n')
    spec, result, record = run_job(project, script)
    assert result.returncode == 0, result.stderr
    assert "\\ud800x" in result.stdout                          # the run's metric table
    assert record["outputs"]["metrics"]["\\ud800x"] == 1.0
    shown = project.reprun("runs", "show", record["id"])
    assert shown.returncode == 0 and "\\ud800x" in shown.stdout, shown.stderr
    assert project.reprun("run", str(spec), "-q").returncode == 0
    ids = [r["id"] for r in json.loads(project.reprun("runs", "--json").stdout)]
    diff = project.reprun("diff", *ids)
    assert diff.returncode == 0 and "Traceback" not in diff.stderr, diff.stderr
    reports = [tmp_path / f"report.{ext}" for ext in ("md", "html", "json", "xml")]
    verified = project.reprun("verify", str(spec), *(f"--report={p}" for p in reports))
    assert verified.returncode == 0, verified.stderr
    for report in reports:
        assert "\\ud800x" in report.read_text(encoding="utf-8") or report.suffix == ".json"
    assert "\\\\ud800x" in reports[2].read_text(encoding="utf-8")     # JSON: the backslash escaped


@pytest.mark.engine
def test_when_every_run_of_a_verify_fails_each_failure_is_reported(project):
    project.dataset()
    spec = project.spec(script="import sys; print('no model for seed', sys.argv[1]); sys.exit(3)")
    result = project.reprun("verify", str(spec), "--sequential")
    assert result.returncode == 5, result.stderr
    ids = [r["id"] for r in json.loads(project.reprun("runs", "--json").stdout)]
    assert len(ids) == 2 and "2 of 2 runs failed" in result.stderr
    assert all(f"run {run_id} of job failed" in result.stderr for run_id in ids)


@pytest.mark.engine          # the project's spec pins the example image by its registry digest
@pytest.mark.parametrize("value", ["0", "-1g", "lots", "[4g]"])
def test_validate_refuses_an_outputs_max_size_that_is_not_a_size(project, value):
    project.dataset()
    spec = project.spec(script="pass", sha256="c" * 64)
    spec.write_text(spec.read_text().replace("outputs: {", f"outputs: {{max_size: {value}, "))
    result = project.reprun("validate", str(spec))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "max_size" in result.stdout + result.stderr and "Traceback" not in result.stderr
