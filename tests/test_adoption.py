"""A team adopts reprun for its own training code: GPUs, shared memory, a working folder, a job
that makes its own data — each against the real engine."""
from __future__ import annotations

import json
import re

import pytest

from conftest import WRITE_METRICS, containers

pytestmark = pytest.mark.engine


def record_of(project, run_id: str) -> dict:
    return json.loads(project.reprun("runs", "show", run_id, "--json").stdout)


def runs_of(project) -> list[dict]:
    return [record_of(project, run["id"])
            for run in json.loads(project.reprun("runs", "--json").stdout)]


def engine_has_gpus(docker_client) -> bool:
    return "nvidia" in (docker_client.info().get("Runtimes") or {})


# A job that reports the size of /dev/shm and fills `fill` MiB of it through a memory map, as
# a DataLoader's workers hand batches over: past the end of /dev/shm the kernel sends SIGBUS.
FILL_SHARED_MEMORY = """
import json, mmap, os, sys
size = {fill} << 20
fd = os.open("/dev/shm/batch", os.O_CREAT | os.O_RDWR)
os.ftruncate(fd, size)
view = mmap.mmap(fd, size)
for offset in range(0, size, 4096):
    view[offset] = 1
stats = os.statvfs("/dev/shm")
json.dump({{"shm_bytes": stats.f_blocks * stats.f_frsize}}, open("/out/metrics.json", "w"))
"""


# --- GPUs ------------------------------------------------------------------------------------

def test_a_gpu_job_on_an_engine_without_gpus_is_refused_and_never_runs_on_the_cpu(
        project, docker_client):
    if engine_has_gpus(docker_client):
        pytest.skip("this engine has a GPU runtime: the refusal is for engines without one")
    project.dataset()
    spec = project.spec(name="gpu-job",
                        script="open('/out/metrics.json', 'w').write('{\"ran\": 1}')",
                        resources="{cpus: 1, memory: 512m, timeout: 2m, gpus: 1}")
    result = project.reprun("run", str(spec))
    assert result.returncode == 4, result.stderr
    assert "the spec asks for 1 GPU, but" in result.stderr
    assert "no GPU runtime" in result.stderr and "does not run a GPU job on the CPU" in result.stderr
    assert "Traceback" not in result.stderr
    assert runs_of(project) == [], "refused at start: nothing ran, nothing was recorded"
    assert "verifying dataset" not in result.stderr, "refused before any work"
    assert not containers(docker_client, label="io.reprun.spec=gpu-job")


def test_named_gpu_devices_are_refused_the_same_way(project, docker_client):
    if engine_has_gpus(docker_client):
        pytest.skip("this engine has a GPU runtime: the refusal is for engines without one")
    project.dataset()
    spec = project.spec(script="pass", resources="{cpus: 1, memory: 512m, gpus: [0, 1]}")
    result = project.reprun("run", str(spec))
    assert result.returncode == 4, result.stderr
    assert "the spec asks for GPU 0, 1, but" in result.stderr


def test_a_gpu_job_sees_its_gpu_where_the_engine_has_one(project, docker_client):
    if not engine_has_gpus(docker_client):
        pytest.skip("needs a Docker engine with the NVIDIA runtime and a GPU; this host has none")
    project.dataset()
    spec = project.spec(command=["sh", "-c", "nvidia-smi -L > /out/gpus.txt && "
                                 "echo '{\"gpus\": 1}' > /out/metrics.json"],
                        resources="{cpus: 1, memory: 512m, gpus: 1}")
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    record, = runs_of(project)
    assert record["inputs"]["resources"]["gpus"] == 1


# --- shared memory ---------------------------------------------------------------------------

def test_shared_memory_is_larger_than_dockers_64_megabytes_by_default_and_recorded(project):
    project.dataset()
    spec = project.spec(script=FILL_SHARED_MEMORY.format(fill=200))
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    record, = runs_of(project)
    assert record["outputs"]["metrics"]["shm_bytes"] == 1 << 30
    assert record["inputs"]["resources"]["shm_bytes"] == 1 << 30
    assert record["inputs"]["container"]["shm_bytes"] == 1 << 30


def test_a_job_out_of_shared_memory_is_told_to_raise_resources_shm(project):
    project.dataset()
    spec = project.spec(script=FILL_SHARED_MEMORY.format(fill=200),
                        resources="{cpus: 1, memory: 512m, timeout: 2m, shm: 64m}")
    result = project.reprun("run", str(spec))
    assert result.returncode == 5, result.stderr
    assert "out of shared memory: raise resources.shm (/dev/shm was 64 MiB)" in result.stderr
    record, = runs_of(project)
    assert record["inputs"]["resources"]["shm_bytes"] == 64 << 20
    assert "out of shared memory" in record["outputs"]["message"]


def test_a_dataloader_that_says_bus_error_is_told_to_raise_resources_shm(project):
    """PyTorch's own words when its workers die: the job exits 1, not with SIGBUS."""
    project.dataset()
    spec = project.spec(script="""
        import sys
        print("RuntimeError: DataLoader worker (pid 42) is killed by signal: Bus error. It is "
              "possible that dataloader's workers are out of shared memory.", file=sys.stderr)
        sys.exit(1)
    """)
    result = project.reprun("run", str(spec))
    assert result.returncode == 5, result.stderr
    assert "exited with status 1" in result.stderr
    assert "out of shared memory: raise resources.shm" in result.stderr


