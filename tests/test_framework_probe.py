"""The environment probe's frameworks section: each installed ML framework's version and
determinism settings, read within a time budget and never failing a run; the knowledge base's
entries that look at the manifest use it."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.knowledge import cited, for_intervention, known_cause, live_in
from orchestrator.records import EnvironmentManifest

PYPROBE = Path(__file__).parents[1] / "orchestrator" / "manifest" / "pyprobe.py"


def recorded_environments(project) -> list[dict]:
    with sqlite3.connect(project.store / "store.db") as db:
        rows = db.execute("SELECT record FROM runs ORDER BY started_at").fetchall()
    return [json.loads(r[0])["environment"] for r in rows]


def run_job(project, image: str) -> dict:
    project.dataset()
    project.spec(script="import json; json.dump({'score': 1}, open('/out/metrics.json', 'w'))",
                 image=image)
    done = project.reprun("run", "job.yaml", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return recorded_environments(project)[-1]


def in_image(docker_client, image: str, code: str) -> str:
    return docker_client.containers.run(image, ["python3", "-c", code], network_disabled=True,
                                        remove=True).decode().strip()


@pytest.mark.engine
def test_a_run_in_the_torch_image_records_the_torch_facts(project, torch_ref, docker_client):
    env = run_job(project, torch_ref)
    torch = env["frameworks"]["torch"]
    # What the image's torch itself says, read apart from reprun's probe.
    version = in_image(docker_client, torch_ref, "import torch; print(torch.__version__)")
    assert torch["version"] == version
    assert torch["deterministic_algorithms"] is False
    assert torch["cudnn"]["benchmark"] is False and torch["cudnn"]["deterministic"] is False
    assert torch["cuda"] is None and torch["cuda_available"] is False
    # The spec's one CPU: reprun pins OMP_NUM_THREADS, which torch follows.
    assert torch["num_threads"] == 1
    assert any(line.startswith("ATen parallel backend") for line in torch["parallel"])
    assert "OMP_NUM_THREADS : 1" in torch["parallel"]
    assert not [name for name in env["missing"] if name.startswith("frameworks")]


@pytest.mark.engine
def test_a_run_in_the_example_image_records_threadpoolctl_and_no_torch(project):
    env = run_job(project, project.image_ref)
    assert set(env["frameworks"]) == {"threadpoolctl"}
    limits = env["frameworks"]["threadpoolctl"]["limits"]
    blas = {lib["internal_api"]: lib["num_threads"] for lib in env["blas"]}
    assert limits == blas and limits["openblas"] == 1


def probe_with(tmp_path: Path, modules: dict[str, str], budget: float) -> tuple[dict, float]:
    """The real probe under an interpreter whose site has the given (fake) frameworks."""
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(source)
        info = tmp_path / f"{name}-9.9.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 9.9\n")
    source = PYPROBE.read_text().replace("FRAMEWORKS_BUDGET_SECONDS = 20.0",
                                         f"FRAMEWORKS_BUDGET_SECONDS = {budget}")
    (tmp_path / "probe.py").write_text(source)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(tmp_path / "probe.py")], capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), time.monotonic() - started


def test_a_framework_whose_import_hangs_is_given_up_at_the_budget(tmp_path):
    facts, took = probe_with(tmp_path, {"torch": "import time\ntime.sleep(30)\n",
                                        "xgboost": "raise RuntimeError('never imported')\n"},
                             budget=1.0)
    assert facts["missing"]["frameworks.torch"].startswith("not read: importing it took over")
    # The budget is for all of them: what comes after the hang is not even tried.
    assert facts["missing"]["frameworks.xgboost"] == (
        "not read: the probe's 1s for frameworks ran out")
    assert facts["frameworks"] == {} and facts["distributions"]["torch"] == "9.9"
    assert took < 10


def test_a_broken_framework_is_a_missing_fact_and_the_others_are_read(tmp_path):
    facts, _ = probe_with(tmp_path, {
        "xgboost": "raise ImportError('libgomp.so.1: cannot open shared object file')\n",
        "lightgbm": "__version__ = '4.1.0'\n"}, budget=5.0)
    assert facts["missing"]["frameworks.xgboost"] == (
        "ImportError: libgomp.so.1: cannot open shared object file")
    assert facts["frameworks"] == {"lightgbm": {"version": "4.1.0"}}


def manifest(**torch) -> EnvironmentManifest:
    return EnvironmentManifest(python_distributions={"torch": "1.13"},
                               frameworks={"torch": torch})


def test_the_torch_thread_entry_is_cited_with_the_manifest_fact_where_it_shows_threads():
    many, one, unread = manifest(num_threads=2), manifest(num_threads=1), manifest()
    entry = known_cause("torch-set-num-threads")
    assert (live_in(entry, many), live_in(entry, one), live_in(entry, unread)) == (
        True, False, None)
    libraries = {"torch": "1.13", "numpy": "1.24"}
    # Live: first among the libraries' entries, cited with the fact.
    def of_libraries(found):
        return [c for c in found if c.libraries]
    assert of_libraries(for_intervention("threads", libraries, many))[0] == entry
    assert "the manifest shows frameworks.torch.num_threads = 2" in cited(entry, many)
    # The probe reads before the job, which may set its own thread count: never left out.
    assert entry in for_intervention("threads", libraries, one)
    assert of_libraries(for_intervention("threads", libraries, one))[0] != entry
    assert "the manifest shows" not in cited(entry, one)
    benchmark = known_cause("torch-cudnn-benchmark")
    assert live_in(benchmark, manifest(cudnn={"benchmark": True}))
    assert not live_in(benchmark, manifest(cudnn={"benchmark": False}))
