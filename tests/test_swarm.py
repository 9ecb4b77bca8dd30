"""Runs on Docker Swarm, behind the same execution interface as local runs — on a real
single-node swarm that these tests make (and leave again) on the shared engine.

The swarm is made without any private-range address: its gateway bridge is created beforehand on
100.64.200.0/24 (no masquerading, no inter-container traffic), its address pool is 100.64.0.0/16,
the routing-mesh network is removed at once, and job services attach to no network at all.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, REPRUN, WRITE_METRICS, containers
from orchestrator.execution.job import RemoteResults, ResultsToCollect
from orchestrator.execution.handback import (MAX_HELD_BYTES, OutputSplitter, ResultBlock,
                                             WrapperPlan, parse_block, wrapper_script)
from orchestrator.execution.backend import open_backend
from orchestrator.execution.config import load_config
from orchestrator.errors import UsageError
from orchestrator.execution.swarm import SwarmBackend
from orchestrator.execution.config import SwarmSettings

ADDRESS_POOL = "100.64.0.0/16"
GATEWAY_SUBNET = "100.64.200.0/24"
PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
LOCK = Path("/tmp/reprun-test-swarm.lock")
HOLDERS = Path("/tmp/reprun-test-swarm.holders")


# --------------------------------------------------------------------------- the swarm

def _private(subnet: str) -> bool:
    network = ipaddress.ip_network(subnet, strict=False)
    return any(network.overlaps(p) for p in PRIVATE if p.version == network.version)


def _subnets(network) -> list[str]:
    return [c["Subnet"] for c in (network.attrs.get("IPAM") or {}).get("Config") or []
            if c.get("Subnet")]


def _check_no_private_network(client) -> None:
    for network in client.networks.list():
        network.reload()
        bad = [s for s in _subnets(network) if _private(s)]
        assert not bad, f"network {network.name} has a private-range subnet {bad}"


def _ensure_swarm(client) -> None:
    import docker.errors
    swarm = client.info()["Swarm"]
    if swarm["LocalNodeState"] == "active":
        pools = (swarm.get("Cluster") or {}).get("DefaultAddrPool")
        if pools != [ADDRESS_POOL] or swarm.get("Nodes") != 1:
            pytest.fail("this engine is already in a swarm these tests did not make; "
                        "they leave it alone")
    else:
        try:
            gateway = client.networks.get("docker_gwbridge")
        except docker.errors.NotFound:
            client.networks.create(
                "docker_gwbridge", driver="bridge",
                ipam=docker.types.IPAMConfig(pool_configs=[
                    docker.types.IPAMPool(subnet=GATEWAY_SUBNET)]),
                options={"com.docker.network.bridge.name": "docker_gwbridge",
                         "com.docker.network.bridge.enable_icc": "false",
                         "com.docker.network.bridge.enable_ip_masquerade": "false"})
        else:
            assert not any(_private(s) for s in _subnets(gateway)), _subnets(gateway)
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377",
                          default_addr_pool=[ADDRESS_POOL], subnet_size=24)
    # No service publishes a port: the routing mesh is not needed, so it is not kept.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.networks.get("ingress").remove()
        except docker.errors.NotFound:
            break
        except docker.errors.APIError:
            pass
        time.sleep(0.5)
    _check_no_private_network(client)


def _leave_swarm(client) -> None:
    import docker.errors
    for service in client.api.services(filters={"label": "io.reprun"}):
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_service(service["ID"])
    client.swarm.leave(force=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.networks.get("docker_gwbridge").remove()
            break
        except docker.errors.NotFound:
            break
        except docker.errors.APIError:
            time.sleep(0.5)    # the gateway endpoints go a moment after the swarm


@contextlib.contextmanager
def _holding(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _living_holders() -> set[int]:
    HOLDERS.mkdir(exist_ok=True)
    alive = set()
    for entry in HOLDERS.iterdir():
        pid = int(entry.name)
        try:
            os.kill(pid, 0)
            alive.add(pid)
        except ProcessLookupError:
            entry.unlink()
    return alive


@pytest.fixture(scope="module")
def swarm(docker_client):
    """A single-node swarm, made once for every test process that uses it and left by the last."""
    me = os.getpid()
    with _holding(LOCK):
        if not _living_holders():
            _ensure_swarm(docker_client)
        (HOLDERS / str(me)).touch()
    try:
        yield docker_client
    finally:
        with _holding(LOCK):
            (HOLDERS / str(me)).unlink(missing_ok=True)
            if not _living_holders():
                _leave_swarm(docker_client)


def services_of(client, label: str) -> list:
    return client.api.services(filters={"label": label})


def swarm_project(project, tmp_path, **settings) -> Path:
    """Write reprun.toml for the project: swarm backend, artifacts on "shared storage"."""
    shared = tmp_path / "shared-artifacts"
    shared.mkdir(exist_ok=True)
    lines = ['backend = "swarm"', "[swarm]", f'artifacts = "{shared}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    project.root.mkdir(parents=True, exist_ok=True)
    (project.root / "reprun.toml").write_text("\n".join(lines) + "\n")
    return shared


def runs_of(project) -> list[dict]:
    runs = json.loads(project.reprun("runs", "--json").stdout)
    return [json.loads(project.reprun("runs", "show", r["id"], "--json").stdout)
            for r in sorted(runs, key=lambda r: r["started_at"])]


def keys(node, prefix=""):
    if isinstance(node, dict) and prefix.count(".") < 2:
        return {k for key, value in node.items() for k in keys(value, f"{prefix}.{key}")}
    return {prefix}


# --------------------------------------------------------------------------- on the swarm

@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_a_spec_verified_on_swarm_gives_the_same_record_and_verdict_as_on_local(
        project, tmp_path, swarm):
    project.dataset()
    shared = swarm_project(project, tmp_path)
    spec = project.spec(script=WRITE_METRICS)
    # --no-cache: every fact is read in each run's own container, none reused from another.
    local = project.reprun("verify", str(spec), "--no-cache", "--backend", "local")
    on_swarm = project.reprun("verify", str(spec), "--no-cache")      # reprun.toml says swarm
    assert local.returncode == 0, local.stderr
    assert on_swarm.returncode == 0, on_swarm.stderr
    assert local.stdout.startswith("IDENTICAL") and on_swarm.stdout.startswith("IDENTICAL")
    assert "running on swarm node" in on_swarm.stderr
    assert "running on swarm node" not in local.stderr
    l1, l2, s1, s2 = runs_of(project)
    assert keys(s1) == keys(l1)                                         # the same fields…
    assert set(s1["environment"]["host"]) - set(l1["environment"]["host"]) == {"swarm_node"}
    for field in ("metrics", "artifacts", "exit_code", "reason"):         # …the same results
        assert s1["outputs"][field] == l1["outputs"][field]
    assert s1["inputs"]["container"] == l1["inputs"]["container"]       # the same sandbox
    for fact in ("os", "os_packages", "python_distributions", "blas", "limits", "locale",
                 "user", "hostname", "missing"):
        assert s1["environment"][fact] == l1["environment"][fact], fact
    volatile = {"REPRUN_RUN_ID", "HOSTNAME"}
    assert {k: v for k, v in s1["environment"]["env"].items() if k not in volatile} == \
        {k: v for k, v in l1["environment"]["env"].items() if k not in volatile}
    # A local run and a swarm run of the same spec compare as identical too.
    diff = project.reprun("diff", l1["id"], s1["id"])
    assert diff.returncode == 0 and diff.stdout.startswith("IDENTICAL"), diff.stdout
    # The artifacts were written on shared storage, hashed there, and brought into the store.
    for run in (s1, s2):
        model = run["outputs"]["artifacts"]["model.bin"]
        written = shared / run["id"] / "model.bin"
        assert hashlib.sha256(written.read_bytes()).hexdigest() == model["sha256"]
        stored = project.store / "runs" / run["id"] / "out" / "model.bin"
        assert stored.read_bytes() == written.read_bytes()
    assert project.reprun("runs", "verify").returncode == 0
    for run in (s1, s2):
        assert not services_of(swarm, f"io.reprun.run-id={run['id']}")


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_manifest_and_metrics_come_back_through_the_service_logs_not_a_mount(
        project, tmp_path, swarm, example_ref):
    """The backend, driven directly: nothing of the store is mounted into the task, and what
    the record needs arrives as the framed block at the end of the service's output."""
    from orchestrator.execution.hermetic import RunPaths, container_job
    from orchestrator.manifest.probes import ManifestCapture, new_marker, write_probe
    from orchestrator.spec.load import load_spec
    project.dataset()
    shared = swarm_project(project, tmp_path)
    spec = load_spec(project.spec(script=WRITE_METRICS + "\nprint('trained', flush=True)"))
    run_folder = tmp_path / "store-run"
    paths = RunPaths(run_folder)
    for folder in (paths.outputs, paths.meta):
        folder.mkdir(parents=True)
        folder.chmod(0o777)
    marker = new_marker()
    write_probe(paths.meta, marker)
    submitted, output, events = [], [], []
    manifest = ManifestCapture(marker, lambda chunk, stream: output.append((stream, chunk)))
    image_id = swarm.images.get(example_ref).id
    job = container_job(spec, run_id="logs-test", image_id=image_id, seed=7, paths=paths)
    backend = SwarmBackend(SwarmSettings(artifacts=shared), client=swarm)
    original = backend._service_spec

    def capture(*args, **kwargs):
        submitted.append(original(*args, **kwargs))
        return submitted[-1]

    backend._service_spec = capture
    outcome = backend.run(job, manifest.feed, on_event=events.append)
    assert outcome.reason == "ok", outcome
    mounts = submitted[0]["task_template"]["ContainerSpec"]["Mounts"]
    sources = [m.get("Source", "") for m in mounts]
    assert not [s for s in sources if s.startswith(str(run_folder))], sources
    assert {m["Target"]: m["Type"] for m in mounts}["/reprun"] == "tmpfs"
    assert not submitted[0]["task_template"].get("Networks")
    collected = outcome.collected
    assert isinstance(collected, RemoteResults)
    assert json.loads(collected.metrics) == {"score": 0.7, "nested": {"loss": 0.25}}
    # The manifest led the job's output, as in a local run.
    assert manifest.ended and f"{marker} os_release" in manifest.text
    assert set(collected.artifacts) == {"model.bin"}
    assert collected.host["swarm_node"]
    # The run's folders in the store never saw the manifest or the metrics…
    assert not (paths.meta / "manifest.txt").exists()
    assert not (paths.outputs / "metrics.json").exists()
    # …and the job's own output came through without the block.
    stdout = b"".join(chunk for stream, chunk in output if stream == "stdout")
    assert stdout == b"trained\n"
    assert any("submitted to the swarm" in e for e in events)
    assert not services_of(swarm, "io.reprun.run-id=logs-test")