def test_a_job_that_fails_otherwise_is_not_blamed_on_shared_memory(project):
    project.dataset()
    spec = project.spec(script="import sys; sys.exit(3)")
    result = project.reprun("run", str(spec))
    assert result.returncode == 5, result.stderr
    assert "shared memory" not in result.stderr


# --- working folder --------------------------------------------------------------------------

def test_the_job_runs_in_its_working_folder(project):
    """A program that writes to its working folder, without an `sh -c 'cd …'` wrapper."""
    project.dataset()
    spec = project.spec(script="""
        import json, os
        json.dump({"in_out": int(os.getcwd() == "/out")}, open("metrics.json", "w"))
    """, extra="workdir: /out\n")
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    record, = runs_of(project)
    assert record["outputs"]["metrics"] == {"in_out": 1}
    assert record["inputs"]["container"]["workdir"] == "/out"


def test_a_rerun_keeps_the_working_folder_and_shared_memory(project):
    project.dataset()
    spec = project.spec(script="""
        import json, os
        stats = os.statvfs("/dev/shm")
        json.dump({"in_out": int(os.getcwd() == "/out"),
                   "shm": stats.f_blocks * stats.f_frsize}, open("metrics.json", "w"))
    """, extra="workdir: /out\n", resources="{cpus: 1, memory: 512m, timeout: 2m, shm: 96m}")
    first = project.reprun("run", str(spec))
    assert first.returncode == 0, first.stderr
    run_id, = [run["id"] for run in json.loads(project.reprun("runs", "--json").stdout)]
    again = project.reprun("rerun", run_id)
    assert again.returncode == 0, again.stderr
    for record in runs_of(project):
        assert record["outputs"]["metrics"] == {"in_out": 1, "shm": 96 << 20}


# --- a job with no dataset -------------------------------------------------------------------

def spec_without_dataset(project, script: str):
    """A spec whose job makes its own data: no `dataset` key at all."""
    spec = project.spec(script=script, dataset="data")
    text = spec.read_text()
    start = text.index("dataset:")
    end = text.index("seed:")
    spec.write_text(text[:start] + text[end:])
    return spec


MAKE_OWN_DATA = """
import json, os, random, sys
random.seed(int(sys.argv[1]))
sample = [random.random() for _ in range(1000)]
json.dump({"mean": sum(sample) / len(sample), "data_mounted": int(os.path.exists("/data"))},
          open("/out/metrics.json", "w"))
open("/out/model.bin", "wb").write(bytes(8))
"""


def test_a_job_that_makes_its_own_data_runs_without_a_dataset_and_the_record_says_so(project):
    project.dataset()      # the repository has data; the spec simply does not name any
    spec = spec_without_dataset(project, MAKE_OWN_DATA)
    assert "dataset" not in spec.read_text()
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    assert "verifying dataset" not in result.stderr
    record, = runs_of(project)
    assert record["inputs"]["dataset"] is None
    assert record["outputs"]["metrics"]["data_mounted"] == 0, "nothing is mounted at /data"
    assert [m["target"] for m in record["inputs"]["container"]["mounts"]] == ["/out", "/reprun"]
    shown = project.reprun("runs", "show", record["id"])
    assert shown.returncode == 0, shown.stderr
    assert "none (the job makes its own data)" in shown.stdout


def test_two_runs_without_a_dataset_compare_and_replay(project):
    project.dataset()
    spec = spec_without_dataset(project, MAKE_OWN_DATA)
    verified = project.reprun("verify", str(spec))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    first = json.loads(project.reprun("runs", "--json").stdout)[-1]["id"]
    again = project.reprun("rerun", first)
    assert again.returncode == 0, again.stderr
    records = runs_of(project)
    assert len(records) == 3 and all(r["inputs"]["dataset"] is None for r in records)
    assert len({json.dumps(r["outputs"]["metrics"]) for r in records}) == 1


# --- lock and validate, as a newcomer writes a spec ------------------------------------------

def test_lock_fills_in_a_flow_style_dataset_and_keeps_the_rest_of_the_line(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    text = spec.read_text()
    start, end = text.index("dataset:"), text.index("seed:")
    spec.write_text(text[:start] + "dataset: {path: data, mount: /data}   # the training set\n"
                    + text[end:])
    locked = project.reprun("lock", str(spec))
    assert locked.returncode == 0, locked.stderr
    line = next(l for l in spec.read_text().splitlines() if l.startswith("dataset:"))
    assert re.fullmatch(r'dataset: \{path: data, mount: /data, sha256: "[0-9a-f]{64}"\}'
                        r"   # the training set", line), line
    assert project.reprun("validate", str(spec)).returncode == 0
    checked = project.reprun("lock", "--check", str(spec))
    assert checked.returncode == 0 and "pins are current" in checked.stdout
    assert project.reprun("run", "-q", str(spec)).returncode == 0


def test_lock_of_a_spec_without_a_dataset_pins_only_the_image(project):
    project.dataset()
    spec = spec_without_dataset(project, MAKE_OWN_DATA)
    locked = project.reprun("lock", str(spec))
    assert locked.returncode == 0, locked.stderr
    assert "dataset" not in spec.read_text()
