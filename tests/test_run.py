"""`reprun run`: one pinned, hermetic, seeded run, recorded — the stories of the run-store issue."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import REPO, REPRUN, WRITE_METRICS, containers

pytestmark = pytest.mark.engine


def record_of(project, run_id: str) -> dict:
    return json.loads(project.reprun("runs", "show", run_id, "--json").stdout)


def only_run(project) -> dict:
    runs = json.loads(project.reprun("runs", "--json").stdout)
    assert len(runs) == 1, runs
    return record_of(project, runs[0]["id"])


def test_a_pinned_run_records_inputs_outputs_and_the_environment(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    record = only_run(project)
    assert record["status"] == "succeeded"
    assert record["outputs"]["metrics"] == {"score": 0.7, "nested.loss": 0.25}
    artifact = record["outputs"]["artifacts"]["model.bin"]
    assert artifact["size"] == 16 and len(artifact["sha256"]) == 64
    assert record["inputs"]["image"]["repo_digest"] == project.image_ref
    assert record["inputs"]["image"]["id"].startswith("sha256:")
    assert record["inputs"]["command"][-1] == "7"       # {seed} substituted
    settings = record["inputs"]["container"]
    assert settings["network"] == "none" and settings["read_only_root"] is True
    assert settings["cap_drop"] == ["ALL"] and settings["hostname"] == "reprun"
    env = record["environment"]
    assert env["hostname"] == "reprun"
    assert env["user"]["uid"] == 65534
    assert env["env"]["REPRUN_SEED"] == "7" and env["env"]["TZ"] == "UTC"
    assert env["env"]["OMP_NUM_THREADS"] == "1" and env["env"]["PYTHONHASHSEED"] == "0"
    assert env["limits"]["memory_bytes"] == 512 * 1024 ** 2
    assert env["host"]["engine_version"]


def test_an_artifact_pattern_that_matches_nothing_is_said_and_recorded(project):
    """`*.pt` for `*.pth`: the model would silently be left out of every comparison."""
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    spec.write_text(spec.read_text().replace('artifacts: ["*.bin"]', 'artifacts: ["*.bin", "*.pt"]'))
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    assert "note: the artifact pattern '*.pt' matched no file" in result.stderr
    record = only_run(project)
    assert list(record["outputs"]["artifacts"]) == ["model.bin"]
    assert "'*.pt' matched no file" in record["outputs"]["message"]
    assert "*.bin" not in record["outputs"]["message"]


def test_the_manifest_of_the_example_image_lists_scikit_learn_and_the_blas(project):
    project.dataset()
    result = project.reprun("run", str(project.spec(script=WRITE_METRICS)))
    assert result.returncode == 0, result.stderr
    env = only_run(project)["environment"]
    assert env["python_distributions"]["scikit-learn"].startswith("1.")
    assert env["os_packages"]["python3-sklearn"]
    blas = {lib["internal_api"]: lib for lib in env["blas"]}
    assert "openblas" in blas and blas["openblas"]["num_threads"] == 1
    assert env["os"]["version_codename"] == "bookworm"


def test_the_job_cannot_reach_any_network_nor_write_its_dataset(project):
    project.dataset()
    probe = """
    import json, os, socket, sys
    facts = {"interfaces": sorted(os.listdir("/sys/class/net"))}
    for name, address in (("registry_on_host_loopback", ("127.0.0.1", 5000)),
                          ("debian_mirror", ("deb.debian.org", 80))):
        try:
            socket.create_connection(address, timeout=3).close()
            facts[name] = 1
        except OSError:
            facts[name] = 0
    for name, path in (("dataset", "/data/train.csv"), ("root", "/etc/reprun-was-here")):
        try:
            open(path, "a").write("x")
            facts[name + "_writable"] = 1
        except OSError:
            facts[name + "_writable"] = 0
    facts["uid"] = os.getuid()
    json.dump({k: v for k, v in facts.items() if k != "interfaces"}, open("/out/metrics.json", "w"))
    print(facts["interfaces"])
    """
    result = project.reprun("run", str(project.spec(script=probe)))
    assert result.returncode == 0, result.stderr
    assert "['lo']" in result.stderr   # live job output goes to the terminal
    metrics = only_run(project)["outputs"]["metrics"]
    assert metrics == {"registry_on_host_loopback": 0, "debian_mirror": 0,
                       "dataset_writable": 0, "root_writable": 0, "uid": 65534}


def test_a_dataset_with_one_changed_byte_is_refused_and_the_file_is_named(project):
    project.dataset(files={"a.csv": b"1,2\n", "sub/b.csv": b"3,4\n"})
    spec = project.spec(script=WRITE_METRICS)
    assert project.reprun("run", str(spec)).returncode == 0   # remembers the per-file manifest
    (project.root / "data" / "sub" / "b.csv").write_bytes(b"3,5\n")
    result = project.reprun("run", str(spec))
    assert result.returncode == 3, result.stderr
    assert "sub/b.csv" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_image_tag_without_a_digest_is_rejected_before_anything_runs(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS, image="127.0.0.1:5000/reprun/sklearn:latest")
    result = project.reprun("run", str(spec))
    assert result.returncode == 2
    assert "digest" in result.stderr and f"{spec.name}:" in result.stderr


def test_a_digest_the_registry_does_not_have_is_refused_as_a_pin_mismatch(project):
    project.dataset()
    repository = project.image_ref.split("@")[0]
    spec = project.spec(script=WRITE_METRICS, image=f"{repository}@sha256:{'0' * 64}")
    result = project.reprun("run", str(spec))
    assert result.returncode == 3, result.stderr
    assert "no image" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("script, resources, words", [
    ("import time; time.sleep(60)", "{cpus: 1, memory: 512m, timeout: 3s}", "timeout"),
    ("x = bytearray(400 * 1024 * 1024); y = bytearray(400 * 1024 * 1024)",
     "{cpus: 1, memory: 256m, timeout: 2m}", "out of memory"),
    ("print('about to fail'); raise SystemExit(3)", None, "exited with status 3"),
    ("open('/out/metrics.json', 'w').write('{not json')", None, "not valid JSON"),
], ids=["timeout", "oom", "exit-3", "garbage-metrics"])
def test_a_failing_job_is_reported_as_such_with_exit_5(project, script, resources, words):
    project.dataset()
    result = project.reprun("run", str(project.spec(script=script, resources=resources)))
    assert result.returncode == 5, result.stderr
    assert words in result.stderr
    record = only_run(project)
    assert record["status"] == "failed" and words in record["outputs"]["message"]
    if words == "exited with status 3":
        assert "about to fail" in result.stderr.split("last lines of the log")[1]


def test_ctrl_c_mid_run_leaves_no_container_and_an_interrupted_record(project, docker_client):
    project.dataset()
    name = f"interrupted-{os.getpid()}"       # only this test's containers carry it
    spec = project.spec(name=name, script="import time; print('started', flush=True); time.sleep(120)")
    env = {**os.environ, "REPRUN_STORE": str(project.store), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([*REPRUN, "run", str(spec)], cwd=project.root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, running = time.monotonic() + 60, []
    while not running and time.monotonic() < deadline:
        running = containers(docker_client, running=True, label=f"io.reprun.spec={name}")
        time.sleep(0.2)
    assert running, "the job's container never started"
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    run_id = running[0].labels["io.reprun.run-id"]
    assert not containers(docker_client, label=f"io.reprun.run-id={run_id}")
    assert record_of(project, run_id)["status"] == "interrupted"


def test_eight_concurrent_runs_into_one_store_leave_eight_complete_records(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    env = {**os.environ, "REPRUN_STORE": str(project.store), "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([*REPRUN, "run", "--quiet", str(spec)], cwd=project.root,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for _ in range(8)]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()
    with sqlite3.connect(project.store / "store.db") as db:
        rows = db.execute("SELECT status, record FROM runs").fetchall()
    assert len(rows) == 8
    assert all(status == "succeeded" and json.loads(text)["outputs"]["metrics"]["score"] == 0.7
               for status, text in rows)


def test_a_finished_record_cannot_be_changed_in_the_store(project):
    project.dataset()
    assert project.reprun("run", str(project.spec(script=WRITE_METRICS))).returncode == 0
    with sqlite3.connect(project.store / "store.db") as db:
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            db.execute("UPDATE runs SET status = 'failed'")


def test_image_facts_are_kept_apart_by_machine_image_environment_cpu_limit_and_user():
    from types import SimpleNamespace
    from orchestrator.manifest.probes import image_facts_key
    job = SimpleNamespace(image_id="sha256:1", env={"A": "1", "REPRUN_RUN_ID": "r1", "TOKEN": "s"},
                          nano_cpus=10**9, user="65534:65534")
    key = image_facts_key(job, "engine A", secret_names=("TOKEN",))
    assert key == image_facts_key(SimpleNamespace(**{**vars(job), "env": {
        "A": "1", "REPRUN_RUN_ID": "r2", "TOKEN": "other"}}), "engine A", secret_names=("TOKEN",))
    assert key != image_facts_key(job, "engine B", secret_names=("TOKEN",))
    for change in ({"image_id": "sha256:2"}, {"env": {"A": "2"}}, {"nano_cpus": 2 * 10**9},
                   {"user": "1000:1000"}):
        assert key != image_facts_key(SimpleNamespace(**{**vars(job), **change}), "engine A",
                                      secret_names=("TOKEN",))


def test_image_facts_are_read_once_per_image_and_again_under_no_cache(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    for args in (("run", "-q", str(spec)), ("run", "-q", str(spec)), ("run", "-q", "--no-cache", str(spec))):
        assert project.reprun(*args).returncode == 0
    runs = sorted(json.loads(project.reprun("runs", "--json").stdout), key=lambda r: r["started_at"])
    first, second, audited = (record_of(project, r["id"])["environment"] for r in runs)
    assert "image_facts_from_run" not in first["host"]
    assert second["host"]["image_facts_from_run"] == runs[0]["id"]
    assert "image_facts_from_run" not in audited["host"]
    for env in (second, audited):
        assert env["python_distributions"] == first["python_distributions"]
        assert env["os_packages"] == first["os_packages"] and env["blas"] == first["blas"]
        assert env["hostname"] == "reprun" and env["limits"] == first["limits"]  # read each run


@pytest.mark.parametrize("id_line, user", [
    ("uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)",
     {"uid": 65534, "gid": 65534, "name": "nobody"}),
    ("uid=1234 gid=1234 groups=1234", {"uid": 1234, "gid": 1234}),     # no passwd entry
])
def test_the_identity_probe_reads_the_user_from_one_id_call(id_line, user):
    from orchestrator.manifest.probes import parse_identity
    fields = parse_identity(f"{id_line}\numask=0027\nhostname=reprun\n")
    assert fields == {"user": user, "locale": {"umask": "0027"}, "hostname": "reprun"}