PROBE = """
import json, os, socket, sys
facts = {"only_lo": int(sorted(os.listdir("/sys/class/net")) == ["lo"])}
def refused(action):
    try:
        action(); return 0
    except OSError:
        return 1
facts["registry_unreachable"] = refused(lambda: socket.create_connection(("127.0.0.1", 5000), timeout=3))
facts["dataset_read_only"] = refused(lambda: open("/data/train.csv", "a").write("x"))
facts["root_read_only"] = refused(lambda: open("/etc/reprun-was-here", "a").write("x"))
facts["tmp_writable"] = 1 - refused(lambda: open("/tmp/x", "w").write("x"))
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
facts["NoNewPrivs"] = int(status["NoNewPrivs"])
facts["CapEff"] = int(status["CapEff"].strip(), 16)
facts["uid"] = os.getuid()
facts["pid_one_is_not_the_job"] = int(os.getpid() != 1)
json.dump(facts, open("/out/metrics.json", "w"))
"""


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_the_task_is_as_hermetic_as_a_local_run(project, tmp_path, swarm):
    project.dataset()
    swarm_project(project, tmp_path)
    spec = project.spec(script=PROBE)
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    [record] = runs_of(project)
    assert record["outputs"]["metrics"] == {
        "only_lo": 1, "registry_unreachable": 1, "dataset_read_only": 1, "root_read_only": 1,
        "tmp_writable": 1, "NoNewPrivs": 1, "CapEff": 0, "uid": 65534,
        "pid_one_is_not_the_job": 1}
    assert record["environment"]["limits"]["memory_bytes"] == 512 * 1024 ** 2
    assert record["environment"]["limits"]["pids"] == 512


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_a_dataset_that_differs_where_the_job_runs_is_refused_with_exit_3(
        project, tmp_path, swarm, example_ref):
    """The node's copy is checked in the container: here the pin the job carries is made to
    disagree with the data, as when one node holds a stale copy."""
    from orchestrator.events import RunObserver
    from orchestrator.errors import PinMismatch
    from orchestrator.runner import execute, prepare
    from orchestrator.spec.load import load_spec
    from orchestrator.store.db import Store
    import dataclasses
    project.dataset()
    shared = swarm_project(project, tmp_path)
    spec = load_spec(project.spec(script=WRITE_METRICS))
    store = Store(project.store)
    backend = SwarmBackend(SwarmSettings(artifacts=shared), client=swarm)
    prepared = prepare(spec, store=store, engine=backend, observer=RunObserver())
    stale = "0" * 64

    def stale_node(job):
        return dataclasses.replace(job, collect=dataclasses.replace(job.collect,
                                                                    dataset_sha256=stale))

    with pytest.raises(PinMismatch, match="not to its pin 0000000000000000"):
        execute(prepared, store=store, engine=backend, observer=RunObserver(),
                transform=stale_node)
    [record] = runs_of(project)
    assert record["status"] == "failed" and record["outputs"]["reason"] == "pin"
    assert prepared.dataset.sha256 in record["outputs"]["message"]     # what the node has
    assert record["outputs"]["log_bytes"] == 0                         # the job never ran


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_a_job_killed_mid_run_is_reported_failed_and_no_service_is_left(
        project, tmp_path, swarm):
    project.dataset()
    swarm_project(project, tmp_path)
    name = f"killed-{os.getpid()}"
    spec = project.spec(name=name, script="import time; print('started', flush=True); "
                                          "time.sleep(120)")
    env = {**os.environ, "REPRUN_STORE": str(project.store), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([*REPRUN, "run", str(spec)], cwd=project.root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = wait_for_task_container(swarm, name)
    # Killed once the job runs: its first line has come through the service's logs.
    deadline = time.monotonic() + 90
    while not any("started" in log.read_text() for log in project.store.glob("runs/*/log.txt")):
        assert time.monotonic() < deadline, "the job never printed its first line"
        time.sleep(0.2)
    running.kill()                     # as a node's OOM killer or an operator would
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 5, stderr
    assert "killed by signal 9" in stderr and "Swarm says" in stderr
    [record] = runs_of(project)
    assert record["status"] == "failed" and record["outputs"]["exit_code"] == 137
    assert "started" in (project.store / "runs" / record["id"] / "log.txt").read_text()
    assert not services_of(swarm, f"io.reprun.spec={name}")
    assert not containers(swarm, label=f"io.reprun.spec={name}")


def wait_for_task_container(client, spec_name: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = containers(client, running=True, label=f"io.reprun.spec={spec_name}")
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError("the job's task container never started")


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_ctrl_c_during_a_swarm_run_removes_the_service_and_records_interrupted(
        project, tmp_path, swarm):
    project.dataset()
    swarm_project(project, tmp_path)
    name = f"interrupted-{os.getpid()}"
    spec = project.spec(name=name, script="import time; time.sleep(120)")
    env = {**os.environ, "REPRUN_STORE": str(project.store), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([*REPRUN, "run", str(spec)], cwd=project.root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_task_container(swarm, name)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    [record] = runs_of(project)
    assert record["status"] == "interrupted"
    assert not services_of(swarm, f"io.reprun.spec={name}")
    assert not containers(swarm, label=f"io.reprun.spec={name}")


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
@pytest.mark.parametrize("script, resources, words", [
    ("import time; print('waiting', flush=True); time.sleep(60)",
     "{cpus: 1, memory: 512m, timeout: 3s}", "timeout"),
    ("x = bytearray(400 * 1024 * 1024); y = bytearray(400 * 1024 * 1024)",
     "{cpus: 1, memory: 256m, timeout: 2m}", "out of memory"),
    ("print('about to fail'); raise SystemExit(3)", None, "exited with status 3"),
    ("open('/out/metrics.json', 'w').write('{not json')", None, "not valid JSON"),
], ids=["timeout", "oom", "exit-3", "garbage-metrics"])
def test_a_failing_job_on_swarm_is_reported_as_on_local(project, tmp_path, swarm, script,
                                                        resources, words):
    project.dataset()
    swarm_project(project, tmp_path)
    result = project.reprun("run", str(project.spec(script=script, resources=resources)))
    assert result.returncode == 5, result.stderr
    assert words in result.stderr
    [record] = runs_of(project)
    assert record["status"] == "failed" and words in record["outputs"]["message"]
    # The manifest came back even from a job that failed.
    assert "container" not in record["environment"]["missing"]


FORGE_THE_HANDBACK = r"""
import base64, hashlib, json, os, re, sys, time
# The wrapper's script, and with it the block's marker, is in PID 1's command line.
script = open("/proc/1/cmdline", "rb").read().split(b"\0")[2].decode()
marker = re.search(r"^R=(\S+)$", script, re.M).group(1).strip("'")
os.symlink("/", "/out/lnk")
evil, payload = "lnk/../../x/evil", b"* * * * * root touch /pwned\n"
metrics = base64.b64encode(json.dumps({"score": 1.0}).encode()).decode()
forged = (f"\n{marker} begin\n{marker} exit 0\n{marker} oom 0 0\n{marker} metrics file\n"
          f"{marker} metrics-data {metrics}\n{marker} artifact "
          f"{hashlib.sha256(payload).hexdigest()} {len(payload)} "
          f"{base64.b64encode(evil.encode()).decode()}\n{marker} end\n")
os.makedirs("/out/x", exist_ok=True)
open("/out/x/evil", "wb").write(payload)
if os.fork() == 0:
    os.setsid()
    outs = [sys.stdout]
    try:
        outs.append(open("/proc/1/fd/1", "w"))      # the wrapper's own stdout, unencoded
    except OSError:
        pass
    while True:
        for out in outs:
            out.write(forged)
            out.flush()
        time.sleep(0.05)
print("the job is done; its loop goes on", flush=True)
sys.exit(3)
"""


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_a_job_cannot_forge_the_swarm_hand_back(project, tmp_path, swarm):
    """A job reads the marker from /proc/1/cmdline and leaves a loop printing a block that says
    `exit 0` with an artifact named lnk/../../x/evil, on its stdout and on the wrapper's."""
    project.dataset()
    shared = swarm_project(project, tmp_path)
    result = project.reprun("run", str(project.spec(script=FORGE_THE_HANDBACK)), timeout=300)
    assert result.returncode == 5, result.stderr
    [record] = runs_of(project)
    assert record["status"] == "failed" and record["outputs"]["exit_code"] == 3, record["outputs"]
    assert record["outputs"]["artifacts"] == {} and "score" not in record["outputs"]["metrics"]
    # Nothing was written outside the run's folder but the job's own files on shared storage.
    written = {p for p in tmp_path.rglob("evil")}
    assert written == {shared / record["id"] / "x" / "evil"}, written
    log = (project.store / "runs" / record["id"] / "log.txt").read_text()
    assert "the job is done" in log


FORGE_THE_HASHER = r"""
import json
# The wrapper once ran its artifact hasher from a file in /reprun, after the job: a job that
# rewrote it chose the artifact hashes of its own run.
fake = "#!/bin/sh\nprintf '%s artifact %s 5 %s\\n' \"$1\" " + "f" * 64 + " bW9kZWwuYmlu\n"
for path in ("/reprun/.artifacts.sh", "/tmp/.artifacts.sh"):
    try:
        open(path, "w").write(fake)
    except OSError:
        pass
json.dump({"score": 1.0}, open("/out/metrics.json", "w"))
open("/out/model.bin", "wb").write(b"model")
"""


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_a_job_cannot_choose_the_hashes_of_its_artifacts(project, tmp_path, swarm):
    project.dataset()
    swarm_project(project, tmp_path)
    result = project.reprun("run", str(project.spec(script=FORGE_THE_HASHER)), timeout=300)
    assert result.returncode == 0, result.stderr
    [record] = runs_of(project)
    assert record["outputs"]["artifacts"]["model.bin"]["sha256"] == hashlib.sha256(
        b"model").hexdigest()


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_a_job_no_node_can_take_is_reported_with_swarms_own_words(project, tmp_path, swarm):
    project.dataset()
    swarm_project(project, tmp_path, schedule_timeout="4s")
    spec = project.spec(script=WRITE_METRICS, resources="{cpus: 64, memory: 512m, timeout: 2m}")
    result = project.reprun("run", str(spec))
    assert result.returncode == 4, result.stderr
    assert "insufficient resources" in result.stderr and "within 4s" in result.stderr
    [record] = runs_of(project)
    assert record["status"] == "error"
    assert not services_of(swarm, f"io.reprun.run-id={record['id']}")


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_a_task_swarm_cannot_start_is_tried_twice_then_reported(project, tmp_path, swarm,
                                                                 example_ref):
    from orchestrator.execution.hermetic import RunPaths, container_job
    from orchestrator.spec.load import load_spec
    project.dataset()
    shared = swarm_project(project, tmp_path)
    spec = load_spec(project.spec(script=WRITE_METRICS))
    paths = RunPaths(tmp_path / "run")
    for folder in (paths.outputs, paths.meta):
        folder.mkdir(parents=True)
    job = container_job(spec, run_id="lost-test", image_id=swarm.images.get(example_ref).id,
                        seed=7, paths=paths)
    backend = SwarmBackend(SwarmSettings(artifacts=shared), client=swarm)
    # An image no registry has: every node rejects the task before the job can start.
    repository = example_ref.split("@")[0]
    backend._pinned_image = lambda image_id, say: f"{repository}@sha256:{'0' * 64}"
    events = []
    outcome = backend.run(job, lambda *_: None, on_event=events.append)
    assert outcome.reason == "engine", outcome
    assert "Swarm could not run the job" in outcome.message
    assert "tried 2 times" in outcome.message
    assert sum("submitted to the swarm" in e for e in events) == 2
    assert any("trying once more" in e for e in events)
    assert not services_of(swarm, "io.reprun.run-id=lost-test")


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_check_fans_specs_out_over_the_swarm_and_streams_progress(project, tmp_path, swarm):
    project.dataset()
    swarm_project(project, tmp_path)
    specs = [project.spec(name=f"fan-{i}", script=WRITE_METRICS + "\nimport time; time.sleep(2)")
             for i in range(2)]
    result = project.reprun("check", "-j", "2", *map(str, specs))
    assert result.returncode == 0, result.stdout + result.stderr
    for spec in ("fan-0", "fan-1"):
        assert f"[fan-{spec[-1]} 1/2] running on swarm node" in result.stderr
    runs = runs_of(project)
    assert len(runs) == 4 and all(r["status"] == "succeeded" for r in runs)
    assert all(r["environment"]["host"]["swarm_node"] for r in runs)
    # The four runs were submitted together: the last to start did so before the first ended.
    starts = sorted(r["started_at"] for r in runs)
    assert starts[-1] < min(r["finished_at"] for r in runs)


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_a_local_run_replayed_on_the_swarm_is_identical(project, tmp_path, swarm):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    assert project.reprun("run", str(spec), "-q").returncode == 0
    [original] = runs_of(project)
    swarm_project(project, tmp_path)
    result = project.reprun("rerun", original["id"], "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("IDENTICAL")
    replay = runs_of(project)[-1]
    assert replay["environment"]["host"]["swarm_node"]


@pytest.mark.engine
@pytest.mark.xdist_group("swarm")
def test_an_image_built_here_is_pushed_by_digest_for_the_nodes(project, tmp_path, swarm):
    import requests
    context = project.root / "image"
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text(
        f"FROM reprun/sklearn:latest\nRUN echo {time.time_ns()} > /etc/reprun-test-build\n")
    project.dataset()
    spec = project.spec(name=f"built-{os.getpid()}", script=WRITE_METRICS)
    spec.write_text(spec.read_text().replace(f"  ref: {project.image_ref}\n",
                                             "  build: {context: image}\n"))
    swarm_project(project, tmp_path)
    refused = project.reprun("run", str(spec), "-q")
    assert refused.returncode == 4 and "is in no registry" in refused.stderr
    swarm_project(project, tmp_path, registry="127.0.0.1:5000")
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    assert "pushing image" in result.stderr
    built = runs_of(project)[-1]
    image = swarm.images.get(built["inputs"]["image"]["id"])
    [pushed] = [d for d in image.attrs["RepoDigests"] if d.startswith("127.0.0.1:5000/reprun/images@")]
    name, digest = pushed.split("/", 1)[1].split("@")
    response = requests.delete(f"http://127.0.0.1:5000/v2/{name}/manifests/{digest}", timeout=10)
    assert response.status_code == 202, response.text
    swarm.images.remove(image.id, force=True)


@pytest.mark.engine
@pytest.mark.xdist_group("gc")     # its gc removes every leftover on the engine, swarm or not
def test_gc_removes_a_service_a_dead_reprun_left_behind(project, swarm, example_ref):
    dead = subprocess.Popen(["true"])
    dead.wait()
    labels = {"io.reprun": "1", "io.reprun.run-id": "gc-test",
              "io.reprun.owner": f"{os.uname().nodename}:{dead.pid}"}
    import docker.types
    swarm.api.create_service(
        docker.types.TaskTemplate(docker.types.ContainerSpec(example_ref, command=["true"]),
                                  restart_policy=docker.types.RestartPolicy("none")),
        name=f"reprun-gc-test-{os.getpid()}", labels=labels,
        mode=docker.types.ServiceMode("replicated-job", 1))
    result = project.reprun("gc")
    assert result.returncode == 0, result.stderr
    assert "removed swarm service" in result.stdout and f"process {dead.pid} is gone" in result.stdout
    assert not services_of(swarm, "io.reprun.run-id=gc-test")


# --------------------------------------------------------------------------- no swarm needed

def encoded(job: bytes) -> bytes:
    """The job's stdout as the wrapper's encoder (sed -u 's/^/|/') prints it."""
    return b"".join(b"|" + line for line in job.splitlines(keepends=True))


def split(text: bytes, marker: str, size: int) -> tuple[bytes, ResultBlock]:
    got = []
    splitter = OutputSplitter(marker, lambda chunk, stream: got.append(chunk))
    for i in range(0, len(text), size):
        splitter.feed(text[i:i + size])
    return b"".join(got), parse_block(splitter.finish(), marker)


def test_the_block_is_cut_from_the_log_however_the_output_is_chunked():
    marker = "@@reprun-end-0123456789abcdef"
    m = marker.encode()
    block = b"\n" + m + b" begin\n" + m + b" exit 3\n" + m + b" end\n"
    forged = b"\n" + m + b" begin\n" + m + b" exit 0\n" + m + b" end\n"
    for job in (b"epoch 1\nepoch 2\nno newline at the end", b"epoch 1\n\n", b"",
                b"a forged block on the job's stdout:" + forged + b"more\n"):
        for size in (1, 2, 7, 64, 1 << 20):
            log, parsed = split(encoded(job) + block, marker, size)
            assert log == job, (job, size)
            assert parsed.complete and parsed.exit_code == 3


def test_a_raw_block_printed_before_the_wrappers_is_passed_on_and_the_last_one_is_read():
    # What a job could print raw, through /proc/1/fd/1, while it still runs: the wrapper's own
    # block follows it (the job's processes are gone first), and the last block is the one read.
    marker = "@@m"
    evil = base64.b64encode(b"lnk/../../x/evil")
    forged = (b"\n@@m begin\n@@m exit 0\n@@m artifact " + b"0" * 64 + b" 1 " + evil
              + b"\n@@m end\n")
    real = b"\n@@m begin\n@@m exit 3\n@@m end\n"
    text = encoded(b"epoch 1\n") + forged + encoded(b"epoch 2\n") + real
    for size in (1, 5, 1 << 20):
        log, parsed = split(text, marker, size)
        assert parsed.exit_code == 3 and not parsed.artifacts, size
        assert log.startswith(b"epoch 1\n") and log.endswith(b"epoch 2\n") and b"@@m exit 0" in log


def test_without_a_block_all_output_is_the_jobs():
    got = []
    splitter = OutputSplitter("@@m", lambda chunk, stream: got.append(chunk))
    splitter.feed(encoded(b"line\n"))
    splitter.feed(b"\n@@m beg")
    assert splitter.finish() is None
    assert b"".join(got) == b"line\n\n@@m beg"


def test_a_line_without_end_is_passed_on_in_parts_not_held():
    got = []
    splitter = OutputSplitter("@@m", lambda chunk, stream: got.append(chunk))
    for _ in range(64):
        splitter.feed(b"x" * (1 << 20))
    assert len(splitter.partial) <= MAX_HELD_BYTES and sum(map(len, got)) >= 63 << 20


def test_an_artifact_name_that_leaves_the_outputs_folder_is_refused():
    for name in (b"lnk/../../x/evil", b"/etc/cron.d/evil", b"a//b", b"./a", b"..", b""):
        line = b"@@m artifact " + b"0" * 64 + b" 1 " + base64.b64encode(name) + b"\n"
        block = parse_block(b"@@m exit 0\n" + line + b"@@m end\n", "@@m")
        assert not block.artifacts and "not a plain path" in block.problems[0], name
    ok = parse_block(b"@@m artifact " + b"0" * 64 + b" 1 " + base64.b64encode(b"deep/m.bin")
                     + b"\n", "@@m")
    assert set(ok.artifacts) == {"deep/m.bin"}


def test_copying_home_follows_no_symlink_at_any_depth(tmp_path):
    from orchestrator.execution.swarm import copy_beneath
    shared, store, outside = tmp_path / "shared", tmp_path / "store", tmp_path / "outside"
    for folder in (shared, store, outside):
        folder.mkdir()
    (outside / "secret").write_bytes(b"root only")
    (shared / "model.bin").write_bytes(b"model")
    (shared / "link.bin").symlink_to(outside / "secret")
    (shared / "lnk").symlink_to(outside)
    assert copy_beneath(shared, store, "model.bin") == (hashlib.sha256(b"model").hexdigest(), 5)
    for rel in ("link.bin", "lnk/secret", "lnk/../../outside/secret"):
        with pytest.raises(OSError):
            copy_beneath(shared, store, rel)
    # The store side too: a link planted where a folder of the copy goes is not followed.
    (shared / "deep").mkdir()
    (shared / "deep" / "m.bin").write_bytes(b"m")
    (store / "deep").symlink_to(outside)
    with pytest.raises(OSError):
        copy_beneath(shared, store, "deep/m.bin")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_the_wrapper_hashes_the_dataset_and_artifacts_as_reprun_does(tmp_path):
    """The in-container wrapper, run here by /bin/sh: its tree hash is the pinned one, and its
    artifact hashes and metrics are those reprun computes on the host."""
    from orchestrator.dataset.tree import hash_dataset
    from orchestrator.outputs import hash_artifacts
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a b.csv").write_bytes(b"1,2\n")
    (data / "sub" / "c.csv").write_bytes(b"3,4\n")
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    pin = hash_dataset(data).sha256
    marker = "@@reprun-end-test"
    plan = WrapperPlan(marker=marker, workdir=str(work), shipped={str(work / "job.sh"): textwrap.dedent(f"""\
        echo hi
        printf '{{"loss": 0.5}}' > {out}/metrics.json
        printf model > {out}/model.bin
        mkdir -p {out}/deep && printf x > '{out}/deep/odd name.bin'
        printf skip > {out}/notes.txt
        exit 4
        """).encode()}, dataset_target=str(data), dataset_sha256=pin, outputs_dir=str(out),
        metrics="metrics.json", artifacts=("*.bin",), no_network=False,
        no_new_privileges=False, timeout_s=60)
    result = subprocess.run(["/bin/sh", "-c", wrapper_script(plan), "w", "/bin/sh",
                             str(work / "job.sh")], capture_output=True, timeout=60)
    splitter_output = []
    splitter = OutputSplitter(marker, lambda chunk, stream: splitter_output.append(chunk))
    splitter.feed(result.stdout)
    block = parse_block(splitter.finish(), marker)
    assert b"".join(splitter_output) == b"hi\n"
    assert result.returncode == 4 and block.complete and block.exit_code == 4
    assert block.dataset_sha256 == pin
    assert json.loads(block.metrics) == {"loss": 0.5}
    assert block.artifacts == hash_artifacts(out, ("*.bin",))
    # The same wrapper refuses a dataset whose bytes differ from the pin, and runs nothing.
    (data / "sub" / "c.csv").write_bytes(b"3,5\n")
    refused = subprocess.run(["/bin/sh", "-c", wrapper_script(plan), "w", "/bin/sh",
                              str(work / "job.sh")], capture_output=True, timeout=60)
    block = parse_block(refused.stdout, marker)
    assert refused.returncode == 3 and block.refused[0] == "dataset"
    assert block.dataset_sha256 == hash_dataset(data).sha256 != pin
    assert b"hi\n" not in refused.stdout


def test_the_backend_comes_from_the_option_else_the_config_file(tmp_path, monkeypatch):
    from orchestrator.execution.local import LocalEngine
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REPRUN_CONFIG", raising=False)
    assert isinstance(open_backend(), LocalEngine)                     # no file: local
    (tmp_path / "reprun.toml").write_text('backend = "swarm"\n[swarm]\nregistry = "r:5000"\n'
                                          'artifacts = "shared"\nschedule_timeout = "90s"\n')
    backend = open_backend()
    assert isinstance(backend, SwarmBackend)
    assert backend.settings == SwarmSettings(registry="r:5000", artifacts=tmp_path / "shared",
                                             schedule_timeout_s=90.0)
    assert isinstance(open_backend("local"), LocalEngine)              # the option wins
    (tmp_path / "reprun.toml").write_text('backend = "kubernetes"\n')
    with pytest.raises(UsageError, match="choose one of local, swarm"):
        load_config()
    (tmp_path / "reprun.toml").write_text('[swarm]\nregistery = "r:5000"\n')
    with pytest.raises(UsageError, match="unknown setting registery"):
        open_backend()


def test_a_bad_backend_or_config_is_exit_2_before_anything_runs(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    result = project.reprun("run", str(spec), "--backend", "cloud")
    assert result.returncode == 2 and "choose one of local, swarm" in result.stderr
    result = project.reprun("run", str(spec), extra_env={"REPRUN_BACKEND": "swrm"})
    assert result.returncode == 2 and "REPRUN_BACKEND is 'swrm'" in result.stderr   # not --backend
    project.root.joinpath("reprun.toml").write_text("backend = swarm\n")
    result = project.reprun("run", str(spec))
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    assert json.loads(project.reprun("runs", "--json").stdout) == []


def test_to_collect_travels_with_every_job(project):
    from orchestrator.execution.hermetic import RunPaths, container_job
    from orchestrator.spec.load import load_spec
    project.dataset()
    spec = load_spec(project.spec(script=WRITE_METRICS))
    job = container_job(spec, run_id="x", image_id="sha256:" + "1" * 64, seed=7,
                        paths=RunPaths(project.root / "run"))
    assert job.collect == ResultsToCollect(outputs_dir="/out", metrics="metrics.json",
                                    artifacts=("*.bin",),
                                    dataset_source=str(spec.dataset.path),
                                    dataset_sha256=spec.dataset.sha256)


@pytest.mark.xdist_group("swarm")
def test_image_facts_are_reused_within_one_node_and_not_across_a_swarm_of_several(swarm):
    from orchestrator.execution.swarm import facts_scope_of, usable_nodes
    node = swarm.api.nodes()[0]
    assert SwarmBackend(client=swarm).facts_scope() == f"swarm node {node['ID']}"
    other = {**node, "ID": "another-node"}
    drained = {**other, "Spec": {**node["Spec"], "Availability": "drain"}}
    assert facts_scope_of(usable_nodes([node, drained])) == f"swarm node {node['ID']}"
    assert facts_scope_of(usable_nodes([node, other])) is None
